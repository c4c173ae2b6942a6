"""Export of recordings to asciicast v2: the text ``jit-ssh export`` writes and ``replay`` / ``watch`` play."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from .castlog import Frame, TextStream, read_recording

__all__ = ["AsciicastWriter", "to_asciicast"]

_encode = json.JSONEncoder(ensure_ascii=False).encode


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
        import base64  # noqa: PLC0415 - only for bytes that are not UTF-8

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
        import base64  # noqa: PLC0415

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
