"""The on-disk recording format, and its exact export to asciicast v2.

Writing asciicast JSON on the hot path costs too much: every NUL byte of terminal output becomes the
six characters ``\\u0000``, and encoding JSON per chunk caps a recorded pty at about 33 MiB/s of zeros
and 140 MiB/s of text on this machine (BENCHMARKS.md). So the broker writes a framed log instead, and
``jit-ssh export`` / ``replay`` turn it into asciicast v2, exactly and losslessly:

    JITSSH-REC1\\n
    <header: one line of JSON, the asciicast v2 header plus a "jit_ssh" object>\\n
    frames: code (1 byte) | seconds since start (float64, big-endian) | length (uint32) | payload

Codes: ``o`` stdout, ``e`` stderr, ``i`` input (raw bytes); ``r`` resize and ``x`` metadata (JSON).
A file cut short (a broker killed mid-session) reads up to its last complete frame.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import json
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from jit_ssh.ca import JitSshError

__all__ = [
    "MAGIC",
    "AsciicastWriter",
    "Frame",
    "RecordingFormatError",
    "TextStream",
    "encode_frame",
    "follow_frames",
    "read_recording",
    "to_asciicast",
]

MAGIC = b"JITSSH-REC1\n"
_FRAME = struct.Struct(">cdI")
_MAX_HEADER = 64 * 1024
_encode = json.JSONEncoder(ensure_ascii=False).encode


class RecordingFormatError(JitSshError):
    """A recording that is not in jit-ssh's format or is damaged before its first frame."""


@dataclass(frozen=True, slots=True)
class Frame:
    code: str
    time: float
    payload: bytes

    def json(self) -> Any:
        return json.loads(self.payload)


def encode_frame(code: bytes, moment: float, payload: bytes) -> bytes:
    return _FRAME.pack(code, moment, len(payload)) + payload


def read_recording(path: Path) -> tuple[dict[str, Any], Iterator[Frame], list[bool]]:
    """The header and an iterator of frames; the list's one flag turns True if the file ends mid-frame."""
    handle = path.open("rb")
    try:
        magic = handle.read(len(MAGIC))
        if magic != MAGIC:
            raise RecordingFormatError(f"{path} is not a jit-ssh recording")
        line = handle.readline(_MAX_HEADER)
        header = json.loads(line)
        if not isinstance(header, dict):
            raise RecordingFormatError(f"{path} has a damaged header")
    except (OSError, ValueError) as exc:
        handle.close()
        raise RecordingFormatError(f"cannot read recording {path}: {exc}") from exc
    except BaseException:
        handle.close()
        raise
    truncated = [False]

    def frames() -> Iterator[Frame]:
        with handle:
            while True:
                head = handle.read(_FRAME.size)
                if not head:
                    return
                if len(head) < _FRAME.size:
                    truncated[0] = True
                    return
                code, moment, length = _FRAME.unpack(head)
                payload = handle.read(length)
                if len(payload) < length:
                    truncated[0] = True
                    return
                yield Frame(code.decode("latin-1"), moment, payload)

    return header, frames(), truncated


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


class AsciicastWriter:
    """Turns frames into asciicast v2 lines, incrementally (for export, replay and live watching).

    ``o`` events carry stdout and stderr as a terminal shows them, ``i`` input, ``r`` resizes as
    ``COLSxROWS``; jit-ssh's metadata becomes ``x`` events, which asciinema skips. Bytes that are not
    UTF-8 appear as U+FFFD in ``o`` and exactly, base64, in an ``x`` event beside it.
    """

    def __init__(self) -> None:
        self.streams = {"o": TextStream(), "e": TextStream(), "i": TextStream()}
        self.last = 0.0

    @staticmethod
    def header(header: dict[str, Any]) -> str:
        return _encode(header) + "\n"

    def frame(self, frame: Frame) -> str:
        self.last = frame.time
        stamp = f"{frame.time:.6f}"
        if frame.code in self.streams:
            text, raw = self.streams[frame.code].decode(frame.payload)
            out = ""
            if text:
                out = f"[{stamp}, {_encode('i' if frame.code == 'i' else 'o')}, {_encode(text)}]\n"
            if raw is not None:
                raw_event = {"raw": frame.code, "base64": base64.b64encode(raw).decode()}
                out += f'[{stamp}, "x", {_encode(raw_event)}]\n'
            return out
        if frame.code == "r":
            return f'[{stamp}, "r", {_encode(frame.payload.decode("ascii", "replace"))}]\n'
        return f'[{stamp}, "x", {frame.payload.decode("utf-8", "replace")}]\n'

    def finish(self) -> str:
        out = ""
        for name, stream in self.streams.items():
            text, raw = stream.decode(b"", final=True)
            if raw or text:
                leftover = {"raw": name, "base64": base64.b64encode(raw or text.encode()).decode()}
                out += f'[{self.last:.6f}, "x", {_encode(leftover)}]\n'
        return out


def to_asciicast(path: Path, out: IO[str]) -> dict[str, Any]:
    """Write ``path`` as asciicast v2 to ``out``; returns the header."""
    header, frames, _ = read_recording(path)
    writer = AsciicastWriter()
    out.write(writer.header(header))
    for frame in frames:
        out.write(writer.frame(frame))
    out.write(writer.finish())
    return header


async def follow_frames(
    path: Path, *, live: Callable[[], bool], poll: float = 0.2
) -> AsyncIterator[tuple[dict[str, Any], Frame | None]]:
    """The header, then every frame, following the file while ``live()`` says the session runs.

    Yields ``(header, None)`` first. A frame still being written is waited for, never cut.
    """
    handle = path.open("rb")
    try:
        if handle.read(len(MAGIC)) != MAGIC:
            raise RecordingFormatError(f"{path} is not a jit-ssh recording")
        header = json.loads(handle.readline(_MAX_HEADER))
        yield header, None
        while True:
            start = handle.tell()
            head = handle.read(_FRAME.size)
            if len(head) == _FRAME.size:
                code, moment, length = _FRAME.unpack(head)
                payload = handle.read(length)
                if len(payload) == length:
                    yield header, Frame(code.decode("latin-1"), moment, payload)
                    continue
            handle.seek(start)
            if not live():
                return
            await asyncio.sleep(poll)
    finally:
        handle.close()
