"""docs/commands.md is the CLI's own help, current: regenerated here and compared (issue 6, "Docs")."""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer
from jit_ssh.cli.main import app

REFERENCE = Path(__file__).resolve().parents[3] / "docs" / "commands.md"


def _commands(command: Any, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    found = {path}
    for name, sub in (getattr(command, "commands", None) or {}).items():
        if not getattr(sub, "hidden", False):
            found |= _commands(sub, (*path, name))
    return found


def test_the_command_reference_is_current() -> None:
    generated = subprocess.run(
        [sys.executable, "-m", "jit_ssh.cli._reference"], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    committed = REFERENCE.read_text(encoding="utf-8")
    if generated != committed:
        diff = "".join(
            list(difflib.unified_diff(committed.splitlines(True), generated.splitlines(True), "docs", "cli"))[:60]
        )
        raise AssertionError(f"docs/commands.md is stale; run scripts/command-reference. Differences:\n{diff}")


def test_the_reference_covers_every_command_and_only_those() -> None:
    documented = {
        tuple(heading.split()[1:])
        for heading in re.findall(r"^## `(jit-ssh[^`]*)`$", REFERENCE.read_text(encoding="utf-8"), re.MULTILINE)
    }
    expected = _commands(typer.main.get_command(app))
    assert documented == expected
    # Among them the commands of the review and enrollment issues.
    for command in (("sessions", "verify"), ("replay",), ("watch",), ("export",), ("host", "enroll"), ("demo",)):
        assert command in documented
