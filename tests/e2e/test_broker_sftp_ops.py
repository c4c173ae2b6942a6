"""SFTP as it happened: OpenSSH ``sftp`` and raw SFTP packets through the broker to a real sshd, and
every request in the recording and in ``jit-ssh sessions show`` with what the server answered.

An attacker with an SFTP session tries to change the host without a trace a reviewer would notice:
failed and successful operations that look alike, an open that truncates without asking to write,
setuid bits, copies made by the server (``copy-data``), links, and extensions the broker does not know.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import struct
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
    ssh_argv,
    ssh_options,
    started_stack,
    wait_for,
)

pytestmark = pytest.mark.e2e

U32 = struct.Struct(">I")
TIMEOUT = 60.0


@dataclass
class Site:
    stack: LocalStack
    request_id: int
    work: Path

    def sftp(self, batch: str) -> subprocess.CompletedProcess[bytes]:
        """OpenSSH sftp through the broker, running ``batch`` (a ``-`` before a command lets it fail)."""
        path = self.work / "batch"
        path.write_text(batch, encoding="utf-8")
        cert = cached_certificate(self.stack, "alice", self.request_id)
        options = ssh_options(self.stack, "alice", cert, f"{self.stack.login}@{self.stack.host_names[0]}")
        return subprocess.run(
            ["sftp", "-q", *options, "-P", str(self.stack.port), "-b", str(path), "127.0.0.1"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("sftp-ops")
    with started_stack(work / "site") as stack:
        yield Site(stack, granted(stack), work)


def _ops(row: dict[str, Any]) -> list[dict[str, Any]]:
    _, frames, truncated = recording_frames(Path(row["recording_path"]))
    assert not truncated
    return [m["sftp"] for m in metadata(frames) if "sftp" in m]


def _find(ops: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """The one operation that has all of ``fields``."""
    found = [op for op in ops if all(op.get(k) == v for k, v in fields.items())]
    assert len(found) == 1, (fields, json.dumps(ops, indent=1))
    return found[0]


def _shown(stack: LocalStack, session_id: str) -> dict[str, Any]:
    """``sessions show --json`` once the session is indexed (just after its end is written)."""

    def indexed() -> dict[str, Any] | None:
        shown = stack.jit("bob", "sessions", "show", session_id, "--json")
        assert shown.returncode == 0, shown.stderr
        detail: dict[str, Any] = json.loads(shown.stdout)
        return detail if detail["transfers"] else None

    detail: dict[str, Any] = wait_for(indexed, what=f"the index of session {session_id}")
    return detail


@pytest.fixture
def immutable(site: Site) -> Iterator[Path]:
    """A file that even root may not change (``chattr +i``): the server answers "permission denied"."""
    path = site.work / "locked.txt"
    path.write_text("locked\n", encoding="utf-8")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is needed for a refusal as root: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_sftp_client_operations_with_their_outcomes(site: Site, immutable: Path) -> None:
    area = site.work / "area"
    area.mkdir()
    local = site.work / "local.txt"
    local.write_bytes(b"new content\n")
    existing = area / "existing.txt"
    existing.write_bytes(b"old content, longer than the new\n")
    missing = area / "missing.txt"
    since = time.time() - 0.01
    done = site.sftp(
        f"-get {missing} {site.work / 'got'}\n"
        f"-put {local} {immutable}\n-rm {immutable}\n-rename {immutable} {area / 'renamed'}\n"
        f"put {local} {existing}\nchmod 4755 {existing}\ncp {existing} {area / 'copy.txt'}\n"
        f"rename {area / 'copy.txt'} {area / 'moved.txt'}\nln -s {existing} {area / 'link'}\n"
        f"ln {existing} {area / 'hard'}\nput -p -f {local} {area / 'kept.txt'}\n"
        f"mkdir {area / 'dir'}\nrmdir {area / 'dir'}\nls {area}\ndf {area}\n"
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    # What happened on the host, so that the recording below is checked against the truth.
    assert existing.read_bytes() == b"new content\n"
    assert existing.stat().st_mode & 0o7777 == 0o4755
    assert (area / "moved.txt").read_bytes() == b"new content\n"
    assert os.readlink(area / "link") == str(existing)
    assert immutable.read_text(encoding="utf-8") == "locked\n"

    row = ended_session(site.stack, since=since)
    ops = _ops(row)
    assert all("outcome" in op for op in ops), [op for op in ops if "outcome" not in op]
    # The failures, each with the server's answer: none of them looks like a success.
    assert {op["outcome"] for op in ops if op.get("path") == str(missing)} == {"no such file"}
    denied = {"outcome": "permission denied", "message": "Permission denied"}
    _find(ops, op="write", path=str(immutable), flags=["write", "creat", "trunc"], **denied)
    _find(ops, op="remove", path=str(immutable), **denied)
    _find(ops, op="posix-rename", **{"from": str(immutable), "to": str(area / "renamed")}, **denied)
    # The changes that succeeded.
    digest = hashlib.sha256(b"new content\n").hexdigest()
    put = _find(ops, op="write", path=str(existing), outcome="ok")
    assert "trunc" in put["flags"]
    assert (put["bytes"], put["sha256"]) == (12, digest)
    _find(ops, op="setstat", path=str(existing), mode="4755", outcome="ok")
    _find(ops, op="copy-data", **{"from": str(existing), "to": str(area / "copy.txt")}, outcome="ok")
    _find(ops, op="posix-rename", **{"from": str(area / "copy.txt"), "to": str(area / "moved.txt")}, outcome="ok")
    _find(ops, op="symlink", path=str(area / "link"), target=str(existing), outcome="ok")
    _find(ops, op="hardlink", **{"from": str(existing), "to": str(area / "hard")}, outcome="ok")
    kept = _find(ops, op="fsetstat", path=str(area / "kept.txt"), outcome="ok")
    assert kept["mtime"] == int(local.stat().st_mtime)
    _find(ops, op="fsync", path=str(area / "kept.txt"), outcome="ok")
    _find(ops, op="mkdir", path=str(area / "dir"), outcome="ok")
    _find(ops, op="rmdir", path=str(area / "dir"), outcome="ok")
    assert _find(ops, op="list", path=f"{area}/", outcome="ok")["entries"] == 7  # with . and ..
    _find(ops, op="statvfs", path=str(area), outcome="ok")

    # The reviewer sees the same, in JSON and one line per operation.
    detail = _shown(site.stack, row["id"])
    assert [{k: v for k, v in t.items() if k != "time"} for t in detail["transfers"]] == ops
    assert detail["transfers_dropped"] == 0
    text = site.stack.jit("bob", "sessions", "show", row["id"])
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert any("remove" in line and str(immutable) in line and "permission denied" in line for line in lines)
    assert any("setstat" in line and "mode 4755" in line and line.endswith(": ok") for line in lines)
    assert any("copy-data" in line and f"{existing} -> {area / 'copy.txt'}" in line for line in lines)


# -- raw SFTP: what no ordinary client sends ----------------------------------------------------------
class RawSftp:
    """SFTP packets written by hand over the real ``ssh -s ... sftp`` through the broker."""

    def __init__(self, site: Site) -> None:
        argv = [*ssh_argv(site.stack, "alice", site.request_id), "-s", "sftp"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.next_id = 1
        self.send(1, U32.pack(3))  # FXP_INIT, version 3
        kind, body = self.receive()
        assert (kind, body[:4]) == (2, U32.pack(3))

    def send(self, kind: int, body: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(U32.pack(len(body) + 1) + bytes([kind]) + body)
        self.proc.stdin.flush()

    def _read(self, size: int) -> bytes:
        assert self.proc.stdout is not None
        out = b""
        while len(out) < size:
            ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
            assert ready, "no reply from the server"
            chunk = os.read(self.proc.stdout.fileno(), size - len(out))
            if not chunk:
                raise EOFError("the session ended")
            out += chunk
        return out

    def receive(self) -> tuple[int, bytes]:
        (length,) = U32.unpack(self._read(4))
        packet = self._read(length)
        return packet[0], packet[1:]

    def request(self, kind: int, body: bytes) -> tuple[int, bytes]:
        """Send a request with a fresh id; the reply's type and what follows its id."""
        rid, self.next_id = self.next_id, self.next_id + 1
        self.send(kind, U32.pack(rid) + body)
        reply, rest = self.receive()
        assert rest[:4] == U32.pack(rid)
        return reply, rest[4:]

    def open(self, path: Path, pflags: int) -> bytes:
        kind, rest = self.request(3, _s(str(path).encode()) + U32.pack(pflags) + U32.pack(0))
        assert kind == 102, rest  # FXP_HANDLE
        return rest[4:]

    def finish(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=TIMEOUT)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def _s(data: bytes) -> bytes:
    return U32.pack(len(data)) + data


def test_raw_requests_that_modify_without_asking_to_write(site: Site) -> None:
    victim = site.work / "victim.txt"
    victim.write_bytes(b"precious data\n")
    created = site.work / "created-by-creat.txt"
    target = site.work / "target.txt"
    target.write_bytes(b"0123456789")
    since = time.time() - 0.01
    raw = RawSftp(site)
    try:
        handle = raw.open(victim, 0x01 | 0x10)  # READ|TRUNC, no WRITE
        assert raw.request(4, _s(handle))[0] == 101
        assert raw.request(4, _s(raw.open(created, 0x08)))[0] == 101  # CREAT alone
        source, sink = raw.open(target, 0x01), raw.open(site.work / "copy-part.txt", 0x02 | 0x08)
        copy = _s(b"copy-data") + _s(source) + struct.pack(">QQ", 2, 3) + _s(sink) + struct.pack(">Q", 0)
        assert raw.request(200, copy)[0] == 101
        unknown = raw.request(200, _s(b"nonsense@example.com") + _s(b"/etc/shadow"))
        assert (unknown[0], unknown[1][:4]) == (101, U32.pack(8))  # SSH_FX_OP_UNSUPPORTED
        lsetstat = _s(b"lsetstat@openssh.com") + _s(str(target).encode()) + U32.pack(0x4) + U32.pack(0o4700)
        assert raw.request(200, lsetstat)[0] == 101
    finally:
        raw.finish()
    # The attack is real: the file was emptied by an open that did not ask to write.
    assert victim.read_bytes() == b""
    assert created.exists()
    assert (site.work / "copy-part.txt").read_bytes() == b"234"
    assert target.stat().st_mode & 0o7777 == 0o4700

    ops = _ops(ended_session(site.stack, since=since))
    truncated = _find(ops, path=str(victim))
    assert (truncated["op"], truncated["flags"], truncated["outcome"]) == ("write", ["read", "trunc"], "ok")
    assert _find(ops, path=str(created))["op"] == "write"
    _find(ops, op="copy-data", **{"from": str(target), "to": str(site.work / "copy-part.txt")},
          read_offset=2, read_length=3, write_offset=0, outcome="ok")  # fmt: skip
    _find(ops, op="extended", name="nonsense@example.com", outcome="op unsupported")
    _find(ops, op="lsetstat", path=str(target), mode="4700", outcome="ok")


def test_a_request_the_broker_cannot_follow_ends_the_session(site: Site) -> None:
    since = time.time() - 0.01
    raw = RawSftp(site)
    try:
        raw.send(99, U32.pack(1) + _s(b"/etc/shadow"))  # no such request: OpenSSH would never answer it
        with pytest.raises(EOFError):
            raw.receive()
    finally:
        raw.finish()
    row = ended_session(site.stack, since=since)
    assert "cannot be followed" in (row["end_reason"] or ""), row["end_reason"]


def test_a_request_overrunning_its_packet_never_reaches_the_server(site: Site) -> None:
    # sftp-server takes the path of this REMOVE from the bytes after its 5-byte packet, unlinks it, and
    # only then exits for having read past the packet; the broker must not relay what it cannot record.
    victim = site.work / "overrun-victim.txt"
    victim.write_bytes(b"still here\n")
    since = time.time() - 0.01
    raw = RawSftp(site)
    try:
        assert raw.proc.stdin is not None
        raw.proc.stdin.write(U32.pack(5) + bytes([13]) + U32.pack(7) + _s(str(victim).encode()))
        raw.proc.stdin.flush()
        with pytest.raises(EOFError):
            raw.receive()
    finally:
        raw.finish()
    assert victim.read_bytes() == b"still here\n"
    row = ended_session(site.stack, since=since)
    assert "malformed SFTP remove" in (row["end_reason"] or ""), row["end_reason"]


def test_a_flood_of_lookups_cannot_push_a_change_out_of_the_review(site: Site) -> None:
    tool = site.work / "tool"
    tool.write_bytes(b"#!/bin/sh\n")
    since = time.time() - 0.01
    raw = RawSftp(site)
    try:
        lookups = 1100  # more than the review index lists
        for rid in range(100, 100 + lookups):
            raw.send(17, U32.pack(rid) + _s(b"/"))  # FXP_STAT, answered with ATTRS
        assert all(raw.receive()[0] == 105 for _ in range(lookups))
        chmod = _s(str(tool).encode()) + U32.pack(0x4) + U32.pack(0o4755)
        assert raw.request(9, chmod) == (101, U32.pack(0) + _s(b"Success") + _s(b""))
    finally:
        raw.finish()
    assert tool.stat().st_mode & 0o7777 == 0o4755
    row = ended_session(site.stack, since=since)
    detail = _shown(site.stack, row["id"])
    assert {"op": "setstat", "path": str(tool), "mode": "4755", "outcome": "ok"} in [
        {k: v for k, v in t.items() if k != "time"} for t in detail["transfers"]
    ]
    assert len(detail["transfers"]) == 1000
    assert detail["transfers_dropped"] == lookups + 1 - 1000
    text = site.stack.jit("bob", "sessions", "show", row["id"])
    assert f"... {lookups + 1 - 1000} more (lookups first) are in the recording only" in text.stdout
