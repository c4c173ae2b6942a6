"""Invariant 5 when the broker dies: ``kill -9`` mid-session leaves a recording that reads up to its last
flush, with what the session showed before the kill, and the broker starts again on the same data.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.e2e.stack_fixture import (
    PtyClient,
    ended_session,
    granted,
    metadata,
    recording_frames,
    run_ssh,
    session_rows,
    ssh_argv,
    started_stack,
    stream_bytes,
    wait_for,
)

pytestmark = pytest.mark.e2e

FLUSH_WAIT = 2.5  # seconds: more than the broker's flush period (at most one second) with margin


def test_kill_9_mid_session_leaves_a_readable_recording(tmp_path: Path) -> None:
    with started_stack(tmp_path / "site") as stack:
        request_id = granted(stack)
        since = time.time() - 0.01
        with PtyClient(ssh_argv(stack, "alice", request_id, extra=["-tt"])) as client:
            client.send("echo before-kill-$((40+2))\r")
            client.expect("before-kill-42")
            rows = wait_for(lambda: session_rows(stack, since=since), what="the session row")
            time.sleep(FLUSH_WAIT)  # let the periodic flush run; nothing is asserted about its timing
            assert stack.stop_broker(signal.SIGKILL) == -signal.SIGKILL
            # The client loses its connection: it ends, it does not hang.
            assert client.wait(timeout=30) == 255

        path = Path(rows[0]["recording_path"])
        header, frames, _truncated = recording_frames(path)  # a frame cut short is allowed, not required
        assert header["jit_ssh"]["session"] == rows[0]["id"]
        assert "echo before-kill-$((40+2))" in stream_bytes(frames, "i").decode()
        assert "before-kill-42" in stream_bytes(frames, "o").decode()
        assert not [m for m in metadata(frames) if "end" in m]  # never closed: no end, no digest
        row = session_rows(stack, since=since)[0]
        assert row["ended_at"] is None
        assert row["recording_sha256"] is None

        # The broker comes back on the same store and recordings, and sessions work again.
        stack.start_broker()
        since = time.time() - 0.01
        done = run_ssh([*ssh_argv(stack, "alice", request_id), "echo after-restart"])
        assert (done.returncode, done.stdout) == (0, b"after-restart\n"), done.stderr
        assert ended_session(stack, since=since)["exit_status"] == 0
