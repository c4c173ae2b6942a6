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

import base64
import codecs
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from jit_ssh.ca import JitSshError

__all__ = ["MAGIC", "Frame", "RecordingFormatError", "encode_frame", "read_recording", "to_asciicast"]

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


def to_asciicast(path: Path, out: IO[str]) -> dict[str, Any]:
    """Write ``path`` as asciicast v2 to ``out``; returns the header.

    ``o`` events carry stdout and stderr as a terminal shows them, ``i`` input, ``r`` resizes as
    ``COLSxROWS``; jit-ssh's metadata becomes ``x`` events, which asciinema skips. Bytes that are not
    UTF-8 appear as U+FFFD in ``o`` and exactly, base64, in an ``x`` event beside it.
    """
    header, frames, _ = read_recording(path)
    out.write(_encode(header) + "\n")
    streams = {"o": TextStream(), "e": TextStream(), "i": TextStream()}
    last = 0.0
    for frame in frames:
        last = frame.time
        stamp = f"{frame.time:.6f}"
        if frame.code in streams:
            text, raw = streams[frame.code].decode(frame.payload)
            code = "i" if frame.code == "i" else "o"
            if text:
                out.write(f"[{stamp}, {_encode(code)}, {_encode(text)}]\n")
            if raw is not None:
                raw_event = {"raw": frame.code, "base64": base64.b64encode(raw).decode()}
                out.write(f'[{stamp}, "x", {_encode(raw_event)}]\n')
        elif frame.code == "r":
            out.write(f'[{stamp}, "r", {_encode(frame.payload.decode())}]\n')
        else:
            out.write(f'[{stamp}, "x", {frame.payload.decode("utf-8", "replace")}]\n')
    for name, stream in streams.items():
        text, raw = stream.decode(b"", final=True)
        if raw or text:
            leftover = {"raw": name, "base64": base64.b64encode(raw or text.encode()).decode()}
            out.write(f'[{last:.6f}, "x", {_encode(leftover)}]\n')
    return header
