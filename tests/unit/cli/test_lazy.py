"""The bastion's commands, registered by name in cli/main.py and loaded when they run (cli/lazy.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer
from jit_ssh.cli.lazy import Lazy
from jit_ssh.cli.main import _Commands, app, route_host


def _first_paragraph(text: str | None) -> str:
    return " ".join((text or "").strip().split("\n\n")[0].split())


def test_each_lazy_line_is_the_first_paragraph_of_the_commands_own_help() -> None:
    root = typer.main.get_command(app)
    for name, lazy in _Commands.lazy.items():
        command = root.commands[name]
        assert command.name == name
        assert lazy.line == _first_paragraph(command.help), name


def test_the_listing_shows_the_line_and_running_loads_the_command() -> None:
    root = typer.main.get_command(app)
    stand_in = root.get_command(None, "user")
    assert stand_in.help == "Enrolled users (on the bastion)."
    assert not hasattr(stand_in, "commands")  # a stand-in only: nothing loaded for a listing
    loaded = root.commands["user"]
    assert set(loaded.commands) == {"add", "disable", "list"}
    assert root.get_command(None, "user") is loaded
    assert root.get_command(None, "no-such-command") is None


def test_every_command_is_in_the_order_and_the_order_names_only_commands() -> None:
    root = typer.main.get_command(app)
    assert list(root.commands) == list(_Commands.order)
    assert len(set(_Commands.order)) == len(_Commands.order)
    assert set(_Commands.lazy) <= set(_Commands.order)


def test_a_bastion_command_is_not_taken_for_a_host() -> None:
    assert route_host(["sessions", "--active"]) == ["sessions", "--active"]
    assert route_host(["serve"]) == ["serve"]
    assert route_host(["prod-web-3"]) == ["connect", "prod-web-3"]


def test_a_bad_target_fails_loudly() -> None:
    with pytest.raises(AttributeError):
        Lazy("jit_ssh.cli.bastion.admin_cmds:no_such_command", "x").load("x")
    with pytest.raises(ModuleNotFoundError):
        Lazy("jit_ssh.cli.bastion.no_such_module:serve", "x").load("x")


def _complete(words: str) -> list[str]:
    env = {**os.environ, "_JIT_SSH_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split(" ")) - 1)}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "jit_ssh.cli"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.split()


def test_tab_completion_lists_and_enters_the_lazy_commands() -> None:
    assert _complete("jit-ssh se") == ["serve", "sessions"]
    assert _complete("jit-ssh user ") == ["add", "disable", "list"]
    assert _complete("jit-ssh sessions s") == ["show"]
    assert _complete("jit-ssh con") == ["connect", "config"]  # in the order of jit-ssh --help
