"""Invariant 5 when the disk fills: recordings on a 1 MiB tmpfs. A session that fills it is ended, a new
session is refused while it is full, each with a clear message; the broker, its control commands and
an idle session carry on, and sessions work again once there is room.
"""

from __future__ import annotations

import errno
import hashlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jit_ssh.cli.bastion.stack import LocalStack

from tests.e2e.stack_fixture import (
    PtyClient,
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


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("disk-full") / "recordings"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for the recordings (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture(scope="module")
def stack(recordings: Path) -> Iterator[LocalStack]:
    root = recordings.parent / "site"
    with started_stack(root, broker_settings={"recordings_dir": f'"{recordings}"'}) as st:
        yield st


@pytest.fixture(scope="module")
def grant(stack: LocalStack) -> int:
    return granted(stack)


def _fill(path: Path) -> None:
    """Write ``path`` until the file system has no room left."""
    with path.open("wb", buffering=0) as handle:
        block = b"\0" * 4096
        while True:
            try:
                handle.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return


def _free(*paths: Path) -> None:
    for path in paths:
        path.unlink()


def test_a_session_that_fills_the_disk_is_ended(stack: LocalStack, grant: int, recordings: Path) -> None:
    since = time.time() - 0.01
    with PtyClient(ssh_argv(stack, "alice", grant, extra=["-tt"])) as idle:
        idle.send("echo idle-$((2+2))\r")
        idle.expect("idle-4")
        wait_for(lambda: len(session_rows(stack, since=since)) == 1, what="the idle session's row")

        # A terminal session is recorded byte for byte: 3 MB of output that does not compress (base64 of random
        # bytes, about 2.3 MB compressed) cannot fit in 1 MiB.
        chatty_since = time.time() - 0.01
        argv = [*ssh_argv(stack, "alice", grant, extra=["-tt"]), "head -c 2300000 /dev/urandom | base64; sleep 30"]
        with PtyClient(argv) as chatty:
            assert chatty.wait(timeout=60) == 255
            shown = chatty.text()
        # The space is claimed before the bytes are relayed (broker/space.py): the session ends when the disk
        # is down to the reserve kept for other sessions, before it has relayed what it could not record.
        assert "[jit-ssh] recording failed, session closed: no space for the session recording" in shown
        assert "recording space is down to its reserve" in shown
        assert len(shown) < 3_000_000  # cut off before the end
        rows = wait_for(
            lambda: [r for r in session_rows(stack, since=chatty_since) if r["ended_at"] is not None],
            what="the full session's end",
        )
        assert len(rows) == 1
        assert rows[0]["end_reason"].startswith("recording failed, session closed")
        # What reached the disk is intact up to the failed write; the digest is of exactly that.
        path = Path(rows[0]["recording_path"])
        header, frames, _ = recording_frames(path)
        assert header["jit_ssh"]["session"] == rows[0]["id"]
        assert rows[0]["recording_size"] == path.stat().st_size
        assert rows[0]["recording_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

        # The broker and its control plane carry on while the disk is full.
        _fill(recordings / "filler")
        status = stack.jit("alice", "status", "--json")
        assert status.returncode == 0, status.stderr

        # A new session is refused while there is no room for its recording.
        done = run_ssh([*ssh_argv(stack, "alice", grant), "echo must-not-run"], timeout=60)
        stderr = done.stderr.decode(errors="replace")
        assert (done.returncode, done.stdout) == (255, b""), stderr
        assert "jit-ssh: cannot write the session recording" in stderr
        assert "No space left on device" in stderr

        # Once there is room, the idle session (nothing to flush meanwhile) and new sessions work.
        _free(recordings / "filler", path)
        idle.send("echo still-here-$((3+4))\r")
        idle.expect("still-here-7")
        idle.send("exit\r")
        assert idle.wait() == 0
    done = run_ssh([*ssh_argv(stack, "alice", grant), "echo room-again"], timeout=60)
    assert (done.returncode, done.stdout) == (0, b"room-again\n"), done.stderr

    idle_row = wait_for(
        lambda: [r for r in session_rows(stack, since=since) if r["ended_at"] is not None and r["kind"] == "shell"
                 and r["pty"] and r["command"] is None],
        what="the idle session's end",
    )[0]  # fmt: skip
    assert idle_row["exit_status"] == 0
    assert idle_row["end_reason"] == "closed"
    blob = Path(idle_row["recording_path"]).read_bytes()
    assert idle_row["recording_sha256"] == hashlib.sha256(blob).hexdigest()
    _, frames, truncated = recording_frames(Path(idle_row["recording_path"]))
    assert not truncated
    assert b"still-here-7" in stream_bytes(frames, "o")
    assert metadata(frames)[-1]["end"]["exit_status"] == 0
