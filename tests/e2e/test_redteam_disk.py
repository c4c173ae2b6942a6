"""Red team, invariants 5 and 6: one user fills the recordings' disk; every other user's session is closed,
and what the attacker then types in a session opened before reaches the host unrecorded.

Full input capture (invariant 5) makes a recording as large as what a session sends without a terminal,
and random bytes do not compress: ``head -c 100G /dev/urandom | ssh HOST 'cat > /dev/null'`` writes 100 GB
of recording at the speed of the network. Nothing bounds one session's, or one user's, share of the disk.
Once it is full, the broker does what invariant 5 says (a recording that cannot be written ends its
session), for everyone: any other session that prints or types a byte is closed, and new sessions are
refused, until an admin makes room, while the session that filled it ends with nothing worse.

The broker relays a chunk to the host first and writes the recording behind it (broker/recording/writer.py: up to a
second or 8 MiB behind), so a write that fails ends the session only after the host has what it could not
record: with the disk full, keys typed in a session that was already open run on the host and are in no
recording (seen: the command ran; the session ended "recording failed" with its last input lost).

Properties: one user's session cannot end another user's by filling the disk; every byte that reaches the
host is in the recording. Fix: a recording quota per session and per user (over it: the session is ended,
and flagged), a reserve of free space kept for sessions under their quota, an alert well before the disk
is full; and space claimed ahead of relaying (``posix_fallocate`` the next few MiB of a recording before
passing on the bytes that will need them; if that fails, end the session before relaying).

Seen on the way: when the write that fails is the last one (the session closes within the flush interval),
``RecordingFile._run`` records the failure but resolves the close with the size and digest of what is on
disk, so the row says ``closed``, exit 0, with 4 KB of a session that printed 137 KB; ``verify`` passes.
Only the index's own failure (the disk was still full) flagged it.

Recordings on a 4 MiB tmpfs (needs root, as tests/e2e/test_broker_disk_full.py).
"""

from __future__ import annotations

import base64
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jit_ssh.broker.recording.format import RecordingFormatError, read_recording
from jit_ssh.cli.bastion.stack import LocalStack

from tests.e2e.stack_fixture import granted, just_before, live_shell, session_rows, ssh_argv, started_stack, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def recordings(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "recordings"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for the recordings (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
def stack(recordings: Path) -> Iterator[LocalStack]:
    users = ("alice", "bob", "carol", "dave")
    settings = {"recordings_dir": f'"{recordings}"'}
    with started_stack(recordings.parent / "site", users=users, broker_settings=settings) as st:
        yield st


def _fill(stack: LocalStack, recordings: Path, request_id: int) -> None:
    """Dave fills the disk: 8 MiB of random bytes on a session's input, recorded in full (and uncompressible).

    The broker stops him at the reserve it keeps free (broker/space.py): his session ends, for the space.
    """
    since = just_before()
    ssh = shlex.join([*ssh_argv(stack, "dave", request_id), "cat > /dev/null"])
    subprocess.run(["bash", "-c", f"head -c 8M /dev/urandom | {ssh}"], capture_output=True, timeout=120, check=False)
    rows = wait_for(
        lambda: [r for r in session_rows(stack, since=since) if r["user"] == "dave" and r["ended_at"]],
        what="the flooding session's end",
    )  # fmt: skip
    assert "no space for the session recording" in rows[-1]["end_reason"], rows[-1]["end_reason"]
    stat = os.statvfs(recordings)
    assert stat.f_bavail * stat.f_frsize < 512 * 1024, "the attack did not fill the disk to its reserve"


def test_one_user_filling_the_disk_does_not_end_anothers_session(stack: LocalStack, recordings: Path) -> None:
    victim = granted(stack)
    attacker = granted(stack, requester="dave", approver="bob")
    with live_shell(ssh_argv(stack, "alice", victim, extra=["-tt"])) as shell:
        _fill(stack, recordings, attacker)
        # Alice's ordinary work: some output (more than a page of the disk), a pause (the broker flushes
        # recordings four times a second), then a command.
        start = len(shell.output)
        shell.send("head -c 100000 /dev/urandom | base64; sleep 2; echo still-recorded-$((40+2))\r")
        shell.expect("still-recorded-42", start=start)
        shell.send("exit\r")
        assert shell.wait(timeout=30) == 0, shell.text()[-300:]  # today: 255, "recording failed, session closed"


def test_input_sent_once_the_disk_is_full_is_recorded_or_never_reaches_the_host(
    stack: LocalStack, recordings: Path
) -> None:
    attacker = granted(stack, requester="dave", approver="bob")
    ran = stack.root / "hosts" / stack.host_names[0] / "home" / "ran-unrecorded"
    since = just_before()
    # A shell without a terminal, opened before the disk fills (new sessions are refused once it is full).
    shell = subprocess.Popen(
        [*ssh_argv(stack, "dave", attacker), "bash"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: session_rows(stack, since=since), what="the shell's session")
        _fill(stack, recordings, attacker)
        assert shell.stdin is not None
        # One command, then more input than the recording's last page holds, in the same flush.
        shell.stdin.write(f"touch {ran}\n#".encode() + base64.b64encode(os.urandom(96 * 1024)) + b"\n")
        shell.stdin.close()
        shell.wait(timeout=60)
    finally:
        shell.kill()
        shell.wait()

    def ended() -> list[dict[str, Any]] | None:
        rows = session_rows(stack, since=since)
        return rows if all(r["ended_at"] is not None for r in rows) else None

    rows: list[dict[str, Any]] = wait_for(ended, what="the sessions' ends")
    typed = b"".join(_input(Path(row["recording_path"])) for row in rows)
    if ran.exists():  # it reached the host: then it must be in a recording
        recorded = f"touch {ran}".encode() in typed
        assert recorded, "the command ran on the host and is in no recording"


def _input(path: Path) -> bytes:
    """The input recorded in ``path``, as far as it can be read."""
    out = bytearray()
    try:
        _, frames, _ = read_recording(path)
        for frame in frames:
            if frame.code == "i":
                out += frame.payload
    except RecordingFormatError:
        pass  # cut short by the full disk: what came before is what counts
    return bytes(out)
