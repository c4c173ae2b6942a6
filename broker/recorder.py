"""Session recordings: one file per session channel (DESIGN.md, "Recording"; format in castlog.py).

Terminal sessions are recorded byte for byte. Bulk content (exec without a terminal, SFTP) is captured
up to a cap per direction and beyond it only counted and hashed (SHA-256), so a 10 GB copy does not
make a 10 GB recording. Writes are buffered and reach the file at least once a second (the broker
calls :meth:`Recorder.flush`); any write error raises :class:`RecordingError`, after which the broker
ends the session: a session is never left unrecorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jit_ssh.ca import JitSshError

from .castlog import MAGIC, encode_frame
from .digest import StreamDigest, StreamTally

__all__ = ["DEFAULT_CAPTURE_LIMIT", "Recorder", "RecordingError"]

DEFAULT_CAPTURE_LIMIT = 1024 * 1024
_FLUSH_BYTES = 256 * 1024
_CODES = {"o": b"o", "e": b"e", "i": b"i"}


class RecordingError(JitSshError):
    """The recording cannot be opened or written: the session must not go on."""


class Recorder:
    """Writes one channel's recording. Create with :meth:`open`; every method may raise RecordingError."""

    def __init__(self, path: Path, fd: int, start: float, *, capture_limit: int, full_capture: bool) -> None:
        self.path = path
        self._fd = fd
        self._start = start
        self._buffer = bytearray()
        self._digest = StreamDigest()
        self.size = 0
        self.capture_limit = capture_limit
        #: With a terminal every byte is recorded; without one, content is capped (bulk).
        self.full_capture = full_capture
        self._captured = {"o": 0, "e": 0, "i": 0}
        self.tallies = {"o": StreamTally(), "e": StreamTally(), "i": StreamTally()}
        self.closed = False
        self.failed: RecordingError | None = None

    @classmethod
    def open(
        cls,
        path: Path,
        header: Mapping[str, Any],
        *,
        capture_limit: int = DEFAULT_CAPTURE_LIMIT,
        full_capture: bool = True,
    ) -> Recorder:
        """Create the file (never over an existing one) and write its header to disk."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise RecordingError(f"cannot open the session recording {path}: {exc.strerror}") from exc
        start = float(header.get("timestamp", time.time()))
        recorder = cls(path, fd, start, capture_limit=capture_limit, full_capture=full_capture)
        recorder._buffer += MAGIC + json.dumps(dict(header), ensure_ascii=False).encode() + b"\n"
        try:
            recorder.flush()  # the header is on disk before the session may start
        except RecordingError:
            recorder.abandon()
            path.unlink(missing_ok=True)  # a header cut short is no recording; no session ran
            raise
        return recorder

    # -- events ----------------------------------------------------------------------------------
    def data(self, stream: str, data: bytes) -> None:
        """Record bytes of ``stream``: ``o`` (stdout), ``e`` (stderr) or ``i`` (input)."""
        if self.failed is not None:
            raise self.failed
        if not self.full_capture:
            self.tallies[stream].add(data)
            room = self.capture_limit - self._captured[stream]
            if room <= 0:
                return
            if len(data) > room:
                data = data[:room]
            self._captured[stream] += len(data)
        self._buffer += encode_frame(_CODES[stream], time.time() - self._start, data)
        if len(self._buffer) >= _FLUSH_BYTES:
            self.flush()

    def resize(self, cols: int, rows: int) -> None:
        self._frame(b"r", f"{cols}x{rows}".encode())

    def meta(self, payload: Mapping[str, Any]) -> None:
        self._frame(b"x", json.dumps(dict(payload), ensure_ascii=False, default=str).encode())

    def _frame(self, code: bytes, payload: bytes) -> None:
        if self.failed is not None:
            raise self.failed
        self._buffer += encode_frame(code, time.time() - self._start, payload)

    # -- life ------------------------------------------------------------------------------------
    def flush(self) -> None:
        if not self._buffer or self.closed:
            return
        blob = bytes(self._buffer)
        self._buffer.clear()
        view = memoryview(blob)
        try:
            while view:
                written = os.write(self._fd, view)
                # Count as it lands: after a short write and a failure (disk full), the size and digest
                # still describe exactly the bytes on disk.
                self._digest.update(view[:written])
                self.size += written
                view = view[written:]
        except OSError as exc:
            self.failed = RecordingError(f"cannot write the session recording {self.path}: {exc.strerror}")
            raise self.failed from exc

    def close(self, summary: Mapping[str, Any] | None = None) -> tuple[int, str]:
        """Write the closing metadata, flush, close; returns (size, sha256) of the file."""
        if self.closed:
            return self.size, self._digest.hexdigest()
        try:
            if self.failed is None:
                end: dict[str, Any] = dict(summary or {})
                if not self.full_capture:
                    end["streams"] = {k: v.summary() for k, v in self.tallies.items() if v.bytes}
                    end["capture_limit"] = self.capture_limit
                self.meta({"end": end})
                self.flush()
        finally:
            self.abandon()
        return self.size, self._digest.hexdigest()

    def abandon(self) -> None:
        """Close the file without writing more (after a failure)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):  # what was written stays; the digest covers exactly that
            os.fsync(self._fd)
        os.close(self._fd)
