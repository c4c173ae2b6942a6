"""Sessions through the broker, end to end: the real OpenSSH client, ``jit-ssh serve``, a real sshd.

An interactive shell typed into through a pty, recorded and exportable as asciicast v2; ``jit-ssh HOST
-- COMMAND`` passing the remote exit status and signal through; data sent before the host's channel is
open. Each test reads back what the broker wrote: the session row, its digest, the recording.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jit_ssh.cli.bastion.stack import LocalStack

from tests.e2e.stack_fixture import (
    PtyClient,
    asciicast,
    ended_session,
    granted,
    metadata,
    recording_frames,
    run_ssh,
    ssh_argv,
    started_stack,
    stream_bytes,
)

pytestmark = pytest.mark.e2e

HOST = "prod-web-3"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with started_stack(tmp_path_factory.mktemp("sessions") / "site") as st:
        yield st


@pytest.fixture(scope="module")
def grant(stack: LocalStack) -> int:
    return granted(stack)


def _now() -> float:
    return time.time() - 0.01


def test_interactive_shell_through_a_pty_is_recorded(stack: LocalStack, grant: int) -> None:
    since = _now()
    with PtyClient(ssh_argv(stack, "alice", grant, extra=["-tt"]), cols=101, rows=31) as client:
        client.send("echo marker-$((6*7))\r")
        client.expect("marker-42")
        client.send("exit\r")
        assert client.wait() == 0, client.text()

    row = ended_session(stack, since=since)
    assert (row["kind"], row["pty"], row["user"], row["host"]) == ("shell", 1, "alice", HOST)
    assert row["exit_status"] == 0
    assert row["exit_signal"] is None
    path = Path(row["recording_path"])
    assert path.is_file()
    assert path.is_relative_to(stack.recordings_dir)
    blob = path.read_bytes()
    assert row["recording_size"] == len(blob)
    assert row["recording_sha256"] == hashlib.sha256(blob).hexdigest()

    header, events = asciicast(path)
    assert (header["width"], header["height"]) == (101, 31)
    assert header["jit_ssh"]["request"] == grant
    assert header["jit_ssh"]["user"] == "alice"
    assert header["jit_ssh"]["host"] == HOST
    assert header["jit_ssh"]["pty"] is True
    assert header["jit_ssh"]["session"] == row["id"]
    typed = "".join(data for _, code, data in events if code == "i")
    shown = "".join(data for _, code, data in events if code == "o")
    assert "echo marker-$((6*7))" in typed
    assert "exit" in typed
    assert "marker-42" in shown
    markers = [data for _, code, data in events if code == "m"]  # jit-ssh's metadata, as asciicast markers
    assert len([m for m in markers if m.startswith("end: closed;")]) == 1
    assert markers[-1] == "exit 0"

    # Negative control: the digest is of this file; a changed byte no longer matches it.
    assert hashlib.sha256(blob[:-1] + bytes([blob[-1] ^ 1])).hexdigest() != row["recording_sha256"]


def test_window_change_is_recorded(stack: LocalStack, grant: int) -> None:
    since = _now()
    with PtyClient(ssh_argv(stack, "alice", grant, extra=["-tt"]), cols=80, rows=24) as client:
        client.send("echo ready-$((1+1))\r")
        client.expect("ready-2")
        client.resize(132, 50)
        client.send("stty size\r")
        client.expect("50 132")
        client.send("exit\r")
        assert client.wait() == 0
    row = ended_session(stack, since=since)
    _, events = asciicast(Path(row["recording_path"]))
    assert ["r", "132x50"] in [e[1:] for e in events]


def test_jit_exec_returns_output_and_exit_codes(stack: LocalStack, grant: int) -> None:
    since = _now()
    done = stack.jit("alice", HOST, "--", "uname", "-a")
    assert done.returncode == 0, done.stderr
    local = subprocess.run(["uname", "-a"], capture_output=True, text=True, check=True)
    assert done.stdout == local.stdout  # the host is this machine
    row = ended_session(stack, since=since)
    assert (row["kind"], row["command"], row["exit_status"]) == ("exec", "uname -a", 0)
    header, frames, truncated = recording_frames(Path(row["recording_path"]))
    assert not truncated
    assert header["jit_ssh"]["command"] == "uname -a"
    assert stream_bytes(frames, "o").decode() == done.stdout

    since = _now()
    done = stack.jit("alice", HOST, "--", "false")
    assert done.returncode == 1, done.stderr
    row = ended_session(stack, since=since)
    assert (row["command"], row["exit_status"], row["exit_signal"]) == ("false", 1, None)
    _, frames, _ = recording_frames(Path(row["recording_path"]))
    assert metadata(frames)[-1]["end"]["exit_status"] == 1


def test_stderr_is_kept_apart(stack: LocalStack, grant: int) -> None:
    since = _now()
    done = run_ssh([*ssh_argv(stack, "alice", grant), "echo out; echo err >&2; exit 3"])
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")
    row = ended_session(stack, since=since)
    _, frames, _ = recording_frames(Path(row["recording_path"]))
    assert (stream_bytes(frames, "o"), stream_bytes(frames, "e")) == (b"out\n", b"err\n")


def test_killed_remote_command_reports_its_signal(stack: LocalStack, grant: int) -> None:
    since = _now()
    done = stack.jit("alice", HOST, "--", "sh", "-c", "'kill -TERM $$'")
    assert done.returncode == 255, (done.stdout, done.stderr)
    row = ended_session(stack, since=since)
    assert (row["exit_status"], row["exit_signal"]) == (None, "TERM")
    _, frames, _ = recording_frames(Path(row["recording_path"]))
    end = metadata(frames)[-1]["end"]
    assert end["exit_signal"] == "TERM"
    assert end["exit_status"] is None

    # The same through plain ssh, another signal.
    since = _now()
    killed = run_ssh([*ssh_argv(stack, "alice", grant), "kill -KILL $$"])
    assert killed.returncode == 255
    row = ended_session(stack, since=since)
    assert (row["exit_status"], row["exit_signal"]) == (None, "KILL")


def test_data_sent_before_the_host_channel_opens_arrives(stack: LocalStack, grant: int) -> None:
    # ssh sends stdin right after the exec request, before the broker has a channel to the host.
    payload = b"early-bird\n" + os.urandom(3 * 1024 * 1024)
    since = _now()
    done = run_ssh([*ssh_argv(stack, "alice", grant), "cat"], stdin=payload)
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(done.stdout).hexdigest() == hashlib.sha256(payload).hexdigest()
    row = ended_session(stack, since=since)
    assert row["bytes_in"] == row["bytes_out"] == len(payload)
    _, frames, _ = recording_frames(Path(row["recording_path"]))
    end = metadata(frames)[-1]["end"]
    # Without a terminal: the input is recorded in full (it could be a script for the command); the
    # output is counted and hashed in full, its content captured up to the cap only.
    digest = hashlib.sha256(payload).hexdigest()
    assert stream_bytes(frames, "i") == payload
    assert "i" not in end["streams"]
    assert end["streams"]["o"] == {"bytes": len(payload), "sha256": digest}
    assert end["capped"] == ["e", "o"]
    assert stream_bytes(frames, "o") == payload[: end["capture_limit"]]


def test_cat_with_empty_stdin_ends(stack: LocalStack, grant: int) -> None:
    since = _now()
    with open(os.devnull, "rb") as devnull:  # ssh HOST cat < /dev/null
        done = subprocess.run(
            [*ssh_argv(stack, "alice", grant), "cat"], stdin=devnull, capture_output=True, timeout=30, check=False
        )
    assert (done.returncode, done.stdout) == (0, b""), done.stderr
    row = ended_session(stack, since=since)
    assert (row["exit_status"], row["bytes_in"], row["bytes_out"]) == (0, 0, 0)


def test_second_jit_call_reuses_the_grant(stack: LocalStack, grant: int) -> None:
    done = stack.jit("alice", HOST, "--", "true")
    assert done.returncode == 0, done.stderr
    assert "filed request" not in done.stderr
