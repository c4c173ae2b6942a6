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
(broker/writer.py), so a recording of full input capture stays cheap and a file cut short by a crash
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
import math
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import zstandard
from jit_ssh.ca import JitSshError

__all__ = [
    "MAGIC",
    "MAGIC_V2",
    "MAX_FRAME",
    "Frame",
    "FrameParser",
    "RecordingFormatError",
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
#: A header holds an exec command of up to 64 KiB, escaped as JSON (six characters a control byte).
_MAX_HEADER = 16 * 1024 * 1024
_CODES = frozenset("oeirx")
_READ = 256 * 1024
#: What one zstd frame (one flush of the writer: 256 KiB and a frame) may decompress to, and be, at most.
_MAX_ZSTD_CONTENT = 16 * 1024 * 1024
_MAX_ZSTD_FRAME = 32 * 1024 * 1024


class RecordingFormatError(JitSshError):
    """A recording that is not in jit-ssh's format, or is damaged."""


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
            if name not in _CODES or not math.isfinite(moment) or moment < 0:
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

    A zstd recording is read one zstd frame at a time (the writer makes one per flush), each decompressed
    within a bound its header declares: a recording that compresses 2,600 to 1 (zeros) must not turn a
    read of a few hundred KiB into gigabytes (a decompression bomb for every review tool).
    """

    __slots__ = ("_compressed", "_decompressor", "_handle", "_sniffed")

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self._decompressor: Any = None
        self._sniffed = b""
        self._compressed = bytearray()

    def pending(self) -> bool:
        """Bytes of an incomplete zstd frame are held (at the end of a file: it was cut short)."""
        return bool(self._compressed)

    def read(self) -> bytes:
        """The next chunk of the log; b"" at the current end of the file (which may still grow)."""
        while True:
            if self._decompressor not in (None, False):
                out = self._next_frame()
                if out:
                    return out
            raw = self._handle.read(_READ)
            if self._decompressor is None:
                self._sniffed += raw
                if len(self._sniffed) < len(ZSTD_MAGIC):
                    if raw:
                        continue
                    return b""  # too short to tell yet (a file being written): try again later
                raw, self._sniffed = self._sniffed, b""
                if raw.startswith(ZSTD_MAGIC):
                    self._decompressor = zstandard.ZstdDecompressor()
                else:
                    self._decompressor = False  # version 1: not compressed
            if self._decompressor is False or not raw:
                return raw
            self._compressed += raw
            if len(self._compressed) > _MAX_ZSTD_FRAME:
                raise RecordingFormatError(f"a zstd frame over {_MAX_ZSTD_FRAME} bytes: damaged recording")

    def _next_frame(self) -> bytes:
        """Decompress the next complete zstd frame held, if any (b"" when none is complete yet)."""
        while True:
            end, content = _zstd_frame(self._compressed)
            if end is None:
                return b""
            frame = bytes(self._compressed[:end])
            del self._compressed[:end]
            if content == 0:
                continue  # a skippable frame, or an empty one
            try:
                out: bytes = self._decompressor.decompress(frame, max_output_size=_MAX_ZSTD_CONTENT)
            except zstandard.ZstdError as exc:
                raise RecordingFormatError(f"the recording does not decompress: {exc}: damaged recording") from exc
            if out:
                return out


def _zstd_frame(data: bytearray) -> tuple[int | None, int | None]:
    """Where the zstd frame at the start of ``data`` ends (None: not complete yet), and its declared content
    size (None if it declares none). Frames (RFC 8878 section 3.1) are walked block by block, without
    decompressing; a frame that declares more than a recording's flush can hold is refused."""
    if len(data) < 8:
        return None, None
    magic = int.from_bytes(data[:4], "little")
    if 0x184D2A50 <= magic <= 0x184D2A5F:  # a skippable frame
        end = 8 + int.from_bytes(data[4:8], "little")
        return (end if end <= len(data) else None), 0
    if data[:4] != ZSTD_MAGIC:
        raise RecordingFormatError("not a zstd frame where one should start: damaged recording")
    descriptor = data[4]
    fcs_flag, single, reserved, checksum, dict_flag = (
        descriptor >> 6, descriptor >> 5 & 1, descriptor >> 3 & 1, descriptor >> 2 & 1, descriptor & 3,
    )  # fmt: skip
    if reserved:
        raise RecordingFormatError("a zstd frame header with its reserved bit set: damaged recording")
    fcs_size = (single, 2, 4, 8)[fcs_flag]
    start = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    pos = start + fcs_size
    if len(data) < pos:
        return None, None
    content = None
    if fcs_size:
        content = int.from_bytes(data[start:pos], "little") + (256 if fcs_size == 2 else 0)
        if content > _MAX_ZSTD_CONTENT:
            raise RecordingFormatError(
                f"a zstd frame of {content} bytes is over {_MAX_ZSTD_CONTENT}: damaged recording"
            )
    while True:
        if len(data) < pos + 3:
            return None, content
        block = int.from_bytes(data[pos : pos + 3], "little")
        kind, size = block >> 1 & 3, block >> 3
        if kind == 3 or size > 128 * 1024:
            raise RecordingFormatError("a zstd block of a reserved type or size: damaged recording")
        pos += 3 + (1 if kind == 1 else size)
        if block & 1:
            break
    pos += 4 if checksum else 0
    return (pos if pos <= len(data) else None), content


def _open(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except OSError as exc:
        raise RecordingFormatError(f"cannot read recording {path}: {exc.strerror}") from exc


def _chunks(source: _Source, path: Path) -> Iterator[bytes]:
    while True:
        try:
            chunk = source.read()
        except OSError as exc:
            raise RecordingFormatError(f"cannot read recording {path}: {exc.strerror}") from exc
        if not chunk:
            return
        yield chunk


def read_recording(path: Path) -> tuple[dict[str, Any], Iterator[Frame], list[bool]]:
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
            truncated[0] = parser.pending() or source.pending()

    return parser.header, frames(), truncated


async def follow_frames(
    path: Path, *, live: Callable[[], bool], poll: float = 0.2
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
