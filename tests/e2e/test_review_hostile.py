"""Hostile values through the real CLI and the broker's log (issue 10, items 10 and 15).

A requester writes a reason that rich would read as markup (``routine check [/bold]`` crashed
``requests`` and ``sessions`` with ``MarkupError``); a session runs an exec command carrying an OSC 52
clipboard write, a title change, cursor movement that overwrites the line shown, and a newline followed
by a forged log line. Every listing an approver or reviewer runs must work, show those values as text
and send no escape byte to the terminal; the broker's text log must keep each record on one line.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest
from jit_ssh.cli.bastion.stack import LocalStack

from tests.e2e.stack_fixture import ended_session, run_ssh, ssh_argv, started_stack, wait_for

pytestmark = pytest.mark.e2e

REASON = "routine check [/bold]"
FORGED = "2026-01-01 00:00:00,000 INFO jit_ssh.broker.server forged line"
# Valid shell: everything hostile sits in a comment or a quoted argument of ':'.
COMMAND = f"echo harmless-marker # \x1b]52;c;cm0gLXJmIC8K\x07\x1b]0;all clear\x07\r\x1b[2K\x1b[1A\n: '\n{FORGED}'"
# What a terminal would act on: ESC, BEL, CR, 8-bit CSI and OSC.
_CONTROLS = ("\x1b", "\x07", "\r", "\x9b", "\x9d")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with started_stack(tmp_path_factory.mktemp("hostile") / "site") as st:
        yield st


@pytest.fixture(scope="module")
def request_id(stack: LocalStack) -> int:
    filed = stack.jit(
        "alice", "request", stack.host_names[0], "--reason", REASON, "--login", stack.login, "--no-wait", "--json",
        check=True,
    )  # fmt: skip
    return int(json.loads(filed.stdout)["id"])


def _shown(result: subprocess.CompletedProcess[str]) -> str:
    """A listing that worked and sent nothing a terminal would act on."""
    assert result.returncode == 0, result.stderr
    for char in _CONTROLS:
        assert char not in result.stdout, (char, result.stdout[:2000])
        assert char not in result.stderr, (char, result.stderr[:2000])
    return result.stdout


def test_a_reason_is_text_not_markup(stack: LocalStack, request_id: int) -> None:
    for user, args in (
        ("bob", ["requests"]), ("bob", ["requests", "--pending"]), ("alice", ["status"]),
        ("alice", ["status", str(request_id)]),
    ):  # fmt: skip
        assert REASON in _shown(stack.jit(user, *args)), args


@pytest.fixture(scope="module")
def session_id(stack: LocalStack, request_id: int) -> str:
    stack.jit("bob", "approve", str(request_id), check=True)
    stack.jit("alice", "cert", str(request_id), check=True)
    since = time.time() - 0.01
    done = run_ssh([*ssh_argv(stack, "alice", request_id), COMMAND])
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"harmless-marker\n"
    return str(ended_session(stack, since=since)["id"])


def test_sessions_show_commands_as_text(stack: LocalStack, request_id: int, session_id: str) -> None:
    def found() -> bool:
        rows = json.loads(_shown(stack.jit("bob", "sessions", "--grep", "harmless-marker", "--json")))
        return session_id in {row["id"] for row in rows}

    wait_for(found, what="the exec command in the index")
    listed = _shown(stack.jit("bob", "sessions"))
    assert session_id in listed
    assert REASON in listed
    assert "\\x1b]52;c;" in _shown(stack.jit("bob", "sessions", "--grep", "harmless-marker"))
    assert session_id in _shown(stack.jit("bob", "sessions", "--request", str(request_id)))
    shown = _shown(stack.jit("bob", "sessions", "show", session_id))
    assert "\\x1b]52;c;cm0gLXJmIC8K\\x07\\x1b]0;all clear\\x07\\r\\x1b[2K\\x1b[1A\\n: '\\n2026-01-01" in shown
    assert not any(line.startswith("2026-01-01") for line in shown.splitlines())
    assert REASON in shown
    assert "\\u001b]52" in _shown(stack.jit("bob", "sessions", "show", session_id, "--json"))


def test_broker_log_keeps_one_record_a_line(stack: LocalStack, session_id: str) -> None:
    log = stack.broker_log.read_bytes()
    assert b"\x1b" not in log
    assert b"\x07" not in log
    lines = log.decode("utf-8", "replace").splitlines()
    assert not [line for line in lines if line.startswith(FORGED)]
    # asyncssh's own INFO line for the exec request is there, escaped on one line.
    assert any("Command: echo harmless-marker" in line and f"\\n{FORGED}'" in line for line in lines)
