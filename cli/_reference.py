"""Print the command reference (docs/commands.md) from the CLI's own help texts."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import typer

from .main import app


def _walk(command: Any, path: list[str]) -> list[list[str]]:
    paths = [path]
    for name in sorted(getattr(command, "commands", {}) or {}):
        sub = command.commands[name]
        if getattr(sub, "hidden", False):
            continue
        paths += _walk(sub, [*path, name])
    return paths


def main() -> None:
    root = typer.main.get_command(app)
    env = {**os.environ, "COLUMNS": "100", "TERM": "dumb", "NO_COLOR": "1", "_TYPER_FORCE_DISABLE_TERMINAL": "1"}
    out = [
        "# jit-ssh command reference",
        "",
        "Generated from the CLI's own `--help` by `scripts/command-reference`; do not edit by hand.",
        "A first word that is not a command is a host: `jit-ssh prod-web-3 -- uptime` is",
        "`jit-ssh connect prod-web-3 -- uptime`.",
        "",
    ]
    for path in _walk(root, []):
        help_text = subprocess.run(
            [sys.executable, "-m", "jit_ssh.cli", *path, "--help"], capture_output=True, text=True, env=env, check=True
        ).stdout
        lines = [line.rstrip() for line in help_text.splitlines()]
        out += [f"## `{' '.join(['jit-ssh', *path])}`", "", "```", *lines, "```", ""]
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main()
