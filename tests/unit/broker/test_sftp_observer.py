"""The SFTP observer against constructed SFTP v3 streams, fed in every way the wire may split them.

Each file's byte count and SHA-256 must be those of its content, whatever the chunking (one byte at a
time, packet boundaries inside chunks, headers cut anywhere); operations come out in order; malformed
or oversized packets neither crash the observer nor count as content.
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


def status(rid: int, code: int = 0) -> bytes:
    return packet(101, rid, U32.pack(code) + s(b"") + s(b""))


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
        {"op": "write", "path": "/srv/up.bin", "bytes": len(up), "sha256": hashlib.sha256(up).hexdigest()},
        {"op": "read", "path": "/srv/down.bin", "bytes": len(down), "sha256": hashlib.sha256(down).hexdigest()},
        {"op": "remove", "path": "/srv/up.bin"},
        {"op": "rename", "from": "/srv/a", "to": "/srv/b"},
    ]


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
    assert ops == [{"op": "read", "path": "/f", "bytes": 10, "sha256": hashlib.sha256(b"0123456789").hexdigest()}]
    assert observer.failed is not None


def _read_op(path: str, content: bytes) -> dict[str, Any]:
    return {"op": "read", "path": path, "bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}


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
    assert ops == [{"op": "write", "path": "/f", "bytes": 4, "sha256": hashlib.sha256(b"data").hexdigest()}]


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
    assert ops[0]["path"].endswith("...[10001 bytes]")
    assert len(ops[0]["path"]) < 4200
