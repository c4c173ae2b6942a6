"""Sessions that leave a way around the recording are flagged for review (issue 10, item 6), and a recording
that cannot be read is a loud error, never silence (item 2).

Real ``ssh`` through the broker to a real ``sshd``; the reviewer's side is the real CLI; the webhook goes to
a real HTTP receiver.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from jit_ssh.cli.bastion.stack import LocalStack

from tests.e2e.stack_fixture import (
    audit_events,
    cli_json,
    ended_session,
    granted,
    indexed,
    just_before,
    run_ssh,
    session_rows,
    ssh_argv,
    started_stack,
    wait_for,
)
from tests.integration.test_notify import Receiver

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    yield rx
    rx.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[LocalStack]:
    hook = f'\n[[webhook]]\nurl = "{receiver.url}/hook"\nevents = ["session.flagged"]\n'
    with started_stack(tmp_path_factory.mktemp("flags") / "site", config_tail=hook) as st:
        yield st


@pytest.fixture(scope="module")
def grant(stack: LocalStack) -> int:
    return granted(stack)


def _flagged(stack: LocalStack) -> dict[str, dict[str, object]]:
    return {row["id"]: row for row in cli_json(stack.jit("bob", "sessions", "--flagged", "--json"))}


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        ("mosh-server new -p 60001 2>/dev/null || true", "out-of-band server: mosh-server"),
        ("(nc -l 127.0.0.1 45678 2>/dev/null &) ; true", "listener: nc -l"),
        ("echo 'MOSH CONNECT 60001 4NeCCgvZFe2RnPgrcU1PQw' | sed s/x/y/", "out-of-band server: mosh-server"),
    ],
)
def test_sessions_starting_out_of_band_servers_are_flagged(
    stack: LocalStack, grant: int, receiver: Receiver, command: str, flag: str
) -> None:
    since = just_before()
    done = run_ssh([*ssh_argv(stack, "alice", grant), command])
    assert done.returncode == 0, done.stderr
    session_id = ended_session(stack, since=since)["id"]
    indexed(stack, session_id)
    flagged = _flagged(stack)
    assert session_id in flagged
    assert flag in flagged[session_id]["flags"]  # type: ignore[operator]
    events = [e for e in audit_events(stack, "session.flagged") if e["subject"] == f"session:{session_id}"]
    assert events
    assert flag in events[-1]["details"]["flags"]
    hooks = wait_for(
        lambda: [b for b in receiver.bodies if b["event"] == "session.flagged" and b["jit_ssh"]["session"] == session_id],  # noqa: E501
        what="the session.flagged webhook",
    )  # fmt: skip
    assert flag in hooks[0]["jit_ssh"]["flags"]
    assert session_id in str(hooks[0]["text"])


def test_ordinary_sessions_are_not_flagged(stack: LocalStack, grant: int) -> None:
    since = just_before()
    done = run_ssh([*ssh_argv(stack, "alice", grant), "uname -a; df -h / >/dev/null"])
    assert done.returncode == 0, done.stderr
    session_id = ended_session(stack, since=since)["id"]
    row = indexed(stack, session_id)
    assert row["flags_json"] is None
    assert session_id not in _flagged(stack)


def test_a_recording_that_cannot_be_read_is_a_loud_error(stack: LocalStack, grant: int, tmp_path: Path) -> None:
    # The recording is damaged after the session's end and before its index (the broker is stopped for it).
    since = just_before()
    done = run_ssh([*ssh_argv(stack, "alice", grant), "echo damaged-later"])
    assert done.returncode == 0, done.stderr
    row = ended_session(stack, since=since)
    session_id = row["id"]
    indexed(stack, session_id)
    stack.stop_broker()
    path = Path(row["recording_path"])
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with stack_db(stack) as db:  # as if the broker had stopped before indexing it
        db.execute("UPDATE sessions SET index_json = NULL WHERE id = ?", (session_id,))
        db.commit()
    stack.start_broker()  # indexes what is not indexed yet
    failed = wait_for(
        lambda: [r for r in session_rows(stack) if r["id"] == session_id and r["index_error"]],
        what="the index error",
    )[0]  # fmt: skip
    assert "recording" in failed["index_error"]  # zstd's words for the damage vary with the byte hit
    assert [e for e in audit_events(stack, "session.index_failed") if e["subject"] == f"session:{session_id}"]
    listed = {r["id"]: r for r in cli_json(stack.jit("bob", "sessions", "--json"))}
    assert listed[session_id]["index"] == "failed"
    assert session_id in _flagged(stack)
    verified = stack.jit("bob", "sessions", "verify", session_id, "--json")
    assert verified.returncode != 0
    assert "altered" in json.loads(verified.stdout)[0]["status"]
    # Each review tool that reads it fails with one line, and leaves no file behind.
    out = tmp_path / "damaged.cast"
    exported = stack.jit("bob", "export", session_id, "-o", str(out))
    assert exported.returncode != 0
    assert "Traceback" not in exported.stderr
    assert len(exported.stderr.strip().splitlines()) == 1
    assert not out.exists()
    replayed = stack.jit("bob", "replay", session_id)
    assert replayed.returncode != 0
    assert len(replayed.stderr.strip().splitlines()) == 1


def stack_db(stack: LocalStack):  # type: ignore[no-untyped-def]
    import contextlib  # noqa: PLC0415
    import sqlite3  # noqa: PLC0415

    return contextlib.closing(sqlite3.connect(stack.data_dir / "jit-ssh.db", timeout=10))
