"""The index of a recording, written when its session closes: what review searches and shows.

The commands (exec commands, and lines typed at a shell prompt as reconstructed by broker/commands.py) go
to ``session_commands``; file transfers and totals to ``sessions.index_json``; and the distinct lines of
output, up to :data:`OUTPUT_INDEX_LIMIT`, to a text file beside the recording for ``--grep-output``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jit_ssh.ca.store import RecordedSession, SessionCommand, Store, dumps

from .castlog import Frame, TextStream, read_recording

__all__ = ["OUTPUT_INDEX_LIMIT", "RecordingIndex", "index_recording", "lines_path", "save_index"]

OUTPUT_INDEX_LIMIT = 4 * 1024 * 1024
_MAX_LINE = 4096
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[PX^_][^\x1b]*(?:\x1b\\)?|.)")


@dataclass
class RecordingIndex:
    commands: list[tuple[float, str, str]] = field(default_factory=list)
    transfers: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] = field(default_factory=dict)
    output_lines: int = 0
    truncated: bool = False


def lines_path(recording: Path) -> Path:
    return recording.with_suffix(".lines")


def index_recording(path: Path, *, kind: str, command: str | None, pty: bool) -> RecordingIndex:
    """Read a closed recording once (twice for a shell) and build what review needs."""
    index = RecordingIndex()
    header, frames, truncated = read_recording(path)
    streams = {"o": TextStream(), "e": TextStream()}
    seen: set[str] = set()
    kept: list[str] = []
    size = 0
    pending = {"o": "", "e": ""}
    for frame in frames:
        if frame.code in streams and size < OUTPUT_INDEX_LIMIT:
            text, _ = streams[frame.code].decode(frame.payload)
            chunk = pending[frame.code] + _ANSI.sub("", text)
            *lines, rest = chunk.replace("\r", "\n").split("\n")
            if len(rest) > _MAX_LINE:
                # Output without line ends (head -c 1G /dev/zero) must not grow one string for ever,
                # which made indexing quadratic: index it in pieces of one long line each.
                lines.append(rest[:_MAX_LINE])
                rest = ""
            pending[frame.code] = rest
            for line in lines:
                clean = line.strip()
                if clean and clean not in seen:
                    seen.add(clean)
                    kept.append(clean)
                    size += len(clean) + 1
        elif frame.code == "x":
            _index_meta(index, frame)
    index.truncated = truncated[0]
    for rest in pending.values():
        if rest.strip() and rest.strip() not in seen:
            kept.append(rest.strip())
    lines_path(path).write_text("\n".join(kept) + "\n", encoding="utf-8")
    index.output_lines = len(kept)
    if kind == "exec" and command is not None:
        index.commands.append((0.0, command, "exec"))
    # An exec with a terminal (ssh -t host bash, sudo -i) is typed into like a shell.
    if kind == "shell" or pty:
        from .commands import reconstruct_commands  # noqa: PLC0415 - pyte loads only when a shell is indexed

        _, frames_again, _ = read_recording(path)
        width, height = int(header.get("width") or 80), int(header.get("height") or 24)
        for typed in reconstruct_commands(frames_again, width=width, height=height):
            index.commands.append((typed.time, typed.command, typed.source))
    return index


def _index_meta(index: RecordingIndex, frame: Frame) -> None:
    try:
        meta = frame.json()
    except ValueError:
        return
    if not isinstance(meta, dict):
        return
    if "sftp" in meta:
        index.transfers.append({"time": round(frame.time, 3), **meta["sftp"]})
    elif "end" in meta:
        index.end = meta["end"]


def save_index(store: Store, session_id: str, index: RecordingIndex) -> None:
    with store.transaction() as session:
        row = session.get(RecordedSession, session_id)
        if row is None:
            return
        for moment, text, source in index.commands:
            session.add(SessionCommand(session_id=session_id, time=moment, command=text[:4096], source=source))
        row.commands_count = len(index.commands)
        row.index_json = dumps(
            {"transfers": index.transfers[:1000], "end": index.end, "output_lines": index.output_lines,
             "truncated": index.truncated}
        )  # fmt: skip
        session.add(row)
