"""Everything the broker writes is private, whatever umask it was started with (issue 10, item 16).

A broker started with umask 000 (as a careless unit file or shell may start it) runs a recorded session;
then every file and directory under its data and recordings directories is checked: files 0600 or 0640,
directories 0700 or 0750, nothing writable by the group, nothing open to others. The database (and its
WAL files), the host key, the KRL, the recordings, their day directories and the ``.lines`` index files
are all there to be checked. The data directory and the database existed before the broker started, with
the test's own umask; the recordings directory is the broker's to create.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from jit_ssh.cli.bastion.stack import LocalStack

from tests.e2e.stack_fixture import PtyClient, ended_session, granted, ssh_argv, wait_for

pytestmark = pytest.mark.e2e

FILE_MODES = {0o600, 0o640}
DIR_MODES = {0o700, 0o750}


def _walk(*roots: Path) -> Iterator[tuple[Path, os.stat_result]]:
    for root in roots:
        yield root, root.lstat()
        for folder, dirs, files in os.walk(root):
            for name in [*dirs, *files]:
                path = Path(folder) / name
                yield path, path.lstat()


def _loose(*roots: Path) -> list[str]:
    """Every entry under ``roots`` whose mode is not one of the private ones, with its mode."""
    out = []
    for path, info in _walk(*roots):
        mode = stat.S_IMODE(info.st_mode)
        allowed = DIR_MODES if stat.S_ISDIR(info.st_mode) else FILE_MODES
        if mode not in allowed or not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
            out.append(f"{path} {mode:04o}")
    return out


def test_every_file_and_directory_the_broker_writes_is_private_under_umask_000(tmp_path: Path) -> None:
    with LocalStack(tmp_path / "site", broker_settings={"recordings_dir": '"recordings"'}) as stack:
        recordings = stack.root / "recordings"
        assert not recordings.exists()
        previous = os.umask(0)  # inherited by the broker process only: restored before anything else runs
        try:
            stack.start_broker()
        finally:
            os.umask(previous)
        request_id = granted(stack)
        argv = [*ssh_argv(stack, "alice", request_id, extra=["-tt"]), "env PS1='$ ' bash --norc --noprofile -i"]
        with PtyClient(argv) as alice:
            at = alice.expect("$ ")
            alice.send("echo private-$((6*7))\r")
            alice.expect("private-42", start=at)
            alice.send("exit\r")
            assert alice.wait() == 0
        recording = Path(ended_session(stack, since=0.0)["recording_path"])
        wait_for(lambda: recording.with_suffix(".lines").exists(), what="the session's .lines index")

        data = stack.data_dir
        present = {p.name for p, _ in _walk(data, recordings)}
        for name in ("jit-ssh.db", "jit-ssh.db-wal", "ssh_host_ed25519_key", "revoked.krl", recording.name,
                     recording.with_suffix(".lines").name):  # fmt: skip
            assert name in present, (name, sorted(present))
        loose = _loose(data, recordings)
        assert loose == [], "\n".join(loose)
        assert stat.S_IMODE((data / "ssh_host_ed25519_key").stat().st_mode) == 0o600
        assert stack.stop_broker() == 0
        loose = _loose(data, recordings)
        assert loose == [], "\n".join(loose)
