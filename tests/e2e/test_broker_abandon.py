"""Clients that vanish at any moment of a session's set-up leave nothing behind in the broker.

The broker starts its onward connection when the client has authenticated, and opens the recording and
the session's row in worker threads while the client may already be gone. Each real ``ssh`` here is
killed at a different moment of its set-up (after 0 to 200 ms); afterwards the broker must hold no
recording open, no session row may be left without its end, and its sockets (client and onward
connections) must be back to what they were.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jit_ssh.cli.bastion.stack import LocalStack

from tests.e2e.stack_fixture import granted, open_sockets, process_fds, session_rows, ssh_argv, started_stack, wait_for

pytestmark = pytest.mark.e2e

ATTEMPTS = 40


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with started_stack(tmp_path_factory.mktemp("abandon")) as stack:
        yield stack


def test_killed_clients_leave_no_open_recording_row_or_connection(stack: LocalStack) -> None:
    request_id = granted(stack)
    assert stack.broker is not None
    pid = stack.broker.pid
    argv = ssh_argv(stack, "alice", request_id)
    done = subprocess.run([*argv, "true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr  # the path works, so the kills below land mid-set-up

    time.sleep(1)
    sockets_before = open_sockets(pid)
    since = time.time() - 0.01
    for attempt in range(ATTEMPTS):
        client = subprocess.Popen(
            [*argv, "sleep 30"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(attempt * 0.005)  # 0 to 200 ms: before, during and after authentication and channel set-up
        client.kill()
        client.wait()

    def no_recording_open() -> bool:
        return not [t for t in process_fds(pid) if t.endswith(".jsr")]

    wait_for(no_recording_open, timeout=30, what="the broker to close every recording")
    rows = session_rows(stack, since=since)
    assert rows, "some attempts got as far as a session"
    wait_for(lambda: all(r["ended_at"] is not None for r in session_rows(stack, since=since)), timeout=30,
             what="every session row to be ended")  # fmt: skip
    wait_for(lambda: open_sockets(pid) <= sockets_before, timeout=30, what="the broker's sockets to be closed")
    for row in session_rows(stack, since=since):
        path = Path(row["recording_path"])
        assert path.exists(), f"session {row['id']} has a row but no recording"
