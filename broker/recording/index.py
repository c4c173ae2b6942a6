"""The index of a recording, written when its session closes: what review searches and shows.

* ``session_commands`` (the store): the exec command in full, each environment value that reached the
  host (``NAME=value``), and the lines typed at a terminal as broker/recording/typed_commands.py reconstructs them (from
  the screen, and from the keys when they differ or echo was off), so ``--grep`` finds a command however
  it was run;
* ``<recording>.input``: the distinct lines of input, for ``--grep`` too: a script fed to ``ssh -T`` or to
  ``bash`` on stdin is commands as surely as typed keys are;
* ``<recording>.lines``: the distinct lines of output, for ``--grep-output``;
* ``sessions.index_json``: file transfers, totals and what the index could not cover; ``flags_json``:
  what a reviewer should look at (broker/recording/flags.py).

Indexing reads user data of any size and shape, so it runs apart from the broker in a process of its own
with a CPU-time and memory budget (broker/isolate.py). Over the budget it keeps what it has and says so
in ``problems``: the session is marked, never silently under-indexed. The text files are capped; a cap
reached is a problem too.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..isolate import BudgetExceeded
from .flags import flags_in_command, flags_in_output, flags_in_transfer, merge
from .format import Frame, RecordingFormatError, TextStream, read_recording
from .transfers import TransferList

__all__ = [
    "INPUT_INDEX_LIMIT",
    "OUTPUT_INDEX_LIMIT",
    "RecordingIndex",
    "index_recording",
    "input_lines_path",
    "lines_path",
    "run_index_job",
]

OUTPUT_INDEX_LIMIT = 4 * 1024 * 1024
INPUT_INDEX_LIMIT = 16 * 1024 * 1024
_MAX_LINE = 4096
_MAX_COMMAND = 64 * 1024
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[PX^_][^\x1b]*(?:\x1b\\)?|.)")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass
class RecordingIndex:
    commands: list[tuple[float, str, str]] = field(default_factory=list)
    transfers: list[dict[str, Any]] = field(default_factory=list)
    #: File operations left out of ``transfers`` (successful lookups first); the recording has them all.
    transfers_dropped: int = 0
    end: dict[str, Any] = field(default_factory=dict)
    output_lines: int = 0
    input_lines: int = 0
    truncated: bool = False
    #: What a reviewer should look at (out-of-band servers, sensitive files changed, ...).
    flags: list[str] = field(default_factory=list)
    #: What the index does not cover (over the budget, a text index capped): the session is marked.
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it copies nested values by recursion, and a metadata frame nested 500
        # deep (JSON allows about 1000) made it overflow the stack. The values are JSON types already.
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecordingIndex:
        index = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        index.commands = [(float(t), str(c), str(s)) for t, c, s in index.commands]
        return index


def lines_path(recording: Path) -> Path:
    return recording.with_suffix(".lines")


def input_lines_path(recording: Path) -> Path:
    return recording.with_suffix(".input")


class _Lines:
    """The distinct lines of one kind of text (output or input), up to ``limit`` characters in all."""

    def __init__(self, limit: int, *, clean_terminal: bool) -> None:
        self.limit = limit
        self.clean_terminal = clean_terminal
        self.seen: set[str] = set()
        self.kept: list[str] = []
        self.size = 0
        self.full = False
        self.streams: dict[str, TextStream] = {}
        self.pending: dict[str, str] = {}

    def feed(self, stream: str, data: bytes) -> list[str]:
        """Add a chunk of ``stream``; returns the new distinct lines it completed."""
        if self.full:
            return []
        text, _ = self.streams.setdefault(stream, TextStream()).decode(data)
        if self.clean_terminal:
            text = _ANSI.sub("", text)
        chunk = self.pending.get(stream, "") + text
        *lines, rest = chunk.replace("\r", "\n").split("\n")
        if len(rest) > _MAX_LINE:
            # Text without line ends (head -c 1G /dev/zero) must not grow one string for ever, which made
            # indexing quadratic: index it in pieces of one long line each.
            lines.append(rest[:_MAX_LINE])
            rest = ""
        self.pending[stream] = rest
        return self._add(lines)

    def end(self, stream: str) -> list[str]:
        """``stream`` is over: its last line without a line end counts too."""
        rest = self.pending.pop(stream, "")
        self.streams.pop(stream, None)
        return [] if self.full else self._add([rest])

    def finish(self) -> list[str]:
        rests, self.pending = list(self.pending.values()), {}
        return [] if self.full else self._add(rests)

    def _add(self, lines: Iterable[str]) -> list[str]:
        new = []
        for line in lines:
            clean = _CONTROL.sub("", line).strip()
            if not clean or clean in self.seen:
                continue
            if self.size + len(clean) + 1 > self.limit:
                self.full = True
                break
            self.seen.add(clean)
            self.kept.append(clean)
            self.size += len(clean) + 1
            new.append(clean)
        return new

    def write(self, path: Path) -> None:
        """Replace ``path`` with the lines, 0640, atomically (a reader never sees half a file)."""
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o640)
            handle.write("\n".join(self.kept) + "\n" if self.kept else "")
        temporary.replace(path)


def index_recording(path: Path, *, kind: str, command: str | None, pty: bool) -> RecordingIndex:
    """Read a closed recording once (twice for a terminal session) and build what review needs.

    Raises RecordingFormatError if the recording cannot be read at all. A budget exceeded or memory
    exhausted midway keeps what was indexed so far and says so in ``problems``.
    """
    index = RecordingIndex()
    output = _Lines(OUTPUT_INDEX_LIMIT, clean_terminal=True)
    typed = _Lines(INPUT_INDEX_LIMIT, clean_terminal=pty)
    if command is not None:
        index.commands.append((0.0, command[:_MAX_COMMAND], "exec"))
        merge(index.flags, flags_in_command(command))
    header: dict[str, Any] = {}
    transfers = TransferList()
    links: dict[str, str] = {}  # symlinks made over SFTP in this session, to their targets
    stopped = False
    try:
        header, frames, truncated = read_recording(path)
        for frame in frames:
            if frame.code in ("o", "e"):
                for line in output.feed(frame.code, frame.payload):
                    merge(index.flags, flags_in_output(line))
            elif frame.code == "i" and kind != "sftp":
                for line in typed.feed("i", frame.payload):
                    if not pty:  # a terminal's keys are flagged by the lines they made (below)
                        merge(index.flags, flags_in_command(line))
            elif frame.code == "x":
                _index_meta(index, transfers, links, typed, frame)
        index.truncated = truncated[0]
        if index.truncated:
            index.problems.append("the recording ends in the middle of a frame (its broker stopped while writing)")
        for line in output.finish():
            merge(index.flags, flags_in_output(line))
        for line in typed.finish():
            if not pty:
                merge(index.flags, flags_in_command(line))
    except (BudgetExceeded, MemoryError) as exc:
        stopped = True
        index.problems.append(f"indexing stopped over its budget ({_why(exc)}): the rest is not indexed")
    index.transfers, index.transfers_dropped = transfers.kept(), transfers.dropped
    index.output_lines = len(output.kept)
    output.write(lines_path(path))
    # An exec with a terminal (ssh -t host bash, sudo -i) is typed into like a shell. Its keys are searched
    # as the lines they made (a typo corrected before Enter was never run); the raw keys only if the lines
    # could not be reconstructed.
    if pty and header and not stopped and _reconstruct(index, path, header):
        typed.kept, typed.full = [], False
    for name, lines in (("output", output), ("input", typed)):
        if lines.full:
            index.problems.append(f"{name} index capped at {lines.limit // (1024 * 1024)} MiB of distinct lines")
    index.input_lines = len(typed.kept)
    typed.write(input_lines_path(path))
    return index


def _reconstruct(index: RecordingIndex, path: Path, header: dict[str, Any]) -> bool:
    from .typed_commands import reconstruct_commands  # noqa: PLC0415 - pyte loads only when a terminal is indexed

    found: list[tuple[float, str, str]] = []
    width, height = _dimension(header.get("width"), 80), _dimension(header.get("height"), 24)
    try:
        _, frames, _ = read_recording(path)
        for line in reconstruct_commands(frames, width=width, height=height):
            source = line.source if line.echo else f"{line.source}-noecho"
            found.append((line.time, line.command[:_MAX_COMMAND], source[:16]))
    except (BudgetExceeded, MemoryError) as exc:
        index.problems.append(f"typed commands not reconstructed, over its budget ({_why(exc)}): keys indexed raw")
        return False
    except (RecordingFormatError, ValueError) as exc:
        index.problems.append(f"typed commands not reconstructed ({exc}): keys indexed raw")
        return False
    for moment, text, source in found:
        index.commands.append((moment, text, source))
        merge(index.flags, flags_in_command(text))
    return True


def _dimension(value: Any, default: int) -> int:
    """A terminal's width or height from the header; the broker writes a number, a damaged header anything."""
    try:
        return int(value or default)
    except (TypeError, ValueError, OverflowError):  # a list, "eighty", infinity: the emulator's default size
        return default


def _why(exc: BaseException) -> str:
    return "memory" if isinstance(exc, MemoryError) else "CPU time"


def _index_meta(
    index: RecordingIndex, transfers: TransferList, links: dict[str, str], typed: _Lines, frame: Frame
) -> None:
    with contextlib.suppress(RecordingFormatError):
        meta = frame.json()
        if not isinstance(meta, dict):
            return
        if isinstance(meta.get("sftp"), dict):
            op = meta["sftp"]
            transfers.add({"time": round(frame.time, 3), **op})
            merge(index.flags, flags_in_transfer(op, links))
        elif isinstance(meta.get("sftp_content"), dict):  # a file written over SFTP: searched like typed input
            content = meta["sftp_content"]
            with contextlib.suppress(ValueError, TypeError):
                stream = f"sftp:{content.get('path')}"
                for line in [
                    *typed.feed(stream, base64.b64decode(content["base64"], validate=True)),
                    *typed.end(stream),
                ]:
                    merge(index.flags, flags_in_command(line))
        elif isinstance(meta.get("end"), dict):
            index.end = meta["end"]
        elif isinstance(meta.get("env"), dict):
            for name, value in meta["env"].items():
                text = f"{name}={value}"
                index.commands.append((round(frame.time, 3), text[:_MAX_COMMAND], "env"))
                merge(index.flags, flags_in_command(str(value)))


def run_index_job(job: dict[str, Any]) -> dict[str, Any]:
    """The entry point in the indexing process (broker/isolate.py): a job in, the index out, as JSON types."""
    path = Path(job["path"])
    try:
        index = index_recording(path, kind=job["kind"], command=job.get("command"), pty=bool(job.get("pty")))
    except RecordingFormatError as exc:
        return {"error": exc.message}
    except OSError as exc:
        return {"error": f"the index cannot be written: {exc.strerror or exc}"}
    return {"index": index.as_dict()}
