"""Session recordings: one file per session channel (DESIGN.md, "Recording"; format in castlog.py).

Everything that can reach an interpreter on the host is recorded in full (invariant 5): terminal
sessions both ways, and the input of every shell and exec without a terminal, however large (a script
fed to ``ssh -T host``, or to ``bash``, is input like any other). Only what cannot: the output of a
session without a terminal, and the content of recognised file transfers (broker/recording/transfers.py), may be
*capped*: kept up to a limit per direction and beyond it only counted and hashed (SHA-256), so a 10 GB
copy does not make a 10 GB recording. Frames are buffered here and written by the writer thread
(broker/recording/writer.py, compressed) when the buffer fills and at least once a second (the broker calls
:meth:`Recorder.flush`); a write error ends the session: a session is never left unrecorded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from .digest import StreamTally
from .format import MAX_FRAME, encode_frame, encode_header
from .writer import RecordingError, RecordingFile

__all__ = ["DEFAULT_CAPTURE_LIMIT", "FULL", "Recorder", "RecordingError"]

DEFAULT_CAPTURE_LIMIT = 1024 * 1024
#: A stream recorded in full (no cap).
FULL = None
_FLUSH_BYTES = 256 * 1024
_CODES = {"o": b"o", "e": b"e", "i": b"i"}
#: Values kept in the header at most this long; the whole value is in a metadata frame beside it.
_HEADER_VALUE = 1024


class Recorder:
    """Writes one channel's recording. Create with :meth:`open`; every method may raise RecordingError.

    ``limits`` maps each stream (``o``, ``e``, ``i``) to the bytes of content kept, or :data:`FULL`.
    """

    def __init__(self, file: RecordingFile, start: float, limits: Mapping[str, int | None]) -> None:
        self.file = file
        self.path = file.path
        # Frame times run on the monotonic clock from the header's start: the wall clock set back during a
        # session (NTP, a resumed VM) gave frames negative times, which no reader accepts.
        self._start = time.monotonic() - max(0.0, time.time() - start)
        self._buffer = bytearray()
        self.limits = dict(limits)
        self._captured = {"o": 0, "e": 0, "i": 0}
        self.tallies = {"o": StreamTally(), "e": StreamTally(), "i": StreamTally()}
        self.closed = False

    @classmethod
    def open(
        cls,
        path: Path,
        header: Mapping[str, Any],
        *,
        limits: Mapping[str, int | None] | None = None,
    ) -> Recorder:
        """Create the file (never over an existing one) with its header on disk before the session starts."""
        head = dict(header)
        details = dict(head.get("jit_ssh") or {})
        long_values = {k: v for k, v in details.items() if isinstance(v, str) and len(v) > _HEADER_VALUE}
        for key, value in long_values.items():  # kept whole in a frame below: a header stays small
            details[key] = value[:_HEADER_VALUE] + f"...[{len(value)} characters; whole in the first frames]"
        if details:
            head["jit_ssh"] = details
        start = float(details.get("started") or head.get("timestamp") or time.time())
        first = bytearray(encode_header(head))
        for key, value in long_values.items():
            first += encode_frame(b"x", 0.0, json.dumps({"header": {key: value}}, ensure_ascii=False).encode())
        file = RecordingFile.create(path, bytes(first), user=str(details.get("user") or ""))
        return cls(file, start, limits or {"o": FULL, "e": FULL, "i": FULL})

    @property
    def size(self) -> int:
        return self.file.size

    @property
    def failed(self) -> RecordingError | None:
        return self.file.failed

    def watch(
        self, *, on_failure: Callable[[RecordingError], None] | None, on_backlog: Callable[[bool], None] | None
    ) -> None:
        """Be told (on the event loop) when a write failed, and when to pause and resume reading."""
        self.file.on_failure = on_failure
        self.file.on_backlog = on_backlog

    def capped(self) -> bool:
        return any(limit is not FULL for limit in self.limits.values())

    def uncap(self, stream: str, why: str) -> None:
        """Record ``stream`` in full from now on (its transfer protocol could not be followed)."""
        if self.limits[stream] is not FULL:
            self.limits[stream] = FULL
            self.meta({"uncapped": stream, "after_bytes": self.tallies[stream].bytes, "why": why})

    # -- events ----------------------------------------------------------------------------------
    def data(self, stream: str, data: bytes) -> None:
        """Record bytes of ``stream``: ``o`` (stdout), ``e`` (stderr) or ``i`` (input)."""
        if self.file.failed is not None:
            raise self.file.failed
        limit = self.limits[stream]
        if limit is not FULL:
            self.tallies[stream].add(data)
            room = limit - self._captured[stream]
            if room <= 0:
                return
            if len(data) > room:
                data = data[:room]
            self._captured[stream] += len(data)
        moment = time.monotonic() - self._start
        code = _CODES[stream]
        view = memoryview(data)
        self.file.claim(len(view) + 13 * (1 + len(view) // MAX_FRAME))  # before the caller relays it
        for offset in range(0, max(1, len(view)), MAX_FRAME):
            self._buffer += encode_frame(code, moment, view[offset : offset + MAX_FRAME])
            if len(self._buffer) >= _FLUSH_BYTES:
                # One flush is one zstd frame: kept small, so that a reader never holds much of it at once.
                self.flush()

    def resize(self, cols: int, rows: int) -> None:
        self._frame(b"r", f"{cols}x{rows}".encode())

    def meta(self, payload: Mapping[str, Any]) -> None:
        self._frame(b"x", json.dumps(dict(payload), ensure_ascii=False, default=str).encode())

    def _frame(self, code: bytes, payload: bytes) -> None:
        self.file.claim(len(payload) + 13)
        self._buffer += encode_frame(code, time.monotonic() - self._start, payload)

    # -- life ------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Hand what is buffered to the writer thread."""
        if not self._buffer or self.closed:
            return
        blob, self._buffer = self._buffer, bytearray()
        self.file.write(blob)

    def finish(self, summary: Mapping[str, Any] | None = None) -> Future[tuple[int, str]]:
        """Write the closing metadata and close; the future gives (size, sha256) of the file on disk."""
        if self.closed:
            return self.file.close()  # an error future: closed twice
        self.closed = True
        last = bytearray()
        if self.file.failed is None:
            end: dict[str, Any] = dict(summary or {})
            capped = {k: v for k, v in self.limits.items() if v is not FULL}
            streams = {k: v.summary() for k, v in self.tallies.items() if v.bytes}
            if streams:  # what was counted and hashed beyond the cap (the streams in full are in the frames)
                end["streams"] = streams
            if capped:
                end["capture_limit"] = max(capped.values())
                end["capped"] = sorted(capped)
            closing = json.dumps({"end": end}, ensure_ascii=False, default=str).encode()
            last = self._buffer + encode_frame(b"x", time.monotonic() - self._start, closing)
        self._buffer = bytearray()
        return self.file.close(last)

    def close(self, summary: Mapping[str, Any] | None = None) -> tuple[int, str]:
        """:meth:`finish` and wait for it (tools and tests; the broker's loop awaits the future instead)."""
        return self.finish(summary).result()

    def abandon(self) -> None:
        """Close the file without writing more (after a failure, or for a session that never started)."""
        if not self.closed:
            self.closed = True
            self._buffer = bytearray()
            self.file.close()
