"""StreamDigest: SHA-256 on the digest worker equals hashlib's, in every order of chunk sizes, when the
worker's backlog is full (then it hashes inline), and for buffers the caller reuses afterwards."""

from __future__ import annotations

import hashlib
import os
import random

import pytest
from jit_ssh.broker.recording import digest as digest_module
from jit_ssh.broker.recording.digest import BATCH, StreamDigest


def _chunks(seed: int, total: int) -> list[bytes]:
    rng = random.Random(seed)
    out: list[bytes] = []
    while total > 0:
        size = min(total, rng.choice((1, 17, 4096, 32 * 1024, BATCH - 1, BATCH, 3 * BATCH + 5)))
        out.append(os.urandom(size))
        total -= size
    return out


@pytest.mark.parametrize("seed", range(4))
def test_equals_hashlib(seed: int) -> None:
    chunks = _chunks(seed, 9 * BATCH + 123)
    streams = [StreamDigest() for _ in range(3)]  # interleaved: one worker keeps each stream's order
    for chunk in chunks:
        for stream in streams:
            stream.update(chunk)
    expected = hashlib.sha256(b"".join(chunks)).hexdigest()
    assert [s.hexdigest() for s in streams] == [expected] * 3


def test_full_backlog_hashes_inline_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digest_module, "MAX_BACKLOG", BATCH + 1)  # a second batch in flight does not fit
    chunks = _chunks(7, 12 * BATCH)
    stream = StreamDigest()
    for chunk in chunks:
        stream.update(chunk)
    assert stream.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert digest_module._worker.backlog == 0


def test_reused_buffers_are_copied() -> None:
    buffer = bytearray(os.urandom(BATCH // 2))
    first = bytes(buffer)
    stream = StreamDigest()
    stream.update(memoryview(buffer))
    buffer[:] = os.urandom(len(buffer))  # the caller reuses its buffer before the worker has run
    stream.update(buffer)
    assert stream.hexdigest() == hashlib.sha256(first + bytes(buffer)).hexdigest()


def test_empty_and_repeated_hexdigest() -> None:
    stream = StreamDigest()
    stream.update(b"")
    assert stream.hexdigest() == hashlib.sha256().hexdigest()
    stream.update(b"abc")
    assert stream.hexdigest() == stream.hexdigest() == hashlib.sha256(b"abc").hexdigest()


def test_small_views_do_not_hold_their_chunks() -> None:
    chunk = os.urandom(64 * 1024)
    stream = StreamDigest()
    before = digest_module._worker.held
    stream.update(memoryview(chunk)[:10])  # copied: 10 bytes held, not the 64 KiB chunk
    stream.update(memoryview(chunk)[10:])  # most of it: kept as a view
    assert stream._pending[0].__class__ is bytes
    assert isinstance(stream._pending[1], memoryview)
    assert digest_module._worker.held - before == len(chunk)
    assert stream.hexdigest() == hashlib.sha256(chunk).hexdigest()
    assert digest_module._worker.held == before


def test_many_digests_short_of_a_batch_stay_under_the_hold_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digest_module, "MAX_HELD", 4 * 1024 * 1024)
    streams = [StreamDigest() for _ in range(32)]
    pieces = [os.urandom(BATCH // 2) for _ in streams]
    for stream, piece in zip(streams, pieces, strict=True):
        stream.update(piece)
        assert digest_module._worker.held <= 4 * 1024 * 1024
    assert [s.hexdigest() for s in streams] == [hashlib.sha256(p).hexdigest() for p in pieces]


def test_held_counts_every_pending_byte_and_never_goes_negative() -> None:
    # The chunk that completes a batch was once released by the batch without ever being held: the count
    # fell by up to a batch each time, went negative, and the MAX_HELD cap stopped engaging.
    before = digest_module._worker.held
    stream = StreamDigest()
    for chunk in _chunks(11, 7 * BATCH + 5):
        stream.update(chunk)
        assert digest_module._worker.held - before == stream._pending_size
    stream.hexdigest()
    assert digest_module._worker.held == before >= 0


def test_the_hold_cap_engages_after_many_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    cap = 2 * BATCH
    monkeypatch.setattr(digest_module, "MAX_HELD", cap)
    busy = StreamDigest()
    for chunk in _chunks(3, 20 * BATCH):  # batches made one after another must not open room under the cap
        busy.update(chunk)
    streams = [StreamDigest() for _ in range(8)]
    for stream in streams:
        stream.update(os.urandom(BATCH // 2))
        assert digest_module._worker.held <= cap
    assert any(not s._pending for s in streams)  # past the cap, updates made their batch at once
    busy.hexdigest()
    for stream in streams:
        stream.hexdigest()
