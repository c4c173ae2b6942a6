"""The on-disk recording format, read back by every review tool (exported to asciicast by asciicast.py).

Writing asciicast JSON on the hot path costs too much: every NUL byte of terminal output becomes the
six characters ``\\u0000``, and encoding JSON per chunk caps a recorded pty at about 33 MiB/s of zeros
and 140 MiB/s of text on this machine (BENCHMARKS.md). So the broker writes a framed log instead, and
``jit-ssh export`` / ``replay`` turn it into asciicast v2:

    JITSSH-REC2\\n
    header length (uint32, big-endian) | header: JSON, the asciicast v2 header plus a "jit_ssh" object
    frames: code (1 byte) | seconds since start (float64, big-endian) | length (uint32) | payload

Codes: ``o`` stdout, ``e`` stderr, ``i`` input (raw bytes); ``r`` resize and ``x`` metadata (JSON).
On disk the log is compressed: a sequence of zstd frames with checksums, one per flush
(broker/recording/writer.py), so a recording of full input capture stays cheap and a file cut short by a crash
decompresses up to its last complete flush. Version 1 (``JITSSH-REC1\\n``, a header line, no compression)
is still read.

Every reader goes through :class:`FrameParser`: a header or frame of any size the broker writes is read
to its real length, and anything malformed raises :class:`RecordingFormatError` (never a bare
``ValueError`` or a hang); a file that ends mid-frame reads up to its last complete frame and says so.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import zstandard
from jit_ssh.ca import JitSshError

from .zstdstream import ZstdStream

__all__ = [
    "MAGIC",
    "MAGIC_V2",
    "MAX_FRAME",
    "MAX_TIME",
    "Frame",
    "FrameParser",
    "RecordingFormatError",
    "RecordingSource",
    "TextStream",
    "encode_frame",
    "encode_header",
    "follow_frames",
    "read_recording",
]

MAGIC = b"JITSSH-REC1\n"  # version 1: header line, frames, no compression
MAGIC_V2 = b"JITSSH-REC2\n"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_FRAME = struct.Struct(">cdI")
_U32 = struct.Struct(">I")
#: The largest payload the broker writes in one frame (larger data is split); readers accept 16 times it.
MAX_FRAME = 1024 * 1024
_MAX_READ_FRAME = 16 * MAX_FRAME
#: The latest time a frame may have, in seconds from the session's start (317 years: any clock jump, never
#: a number that overflows when a reader turns it into microseconds).
MAX_TIME = 1e10
#: A header holds an exec command of up to 64 KiB, escaped as JSON (six characters a control byte).
_MAX_HEADER = 16 * 1024 * 1024
_CODES = frozenset("oeirx")
_READ = 256 * 1024


class RecordingFormatError(JitSshError):
    """A recording that is not in jit-ssh's format, or is damaged."""


class RecordingSource(Protocol):
    """A recording to read that is not a local path: one in a RecordingStore (broker/recording/store.py).

    ``open`` raises OSError when the recording cannot be read; ``str()`` names it in errors.
    """

    def open(self) -> IO[bytes]: ...


@dataclass(frozen=True, slots=True)
class Frame:
    code: str
    time: float
    payload: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.payload)
        except (ValueError, RecursionError) as exc:
            raise RecordingFormatError(f"a metadata frame at {self.time:.3f}s is not JSON") from exc


def encode_header(header: dict[str, Any]) -> bytes:
    body = json.dumps(header, ensure_ascii=False, default=str).encode()
    if len(body) > _MAX_HEADER:
        raise RecordingFormatError(f"a recording header of {len(body)} bytes is over {_MAX_HEADER}")
    return MAGIC_V2 + _U32.pack(len(body)) + body


def encode_frame(code: bytes, moment: float, payload: bytes | bytearray | memoryview) -> bytes:
    return _FRAME.pack(code, moment, len(payload)) + payload


class FrameParser:
    """Incremental reader of the decompressed log: feed bytes in chunks of any size, take what is complete.

    :attr:`header` is set once the header is complete; :meth:`feed` returns the frames completed by the
    chunk. Malformed input raises RecordingFormatError; :meth:`pending` says whether a part is left over.
    """

    __slots__ = ("_buffer", "_version", "header")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._version = 0
        self.header: dict[str, Any] | None = None

    def pending(self) -> bool:
        """Bytes of an incomplete header or frame are held (at the end of a file: it was cut short)."""
        return bool(self._buffer) or self.header is None

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        if self.header is None and not self._read_header():
            return []
        frames: list[Frame] = []
        buffer, pos, end = self._buffer, 0, len(self._buffer)
        while end - pos >= _FRAME.size:
            code, moment, length = _FRAME.unpack_from(buffer, pos)
            if length > _MAX_READ_FRAME:
                raise RecordingFormatError(f"a frame of {length} bytes is over {_MAX_READ_FRAME}: damaged recording")
            if end - pos - _FRAME.size < length:
                break
            name = code.decode("latin-1")
            if name not in _CODES or not 0 <= moment <= MAX_TIME:  # NaN fails both
                raise RecordingFormatError(f"a damaged frame (code {name!r}, time {moment!r}): damaged recording")
            start = pos + _FRAME.size
            frames.append(Frame(name, moment, bytes(buffer[start : start + length])))
            pos = start + length
        del buffer[:pos]
        return frames

    def _read_header(self) -> bool:
        buffer = self._buffer
        if len(buffer) < len(MAGIC_V2):
            if not (MAGIC_V2.startswith(buffer) or MAGIC.startswith(buffer)):
                raise RecordingFormatError("not a jit-ssh recording")
            return False
        magic = bytes(buffer[: len(MAGIC_V2)])
        if magic == MAGIC_V2:
            if len(buffer) < len(MAGIC_V2) + 4:
                return False
            (length,) = _U32.unpack_from(buffer, len(MAGIC_V2))
            if length > _MAX_HEADER:
                raise RecordingFormatError(f"a header of {length} bytes is over {_MAX_HEADER}: damaged recording")
            start = len(MAGIC_V2) + 4
            if len(buffer) < start + length:
                return False
            body, rest = bytes(buffer[start : start + length]), start + length
        elif magic == MAGIC:
            newline = buffer.find(b"\n", len(MAGIC))
            if newline < 0:
                if len(buffer) > _MAX_HEADER:
                    raise RecordingFormatError(f"a header line over {_MAX_HEADER} bytes: damaged recording")
                return False
            body, rest = bytes(buffer[len(MAGIC) : newline]), newline + 1
        else:
            raise RecordingFormatError("not a jit-ssh recording")
        try:
            header = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise RecordingFormatError("the recording's header is not JSON: damaged recording") from exc
        if not isinstance(header, dict):
            raise RecordingFormatError("the recording's header is not a JSON object: damaged recording")
        self.header = header
        del buffer[:rest]
        return True


class _Source:
    """The decompressed bytes of a recording file, read in chunks (zstd or, for version 1, as they are).

    A chunk is at most about 256 KiB however well the file compresses (broker/recording/zstdstream.py).
    """

    __slots__ = ("_handle", "_pieces", "_sniffed", "_zstd")

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self._sniffed: bytes | None = b""  # None once the format is known
        self._zstd: ZstdStream | None = None  # None: version 1, not compressed
        self._pieces: Iterator[bytes] = iter(())

    def cut_short(self) -> bool:
        """What was read so far ends inside a compressed frame."""
        return self._zstd is not None and self._zstd.inside_frame()

    def read(self) -> bytes:
        """The next chunk of the log; b"" at the current end of the file (which may still grow)."""
        while True:
            try:
                out = next(self._pieces, None)
            except zstandard.ZstdError as exc:
                raise RecordingFormatError(f"the recording does not decompress: {exc}") from exc
            if out is not None:
                if out:
                    return out
                continue
            raw = self._handle.read(_READ)
            if self._sniffed is not None:
                self._sniffed += raw
                if len(self._sniffed) < len(ZSTD_MAGIC):
                    if raw:
                        continue
                    return b""  # too short to tell yet (a file being written): try again later
                raw, self._sniffed = self._sniffed, None
                if raw.startswith(ZSTD_MAGIC):
                    self._zstd = ZstdStream()
            if not raw or self._zstd is None:
                return raw
            self._pieces = self._zstd.decompress(raw)


def _open(path: Path | RecordingSource) -> IO[bytes]:
    try:
        return path.open("rb") if isinstance(path, Path) else path.open()
    except OSError as exc:
        raise RecordingFormatError(f"cannot read recording {path}: {exc.strerror}") from exc


def _chunks(source: _Source, path: Path | RecordingSource) -> Iterator[bytes]:
    while True:
        try:
            chunk = source.read()
        except OSError as exc:
            raise RecordingFormatError(f"cannot read recording {path}: {exc.strerror}") from exc
        if not chunk:
            return
        yield chunk


def read_recording(path: Path | RecordingSource) -> tuple[dict[str, Any], Iterator[Frame], list[bool]]:
    """The header and an iterator of frames; the list's one flag turns True if the file ends mid-frame.

    Raises RecordingFormatError for a file that is not a readable recording, here or while iterating.
    """
    handle = _open(path)
    source, parser = _Source(handle), FrameParser()
    early: list[Frame] = []
    try:
        for chunk in _chunks(source, path):
            early = parser.feed(chunk)
            if parser.header is not None:
                break
        if parser.header is None:
            raise RecordingFormatError(f"{path} is not a jit-ssh recording (no complete header)")
    except BaseException:
        handle.close()
        raise
    truncated = [False]

    def frames() -> Iterator[Frame]:
        with handle:
            yield from early
            for chunk in _chunks(source, path):
                yield from parser.feed(chunk)
            truncated[0] = parser.pending() or source.cut_short()

    return parser.header, frames(), truncated


async def follow_frames(
    path: Path | RecordingSource, *, live: Callable[[], bool], poll: float = 0.2
) -> AsyncIterator[tuple[dict[str, Any], Frame | None]]:
    """The header, then every frame, following the file while ``live()`` says the session runs.

    Yields ``(header, None)`` first. A frame still being written is waited for, never cut.
    """
    handle = _open(path)
    try:
        source, parser = _Source(handle), FrameParser()
        sent = False
        while True:
            chunk = source.read()
            if chunk:
                frames = parser.feed(chunk)
                if parser.header is not None:
                    if not sent:
                        sent = True
                        yield parser.header, None
                    for frame in frames:
                        yield parser.header, frame
                continue
            if not live():
                if parser.header is None:
                    raise RecordingFormatError(f"{path} is not a jit-ssh recording (no complete header)")
                return
            await asyncio.sleep(poll)
    except OSError as exc:
        raise RecordingFormatError(f"cannot read recording {path}: {exc.strerror}") from exc
    finally:
        handle.close()


class TextStream:
    """Incremental UTF-8 decoding that never loses a byte: a character split across chunks is joined,
    and bytes that are not UTF-8 come back separately so they can be kept exactly."""

    __slots__ = ("decoder",)

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")

    def decode(self, data: bytes, final: bool = False) -> tuple[str, bytes | None]:
        text = self.decoder.decode(data, final)
        if text.isascii():
            return text, None
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogateescape")
            return raw.decode("utf-8", "replace"), raw
        return text, None
