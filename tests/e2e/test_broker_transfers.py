"""File transfers through the broker: 200 MB with OpenSSH scp (SFTP mode and legacy ``-O``) and sftp,
up and down, byte-identical. SFTP transfers are in their recording's metadata without their content;
legacy scp runs as an exec command through the user's shell, so what it is sent is recorded in full like
any other input, and only what it sends back is capped.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jit_ssh.cli.bastion.stack import LocalStack

from tests.e2e.stack_fixture import (
    cached_certificate,
    ended_session,
    granted,
    metadata,
    recording_frames,
    ssh_options,
    started_stack,
    stream_bytes,
)

pytestmark = pytest.mark.e2e

SIZE = 200 * 1024 * 1024
TRANSFER_TIMEOUT = 300


@dataclass
class Site:
    stack: LocalStack
    request_id: int
    source: Path
    digest: str
    work: Path

    def options(self) -> list[str]:
        cert = cached_certificate(self.stack, "alice", self.request_id)
        return ssh_options(self.stack, "alice", cert, f"{self.stack.login}@{self.stack.host_names[0]}")

    def fresh(self, name: str) -> Path:
        path = self.work / name
        path.unlink(missing_ok=True)
        return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("transfers")
    source = work / "source.bin"
    digest = hashlib.sha256()
    with source.open("wb") as handle:
        for _ in range(SIZE // (8 << 20)):
            chunk = os.urandom(8 << 20)
            digest.update(chunk)
            handle.write(chunk)
    with started_stack(work / "site") as stack:
        request_id = granted(stack)
        yield Site(stack, request_id, source, digest.hexdigest(), work)


def _run(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=TRANSFER_TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done


def _sftp_ops(row: dict[str, Any]) -> list[dict[str, Any]]:
    _, frames, truncated = recording_frames(Path(row["recording_path"]))
    assert not truncated
    assert (stream_bytes(frames, "i"), stream_bytes(frames, "o")) == (b"", b""), "sftp content must not be recorded"
    return [m["sftp"] for m in metadata(frames) if "sftp" in m]


def _core(ops: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The file records of ``kind`` by the fields every version recorded, if they succeeded."""
    return [
        {k: op[k] for k in ("op", "path", "bytes", "sha256")}
        for op in ops
        if op["op"] == kind and op["outcome"] == "ok"
    ]


def _check_row(site: Site, row: dict[str, Any], *, kind: str, input_in_full: bool = False) -> None:
    assert (row["kind"], row["exit_status"]) == (kind, 0), row
    # sftp keeps the first 64 KiB of each file written (a script that runs later), never more of its content;
    # exec output only up to the capture limit (1 MiB) per stream.
    bound = 256 * 1024 if kind == "sftp" else 2 * (1024 * 1024 + 64 * 1024)
    if input_in_full:
        bound += row["bytes_in"] + 64 * 1024  # random input: compression cannot make it smaller
    assert row["recording_size"] < bound, "a bulk download is recorded as metadata, not content"
    blob = Path(row["recording_path"]).read_bytes()
    assert row["recording_sha256"] == hashlib.sha256(blob).hexdigest()


def _sftp_session_since(site: Site, since: float) -> dict[str, Any]:
    row = ended_session(site.stack, since=since)
    _check_row(site, row, kind="sftp")
    return row


def test_scp_sftp_mode_up_and_down(site: Site) -> None:
    up = site.fresh("scp-up.bin")
    since = time.time() - 0.01
    _run(["scp", "-q", *site.options(), "-P", str(site.stack.port), str(site.source), f"127.0.0.1:{up}"])
    assert _sha256(up) == site.digest
    row = _sftp_session_since(site, since)
    assert row["bytes_in"] > SIZE
    writes = _core(_sftp_ops(row), "write")
    assert writes == [{"op": "write", "path": str(up), "bytes": SIZE, "sha256": site.digest}]

    down = site.fresh("scp-down.bin")
    since = time.time() - 0.01
    _run(["scp", "-q", *site.options(), "-P", str(site.stack.port), f"127.0.0.1:{up}", str(down)])
    assert _sha256(down) == site.digest
    row = _sftp_session_since(site, since)
    assert row["bytes_out"] > SIZE
    reads = _core(_sftp_ops(row), "read")
    assert reads == [{"op": "read", "path": str(up), "bytes": SIZE, "sha256": site.digest}]


def test_sftp_put_get_rename_remove(site: Site) -> None:
    remote = site.fresh("sftp-up.bin")
    moved = site.fresh("sftp-moved.bin")
    down = site.fresh("sftp-down.bin")
    batch = site.work / "batch"
    batch.write_text(f"put {site.source} {remote}\nrename {remote} {moved}\nget {moved} {down}\nrm {moved}\n")
    since = time.time() - 0.01
    _run(["sftp", "-q", *site.options(), "-P", str(site.stack.port), "-b", str(batch), "127.0.0.1"])
    assert _sha256(down) == site.digest
    assert not moved.exists()
    assert not remote.exists()
    row = _sftp_session_since(site, since)
    ops = _sftp_ops(row)
    assert {"op": "write", "path": str(remote), "bytes": SIZE, "sha256": site.digest} in _core(ops, "write")
    assert {"op": "read", "path": str(moved), "bytes": SIZE, "sha256": site.digest} in _core(ops, "read")
    renames = [op for op in ops if op["op"] in ("rename", "posix-rename")]
    assert [(op["from"], op["to"], op["outcome"]) for op in renames] == [(str(remote), str(moved), "ok")]
    assert {"op": "remove", "path": str(moved), "outcome": "ok"} in ops


def _bulk_end(row: dict[str, Any]) -> tuple[dict[str, Any], bytes, bytes]:
    _, frames, truncated = recording_frames(Path(row["recording_path"]))
    assert not truncated
    ends = [m["end"] for m in metadata(frames) if "end" in m]
    assert len(ends) == 1
    return ends[0], stream_bytes(frames, "i"), stream_bytes(frames, "o")


def _scp_stream(site: Site, captured: bytes) -> dict[str, Any]:
    """What the legacy protocol's data stream must tally: its ``C`` line (read from the captured start),
    the file, and a NUL."""
    line = captured[: captured.index(b"\n") + 1]
    assert line.startswith(b"C0"), line[:80]
    assert line.split()[1] == str(SIZE).encode(), line[:80]
    expected = hashlib.sha256(line)
    with site.source.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            expected.update(chunk)
    expected.update(b"\0")
    return {"bytes": len(line) + SIZE + 1, "sha256": expected.hexdigest()}


def test_legacy_scp_up_is_recorded_in_full_and_down_as_bulk(site: Site) -> None:
    up = site.fresh("scp-O-up.bin")
    since = time.time() - 0.01
    _run(["scp", "-O", "-q", *site.options(), "-P", str(site.stack.port), str(site.source), f"127.0.0.1:{up}"])
    assert _sha256(up) == site.digest
    row = ended_session(site.stack, since=since)
    _check_row(site, row, kind="exec", input_in_full=True)
    assert row["command"].startswith("scp -t")
    assert row["command"].endswith(str(up))
    end, captured_in, _ = _bulk_end(row)
    # `scp -t` is a command run by the user's shell, which the user's start-up files could turn into a
    # shell reading its input: everything it was sent is in the recording, byte for byte.
    assert len(captured_in) == row["bytes_in"] > SIZE
    assert {"bytes": len(captured_in), "sha256": hashlib.sha256(captured_in).hexdigest()} == _scp_stream(
        site, captured_in
    )
    assert "i" not in end.get("streams", {})
    assert end["exit_status"] == 0

    down = site.fresh("scp-O-down.bin")
    since = time.time() - 0.01
    _run(["scp", "-O", "-q", *site.options(), "-P", str(site.stack.port), f"127.0.0.1:{up}", str(down)])
    assert _sha256(down) == site.digest
    row = ended_session(site.stack, since=since)
    _check_row(site, row, kind="exec")
    assert row["command"].startswith("scp -f")
    assert row["command"].endswith(str(up))
    end, _, captured_out = _bulk_end(row)
    assert 0 < len(captured_out) <= end["capture_limit"]
    assert end["streams"]["o"] == _scp_stream(site, captured_out)


def test_scp_exit_status_is_the_hosts(site: Site) -> None:
    missing = site.work / "does-not-exist.bin"
    since = time.time() - 0.01
    done = subprocess.run(
        ["scp", "-O", "-q", *site.options(), "-P", str(site.stack.port), f"127.0.0.1:{missing}", str(site.work / "x")],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert b"No such file" in done.stderr
    row = ended_session(site.stack, since=since)
    assert row["exit_status"] == 1
