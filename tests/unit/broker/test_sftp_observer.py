"""The SFTP observer against constructed SFTP v3 streams, fed in every way the wire may split them.

Each file's byte count and SHA-256 must be those of its content, whatever the chunking (one byte at a
time, packet boundaries inside chunks, headers cut anywhere); operations come out in order, each
request once with the server's answer (or "no reply"); an open that can change a file is a write;
malformed replies neither crash the observer nor count as content, and a request sftp-server would act
on but the observer cannot read fails it.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jit_ssh.broker.recording.transfers import TransferList, describe
from jit_ssh.broker.sftp import SftpObserver

U32 = struct.Struct(">I")


def s(data: bytes) -> bytes:
    return U32.pack(len(data)) + data


def packet(kind: int, request_id: int, body: bytes) -> bytes:
    payload = bytes([kind]) + U32.pack(request_id) + body
    return U32.pack(len(payload)) + payload


def open_(rid: int, path: str, write: bool) -> bytes:
    return packet(3, rid, s(path.encode()) + U32.pack(0x1A if write else 0x01) + U32.pack(0))


def read(rid: int, handle: bytes, offset: int, size: int) -> bytes:
    return packet(5, rid, s(handle) + struct.pack(">Q", offset) + U32.pack(size))


def write(rid: int, handle: bytes, offset: int, data: bytes) -> bytes:
    return packet(6, rid, s(handle) + struct.pack(">Q", offset) + s(data))


def close(rid: int, handle: bytes) -> bytes:
    return packet(4, rid, s(handle))


def handle_reply(rid: int, handle: bytes) -> bytes:
    return packet(102, rid, s(handle))


def data_reply(rid: int, data: bytes) -> bytes:
    return packet(103, rid, s(data))


def status(rid: int, code: int = 0, message: str = "") -> bytes:
    return packet(101, rid, U32.pack(code) + s(message.encode()) + s(b""))


def attrs(
    *, size: int | None = None, owner: tuple[int, int] | None = None, mode: int | None = None,
    times: tuple[int, int] | None = None, extended: list[tuple[bytes, bytes]] | None = None,
) -> bytes:  # fmt: skip
    """SFTP v3 ATTRS: flags, then the fields the flags name, in this order."""
    flags, body = 0, b""
    if size is not None:
        flags, body = flags | 0x1, body + struct.pack(">Q", size)
    if owner is not None:
        flags, body = flags | 0x2, body + U32.pack(owner[0]) + U32.pack(owner[1])
    if mode is not None:
        flags, body = flags | 0x4, body + U32.pack(mode)
    if times is not None:
        flags, body = flags | 0x8, body + U32.pack(times[0]) + U32.pack(times[1])
    if extended is not None:
        flags, body = flags | 0x80000000, body + U32.pack(len(extended)) + b"".join(s(k) + s(v) for k, v in extended)
    return U32.pack(flags) + body


def open_flags(rid: int, path: str, pflags: int, attributes: bytes = b"\0\0\0\0") -> bytes:
    return packet(3, rid, s(path.encode()) + U32.pack(pflags) + attributes)


def extended(rid: int, name: str, body: bytes = b"") -> bytes:
    return packet(200, rid, s(name.encode()) + body)


def u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def session(up: bytes, down: bytes, *, pieces: int) -> list[tuple[str, bytes]]:
    """A transfer of ``up`` to /srv/up.bin and of /srv/down.bin (content ``down``) back, as segments."""
    segments: list[tuple[str, bytes]] = []
    h1, h2 = b"handle-1", b"h2"
    segments += [("c", open_(1, "/srv/up.bin", True)), ("s", handle_reply(1, h1))]
    cuts = sorted({0, len(up), *random.Random(len(up)).sample(range(len(up) + 1), min(pieces, len(up) + 1))})
    writes = b"".join(write(10 + i, h1, a, up[a:b]) for i, (a, b) in enumerate(itertools.pairwise(cuts)))
    segments += [("c", writes), ("s", b"".join(status(10 + i) for i in range(len(cuts) - 1)))]
    segments += [("c", close(2, h1)), ("s", status(2))]
    segments += [("c", open_(3, "/srv/down.bin", False)), ("s", handle_reply(3, h2))]
    cuts = sorted(
        {0, len(down), *random.Random(len(down) + 1).sample(range(len(down) + 1), min(pieces, len(down) + 1))}
    )
    pairs = list(itertools.pairwise(cuts))
    segments += [("c", b"".join(read(20 + i, h2, a, b - a) for i, (a, b) in enumerate(pairs)))]
    segments += [("s", b"".join(data_reply(20 + i, down[a:b]) for i, (a, b) in enumerate(pairs)) + status(99, 1))]
    segments += [("c", close(4, h2)), ("s", status(4))]
    segments += [("c", packet(13, 5, s(b"/srv/up.bin"))), ("s", status(5))]
    segments += [("c", packet(18, 6, s(b"/srv/a") + s(b"/srv/b"))), ("s", status(6))]
    return segments


def expected(up: bytes, down: bytes) -> list[dict[str, Any]]:
    return [
        {"op": "write", "path": "/srv/up.bin", "bytes": len(up), "sha256": hashlib.sha256(up).hexdigest(),
         "flags": ["write", "creat", "trunc"], "outcome": "ok"},
        {"op": "read", "path": "/srv/down.bin", "bytes": len(down), "sha256": hashlib.sha256(down).hexdigest(),
         "flags": ["read"], "outcome": "ok"},
        {"op": "remove", "path": "/srv/up.bin", "outcome": "ok"},
        {"op": "rename", "from": "/srv/a", "to": "/srv/b", "outcome": "ok"},
    ]  # fmt: skip


def observe(segments: list[tuple[str, bytes]], sizes: list[int]) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    observer = SftpObserver(ops.append)
    turn = 0
    for direction, blob in segments:
        feed = observer.client_data if direction == "c" else observer.server_data
        pos = 0
        while pos < len(blob):
            size = max(1, sizes[turn % len(sizes)]) if sizes else len(blob)
            turn += 1
            feed(blob[pos : pos + size])
            pos += size
    observer.close()
    return ops


@settings(max_examples=60, deadline=None)
@given(
    up=st.binary(max_size=3000),
    down=st.binary(max_size=3000),
    pieces=st.integers(1, 6),
    sizes=st.lists(st.integers(1, 300), max_size=8),
)
def test_any_split_gives_the_same_operations(up: bytes, down: bytes, pieces: int, sizes: list[int]) -> None:
    assert observe(session(up, down, pieces=pieces), sizes) == expected(up, down)


@pytest.mark.parametrize("sizes", [[1], [7, 13], [32 * 1024 + 13], [100_000], []])
def test_large_files_in_wire_sized_chunks(sizes: list[int]) -> None:
    up, down = os.urandom(3 << 20), os.urandom((2 << 20) + 5)
    assert observe(session(up, down, pieces=80), sizes) == expected(up, down)


def test_malformed_and_oversized_packets_are_not_content() -> None:
    ops: list[dict[str, Any]] = []
    observer = SftpObserver(ops.append)
    observer.client_data(open_(1, "/f", False))
    observer.server_data(handle_reply(1, b"h"))
    observer.client_data(read(2, b"h", 0, 10))
    observer.server_data(packet(103, 2, U32.pack(1000) + b"short"))  # data longer than its packet
    observer.client_data(read(3, b"h", 0, 10))
    observer.server_data(data_reply(3, b"0123456789"))
    observer.client_data(close(4, b"h"))
    observer.server_data(U32.pack(2 << 20) + b"\x67")  # over the 1 MiB limit: parsing stops, and says so
    observer.server_data(data_reply(5, b"ignored"))
    observer.close()
    # The malformed reply answered read 2 (a failure of that read); the close was never answered.
    assert ops == [_read_op("/f", b"0123456789", outcome="bad reply", errors=1)]
    assert observer.failed is not None


def _read_op(path: str, content: bytes, **more: Any) -> dict[str, Any]:
    return {"op": "read", "path": path, "bytes": len(content), "sha256": hashlib.sha256(content).hexdigest(),
            "flags": ["read"], "outcome": "ok", **more}  # fmt: skip


def _write_op(path: str, content: bytes, **more: Any) -> dict[str, Any]:
    return {"op": "write", "path": path, "bytes": len(content), "sha256": hashlib.sha256(content).hexdigest(),
            "flags": ["write", "creat", "trunc"], "outcome": "ok", **more}  # fmt: skip


def test_a_reused_open_id_cannot_hide_which_file_was_read() -> None:
    ops: list[dict[str, Any]] = []
    observer = SftpObserver(ops.append)
    observer.client_data(open_(7, "/home/u/secret.key", False) + open_(7, "/tmp/harmless", False))
    observer.server_data(handle_reply(7, b"h1") + handle_reply(7, b"h2"))  # answered in order
    observer.client_data(read(8, b"h1", 0, 100))
    observer.server_data(data_reply(8, b"SECRET"))
    observer.client_data(close(9, b"h1") + close(10, b"h2"))
    observer.server_data(status(9) + status(10))
    assert ops == [_read_op("/home/u/secret.key", b"SECRET"), _read_op("/tmp/harmless", b"")]
    assert observer.failed is None


def test_reads_in_flight_when_the_client_closes_are_counted() -> None:
    ops: list[dict[str, Any]] = []
    observer = SftpObserver(ops.append)
    observer.client_data(open_(1, "/f", False))
    observer.server_data(handle_reply(1, b"h"))
    observer.client_data(read(2, b"h", 0, 4) + read(3, b"h", 4, 4) + close(4, b"h"))
    assert ops == []  # reported when the close is answered, not when it is asked
    observer.server_data(data_reply(2, b"abcd") + data_reply(3, b"efgh") + status(4))
    assert ops == [_read_op("/f", b"abcdefgh")]


def test_duplicate_read_ids_both_count() -> None:
    ops: list[dict[str, Any]] = []
    observer = SftpObserver(ops.append)
    observer.client_data(open_(1, "/f", False))
    observer.server_data(handle_reply(1, b"h"))
    observer.client_data(read(5, b"h", 0, 10) + read(5, b"h", 10, 10))
    observer.server_data(data_reply(5, b"0123456789") + data_reply(5, b"abcdefghij"))
    observer.client_data(close(6, b"h"))
    observer.server_data(status(6))
    assert ops == [_read_op("/f", b"0123456789abcdefghij")]


def test_unanswered_close_is_reported_at_the_end() -> None:
    ops: list[dict[str, Any]] = []
    observer = SftpObserver(ops.append)
    observer.client_data(open_(1, "/f", True))
    observer.server_data(handle_reply(1, b"h"))
    observer.client_data(write(2, b"h", 0, b"data") + close(3, b"h"))
    observer.close()
    assert ops == [_write_op("/f", b"data", outcome="no reply")]


def test_what_cannot_be_followed_fails_the_observer() -> None:
    observer = SftpObserver(lambda op: None)
    observer.client_data(b"".join(read(n, b"unknown", 0, 10) for n in range(4097)))  # never answered
    assert observer.failed is not None
    assert "outstanding" in observer.failed

    observer = SftpObserver(lambda op: None)
    observer.server_data(U32.pack(2 << 20) + b"\x67")
    assert observer.failed is not None
    assert "1 MiB" in observer.failed


def test_long_paths_are_cut_and_say_so() -> None:
    ops: list[dict[str, Any]] = []
    observer = SftpObserver(ops.append)
    observer.client_data(packet(13, 1, s(b"/" + b"a" * 10_000)))
    observer.server_data(status(1))
    assert ops[0]["path"].endswith("...[10001 bytes]")
    assert len(ops[0]["path"]) < 4200


# -- every request with its outcome ------------------------------------------------------------------
PERMISSION_DENIED, NO_SUCH_FILE, FAILURE, OP_UNSUPPORTED = 3, 2, 4, 8


class Observed:
    """An observer and what it emitted, driven one request and one reply at a time."""

    def __init__(self) -> None:
        self.ops: list[dict[str, Any]] = []
        self.observer = SftpObserver(self.ops.append)
        self.observer.server_data(U32.pack(5) + bytes([2]) + U32.pack(3))  # FXP_VERSION 3 (no id)

    def ask(self, request: bytes, reply: bytes | None = None) -> list[dict[str, Any]]:
        """Send a request (and its reply); the operations emitted by it."""
        before = len(self.ops)
        self.observer.client_data(request)
        if reply is not None:
            self.observer.server_data(reply)
        return self.ops[before:]

    def opened(self, rid: int, path: str, handle: bytes, pflags: int = 0x01) -> None:
        assert self.ask(open_flags(rid, path, pflags), handle_reply(rid, handle)) == []


@pytest.mark.parametrize(
    ("pflags", "names"),
    [
        (0x01 | 0x10, ["read", "trunc"]),  # O_RDONLY|O_TRUNC truncates on Linux, and sftp-server passes it on
        (0x10, ["trunc"]),
        (0x01 | 0x08, ["read", "creat"]),
        (0x01 | 0x04, ["read", "append"]),
        (0x01 | 0x08 | 0x20, ["read", "creat", "excl"]),
        (0x02, ["write"]),
    ],
)
def test_an_open_that_can_modify_is_a_write(pflags: int, names: list[str]) -> None:
    o = Observed()
    o.opened(1, "/etc/passwd", b"h", pflags)
    ops = o.ask(close(2, b"h"), status(2))
    assert ops == [_write_op("/etc/passwd", b"", flags=names)]


def test_an_open_for_reading_only_is_a_read_and_unknown_flag_bits_are_shown() -> None:
    o = Observed()
    o.opened(1, "/etc/hosts", b"h", 0x01 | 0x100)
    assert o.ask(close(2, b"h"), status(2)) == [_read_op("/etc/hosts", b"", flags=["read", "0x100"])]


def test_failed_operations_carry_the_servers_status() -> None:
    o = Observed()
    denied = o.ask(packet(13, 1, s(b"/etc/shadow")), status(1, PERMISSION_DENIED, "Permission denied"))
    assert denied == [{"op": "remove", "path": "/etc/shadow", "outcome": "permission denied",
                       "message": "Permission denied"}]  # fmt: skip
    missing = o.ask(open_flags(2, "/nope", 0x1A), status(2, NO_SUCH_FILE, "No such file"))
    assert missing == [{"op": "write", "path": "/nope", "flags": ["write", "creat", "trunc"],
                        "outcome": "no such file", "message": "No such file"}]  # fmt: skip
    refused = o.ask(packet(18, 3, s(b"/a") + s(b"/b")), status(3, FAILURE, "Failure"))
    assert refused == [{"op": "rename", "from": "/a", "to": "/b", "outcome": "failure", "message": "Failure"}]
    odd = o.ask(packet(15, 4, s(b"/d")), status(4, 42))
    assert odd == [{"op": "rmdir", "path": "/d", "outcome": "status 42"}]


def test_attribute_changes_are_decoded() -> None:
    o = Observed()
    everything = attrs(size=0, owner=(0, 27), mode=0o104755, times=(1_700_000_000, 1_700_000_001),
                       extended=[(b"x@example.com", b"v")])  # fmt: skip
    ops = o.ask(packet(9, 1, s(b"/usr/local/bin/tool") + everything), status(1))
    assert ops == [{"op": "setstat", "path": "/usr/local/bin/tool", "size": 0, "uid": 0, "gid": 27,
                    "mode": "4755", "atime": 1_700_000_000, "mtime": 1_700_000_001, "extended": 1,
                    "outcome": "ok"}]  # fmt: skip
    ops = o.ask(extended(2, "lsetstat@openssh.com", s(b"/tmp/l") + attrs(mode=0o2750)), status(2))
    assert ops == [{"op": "lsetstat", "path": "/tmp/l", "mode": "2750", "outcome": "ok"}]
    ops = o.ask(packet(14, 3, s(b"/tmp/d") + attrs(mode=0o1777)), status(3))
    assert ops == [{"op": "mkdir", "path": "/tmp/d", "mode": "1777", "outcome": "ok"}]


def test_fsetstat_names_the_file_of_its_handle() -> None:
    o = Observed()
    o.opened(1, "/srv/app.bin", b"h1", 0x1A)
    ops = o.ask(packet(10, 2, s(b"h1") + attrs(mode=0o6755, owner=(0, 0))), status(2))
    assert ops == [{"op": "fsetstat", "path": "/srv/app.bin", "uid": 0, "gid": 0, "mode": "6755", "outcome": "ok"}]
    ops = o.ask(packet(10, 3, s(b"zz") + attrs(size=1)), status(3, FAILURE))
    assert ops == [{"op": "fsetstat", "handle": "7a7a", "size": 1, "outcome": "failure"}]


def test_an_open_creating_a_file_records_the_mode_asked_for() -> None:
    o = Observed()
    assert o.ask(open_flags(1, "/tmp/suid", 0x0A, attrs(mode=0o4755)), handle_reply(1, b"h")) == []
    assert o.ask(close(2, b"h"), status(2)) == [_write_op("/tmp/suid", b"", flags=["write", "creat"], mode="4755")]


def test_copy_data_names_both_files_and_the_ranges() -> None:
    o = Observed()
    o.opened(1, "/etc/shadow", b"r")
    o.opened(2, "/tmp/loot", b"w", 0x1A)
    body = s(b"r") + u64(100) + u64(0) + s(b"w") + u64(7)
    ops = o.ask(extended(3, "copy-data", body), status(3))
    assert ops == [{"op": "copy-data", "from": "/etc/shadow", "to": "/tmp/loot", "read_offset": 100,
                    "read_length": 0, "write_offset": 7, "outcome": "ok"}]  # fmt: skip
    ops = o.ask(close(4, b"r") + close(5, b"w"), status(4) + status(5))
    assert ops == [_read_op("/etc/shadow", b"", copy_data=1), _write_op("/tmp/loot", b"", copy_data=1)]


def test_links_renames_and_symlinks_in_openssh_order() -> None:
    o = Observed()
    # OpenSSH sends SYMLINK's paths the other way round from the draft: target first, then the new link.
    ops = o.ask(packet(20, 1, s(b"/etc/shadow") + s(b"/tmp/link")), status(1))
    assert ops == [{"op": "symlink", "path": "/tmp/link", "target": "/etc/shadow", "outcome": "ok"}]
    ops = o.ask(extended(2, "hardlink@openssh.com", s(b"/etc/shadow") + s(b"/tmp/hard")), status(2))
    assert ops == [{"op": "hardlink", "from": "/etc/shadow", "to": "/tmp/hard", "outcome": "ok"}]
    ops = o.ask(extended(3, "posix-rename@openssh.com", s(b"/tmp/a") + s(b"/etc/cron.d/a")), status(3))
    assert ops == [{"op": "posix-rename", "from": "/tmp/a", "to": "/etc/cron.d/a", "outcome": "ok"}]


def test_every_other_request_kind_is_recorded() -> None:
    o = Observed()
    o.opened(1, "/srv/f", b"h", 0x03)
    attrs_reply = attrs(size=1)
    name_reply = U32.pack(1) + s(b"/root") + s(b"/root") + attrs()
    cases = [
        (packet(17, 10, s(b"/etc/shadow")), packet(105, 10, attrs_reply), {"op": "stat", "path": "/etc/shadow"}),
        (packet(7, 11, s(b"/tmp/link")), packet(105, 11, attrs_reply), {"op": "lstat", "path": "/tmp/link"}),
        (packet(8, 12, s(b"h")), packet(105, 12, attrs_reply), {"op": "fstat", "path": "/srv/f"}),
        (packet(16, 13, s(b".")), packet(104, 13, name_reply), {"op": "realpath", "path": "."}),
        (packet(19, 14, s(b"/tmp/link")), packet(104, 14, name_reply), {"op": "readlink", "path": "/tmp/link"}),
        (extended(15, "fsync@openssh.com", s(b"h")), status(15), {"op": "fsync", "path": "/srv/f"}),
        (extended(16, "statvfs@openssh.com", s(b"/")), packet(201, 16, u64(1) * 11), {"op": "statvfs", "path": "/"}),
        (extended(17, "fstatvfs@openssh.com", s(b"h")), packet(201, 17, u64(1) * 11),
         {"op": "fstatvfs", "path": "/srv/f"}),
        (extended(18, "limits@openssh.com"), packet(201, 18, u64(1) * 4), {"op": "limits"}),
        (extended(19, "expand-path@openssh.com", s(b"~/x")), packet(104, 19, name_reply),
         {"op": "expand-path", "path": "~/x"}),
        (extended(20, "home-directory", s(b"root")), packet(104, 20, name_reply),
         {"op": "home-directory", "user": "root"}),
        (extended(21, "users-groups-by-id@openssh.com", s(U32.pack(0) + U32.pack(1)) + s(U32.pack(0))),
         packet(201, 21, s(b"") + s(b"")), {"op": "users-groups-by-id", "uids": 2, "gids": 1}),
        (extended(22, "posix-rename@evil.example", s(b"/a") + s(b"/b")), status(22, OP_UNSUPPORTED),
         {"op": "extended", "name": "posix-rename@evil.example"}),
    ]  # fmt: skip
    for request, reply, op in cases:
        outcome = "op unsupported" if op["op"] == "extended" else "ok"
        assert o.ask(request, reply) == [{**op, "outcome": outcome}]
    assert o.observer.failed is None


def test_a_directory_listing_is_one_operation_with_its_entry_count() -> None:
    o = Observed()
    assert o.ask(packet(11, 1, s(b"/root/.ssh")), handle_reply(1, b"d")) == []
    entry = s(b"id_ed25519") + s(b"-rw------- ...") + attrs()
    assert o.ask(packet(12, 2, s(b"d")), packet(104, 2, U32.pack(3) + entry * 3)) == []
    assert o.ask(packet(12, 3, s(b"d")), status(3, 1)) == []  # EOF: the end of a listing, not a failure
    assert o.ask(close(4, b"d"), status(4)) == [{"op": "list", "path": "/root/.ssh", "entries": 3, "outcome": "ok"}]
    assert o.ask(packet(11, 5, s(b"/root/x")), status(5, NO_SUCH_FILE)) == [
        {"op": "list", "path": "/root/x", "outcome": "no such file"}
    ]


def test_failed_reads_and_writes_mark_their_file() -> None:
    o = Observed()
    o.opened(1, "/full/disk", b"h", 0x1A)
    o.ask(write(2, b"h", 0, b"abc"), status(2))
    o.ask(write(3, b"h", 3, b"def"), status(3, FAILURE, "No space left"))
    ops = o.ask(close(4, b"h"), status(4))
    assert ops == [_write_op("/full/disk", b"abcdef", outcome="failure", message="No space left", errors=1)]


def test_writes_that_skip_around_are_marked() -> None:
    o = Observed()
    o.opened(1, "/etc/sudoers", b"h", 0x02)
    o.ask(write(2, b"h", 500, b"ALL ALL=(ALL) NOPASSWD: ALL\n"), status(2))
    ops = o.ask(close(3, b"h"), status(3))
    assert ops == [_write_op("/etc/sudoers", b"ALL ALL=(ALL) NOPASSWD: ALL\n", flags=["write"], sequential=False)]


def test_requests_unanswered_at_the_end_say_so() -> None:
    o = Observed()
    o.opened(1, "/f", b"h", 0x01)
    o.ask(packet(13, 2, s(b"/etc/motd")))
    o.ask(open_flags(3, "/etc/issue", 0x12))
    o.ask(packet(11, 4, s(b"/etc")))
    o.ask(read(5, b"h", 0, 10))
    o.observer.close()
    assert o.ops == [
        {"op": "remove", "path": "/etc/motd", "outcome": "no reply"},
        {"op": "write", "path": "/etc/issue", "flags": ["write", "trunc"], "outcome": "no reply"},
        {"op": "list", "path": "/etc", "outcome": "no reply"},
        _read_op("/f", b"", outcome="no reply"),
    ]


def test_a_reused_id_gets_each_reply_in_turn() -> None:
    o = Observed()
    o.ask(packet(13, 9, s(b"/first")) + packet(9, 9, s(b"/second") + attrs(mode=0o4755)))
    o.observer.server_data(status(9, PERMISSION_DENIED) + status(9))
    assert o.ops == [
        {"op": "remove", "path": "/first", "outcome": "permission denied"},
        {"op": "setstat", "path": "/second", "mode": "4755", "outcome": "ok"},
    ]


def test_what_the_server_would_not_answer_fails_the_observer() -> None:
    # OpenSSH's sftp-server answers no unknown request type, so a later reply could not be matched.
    o = Observed()
    o.ask(packet(99, 1, s(b"/x")))
    assert o.observer.failed is not None
    assert "type 99" in o.observer.failed
    # Another protocol version has other formats: not followed.
    observer = SftpObserver(lambda op: None)
    observer.server_data(U32.pack(5) + bytes([2]) + U32.pack(4))
    assert observer.failed is not None
    assert "version 4" in observer.failed


def test_a_request_longer_than_its_packet_fails_the_observer() -> None:
    # sftp-server reads the path of this REMOVE from the bytes after its packet, unlinks it, and only
    # then exits for having read past the packet: the observer must not let it through unrecorded.
    overrun = U32.pack(5) + bytes([13]) + U32.pack(1) + s(b"/etc/shadow")
    o = Observed()
    o.ask(overrun)
    assert o.observer.failed is not None
    assert "malformed SFTP remove" in o.observer.failed
    for short in (U32.pack(1) + bytes([13]), packet(9, 1, s(b"/bin/sh") + U32.pack(0x4))):  # no id; no mode
        o = Observed()
        o.ask(short)
        assert o.observer.failed is not None


def test_outstanding_paths_are_bounded() -> None:
    o = Observed()
    long = b"/" + b"x" * 4000
    for rid in range(2000):  # 2000 removes of 4 KB paths, none answered: more than the observer holds
        o.ask(packet(13, rid, s(long)))
        if o.observer.failed:
            break
    assert o.observer.failed is not None
    assert "outstanding" in o.observer.failed


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6))
def test_operations_survive_any_split(sizes: list[int]) -> None:
    segments = [
        ("c", packet(9, 1, s(b"/bin/tool") + attrs(mode=0o4755))), ("s", status(1, PERMISSION_DENIED, "no")),
        ("c", open_flags(2, "/etc/shadow", 0x11)), ("s", handle_reply(2, b"hh")),
        ("c", extended(3, "copy-data", s(b"hh") + u64(0) + u64(5) + s(b"??") + u64(0))), ("s", status(3, 9)),
        ("c", close(4, b"hh")), ("s", status(4)),
    ]  # fmt: skip
    assert observe(segments, sizes) == [
        {"op": "setstat", "path": "/bin/tool", "mode": "4755", "outcome": "permission denied", "message": "no"},
        {"op": "copy-data", "from": "/etc/shadow", "to_handle": "3f3f", "read_offset": 0, "read_length": 5,
         "write_offset": 0, "outcome": "status 9"},
        _write_op("/etc/shadow", b"", flags=["read", "trunc"], copy_data=1),  # nothing read: only the write
    ]  # fmt: skip


def test_describe_prints_one_line_per_operation() -> None:
    assert describe({"op": "setstat", "path": "/bin/tool", "mode": "4755", "uid": 0, "outcome": "permission denied",
                     "message": "Permission denied"}) == (
        "setstat  /bin/tool mode 4755 uid 0: permission denied (Permission denied)"
    )  # fmt: skip
    write_op = _write_op("/f", b"abc")
    assert describe(write_op) == f"write    /f [write,creat,trunc] 3 bytes sha256 {write_op['sha256'][:16]}...: ok"
    assert describe({"op": "rename", "from": "/a", "to": "/b", "outcome": "ok"}) == "rename   /a -> /b: ok"
    assert describe({"op": "symlink", "path": "/l", "target": "/t", "outcome": "ok"}) == "symlink  /l -> /t: ok"
    assert describe({"op": "remove", "path": "/old"}) == "remove   /old"  # recorded before outcomes were


def test_the_review_list_is_bounded_and_lookups_give_way() -> None:
    listed = TransferList(limit=10)
    for n in range(50):
        listed.add({"op": "stat", "path": f"/s{n}", "outcome": "ok"})
    listed.add({"op": "setstat", "path": "/bin/tool", "mode": "4755", "outcome": "ok"})
    listed.add({"op": "stat", "path": "/missing", "outcome": "no such file"})  # a failure is kept like a change
    for n in range(30):
        listed.add({"op": "remove", "path": f"/r{n}", "outcome": "ok"})
    kept = listed.kept()
    assert [op["path"] for op in kept] == ["/bin/tool", "/missing", *(f"/r{n}" for n in range(8))]
    assert (listed.total, listed.dropped) == (82, 72)

    few = TransferList(limit=10)
    for n in range(4):
        few.add({"op": "stat", "path": f"/s{n}", "outcome": "ok"})
    few.add({"op": "remove", "path": "/x", "outcome": "ok"})
    assert [op["path"] for op in few.kept()] == ["/s0", "/s1", "/s2", "/s3", "/x"]
    assert few.dropped == 0


def test_a_handle_given_again_while_open_does_not_lose_the_first_file() -> None:
    o = Observed()
    o.opened(1, "/etc/shadow", b"h", 0x12)
    assert o.ask(open_flags(2, "/tmp/other", 0x01), handle_reply(2, b"h")) == [
        _write_op("/etc/shadow", b"", flags=["write", "trunc"])
    ]


def test_extended_attributes_that_cannot_fit_are_malformed() -> None:
    o = Observed()
    o.ask(packet(9, 1, s(b"/f") + U32.pack(0x80000000) + U32.pack(1000) + s(b"k") + s(b"v")))
    assert o.observer.failed is not None


def test_the_first_bytes_of_each_file_written_are_kept_within_a_budget() -> None:
    """A script written over SFTP runs later: its content (first 64 KiB a file, 1 MiB a session) is kept."""
    kept: list[tuple[str, bytes, bool]] = []
    observer = SftpObserver(lambda op: None, lambda path, head, complete: kept.append((path, head, complete)))
    small, big = b"#!/bin/sh\nid\n", bytes(range(256)) * 1024  # 256 KiB
    for index, (path, content) in enumerate((("/tmp/small.sh", small), ("/tmp/big.bin", big))):
        handle = f"h{index}".encode()
        observer.client_data(open_(10 + index * 10, path, write=True))
        observer.server_data(handle_reply(10 + index * 10, handle))
        for offset in range(0, len(content), 32768):
            observer.client_data(write(11 + index * 10, handle, offset, content[offset : offset + 32768]))
            observer.server_data(status(11 + index * 10))
        observer.client_data(close(12 + index * 10, handle))
        observer.server_data(status(12 + index * 10))
    assert kept[0] == ("/tmp/small.sh", small, True)
    assert kept[1] == ("/tmp/big.bin", big[: 64 * 1024], False)
