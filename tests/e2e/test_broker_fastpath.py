"""The broker's packet fast path (broker/fastpath.py) against the real OpenSSH client and sshd.

Both hops rekey every MiB (``RekeyLimit 1M`` on the client and on the host's sshd), so key exchanges
and new keys arrive in the middle of batches of data packets, which the fast path hands over to
asyncssh; the client hop runs AES-GCM (the fast path) and ChaCha20-Poly1305 (asyncssh's path, minus
the IGNORE packets). Every byte must arrive intact in both directions and on stderr, and the recording's
byte counts and SHA-256 digests (hashed on the digest worker) must be the streams' own.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jit_ssh.broker import fastpath
from jit_ssh.cli.bastion.stack import LocalStack

from tests.e2e.stack_fixture import (
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

SIZE = 24 * 1024 * 1024 + 12345  # not a whole number of packets
CIPHERS = ("aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com")


@dataclass
class Site:
    stack: LocalStack
    request_id: int
    source: Path
    data: bytes
    digest: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("fastpath")
    data = os.urandom(SIZE)
    source = work / "source.bin"
    source.write_bytes(data)
    with started_stack(work / "site", sshd_config=["RekeyLimit 1M"]) as stack:
        request_id = granted(stack)
        yield Site(stack, request_id, source, data, hashlib.sha256(data).hexdigest())


def _streams(row: dict[str, Any]) -> dict[str, Any]:
    _, frames, truncated = recording_frames(Path(row["recording_path"]))
    assert not truncated
    ends = [m["end"] for m in metadata(frames) if "end" in m]
    assert len(ends) == 1
    streams: dict[str, Any] = ends[0]["streams"]
    return streams


def test_fast_path_fits_this_asyncssh() -> None:
    # The pinned asyncssh is the code the fast path was written against; a new one turns it off
    # (and this test says so, so that the pin and the fingerprints are looked at together).
    assert fastpath.mismatch() is None


def test_changed_asyncssh_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(fastpath._FINGERPRINTS, "SSHChannel.write", "0" * 64)
    assert fastpath.mismatch() == "SSHChannel.write"


def test_broker_runs_with_it(site: Site) -> None:
    assert "packet fast path on" in site.stack.broker_log.read_text()


@pytest.mark.parametrize("cipher", CIPHERS)
def test_download_stdout_and_stderr_through_rekeys(site: Site, cipher: str) -> None:
    argv = ssh_argv(site.stack, "alice", site.request_id, extra=["-o", f"Ciphers={cipher}", "-o", "RekeyLimit=1M"])
    since = time.time() - 0.01
    done = run_ssh([*argv, f"cat {site.source}; cat {site.source} >&2"], timeout=180)
    assert done.returncode == 0, done.stderr[-500:]
    assert hashlib.sha256(done.stdout).hexdigest() == site.digest
    assert hashlib.sha256(done.stderr).hexdigest() == site.digest
    row = ended_session(site.stack, since=since)
    assert (row["exit_status"], row["bytes_out"]) == (0, 2 * SIZE)
    streams = _streams(row)
    assert streams["o"] == {"bytes": SIZE, "sha256": site.digest}
    assert streams["e"] == {"bytes": SIZE, "sha256": site.digest}


@pytest.mark.parametrize("cipher", CIPHERS)
def test_upload_through_rekeys(site: Site, cipher: str) -> None:
    argv = ssh_argv(site.stack, "alice", site.request_id, extra=["-o", f"Ciphers={cipher}", "-o", "RekeyLimit=1M"])
    since = time.time() - 0.01
    done = run_ssh([*argv, "sha256sum; exit 7"], stdin=site.data, timeout=180)
    assert done.returncode == 7, done.stderr[-500:]
    assert done.stdout.split()[0].decode() == site.digest
    row = ended_session(site.stack, since=since)
    assert (row["exit_status"], row["bytes_in"]) == (7, SIZE)
    # Input is recorded in full (it could be a script): the recording holds exactly what was sent.
    _, frames, truncated = recording_frames(Path(row["recording_path"]))
    assert not truncated
    assert hashlib.sha256(stream_bytes(frames, "i")).hexdigest() == site.digest
