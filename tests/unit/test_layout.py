"""The layout DESIGN.md promises, checked: dependencies point one way (``cli → broker → ca``), no module
imports itself round a cycle, and the engineer's CLI never loads the server side (issue 11, item 5).

The static checks read every import with ``ast``, those under ``if TYPE_CHECKING:`` and inside functions
included: a cycle that only the type checker sees is still a cycle to a reader. The runtime checks import
the engineer's commands in a fresh interpreter and look at ``sys.modules``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"ca": "jit_ssh.ca", "broker": "jit_ssh.broker", "cli": "jit_ssh.cli"}

# What the engineer's side of the CLI must never load: the store, its ORM, the broker.
SERVER_SIDE = ("sqlmodel", "sqlalchemy", "jit_ssh.ca.store", "jit_ssh.broker")

# The modules behind `jit-ssh --help`, `jit-ssh HOST` (connect) and the engineer's and approver's commands
# (request, requests, status, approve, deny, cancel, revoke, cert), the CA's public keys and KRL fetch
# (`jit-ssh ca ...`), and the client's settings (`jit-ssh config ...`).
ENGINEER_MODULES = (
    "jit_ssh.cli",
    "jit_ssh.cli.main",
    "jit_ssh.cli.connect_cmd",
    "jit_ssh.cli.access_cmds",
    "jit_ssh.cli.ca_cmds",
    "jit_ssh.cli.config_cmds",
    "jit_ssh.cli.client",
    "jit_ssh.cli.settings",
    "jit_ssh.cli.output",
    "jit_ssh.cli.views",
    "jit_ssh.cli.files",
    "jit_ssh.cli.openssh",
)
ENGINEER_COMMANDS = (
    ("connect",), ("request",), ("requests",), ("status",), ("approve",), ("deny",), ("cancel",), ("revoke",),
    ("cert",), ("ca",), ("ca", "pubkey"), ("ca", "krl"), ("ca", "known-hosts"), ("config",), ("config", "show"),
)  # fmt: skip


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _in_functions(tree: ast.AST) -> set[ast.AST]:
    return {
        node
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
    }


def _imports(name: str, path: Path, *, in_functions: bool = True) -> Iterator[str]:
    """Every jit_ssh module that ``name`` imports, anywhere in its source (or only outside functions),
    relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = set() if in_functions else _in_functions(tree)
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            # `from pkg import sub` imports the module pkg.sub; `from mod import name` imports mod.
            subs = [f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in MODULES]
            targets = subs if len(subs) == len(node.names) else [module, *subs]
        else:
            continue
        for target in targets:
            if target.startswith(("jit_ssh", "sqlmodel", "sqlalchemy")):
                yield target


GRAPH = {
    name: sorted(t for t in set(_imports(name, path)) if t.startswith("jit_ssh")) for name, path in MODULES.items()
}


def _edges_into(source_prefix: str, target_prefix: str) -> list[str]:
    return [
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if name.startswith(source_prefix)
        for target in targets
        if target == target_prefix or target.startswith(f"{target_prefix}.")
    ]


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One import cycle, as the list of modules round it (first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_every_package_is_read() -> None:
    # The checks below are only as good as the graph: it must hold every module and the imports we know of.
    assert {"jit_ssh.ca.store", "jit_ssh.broker.server", "jit_ssh.cli.main"} <= set(GRAPH)
    assert "jit_ssh.ca.errors" in GRAPH["jit_ssh.ca.audit"] or "jit_ssh.ca.store" in GRAPH["jit_ssh.ca.audit"]
    assert any(target.startswith("jit_ssh.ca") for target in GRAPH["jit_ssh.broker.server"])


def test_ca_imports_neither_broker_nor_cli() -> None:
    assert _edges_into("jit_ssh.ca", "jit_ssh.broker") + _edges_into("jit_ssh.ca", "jit_ssh.cli") == []


def test_broker_never_imports_cli() -> None:
    assert _edges_into("jit_ssh.broker", "jit_ssh.cli") == []


def test_the_engineers_side_of_the_cli_imports_no_server_side_module() -> None:
    # By layout: cli/ outside cli/bastion/ is the engineer's side. It names the bastion's commands in
    # cli/main.py (loaded when they run) and reaches into cli/bastion/ in one function, `revoke --config`.
    engineer = [name for name in MODULES if name.startswith("jit_ssh.cli") and ".bastion" not in name]
    assert "jit_ssh.cli.connect_cmd" in engineer
    assert "jit_ssh.cli.bastion.admin_cmds" not in engineer
    banned = (*SERVER_SIDE, "jit_ssh.cli.bastion", "jit_ssh.ca.inventory", "jit_ssh.ca.workflow", "jit_ssh.ca.audit")
    found = {
        f"{name} imports {target}"
        for name in engineer
        for target in _imports(name, MODULES[name], in_functions=False)
        if any(target == b or target.startswith(f"{b}.") for b in banned)
    }
    assert found == set()
    lazy = {
        f"{name} imports {target}"
        for name in engineer
        for target in _imports(name, MODULES[name])
        if any(target == b or target.startswith(f"{b}.") for b in banned)
    }
    assert lazy == {"jit_ssh.cli.access_cmds imports jit_ssh.cli.bastion.admin_cmds"}


def test_no_import_cycle() -> None:
    cycle = _find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles() -> None:
    # Negative control: the finder is not blind (a two-step and a longer cycle, and an acyclic graph).
    assert _find_cycle({"a": ["b"], "b": ["a"]}) == ["a", "b", "a"]
    assert _find_cycle({"a": ["b"], "b": ["c"], "c": ["d", "b"], "d": []}) == ["b", "c", "b"]
    assert _find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def _fresh(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``, which prints them last as JSON."""
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, timeout=120, check=True, cwd=ROOT,
    )  # fmt: skip
    return set(json.loads(done.stdout.splitlines()[-1]))


def _server_side(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == s or m.startswith(f"{s}.") for s in SERVER_SIDE))


def test_the_engineers_modules_do_not_load_the_server_side() -> None:
    loaded = _fresh("".join(f"import {name}\n" for name in ENGINEER_MODULES))
    assert set(ENGINEER_MODULES) <= loaded
    assert _server_side(loaded) == []


def _after_help(paths: list[tuple[str, ...]]) -> set[str]:
    """The modules loaded once ``jit-ssh PATH --help`` ran in-process for each path, as typer runs it."""
    calls = "".join(f"    app(args={[*path, '--help']!r}, **KW)\n" for path in paths)
    return _fresh(
        "import contextlib, io\nfrom jit_ssh.cli.main import app\n"
        "KW = {'prog_name': 'jit-ssh', 'standalone_mode': False}\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n{calls}"
    )


def test_help_and_the_engineers_commands_do_not_load_the_server_side() -> None:
    # Each command's own --help builds it as typer does to run it; `jit-ssh --help` lists every command.
    loaded = _after_help([(), *ENGINEER_COMMANDS])
    assert "jit_ssh.cli.connect_cmd" in loaded
    assert _server_side(loaded) == []


def test_the_runtime_check_sees_the_server_side() -> None:
    # Negative control: a bastion command's module does load the store, and the check says so.
    assert "jit_ssh.ca.store" in _server_side(_after_help([("user", "list")]))
