"""After a crash (issue 10, item 17): a broker killed mid-session closes that session when it starts again,
seals its recording's digest in the store and the audit chain, and notices a recording altered meanwhile.
Before the restart, verification does not take the cut session for a live one.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
from jit_ssh.cli.bastion.stack import LocalStack

from tests.e2e.stack_fixture import (
    PtyClient,
    audit_events,
    cli_json,
    granted,
    just_before,
    session_rows,
    ssh_argv,
    started_stack,
    wait_for,
)

pytestmark = pytest.mark.e2e


def _killed_mid_session(stack: LocalStack, request_id: int) -> dict[str, object]:
    """A pty session that printed something and was checkpointed; then the broker is killed (-9)."""
    since = just_before()
    with PtyClient(ssh_argv(stack, "alice", request_id, extra=["-tt"])) as client:
        client.send("echo before-kill-$((40+2))\r")
        client.expect("before-kill-42")
        row = wait_for(
            lambda: [r for r in session_rows(stack, since=since) if (r["checkpoint_size"] or 0) > 200],
            what="a checkpoint of the recording with the output in it", timeout=30,
        )[0]  # fmt: skip
        assert stack.stop_broker(signal.SIGKILL) == -signal.SIGKILL
        assert client.wait(timeout=30) == 255
    return row


def _sealed(stack: LocalStack, session_id: str) -> dict[str, Any]:
    """The session's row once the restarted broker has closed it."""
    rows = wait_for(
        lambda: [r for r in session_rows(stack) if r["id"] == session_id and r["ended_at"] is not None],
        what="the cut session's end",
    )
    return dict(rows[0])


def _verify(stack: LocalStack, session_id: str) -> dict[str, object]:
    result = stack.admin("sessions", "verify", session_id, "--json", check=False)
    results = cli_json(result) if result.returncode == 0 else __import__("json").loads(result.stdout)
    assert len(results) == 1
    return results[0]


def test_a_session_cut_by_a_crash_is_sealed_at_restart_and_then_verified(tmp_path: Path) -> None:
    with started_stack(tmp_path / "site") as stack:
        request_id = granted(stack)
        row = _killed_mid_session(stack, request_id)
        session_id = str(row["id"])
        # The broker is gone: its session is not live, and not verified as if it were.
        down = _verify(stack, session_id)
        assert down["ok"] is False
        assert "stopped without sealing it" in str(down["status"])
        assert session_id not in {r["id"] for r in cli_json(stack.admin("sessions", "--active", "--json"))}

        stack.start_broker()
        ended = _sealed(stack, session_id)
        assert ended["end_reason"] == "cut by broker restart"
        path = Path(ended["recording_path"])
        assert ended["recording_size"] == path.stat().st_size
        assert ended["ended_at"] <= path.stat().st_mtime + 1
        events = [e for e in audit_events(stack, "session.ended") if e["subject"] == f"session:{session_id}"]
        assert len(events) == 1
        assert events[0]["details"]["recovered"] is True
        assert events[0]["details"]["recording_sha256"] == ended["recording_sha256"]
        assert _verify(stack, session_id) == {"id": session_id, "ok": True, "status": "ok"}

        # Sealed: an edit now is caught.
        blob = bytearray(path.read_bytes())
        blob[len(blob) // 2] ^= 0x01
        path.write_bytes(bytes(blob))
        after = _verify(stack, session_id)
        assert after["ok"] is False
        assert "altered" in str(after["status"])


def test_a_recording_altered_while_the_broker_was_down_is_caught_at_restart(tmp_path: Path) -> None:
    with started_stack(tmp_path / "site") as stack:
        request_id = granted(stack)
        row = _killed_mid_session(stack, request_id)
        session_id = str(row["id"])
        path = Path(str(row["recording_path"]))
        blob = bytearray(path.read_bytes())
        blob[int(row["checkpoint_size"]) // 2] ^= 0x01  # inside what the broker checkpointed
        path.write_bytes(bytes(blob))

        stack.start_broker()
        ended = _sealed(stack, session_id)
        assert ended["end_reason"] == "cut by broker restart; recording altered after its last checkpoint"
        assert "recording altered while the broker was down" in ended["flags_json"]
        verdict = _verify(stack, session_id)
        assert verdict["ok"] is False
        assert "altered" in str(verdict["status"])
        flagged = {r["id"] for r in cli_json(stack.admin("sessions", "--flagged", "--json"))}
        assert session_id in flagged


def test_a_broker_closes_only_its_own_cut_sessions(tmp_path: Path) -> None:
    with started_stack(tmp_path / "site") as stack:
        request_id = granted(stack)
        row = _killed_mid_session(stack, request_id)
        session_id = str(row["id"])
        # Another broker's id on this data: the session is not this broker's to close.
        (stack.data_dir / "broker-id").write_text("another-broker-1\n", encoding="ascii")
        stack.start_broker()
        time.sleep(2)  # the new broker has started and closed what it owns; this one it must not touch
        again = next(r for r in session_rows(stack) if r["id"] == session_id)
        assert again["ended_at"] is None
        assert not [e for e in audit_events(stack, "session.ended") if e["subject"] == f"session:{session_id}"]
