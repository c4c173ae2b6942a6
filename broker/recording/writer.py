"""Recordings reach the disk on one writer thread: compressed, written and hashed beside the event loop.

Full capture of everything that can reach an interpreter (DESIGN.md, invariant 5) makes recordings as
large as the input a session sends: a 1 GiB upload with ``cat > file`` is a 1 GiB recording. Compressing
and writing it on the event loop would slow every session the broker relays, so each recording's buffered
frames go to one thread (zstd and SHA-256 release the GIL), as one zstd frame per flush: a file cut short
by a crash decompresses up to its last complete flush.

A :class:`RecordingFile` is one file. Its writes are asynchronous; a write error is kept and reported to
the session through ``on_failure`` (on the event loop), which ends it: a session is never left
unrecorded. Memory is bounded: a file with more than :data:`HIGH_WATER` bytes waiting (or all files
together with more than :data:`TOTAL_HIGH_WATER`) asks its session to stop reading (``on_backlog(True)``)
until the thread has caught up, so a flood slows only the session that sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import zstandard
from jit_ssh.ca import JitSshError
from jit_ssh.ca.files import private_dir

from ..space import Reservation

__all__ = ["HIGH_WATER", "TOTAL_HIGH_WATER", "RecordingError", "RecordingFile"]

#: zstd level 1: about as small as level 3 for terminal text and a third faster on this machine.
LEVEL = 1
HIGH_WATER = 8 * 1024 * 1024
LOW_WATER = 2 * 1024 * 1024
TOTAL_HIGH_WATER = 128 * 1024 * 1024
TOTAL_LOW_WATER = 64 * 1024 * 1024
_local = threading.local()


class RecordingError(JitSshError):
    """The recording cannot be opened or written: the session must not go on."""


def compress(data: bytes | bytearray) -> bytes:
    """One zstd frame with a checksum (one compressor per thread: they are not thread-safe)."""
    compressor = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = _local.compressor = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True)
    out: bytes = compressor.compress(bytes(data))
    return out


class RecordingFile:
    """One recording file: created (never over an existing one) with its first bytes on disk, then
    written asynchronously by the writer thread. Create with :meth:`create`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._digest = hashlib.sha256()
        self.size = 0
        #: (size, SHA-256) of the file as of the last write, for the broker's checkpoints (set by the thread).
        self.checkpoint: tuple[int, str] = (0, "")
        #: Bytes handed to the thread and not yet written (read on the loop, changed under the writer's lock).
        self.pending = 0
        self.paused = False
        self.failed: RecordingError | None = None
        self.closing = False
        self.on_failure: Callable[[RecordingError], None] | None = None
        self.on_backlog: Callable[[bool], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        #: Space claimed ahead of what is written (broker/space.py).
        self.space = Reservation(fd, 0)

    @classmethod
    def create(cls, path: Path, first: bytes, *, user: str = "") -> RecordingFile:
        """Create ``path`` 0640 in a 0750 directory and write ``first`` (compressed) before returning."""
        try:
            # The day's directories too (mkdir(parents=True) would leave them to the umask); a folder that is there
            # already is left as it is: it may be anyone's (a recording written straight into /tmp).
            private_dir(path.parent, 0o750, tighten_existing=False)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise RecordingError(f"cannot open the session recording {path}: {exc.strerror}") from exc
        file = cls(path, fd)
        try:
            os.fchmod(fd, 0o640)  # whatever the umask
            file._write(compress(first))
            file.checkpoint = (file.size, file._digest.copy().hexdigest())
            file.space = Reservation(fd, file.size, user)
            file.space.initial()
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)  # a header cut short is no recording; no session ran
            raise RecordingError(f"cannot write the session recording {path}: {exc.strerror}") from exc
        return file

    def set_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # -- called on the event loop ------------------------------------------------------------------
    def claim(self, size: int) -> None:
        """Claim disk space for ``size`` more bytes before they are relayed; RecordingError if there is none."""
        if self.failed is not None:
            raise self.failed
        try:
            self.space.claim(size)
        except OSError as exc:
            # Not a failed file: what was claimed is written, the closing record too (kept for it).
            raise RecordingError(f"no space for the session recording {self.path}: {exc.strerror}") from exc

    def write(self, blob: bytes | bytearray) -> None:
        """Queue ``blob`` (uncompressed) to be written; raises the first write error once it happened."""
        if self.failed is not None:
            raise self.failed
        if self.closing:
            raise RecordingError(f"the session recording {self.path} is closed")
        if _writer.submit(self, bytes(blob), close=False) and not self.paused:
            self.paused = True
            if self.on_backlog is not None:
                self.on_backlog(True)

    def close(self, last: bytes | bytearray = b"") -> Future[tuple[int, str]]:
        """Write ``last``, sync and close; the future gives (size, sha256) of the file as it is on disk."""
        future: Future[tuple[int, str]] = Future()
        if self.closing:
            future.set_exception(RecordingError(f"the session recording {self.path} is closed"))
            return future
        self.closing = True
        _writer.submit(self, bytes(last), close=True, future=future)
        self.space.release()
        return future

    # -- called on the writer thread (or, for the first bytes, by create) --------------------------
    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            # Count as it lands: after a short write and a failure (disk full), the size and digest
            # still describe exactly the bytes on disk.
            self._digest.update(view[:written])
            self.size += written
            view = view[written:]

    def _run(self, data: bytes, close: bool, future: Future[tuple[int, str]] | None) -> None:
        if data and self.failed is None:
            try:
                self._write(compress(data))
                self.checkpoint = (self.size, self._digest.copy().hexdigest())
            except OSError as exc:
                self._fail(RecordingError(f"cannot write the session recording {self.path}: {exc.strerror}"))
        if close:
            with contextlib.suppress(OSError):  # what was written stays; the digest covers exactly that
                os.ftruncate(self._fd, self.size)  # gives back the space claimed beyond it
                os.fsync(self._fd)
            os.close(self._fd)
            if future is not None:
                future.set_result((self.size, self._digest.hexdigest()))

    def _resume(self) -> None:
        """On the loop: the backlog drained; the session may read again."""
        self.paused = False
        if self.on_backlog is not None:
            self.on_backlog(False)

    def _fail(self, error: RecordingError) -> None:
        self.failed = error
        if self.on_failure is not None:
            self._call(self.on_failure, error)

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
            loop.call_soon_threadsafe(callback, *args)


class _Writer:
    """The one writer thread (started on first use) and the bytes waiting for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total = 0
        self._queue: queue.SimpleQueue[tuple[RecordingFile, bytes, bool, Future[tuple[int, str]] | None]] = (
            queue.SimpleQueue()
        )
        self._paused: set[RecordingFile] = set()
        self._thread: threading.Thread | None = None

    def submit(
        self, file: RecordingFile, data: bytes, *, close: bool, future: Future[tuple[int, str]] | None = None
    ) -> bool:
        """Queue a write; True if ``file`` should pause its session until the backlog drains."""
        with self.lock:
            file.pending += len(data)
            self.total += len(data)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="jit-ssh-recordings", daemon=True)
                self._thread.start()
            pause = not close and (file.pending > HIGH_WATER or self.total > TOTAL_HIGH_WATER)
            if pause:
                self._paused.add(file)  # under the lock: the thread cannot drain it unnoticed
        self._queue.put((file, data, close, future))
        return pause

    def _work(self) -> None:
        while True:
            file, data, close, future = self._queue.get()
            try:
                file._run(data, close, future)
            except BaseException as exc:  # noqa: BLE001 - a bug must fail this recording, not stop the thread
                file._fail(RecordingError(f"the session recording {file.path} failed: {exc!r}"))
                if future is not None and not future.done():
                    future.set_exception(file.failed or exc)
            with self.lock:
                file.pending -= len(data)
                self.total -= len(data)
                resumed = []
                if self._paused and self.total < TOTAL_LOW_WATER:
                    resumed = [f for f in self._paused if f.pending < LOW_WATER or f.closing]
                    self._paused.difference_update(resumed)
            for paused in resumed:
                if paused._loop is None:
                    paused._resume()
                else:
                    paused._call(paused._resume)


_writer = _Writer()
