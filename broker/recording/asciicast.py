"""Export of recordings to asciicast: the text ``jit-ssh export`` writes and ``replay`` / ``watch`` play.

asciicast v2 (the default, which asciinema 2 and 3 and asciinema-player read) or v3, each to the letter of
its specification (docs.asciinema.org/manual/asciicast/v2 and /v3) and as asciinema 3 parses it
(``src/asciicast/v2.rs``, ``v3.rs``: serde structs, so one float ``timestamp`` or one event whose data
is not a string makes the whole file unreadable):

- The header: version, size (v3: ``term``), an integer ``timestamp`` (older brokers wrote a float),
  title, env, and jit-ssh's own ``jit_ssh`` object. Readers ignore fields they do not know: the v3
  specification says they MUST, asciinema 3's header structs do not deny unknown fields, and asciinema 2
  and asciinema-player read only the fields they use.
- The events: ``o`` output (stdout and stderr, as a terminal shows them), ``i`` input, ``r`` resize, and
  ``m`` markers for what jit-ssh knows besides: the exec command, the environment, file operations,
  signals, jit-ssh's notices, the end and the exit status (``exit 0``, ``sftp write /etc/x ... : ok``).
  Markers are the specification's own event for labelled points of a recording; players list them as
  chapters and skip to them. v3 ends with the ``x`` event, the exit status. Times never go back and are
  whole microseconds, so the intervals of v3 add up to exactly the times of v2.
- Text that is not UTF-8 is shown as U+FFFD (the format is JSON text), with a marker where a stream
  first has some; the recording keeps the exact bytes, and ``jit-ssh sessions verify`` checks it.

A marker's label holds what came from the session (a command, a path, a value): every character that
:meth:`str.isprintable` rejects (ESC, BEL, TAB, a bidi override, a lone surrogate) is written as a visible
JSON-style escape (``\\u001b``), so a player that shows labels shows text, never acts on it; the recording
and ``sessions show --json`` have the exact values.
"""

from __future__ import annotations

import json
import math
import re
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from jit_ssh.ca import InputError

from .format import Frame, RecordingSource, TextStream, read_recording
from .transfers import describe

__all__ = ["AsciicastWriter", "CastFormat", "to_asciicast"]

_encode = json.JSONEncoder(ensure_ascii=False).encode
_STREAMS = {"o": "stdout", "e": "stderr", "i": "input"}
_RESIZE = re.compile(r"[0-9]{1,5}x[0-9]{1,5}")
_MAX_SIZE = 65535  # width, height and resizes are u16 in asciinema 3
# Exit status of a process killed by a signal, as shells and asciinema 3 report it: 128 + the signal's
# number. SSH names the signal (RFC 4254, 6.10); these numbers are POSIX's, USR1 and USR2 Linux's.
_SIGNALS = {"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "ABRT": 6, "FPE": 8, "KILL": 9, "USR1": 10, "SEGV": 11,
            "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15}  # fmt: skip
_I32 = range(-(2**31), 2**31)


class CastFormat(StrEnum):
    """The asciicast versions ``jit-ssh export --format`` writes."""

    V2 = "v2"
    V3 = "v3"


#: Characters of a label with non-printable characters escaped, one by one; past it the label is cut and
#: says so (the recording keeps them all). Only a crafted file holds such a label: a megabyte of control
#: bytes took seconds and tens of megabytes to escape.
_MAX_ESCAPED_LABEL = 64 * 1024


def _label(text: str) -> str:
    """A marker label or header text that can only be displayed: non-printable characters escaped."""
    if text.isprintable():
        return text
    cut = ""
    if len(text) > _MAX_ESCAPED_LABEL:
        cut = f"... (cut at {_MAX_ESCAPED_LABEL} of {len(text)} characters; the recording keeps them all)"
        text = text[:_MAX_ESCAPED_LABEL]
    return "".join(char if char.isprintable() else json.dumps(char)[1:-1] for char in text) + cut


def _json_safe(value: Any) -> Any:
    """``value`` with what no JSON reader accepts replaced: NaN and infinities (Python's json reads them from a
    damaged header) become null, lone surrogates U+FFFD."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict):
        return {_json_safe(str(key)): _json_safe(item) for key, item in value.items()}
    return value


def _details(header: dict[str, Any]) -> Any:
    """The header's ``jit_ssh`` object, as it is when it can be written as JSON (the usual case, no copy)."""
    details = header.get("jit_ssh")
    if not isinstance(details, dict):
        return None
    try:
        try:
            json.dumps(details, ensure_ascii=False, allow_nan=False).encode()
        except (ValueError, UnicodeEncodeError):
            return _json_safe(details)
    except RecursionError:
        return {"error": "the recording's jit_ssh header is nested too deeply to export"}
    return details


def _timestamp(header: dict[str, Any]) -> int | None:
    """Unix time of the start, an integer as the specification says (older brokers wrote a float)."""
    details = header.get("jit_ssh")
    started = details.get("started") if isinstance(details, dict) else None
    for value in (header.get("timestamp"), started):
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 2**63:
            return int(value)  # NaN fails the comparison
    return None


def _size(value: Any, default: int) -> int:
    return value if type(value) is int and 0 < value <= _MAX_SIZE else default


class AsciicastWriter:
    """Turns frames into asciicast lines, incrementally (for export, replay and live watching).

    Call :meth:`header` first, then :meth:`frame` for each frame, and :meth:`finish` at the end; each
    returns whole lines. Replay and watch read the v2 lines back and play the ``o`` events.
    """

    def __init__(self, cast_format: str = CastFormat.V2) -> None:
        try:
            self.v3 = CastFormat(cast_format) is CastFormat.V3
        except ValueError:
            raise InputError(f"format must be v2 or v3, found {cast_format[:20]!r}") from None
        self.streams = {"o": TextStream(), "e": TextStream(), "i": TextStream()}
        self._micros = 0  # the time of the last event
        self._not_utf8: set[str] = set()
        self._ended = False
        self._exit: int | None = None

    def header(self, header: dict[str, Any]) -> str:
        env: dict[str, Any] = header["env"] if isinstance(header.get("env"), dict) else {}
        out: dict[str, Any] = {"version": 3 if self.v3 else 2}
        size = (_size(header.get("width"), 80), _size(header.get("height"), 24))
        if self.v3:
            term: dict[str, Any] = {"cols": size[0], "rows": size[1]}
            if isinstance(env.get("TERM"), str) and env["TERM"]:
                term["type"] = _label(env["TERM"])
            out["term"] = term
            env = {k: v for k, v in env.items() if k != "TERM"}
        else:
            out["width"], out["height"] = size
        timestamp = _timestamp(header)
        if timestamp is not None:
            out["timestamp"] = timestamp
        if isinstance(header.get("title"), str):
            out["title"] = _label(header["title"])
        # Only what was captured: a value the broker did not know is "" in the recording (v3 allows no null).
        env = {_label(str(k)): _label(v) for k, v in env.items() if isinstance(v, str) and v}
        if env:
            out["env"] = env
        details = _details(header)
        if details is not None:
            out["jit_ssh"] = details
        return _encode(out) + "\n"

    def frame(self, frame: Frame) -> str:
        if frame.code in self.streams:
            text, raw = self.streams[frame.code].decode(frame.payload)
            return self._text(frame.time, frame.code, text, raw is not None)
        if frame.code == "r":
            size = frame.payload.decode("ascii", "replace")
            cols, _, rows = size.partition("x")
            if _RESIZE.fullmatch(size) and 0 < int(cols) <= _MAX_SIZE and 0 < int(rows) <= _MAX_SIZE:
                return self._event(frame.time, "r", size)
            # Only a crafted file holds one (the broker records sizes it checked): say so, without its megabytes.
            shown = size if len(size) <= 40 else f"{size[:40]}... ({len(frame.payload)} bytes)"
            return self._event(frame.time, "m", _label(f"jit-ssh: a resize that is not a size: {shown}"))
        return "".join(self._event(frame.time, "m", _label(label)) for label in self._labels(frame.payload))

    def finish(self) -> str:
        """The rest of a character cut at the end of a stream, what the end did not say, and v3's exit event."""
        out = ""
        for code, stream in self.streams.items():
            text, raw = stream.decode(b"", final=True)
            out += self._text(None, code, text, raw is not None)
        if not self._ended:
            out += self._event(None, "m", "jit-ssh: the recording has no end record (the session was live, or cut off)")
        if self.v3 and self._exit is not None:
            out += self._event(None, "x", str(self._exit))
        return out

    # -- events ------------------------------------------------------------------------------------
    def _event(self, seconds: float | None, code: str, data: str) -> str:
        """One event line; ``seconds`` None is the time of the last one. Times never go back (a wall clock
        set back during a session), and v3 writes the interval from the previous event."""
        micros = self._micros if seconds is None else max(self._micros, round(seconds * 1_000_000))
        stamp = micros - self._micros if self.v3 else micros
        self._micros = micros
        return f"[{stamp // 1_000_000}.{stamp % 1_000_000:06d}, {_encode(code)}, {_encode(data)}]\n"

    def _text(self, seconds: float | None, code: str, text: str, replaced: bool) -> str:
        out = ""
        if replaced and code not in self._not_utf8:
            self._not_utf8.add(code)
            note = f"jit-ssh: {_STREAMS[code]} is not UTF-8 here: shown as U+FFFD (the recording keeps the bytes)"
            out = self._event(seconds, "m", note)
        if text:
            out += self._event(seconds, "i" if code == "i" else "o", text)
        return out

    def _labels(self, payload: bytes) -> list[str]:
        """Marker labels for one metadata frame (broker/recording/recorder.py and proxy.py write them)."""
        try:
            meta = json.loads(payload)
        except (ValueError, RecursionError):
            return [f"jit-ssh metadata that is not JSON: {payload.decode('utf-8', 'replace')}"]
        if not isinstance(meta, dict):
            return [f"jit-ssh metadata: {_compact(meta)}"]
        if "exec" in meta:
            return [f"exec: {meta['exec']}"]
        if "env" in meta or "env_refused" in meta:
            env: dict[str, Any] = meta["env"] if isinstance(meta.get("env"), dict) else {}
            refused: list[Any] = meta["env_refused"] if isinstance(meta.get("env_refused"), list) else []
            return [f"env {name}={value}" for name, value in env.items()] + [f"env refused {n}" for n in refused]
        if isinstance(meta.get("sftp"), dict):
            return [f"sftp {describe(meta['sftp'], full=True)}"]
        if "notice" in meta:
            return [f"jit-ssh: {meta['notice']}"]
        if "signal" in meta:
            return [f"signal {meta['signal']} from the client"]
        if "break" in meta:
            return [f"break of {meta['break']} ms from the client"]
        if "uncapped" in meta:
            stream = _STREAMS.get(str(meta["uncapped"]), meta["uncapped"])
            return [f"{stream} recorded in full from here, after {meta.get('after_bytes')} bytes: {meta.get('why')}"]
        if isinstance(meta.get("header"), dict):
            # Header values too long for the header, whole; the exec command is in its own marker.
            return [f"{key}: {value}" for key, value in meta["header"].items() if key != "command"]
        if isinstance(meta.get("end"), dict):
            return self._end(meta["end"])
        return [f"jit-ssh metadata: {_compact(meta)}"]

    def _end(self, end: dict[str, Any]) -> list[str]:
        self._ended = True
        label = f"end: {end.get('reason') or 'closed'}"
        if type(end.get("bytes_in")) is int and type(end.get("bytes_out")) is int:
            label += f"; {end['bytes_in']} bytes in, {end['bytes_out']} bytes out"
        labels = [label]
        streams: dict[str, Any] = end["streams"] if isinstance(end.get("streams"), dict) else {}
        limit = end.get("capture_limit")
        for code, tally in streams.items():
            # A capped stream (a transfer's content, output without a terminal) said only where it was cut.
            total = tally.get("bytes") if isinstance(tally, dict) else None
            if type(limit) is int and type(total) is int and total > limit:
                labels.append(
                    f"{_STREAMS.get(code, code)}: the first {limit} bytes kept, {total} bytes in all, "
                    f"sha256 {tally.get('sha256')}"
                )
        signal, status = end.get("exit_signal"), end.get("exit_status")
        if isinstance(signal, str) and signal:
            labels.append(f"exit signal {signal}")
            self._exit = 128 + _SIGNALS[signal] if signal in _SIGNALS else None
        elif type(status) is int:
            labels.append(f"exit {status}")
            self._exit = status if status in _I32 else None  # v3 reads the exit status as an i32
        return labels


def _compact(value: Any) -> str:
    try:
        return json.dumps(_json_safe(value), ensure_ascii=False, separators=(",", ":"), default=str)
    except RecursionError:
        return "(nested too deeply to show)"


def to_asciicast(path: Path | RecordingSource, out: IO[str], cast_format: str = CastFormat.V2) -> dict[str, Any]:
    """Write ``path`` as asciicast (v2 unless ``cast_format`` says v3) to ``out``; returns the recording's header."""
    header, frames, _ = read_recording(path)
    writer = AsciicastWriter(cast_format)
    out.write(writer.header(header))
    for frame in frames:
        out.write(writer.frame(frame))
    out.write(writer.finish())
    return header
