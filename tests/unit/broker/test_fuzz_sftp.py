"""The SFTP observer against whatever a client and a server may send, cut into chunks of any size.

The observer sits in the broker's relay (invariant 5: a file transfer is recorded as operations). Fed
arbitrary bytes, or SFTP packets with arbitrary fields (unknown types, lengths that lie, ids reused,
handles never given), in any interleaving and chunking, it never raises: it follows the session, or it
sets ``failed`` (and then the broker ends the session); once failed it stays failed and reads no more
(what was outstanding is reported when the session closes). Every operation it emits is a JSON object a
reviewer can be shown. Fed a well-formed session (known requests, each answered), it follows it: one
operation per request, with the outcome the server gave, whatever the chunking.
"""

from __future__ import annotations

import json
import struct
from collections import deque
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from jit_ssh.broker.sftp import SftpObserver

U32 = struct.Struct(">I")
FUZZ = settings(max_examples=150, deadline=None)
STATUS = ("ok", "eof", "no such file", "permission denied", "failure", "bad message", "no connection",
          "connection lost", "op unsupported")  # fmt: skip


def string(data: bytes) -> bytes:
    return U32.pack(len(data)) + data


def packet(kind: int, body: bytes, *, length: int | None = None) -> bytes:
    payload = bytes([kind]) + body
    return U32.pack(len(payload) if length is None else length) + payload


# -- packets with arbitrary fields ---------------------------------------------------------------------------

EXTENSIONS = ["copy-data", "posix-rename@openssh.com", "hardlink@openssh.com", "lsetstat@openssh.com",
              "fsync@openssh.com", "home-directory", "users-groups-by-id@openssh.com", "limits@openssh.com",
              "statvfs@openssh.com", "x" * 300]  # fmt: skip
IDS = st.one_of(st.integers(0, 5), st.sampled_from([2**32 - 1]))
FIELD = st.one_of(
    st.binary(max_size=40).map(string),  # a string
    st.integers(0, 2**32 - 1).map(U32.pack),
    st.integers(0, 2**64 - 1).map(lambda n: struct.pack(">Q", n)),
    st.sampled_from([b"h1", b"h2", b"", b"\xff" * 4]).map(string),  # handles the server may have given
    st.builds(lambda n, tail: U32.pack(n) + tail, st.integers(0, 2**32 - 1), st.binary(max_size=8)),  # a lie
    st.sampled_from(  # ATTRS, with every flag, and extended counts that cannot fit
        [U32.pack(0), U32.pack(0xF) + bytes(28), U32.pack(0x80000000) + U32.pack(10**6), U32.pack(0xFFFFFFFF)]
    ),
    st.sampled_from(EXTENSIONS).map(lambda name: string(name.encode())),
)
REQUEST_KINDS = st.one_of(st.integers(1, 20), st.just(200), st.integers(0, 255))
REPLY_KINDS = st.one_of(st.integers(101, 105), st.just(201), st.just(2), st.integers(0, 255))


@st.composite
def packets(draw: st.DrawFn, kinds: st.SearchStrategy[int]) -> bytes:
    kind = draw(kinds)
    body = U32.pack(draw(IDS)) + b"".join(draw(st.lists(FIELD, max_size=6)))
    length = draw(st.one_of(st.none(), st.none(), st.integers(0, len(body) + 2), st.sampled_from([0, 2**20 + 1])))
    return packet(kind, body, length=length)


HANDLES = st.sampled_from([b"h1", b"h2", b"h3"]).map(string)
PATHS = st.sampled_from([b"/etc/shadow", b"/home/u/.ssh/authorized_keys", b"", b"/x" * 40]).map(string)
ATTRS = st.sampled_from([U32.pack(0), U32.pack(0x4) + U32.pack(0o4755), U32.pack(0x1) + bytes(8)])
U64 = st.integers(0, 2**64 - 1).map(lambda n: struct.pack(">Q", n))
#: Requests as sftp-server reads them: type, then the fields after the id.
WELL_FORMED_REQUESTS = {
    3: st.tuples(PATHS, st.integers(0, 0x3F).map(U32.pack), ATTRS),  # open
    4: st.tuples(HANDLES),  # close
    5: st.tuples(HANDLES, U64, st.integers(0, 2**20).map(U32.pack)),  # read
    6: st.tuples(HANDLES, U64, st.binary(max_size=64).map(string)),  # write
    10: st.tuples(HANDLES, ATTRS),  # fsetstat
    11: st.tuples(PATHS),  # opendir
    12: st.tuples(HANDLES),  # readdir
    13: st.tuples(PATHS),  # remove
    18: st.tuples(PATHS, PATHS),  # rename
    200: st.tuples(st.just(string(b"copy-data")), HANDLES, U64, U64, HANDLES, U64),
}
#: Replies: status, handle, data, name (a count, entries not walked), attrs.
WELL_FORMED_REPLIES = {
    101: st.tuples(st.integers(0, 12).map(U32.pack), st.binary(max_size=20).map(string), st.just(string(b""))),
    102: st.tuples(HANDLES),
    103: st.tuples(st.binary(max_size=64).map(string)),
    104: st.tuples(st.integers(0, 3).map(U32.pack)),
    105: st.tuples(ATTRS),
}


@st.composite
def well_formed(draw: st.DrawFn, templates: dict[int, st.SearchStrategy[tuple[bytes, ...]]]) -> bytes:
    kind = draw(st.sampled_from(sorted(templates)))
    return packet(kind, U32.pack(draw(IDS)) + b"".join(draw(templates[kind])))


def stream(
    kinds: st.SearchStrategy[int], templates: dict[int, st.SearchStrategy[tuple[bytes, ...]]]
) -> st.SearchStrategy[bytes]:
    """Packets mostly as sftp-server reads them, some with arbitrary fields, or bytes at random."""
    mostly_good = st.one_of(well_formed(templates), well_formed(templates), well_formed(templates), packets(kinds))
    return st.one_of(st.lists(mostly_good, max_size=16).map(b"".join), st.binary(max_size=600))


def _check(op: dict[str, Any]) -> None:
    assert isinstance(op, dict)
    assert isinstance(op.get("op"), str)
    assert "outcome" in op
    json.dumps(op)


@FUZZ
@given(
    up=stream(REQUEST_KINDS, WELL_FORMED_REQUESTS),
    down=stream(REPLY_KINDS, WELL_FORMED_REPLIES).map(lambda replies: packet(2, U32.pack(3)) + replies),
    turns=st.lists(st.tuples(st.booleans(), st.integers(1, 200)), min_size=1, max_size=40),
)
def test_any_bytes_either_way_are_followed_or_fail_the_observer(
    up: bytes, down: bytes, turns: list[tuple[bool, int]]
) -> None:
    ops: list[dict[str, Any]] = []
    observer = SftpObserver(ops.append)
    streams = {True: (up, observer.client_data), False: (down, observer.server_data)}
    positions = {True: 0, False: 0}
    failed: str | None = None
    emitted = 0  # operations emitted when it failed
    for n in range(len(up) + len(down)):  # a byte a turn at least
        client, size = turns[n % len(turns)]
        if positions[client] >= len(streams[client][0]):
            client = not client
        data, feed = streams[client]
        if positions[client] >= len(data):
            break
        feed(data[positions[client] : positions[client] + size])
        positions[client] += size
        if failed is not None:
            assert observer.failed == failed  # once failed, failed for good: it reads no more
            assert len(ops) == emitted
        failed, emitted = observer.failed, len(ops)
        assert failed is None or (isinstance(failed, str) and "\n" not in failed)
    observer.close()
    for op in ops:
        _check(op)


# -- well-formed sessions ------------------------------------------------------------------------------------

#: Requests that carry a path (or two) and are answered with a status: (type, name, fields).
PATH_REQUESTS = [(13, "remove", ("path",)), (14, "mkdir", ("path", "attrs")), (15, "rmdir", ("path",)),
                 (9, "setstat", ("path", "attrs")), (18, "rename", ("from", "to")),
                 (20, "symlink", ("target", "path")), (19, "readlink", ("path",)), (17, "stat", ("path",))]  # fmt: skip


@st.composite
def requests(draw: st.DrawFn) -> tuple[int, bytes, dict[str, Any]]:
    kind, name, fields = draw(st.sampled_from(PATH_REQUESTS))
    request_id = draw(IDS)
    body, op = U32.pack(request_id), {"op": name}
    for field in fields:
        if field == "attrs":
            body += U32.pack(0)
        else:
            path = "/" + draw(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30))
            body += string(path.encode())
            op[field] = path
    return request_id, packet(kind, body), op


@settings(max_examples=120, deadline=None)
@given(
    asked=st.lists(requests(), max_size=12),
    codes=st.lists(st.integers(0, 12), min_size=1),
    order=st.randoms(use_true_random=False),
    sizes=st.lists(st.integers(1, 64), min_size=1, max_size=8),
    answered=st.integers(0, 12),
)
def test_a_well_formed_session_is_followed_in_any_chunks(
    asked: list[tuple[int, bytes, dict[str, Any]]], codes: list[int], order: Any, sizes: list[int], answered: int
) -> None:
    """Each request once, with the status the server gave it (replies in any order, ids reused: each id's
    replies go to its requests first come first served), or ``no reply`` for those left unanswered."""
    replies = [request_id for request_id, _, _ in asked]
    order.shuffle(replies)
    replies = replies[:answered]
    down = b"".join(
        packet(101, U32.pack(rid) + U32.pack(codes[n % len(codes)]) + string(b"why") + string(b""))
        for n, rid in enumerate(replies)
    )
    pending: dict[int, deque[tuple[int, dict[str, Any]]]] = {}
    for index, (request_id, _, op) in enumerate(asked):
        pending.setdefault(request_id, deque()).append((index, op))
    expected = []
    for n, rid in enumerate(replies):
        code = codes[n % len(codes)]
        outcome = STATUS[code] if code < len(STATUS) else f"status {code}"
        expected.append({**pending[rid].popleft()[1], "outcome": outcome, **({"message": "why"} if code else {})})
    expected += [{**op, "outcome": "no reply"} for _, op in sorted(p for ops in pending.values() for p in ops)]

    ops: list[dict[str, Any]] = []
    observer = SftpObserver(ops.append)
    for data, feed in ((b"".join(p for _, p, _ in asked), observer.client_data), (down, observer.server_data)):
        pos, turn = 0, 0
        while pos < len(data):
            size = sizes[turn % len(sizes)]
            feed(data[pos : pos + size])
            pos, turn = pos + size, turn + 1
    assert observer.failed is None
    observer.close()
    assert ops == expected
