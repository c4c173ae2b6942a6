"""Who looked at a session, and who was refused, is in the audit log (issue 10, item 13).

Replaying a live session follows it as it happens: that is watching, whatever the command is called, so
the user is told (as ``watch`` tells them) and the audit log says ``session.watch``; replaying a finished
session stays a replay and tells nobody. A non-reviewer's ``sessions``, ``sessions show``,
``sessions verify``, ``replay``, ``export`` and ``watch`` are refused (exit 3), each with an audit event
that names who and which command, as the README promises of every refusal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from jit_ssh.cli.stack import LocalStack

from tests.e2e.stack_fixture import (
    PtyClient,
    audit_events,
    ended_session,
    granted,
    last_audit_seq,
    run_ssh,
    session_rows,
    ssh_argv,
    started_stack,
    wait_for,
)

pytestmark = pytest.mark.e2e

BASH = "env TERM=xterm HISTFILE=/dev/null PS1='$ ' bash --norc --noprofile -i"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with started_stack(tmp_path_factory.mktemp("review-audit") / "site") as st:
        yield st


@pytest.fixture(scope="module")
def grant(stack: LocalStack) -> int:
    return granted(stack)


def _live_session(stack: LocalStack, since: float) -> str:
    rows = wait_for(
        lambda: [r for r in session_rows(stack, since=since) if r["ended_at"] is None],
        what="alice's live session row",
    )
    return str(rows[0]["id"])


def _about(events: list[dict[str, object]], session_id: str) -> list[object]:
    return [e["actor"] for e in events if e["subject"] == f"session:{session_id}"]


def test_replaying_a_live_session_is_a_watch_the_user_is_told_of(stack: LocalStack, grant: int) -> None:
    since = time.time() - 0.01
    argv = [*ssh_argv(stack, "alice", grant, extra=["-tt"]), BASH]
    with PtyClient(argv) as alice:
        at = alice.expect("$ ")
        session_id = _live_session(stack, since)
        replay = subprocess.Popen(
            [sys.executable, "-m", "jit_ssh.cli", "replay", session_id],
            env={**stack.user_env("bob"), "PYTHONIOENCODING": "utf-8"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            at = alice.expect("bob is watching this session", start=at)
            alice.send("exit\r")
            assert alice.wait() == 0
            _, errors = replay.communicate(timeout=60)
            assert replay.returncode == 0, errors
        finally:
            if replay.poll() is None:
                os.killpg(replay.pid, signal.SIGKILL)
                replay.communicate()
    ended_session(stack, since=since)
    assert _about(audit_events(stack, "session.watch"), session_id) == ["bob"]
    assert _about(audit_events(stack, "session.replay"), session_id) == []

    # Negative control: the same command on the finished session is a replay, and nobody is told.
    again = stack.jit("bob", "replay", session_id)
    assert again.returncode == 0, again.stderr
    assert _about(audit_events(stack, "session.replay"), session_id) == ["bob"]
    assert _about(audit_events(stack, "session.watch"), session_id) == ["bob"]
    assert alice.text().count("is watching") == 1


def test_refused_review_commands_are_audited_with_user_and_command(stack: LocalStack, grant: int) -> None:
    done = run_ssh([*ssh_argv(stack, "alice", grant), "true"])
    assert done.returncode == 0, done.stderr
    session_id = str(session_rows(stack)[-1]["id"])
    before = last_audit_seq(stack)
    commands = {
        "sessions": ("sessions",),
        "session": ("sessions", "show", session_id),
        "verify": ("sessions", "verify"),
        "replay": ("replay", session_id),
        "export": ("export", session_id, "-o", os.devnull),
        "watch": ("watch", session_id),
    }
    for args in commands.values():
        refused = stack.jit("carol", *args)
        assert refused.returncode == 3, (args, refused.stdout, refused.stderr)
        assert "not a reviewer" in refused.stderr
    events = audit_events(stack, "review.refused", after_seq=before)
    assert [(e["actor"], e["details"]["verb"]) for e in events] == [("carol", verb) for verb in commands]
    assert all("not a reviewer" in e["details"]["reason"] for e in events)
    assert {e["subject"] for e in events} == {"sessions", f"session:{session_id}"}
    # Nothing was shown to carol, so nothing is audited as seen by her.
    for action in ("session.replay", "session.export", "session.watch"):
        assert [e for e in audit_events(stack, action, after_seq=before) if e["actor"] == "carol"] == []

    # Negative control: bob, a reviewer, is not refused, and leaves no refusal.
    assert stack.jit("bob", "sessions", "verify", session_id).returncode == 0
    assert len(audit_events(stack, "review.refused", after_seq=before)) == len(events)
