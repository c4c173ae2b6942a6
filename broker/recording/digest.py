"""SHA-256 of a stream, computed on a worker thread so that hashing does not hold up the event loop.

The broker hashes everything it relays without a terminal (a 1 GiB copy is 1 GiB of SHA-256) and
every recording it writes. Done inline, that was an eighth of the event loop's time during a bulk
transfer, while the machine's other core sat partly idle. :class:`StreamDigest` collects chunks and
hands them to one worker thread in batches of about 1 MiB (``hashlib`` releases the GIL for large
updates, so the hashing really runs beside the loop); one worker keeps every digest's batches in order.

Bounded: when more than :data:`MAX_BACKLOG` bytes wait for the worker (a machine too busy to keep up),
a digest waits for its own batches and hashes inline: the loop slows down, memory does not grow.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["BATCH", "MAX_BACKLOG", "MAX_HELD", "StreamDigest", "StreamTally"]

BATCH = 1024 * 1024
MAX_BACKLOG = 64 * 1024 * 1024
#: Bytes all digests may hold before making batches (a session with many files open, each short of a
#: batch, would otherwise hold up to a batch per file): past it, each update makes its batch at once.
MAX_HELD = 64 * 1024 * 1024


class _Worker:
    """The one digest thread (started on first use) and the bytes waiting for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.backlog = 0
        self.held = 0
        self._executor: ThreadPoolExecutor | None = None

    def hold(self, size: int) -> int:
        """Count ``size`` bytes as held by a digest until its next batch; returns what all digests hold."""
        with self.lock:
            self.held += size
            return self.held

    def release(self, size: int) -> None:
        with self.lock:
            self.held -= size

    def reserve(self, size: int) -> bool:
        """Count ``size`` bytes as waiting, unless that would pass MAX_BACKLOG."""
        with self.lock:
            if self.backlog + size > MAX_BACKLOG:
                return False
            self.backlog += size
            return True

    def submit(self, digest: Any, data: bytes) -> Future[None]:
        with self.lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jit-ssh-digest")
            executor = self._executor
        return executor.submit(self._hash, digest, data)

    def _hash(self, digest: Any, data: bytes) -> None:
        try:
            digest.update(data)
        finally:
            with self.lock:
                self.backlog -= len(data)


_worker = _Worker()


class StreamDigest:
    """Incremental SHA-256 whose updates run on the digest worker; :meth:`hexdigest` waits for them."""

    __slots__ = ("_digest", "_last", "_pending", "_pending_size")

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._pending: list[bytes | memoryview] = []
        self._pending_size = 0
        self._last: Future[None] | None = None

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if isinstance(data, memoryview):
            # Kept as a view only of bytes (which cannot change) and when it is most of them: a small view
            # would hold its whole chunk in memory until the batch is made.
            if not isinstance(data.obj, bytes) or 2 * data.nbytes < len(data.obj):
                data = bytes(data)
        elif not isinstance(data, bytes):
            data = bytes(data)  # a buffer its owner may change before the worker reads it: copied now
        self._pending.append(data)
        self._pending_size += len(data)
        # Held first, whatever follows: _take releases all of _pending_size, this chunk included.
        held = _worker.hold(len(data))
        if self._pending_size >= BATCH or held > MAX_HELD:
            self._submit()

    def _take(self) -> list[bytes | memoryview]:
        """The chunks not yet in a batch, no longer counted as held."""
        pending = self._pending
        _worker.release(self._pending_size)
        self._pending = []
        self._pending_size = 0
        return pending

    def _submit(self) -> None:
        pending = self._take()
        batch = pending[0] if len(pending) == 1 and isinstance(pending[0], bytes) else b"".join(pending)
        if not _worker.reserve(len(batch)):  # the worker is behind: finish this digest's batches, then hash here
            self._wait()
            self._digest.update(batch)
            return
        self._last = _worker.submit(self._digest, batch)

    def _wait(self) -> None:
        last, self._last = self._last, None
        if last is not None:
            last.result()

    def hexdigest(self) -> str:
        """The digest of everything given so far (waits for the worker, which may be busy with others' batches)."""
        self._wait()
        for chunk in self._take():
            self._digest.update(chunk)
        return self._digest.hexdigest()


class StreamTally:
    """Byte count and SHA-256 of one stream: a direction of bulk exec content, or one file's over SFTP."""

    __slots__ = ("bytes", "digest")

    def __init__(self) -> None:
        self.bytes = 0
        self.digest = StreamDigest()

    def add(self, data: bytes | memoryview) -> None:
        self.bytes += len(data)
        self.digest.update(data)

    def summary(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "sha256": self.digest.hexdigest()}
