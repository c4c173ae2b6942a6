"""Invariant 5 against a user who wants to run something the recording does not show (issue 10, items 1-3).

Each test is an attack that worked before: commands fed on the stdin of a shell without a terminal behind a
1 MiB comment line, an exec command long enough to push the recording's header past what readers took,
and a command carried in a locale variable. Real ``ssh`` through ``jit-ssh serve`` to a real ``sshd``; the
reviewer's side is the real CLI. Each attack must leave the command readable in the recording and found by
``jit-ssh sessions --grep``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from jit_ssh.cli.bastion.stack import LocalStack

from tests.e2e.stack_fixture import (
    cli_json,
    ended_session,
    granted,
    grep_ids,
    indexed,
    just_before,
    metadata,
    recording_frames,
    run_ssh,
    ssh_argv,
    started_stack,
    stream_bytes,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("completeness") / "site"
    with started_stack(
        root,
        # Debian's sshd accepts LANG and LC_*; this one also takes a name that only looks like a locale's.
        sshd_config=["AcceptEnv LANG LC_* LANGFOO GIT_PROTOCOL"],
        broker_settings={"env_allow": '["GIT_PROTOCOL"]'},
    ) as st:
        yield st


@pytest.fixture(scope="module")
def grant(stack: LocalStack) -> int:
    return granted(stack)


def _script(marker: Path) -> bytes:
    """A shell script whose real commands come after a 1 MiB comment line (once past the old capture cap)."""
    return (
        b"# " + b"x" * (1024 * 1024) + b"\n"
        + f"echo STDIN-MARK-$((6*7)) > {marker}\n".encode()
        + b"echo second-stdin-command-ran\n"
    )  # fmt: skip


@pytest.mark.parametrize("how", [["-T"], ["bash"]], ids=["shell-without-terminal", "exec-bash"])
def test_commands_on_the_stdin_of_a_shell_are_recorded_and_found(
    stack: LocalStack, grant: int, tmp_path: Path, how: list[str]
) -> None:
    marker = tmp_path / "ran"
    script = _script(marker)
    since = just_before()
    argv = ssh_argv(stack, "alice", grant)
    argv = [*argv[:-1], "-T", argv[-1]] if how == ["-T"] else [*argv, *how]
    done = run_ssh(argv, stdin=script)
    assert done.returncode == 0, done.stderr
    assert b"second-stdin-command-ran" in done.stdout
    assert marker.read_text() == "STDIN-MARK-42\n"  # the commands did reach the shell on the host
    row = ended_session(stack, since=since)
    _, frames, truncated = recording_frames(Path(row["recording_path"]))
    assert not truncated
    assert stream_bytes(frames, "i") == script  # every byte the shell read, in the recording
    indexed(stack, row["id"])
    assert row["id"] in grep_ids(stack, r"STDIN-MARK-\$\(\(6\*7\)\)")
    assert row["id"] in grep_ids(stack, "second-stdin-command")
    assert row["id"] not in grep_ids(stack, "no-such-stdin-command")  # negative control


def test_a_long_exec_command_is_readable_by_every_review_tool(stack: LocalStack, grant: int, tmp_path: Path) -> None:
    # 12,000 control characters: six bytes each once escaped as JSON, past the 64 KiB readers once took.
    command = ": '" + "\x01" * 12_000 + "'; echo LONG-EXEC-MARK-$((6*7))"
    since = just_before()
    done = run_ssh([*ssh_argv(stack, "alice", grant), command])
    assert (done.returncode, done.stdout) == (0, b"LONG-EXEC-MARK-42\n"), done.stderr
    row = ended_session(stack, since=since)
    session_id = row["id"]
    indexed(stack, session_id)
    header, frames, truncated = recording_frames(Path(row["recording_path"]))
    assert header["jit_ssh"]["session"] == session_id
    assert not truncated
    assert {"exec": command} in metadata(frames)  # the whole command, exactly
    assert session_id in grep_ids(stack, "LONG-EXEC-MARK")
    assert session_id in grep_ids(stack, "LONG-EXEC-MARK-42", output=True)
    shown = cli_json(stack.jit("bob", "sessions", "show", session_id, "--json"))
    assert shown["command"] == command
    exported = tmp_path / "long.cast"
    result = stack.jit("bob", "export", session_id, "-o", str(exported))
    assert result.returncode == 0, result.stderr
    assert "LONG-EXEC-MARK-42" in exported.read_text(encoding="utf-8")
    replay = stack.jit("bob", "replay", session_id, "--speed", "1000")
    assert replay.returncode == 0, replay.stderr
    assert "LONG-EXEC-MARK-42" in replay.stdout
    verified = cli_json(stack.jit("bob", "sessions", "verify", session_id, "--json"))
    assert verified == [{"id": session_id, "ok": True, "status": "ok"}]


def test_environment_values_are_recorded_and_names_match_exactly(stack: LocalStack, grant: int) -> None:
    env = {
        **os.environ,
        "LC_PAPER": "echo ENV-MARK-$((6*7))",  # a real locale category, accepted by sshd: it reaches the host
        "LANGFOO": "echo must-not-arrive",  # only looks like a locale variable
        "GIT_PROTOCOL": "version=2",  # allowed by the broker's env_allow
    }
    argv = ssh_argv(stack, "alice", grant)
    argv = [*argv[:-1], "-o", "SendEnv=LC_PAPER LANGFOO GIT_PROTOCOL", argv[-1]]
    since = just_before()
    done = subprocess.run(
        [*argv, 'eval "$LC_PAPER"; echo "foo=${LANGFOO-unset} git=${GIT_PROTOCOL-unset}"'],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"ENV-MARK-42\nfoo=unset git=version=2\n"
    row = ended_session(stack, since=since)
    _, frames, _ = recording_frames(Path(row["recording_path"]))
    recorded = [m for m in metadata(frames) if "env" in m]
    assert len(recorded) == 1
    assert recorded[0]["env"] == {"LC_PAPER": "echo ENV-MARK-$((6*7))", "GIT_PROTOCOL": "version=2"}
    assert recorded[0]["env_refused"] == ["LANGFOO"]
    indexed(stack, row["id"])
    assert row["id"] in grep_ids(stack, r"ENV-MARK-\$")
    shown = cli_json(stack.jit("bob", "sessions", "show", row["id"], "--json"))
    assert shown["environment"] == {"LC_PAPER": "echo ENV-MARK-$((6*7))", "GIT_PROTOCOL": "version=2"}
