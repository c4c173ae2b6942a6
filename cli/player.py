"""Safe replay of a recorded terminal session: a sanitiser, a schedule and a player.

A recording is output written by whoever was on the production host; replayed raw, it could make the
reviewer's terminal act or answer: set the clipboard (OSC 52), set or report the title, answer device
attribute and status queries into the reviewer's input, switch on mouse or focus reporting, leave UTF-8
mode so that later bytes become 8-bit controls, or pass strings to tmux and screen. :func:`sanitize`
keeps what draws the screen (text, colours, cursor movement, erasing, scroll regions, the alternate
screen) and drops everything else, by allowlist: every OSC, DCS, APC, PM and SOS string; control
sequences other than drawing ones (reports, device attributes, window operations, DECRQM, XTVERSION,
keyboard and mouse modes); BEL and ENQ; 8-bit C1 controls (a kept 8-bit CSI is written in its 7-bit
form). ``jit-ssh replay --raw`` bypasses it.

:func:`schedule` turns recording times into playback times and :func:`play` writes them, pausing on
space and quitting on q when given keys (:class:`TtyKeys` reads them from the reviewer's terminal).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import select
import termios
import time
import tty
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TextIO

from jit_ssh.ca import InputError

__all__ = ["KeySource", "SanitizerState", "Step", "TtyKeys", "play", "sanitize", "sanitize_events", "schedule"]

# -- sanitising --------------------------------------------------------------------------------------

_CAN, _SUB, _ESC, _BEL = "\x18", "\x1a", "\x1b", "\x07"
_KEPT_CONTROLS = frozenset("\b\t\n\x0b\x0c\r\x0e\x0f")  # movement, line feeds, charset shifts
_SPECIAL = re.compile(r"[\x00-\x07\x10-\x1f\x7f-\x9f]")  # everything in ground state that is not text
_STRING_END = re.compile(r"[\x07\x18\x1a\x1b\x80-\x9f]")
_C1_STRINGS = frozenset("\x90\x98\x9d\x9e\x9f")  # DCS, SOS, OSC, PM, APC
_ESC_STRINGS = frozenset("]PX^_k")  # OSC, DCS, SOS, PM, APC, and screen/tmux's title string
_ESC_FINALS = frozenset("78=>DEHMNOc69no|}~")  # save/restore cursor, keypad, index, reset, shifts
_CHARSET_INTERMEDIATES = frozenset("()*+-./")
_CSI_FINALS = frozenset("@ABCDEFGHIJKLMPSTXZ`abdefgmrsu")  # drawing, movement, erase, SGR, margins
_ANSI_MODES = frozenset({4})  # insert mode
_DEC_MODES = frozenset({5, 6, 7, 12, 25, 47, 1047, 1048, 1049, 2026})  # drawing only: no reports, no mouse
_CSI_MAX = 256
_PARAMS = re.compile(r"[0-9:;]*")
_WHOLE_CSI = re.compile(r"\x1b\[([0-?]{0,128}[ -/]{0,8})([@-~])")  # shorter than _CSI_MAX


@dataclass(frozen=True, slots=True)
class SanitizerState:
    """Where :func:`sanitize` stopped: inside an escape sequence split across chunks, or not."""

    mode: str = "ground"  # ground, esc, csi, ignore (a CSI being dropped), string (a string being dropped)
    pending: str = ""  # the intermediates or parameters read so far (at most _CSI_MAX characters)


def sanitize(data: str, state: SanitizerState | None = None) -> tuple[str, SanitizerState]:
    """``data`` with every sequence removed that could make a terminal act or answer; see the module.

    Pass the returned state with the next chunk: a sequence split between chunks is handled as one.
    """
    mode, pending = (state.mode, state.pending) if state is not None else ("ground", "")
    out: list[str] = []
    i, size = 0, len(data)
    while i < size:
        if mode == "ground":
            match = _SPECIAL.search(data, i)
            if match is None:
                out.append(data[i:])
                break
            out.append(data[i : match.start()])
            i = match.start()
            whole = _WHOLE_CSI.match(data, i)
            if whole is not None:  # the common case at full speed; the state machine does the rest
                kept = _allowed_csi(whole[1], whole[2])
                out.append(kept or "")
                i = whole.end()
                continue
            char = data[i]
            i += 1
            if char == _ESC:
                mode, pending = "esc", ""
            elif "\x80" <= char <= "\x9f":
                mode, pending = _c1(char)
            continue
        if mode == "string":
            match = _STRING_END.search(data, i)
            if match is None:
                break
            i = match.start()
            mode = "ground"  # the terminator (or what aborts the string) is handled from ground state
            if data[i] == _BEL:
                i += 1
            continue
        char = data[i]
        i += 1
        if char == _ESC:
            mode, pending = "esc", ""
        elif char in (_CAN, _SUB):
            mode, pending = "ground", ""
        elif "\x80" <= char <= "\x9f":
            mode, pending = _c1(char)
        elif char < " ":
            if char in _KEPT_CONTROLS:
                out.append(char)  # a terminal executes C0 controls inside a sequence
        elif char == "\x7f":
            pass
        elif mode == "esc":
            mode, pending = _escape(char, pending, out)
        else:
            mode, pending = _csi(mode, char, pending, out)
    return "".join(out), SanitizerState(mode, pending)


def _c1(char: str) -> tuple[str, str]:
    if char == "\x9b":
        return "csi", ""
    if char in _C1_STRINGS:
        return "string", ""
    return "ground", ""  # ST and the other C1 controls are dropped


def _escape(char: str, pending: str, out: list[str]) -> tuple[str, str]:
    if not pending:
        if char == "[":
            return "csi", ""
        if char in _ESC_STRINGS:
            return "string", ""
    if " " <= char <= "/":
        return "esc", (pending + char)[:8]
    if not "0" <= char <= "~":
        return "ground", ""  # not an escape sequence after all; a terminal drops it
    allowed = (
        (not pending and char in _ESC_FINALS)
        or (pending[:1] in _CHARSET_INTERMEDIATES and len(pending) <= 2)
        or (pending == "#" and char in "345678")
    )
    if allowed:
        out.append(_ESC + pending + char)
    return "ground", ""


def _csi(mode: str, char: str, pending: str, out: list[str]) -> tuple[str, str]:
    if "@" <= char <= "~":
        if mode == "csi":
            kept = _allowed_csi(pending, char)
            if kept is not None:
                out.append(kept)
        return "ground", ""
    if mode == "ignore":
        return mode, ""
    if char > "~" or len(pending) >= _CSI_MAX:
        return "ignore", ""  # not a control sequence a terminal would run: drop it to its final byte
    if "0" <= char <= "?" and pending and pending[-1] < "0":
        return "ignore", ""  # a parameter after an intermediate
    return "csi", pending + char


@functools.lru_cache(maxsize=4096)  # output repeats the same few colours and movements
def _allowed_csi(body: str, final: str) -> str | None:
    """The control sequence to pass on (7-bit), or None to drop it."""
    prefix = body[:1] if body[:1] in ("<", "=", ">", "?") else ""
    rest = body[len(prefix) :]
    cut = len(rest)
    while cut and rest[cut - 1] < "0":
        cut -= 1
    params, intermediates = rest[:cut], rest[cut:]
    if not _PARAMS.fullmatch(params):
        return None  # a private marker in the middle: nothing a terminal draws
    if intermediates:
        allowed = not prefix and (intermediates, final) in ((" ", "q"), ("!", "p"))  # cursor style, soft reset
        return f"\x1b[{body}{final}" if allowed else None
    if final in "hl" and prefix in ("", "?"):
        known = _DEC_MODES if prefix else _ANSI_MODES
        modes = [mode for mode in params.split(";") if mode.isdigit() and int(mode) in known]
        return f"\x1b[{prefix}{';'.join(modes)}{final}" if modes else None
    if prefix == "?":
        return f"\x1b[{body}{final}" if final in "JK" else None  # selective erase
    if prefix or final not in _CSI_FINALS:
        return None
    if final == "T" and params.count(";") > 0:
        return None  # with several parameters, xterm's mouse highlight tracking
    return f"\x1b[{body}{final}"


def sanitize_events(events: Iterable[tuple[float, str]]) -> Iterator[tuple[float, str]]:
    """:func:`sanitize` over a stream of ``(time, text)`` output events."""
    state: SanitizerState | None = None
    for moment, text in events:
        clean, state = sanitize(text, state)
        yield moment, clean


# -- timing ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """Write ``text`` at ``at`` seconds after playback starts."""

    at: float
    text: str


def schedule(
    events: Iterable[tuple[float, str]], *, speed: float = 1.0, idle_limit: float | None = None, start: float = 0.0
) -> Iterator[Step]:
    """When to write each output event of a recording (times in seconds since it started).

    Gaps between events are divided by ``speed``, then capped at ``idle_limit``. Events before
    ``start`` are written at once, so that the screen is as it was when playback begins.
    """
    if not speed > 0:
        raise InputError(f"the replay speed must be positive, found {speed}")
    if idle_limit is not None and not idle_limit >= 0:
        raise InputError(f"the idle limit must be zero or more seconds, found {idle_limit}")
    if not start >= 0:
        raise InputError(f"the start must be zero or more seconds, found {start}")
    at, previous = 0.0, start
    for moment, text in events:
        if moment >= start:
            gap = max(0.0, moment - previous) / speed
            if idle_limit is not None:
                gap = min(gap, idle_limit)
            at += gap
            previous = max(previous, moment)
        yield Step(at, text)


# -- playing -----------------------------------------------------------------------------------------


class KeySource(Protocol):
    def read(self, timeout: float | None) -> str:
        """Keys pressed within ``timeout`` seconds (None: wait for one); ``""`` if none."""
        ...


class TtyKeys:
    """Keys from a terminal, read without echo or line buffering while in use (Ctrl-C still works)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list[Any] | None = None

    def __enter__(self) -> TtyKeys:
        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self._saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def read(self, timeout: float | None) -> str:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return ""
        data = os.read(self.fd, 64)
        return data.decode("utf-8", "replace") if data else "q"  # the terminal went away: stop


def play(
    steps: Iterable[Step],
    out: TextIO,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    keys: KeySource | None = None,
) -> None:
    """Write each step's text at its time. With ``keys``, space pauses and resumes, q quits.

    Times are kept against the start, so a slow terminal catches up instead of drifting.
    """
    origin = clock()
    for step in steps:
        while True:
            wait = origin + step.at - clock()
            if keys is None:
                if wait > 0:
                    sleep(wait)
                break
            pressed = keys.read(max(wait, 0.0))
            if "q" in pressed or "Q" in pressed:
                return
            if " " in pressed:
                paused = clock()
                if not _paused(keys):
                    return
                origin += clock() - paused
                continue
            if wait <= 0:
                break
        if step.text:
            out.write(step.text)
            out.flush()


def _paused(keys: KeySource) -> bool:
    """Wait for space (True: resume) or q (False: quit)."""
    while True:
        pressed = keys.read(None)
        if "q" in pressed or "Q" in pressed:
            return False
        if " " in pressed:
            return True
