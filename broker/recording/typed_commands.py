"""The command lines typed in an interactive session, reconstructed from its recording (DESIGN.md, "Recording").

Two readings are combined at each press of Enter:

* **keys**: the input replayed through a model of readline's line editing (broker/recording/keystrokes.py), which
  says when the line is *unreliable*: history, Tab and unknown keys change it in ways keys do not show.
* **screen**: the line as the shell displayed it, read off a pyte terminal emulator fed the output:
  from where typing began on the prompt line (the prompt ends there) to the end of the line, across
  wrapped rows, just before the shell's newline after Enter (or as it was at Enter if no newline
  comes before the next key, as with echo off).

Which reading is kept, line by line (:meth:`_Line.choose`):

* The screen shows the keys' line: one entry, ``"screen"``. Unreliable keys: the screen alone when it
  can be read (those keys are known to be wrong), the keys when it cannot.
* Reliable keys, and the screen shows something else. If it starts as the line does, the shell edited
  it in a way the model does not know (vi mode, a custom binding): both are kept, ``"screen"`` and
  ``"keys"``, so that a search finds the command either way. Otherwise the screen does not show this
  line, and the keys alone are kept: it was typed ahead of the prompt, while output was still printing
  or during the login banner, and the reading has that output, or the prompt glued on
  (``root@vm:/root# echo …``, ``croot@vm…`` when the terminal driver echoed the first key before the
  prompt came).
* Typed with echo off: the screen shows nothing of the line where it was typed (bash after ``stty
  -echo``, a password prompt, a shell without readline), nothing came back between its first key and
  Enter, and its text is not in the output that came after Enter, before the next key (typed ahead,
  the terminal driver echoes it there, after what was printing). The keys are kept with
  ``echo=False``: a line typed blind may be a command, so it is indexed, passwords included
  (docs/security.md).

Approximated, by design:

* The emulator gets at most the last 16 KiB of output before each key (the screen is reset when more
  came), so the cost does not grow with the output. The prompt line comes out right, rows above may not.
* Typing begins where the cursor is when a line's first key arrives: for keys typed ahead of the
  prompt, the wrong place. The prompt's text is checked at Enter (and looked for above the cursor);
  the keys serve when it is not found, and when the reading does not start as the line does.
* An empty reading at Enter that no output ever followed (lines typed ahead before the shell
  answered) says nothing about echo: it counts as unread. A line typed blind over several input
  events while output was printing is indexed but not marked.
* Only a line begun at the start of an input event is read off the screen; further lines in the same
  event (a pasted script) and multi-line pastes come from the keys alone.
* Every line entered is reported, whatever read it: a shell, ``mysql``, an editor. A row continues
  onto the next when its last column is used or the cursor is further down; zero-width characters
  that do not combine are dropped. Vi mode and custom key bindings are not modelled in the keys.
* Only characters are emulated, at a bounded cost per byte: reverse video is not, ``ESC # 8`` fills
  each row with one shared E (a cell it filled may read E where a deletion or a wider screen would
  leave it blank), and a sequence pyte fails on is dropped, as a terminal ignores it.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from unicodedata import combining

import pyte
import pyte.modes
from pyte.screens import StaticDefaultDict
from wcwidth import wcwidth

from .format import Frame, TextStream
from .keystrokes import LineEditor, key_tokens, printable

__all__ = ["TypedCommand", "reconstruct_commands"]

_TAIL = 16 * 1024  # output bytes fed to the emulator before a keystroke, at most
_ECHO_WATCH, _ECHO_NEEDLE = 1024 * 1024, 64  # output searched for a line's late echo, and how much of the line
#: The emulated screen's bounds: a terminal of 1000x500 made each ESC # 8 (fill the screen) cost half a million
#: cell writes. A wider terminal is emulated at this size: its long lines may wrap differently on the
#: emulated screen, and the keys' reading of a line is indexed beside the screen's where they differ.
_MAX_COLUMNS, _MAX_LINES = 512, 200
_SIZE = re.compile(rb"(\d{1,9})x(\d{1,9})")


@dataclass(frozen=True, slots=True)
class TypedCommand:
    """One command line entered in a session."""

    time: float  #: seconds since the start of the recording, when Enter was pressed
    command: str  #: the command line as finally run
    source: str  #: ``"screen"`` (read off the emulated terminal) or ``"keys"`` (keystroke reconstruction)
    echo: bool = True  #: ``False``: typed while the terminal did not echo (the screen showed none of it)


def reconstruct_commands(frames: Iterable[Frame], *, width: int = 80, height: int = 24) -> list[TypedCommand]:
    """The command lines entered in a recorded terminal session, in order (a line read two ways gives
    two entries with the same time); see the module docstring."""
    tracker = _Tracker(width, height)
    for frame in frames:
        tracker.take(frame)
    tracker.settle()
    return [command for line in tracker.lines for command in line.choose()]


# -- the screen --------------------------------------------------------------------------------------


class _Stream(pyte.Stream):
    """pyte's parser, made to drop a sequence it fails on instead of the rest of the output.

    pyte raises on sequences no terminal sends (``ESC [ 5 J``: an erase of an unknown kind; a parameter
    of 5,000 digits or of a superscript digit), resets its parser and gives up the chunk; a session that
    printed four bytes made its commands unreadable. A terminal ignores such a sequence: so do we.
    """

    def _send_to_parser(self, data: str) -> bool | None:
        try:
            return super()._send_to_parser(data)
        except Exception:  # noqa: BLE001 - any handler's failure on hostile input; pyte reset its parser
            return True  # the reset parser takes plain text again


class _Screen(pyte.Screen):
    """A pyte screen that counts how far its content scrolled up, so that a row can be followed (a
    scroll down, or a scroll region, is left to the search for the prompt)."""

    def __init__(self, columns: int, lines: int) -> None:
        self.scrolled = 0
        super().__init__(columns, lines)

    def index(self) -> None:
        top, bottom = self.margins or (0, self.lines - 1)
        if self.cursor.y == bottom and top == 0:
            self.scrolled += 1
        super().index()

    def draw(self, data: str) -> None:
        if not data.isascii():  # pyte drops the rest of a chunk at a zero-width character that does not combine
            data = "".join(char for char in data if char.isascii() or wcwidth(char) > 0 or combining(char))
        super().draw(data)

    def cells(self, row: int, start: int, end: int) -> str:
        return "".join(self.buffer[row][x].data for x in range(start, end))

    # pyte rewrites every cell it holds for some sequences of three to six bytes: on the largest screen,
    # a second of CPU and 90 MB for each ``ESC # 8``, and 16 KiB of them before each key. Only characters
    # are read here, so each of these costs a row at most, and a resize the cells it drops.
    def alignment_display(self) -> None:
        """``ESC # 8``: every row is one shared E in every cell."""
        self.dirty.update(range(self.lines))
        filled = self.default_char._replace(data="E")
        for y in range(self.lines):
            self.buffer[y] = StaticDefaultDict(filled)

    def erase_in_display(self, how: int = 0, *args: Any, **kwargs: Any) -> None:
        """Rows erased are dropped: they read blank. An unknown kind is ignored, as terminals do."""
        if how not in (0, 1, 2, 3):
            return
        rows = {0: range(self.cursor.y + 1, self.lines), 1: range(self.cursor.y)}.get(how, range(self.lines))
        self.dirty.update(rows)
        for y in rows:
            self.buffer.pop(y, None)
        if how in (0, 1):
            self.erase_in_line(how)

    def set_mode(self, *modes: int, **kwargs: Any) -> None:
        super().set_mode(*_characters_only(modes, kwargs), **kwargs)

    def reset_mode(self, *modes: int, **kwargs: Any) -> None:
        super().reset_mode(*_characters_only(modes, kwargs), **kwargs)

    def resize(self, lines: int | None = None, columns: int | None = None) -> None:
        """pyte drops the columns cut off one by one from every row, held or not: here the cells held."""
        if columns and columns < self.columns:
            for line in self.buffer.values():
                for x in [x for x in line if x >= columns]:
                    del line[x]
            self.columns = columns
            self.set_margins()
        super().resize(lines, columns)


def _characters_only(modes: tuple[int, ...], kwargs: dict[str, Any]) -> tuple[int, ...]:
    """Modes without reverse video (DECSCNM), which rewrote every cell and changes no character."""
    if not kwargs.get("private"):
        return modes
    return tuple(mode for mode in modes if mode << 5 != pyte.modes.DECSCNM)


@dataclass(frozen=True, slots=True)
class _Anchor:
    """Where typing began: the screen generation, the row as of ``scrolled``, the column, the prompt."""

    epoch: int
    row: int
    scrolled: int
    column: int
    prompt: str


@dataclass(slots=True)
class _Line:
    time: float
    keys: str
    unreliable: bool
    multiline: bool
    anchor: _Anchor | None
    silent: bool  # no output came between its first key and Enter (always so for a line sent at once)
    screen: str | None = None
    echoed_late: bool = False  # its text came in the output after Enter (a terminal driver's echo)

    def choose(self) -> list[TypedCommand]:
        keys = self.keys.strip()
        # only printable characters: no bidi overrides or the like where reviewers read the commands
        screen = None if self.screen is None else printable(self.screen).strip()
        # Where the screen shows nothing of the line: echo was off if nothing ever came back for it.
        echo = self.echoed_late or not self.silent
        if screen == "":
            return [TypedCommand(self.time, keys, "keys", echo=echo)] if keys else []
        if self.unreliable:
            text, source = (screen, "screen") if screen else (keys, "keys")
            return [TypedCommand(self.time, text, source)] if text else []
        if not keys:
            return []  # reliable keys typed nothing: what the screen shows there is not this line
        if screen == keys:
            return [TypedCommand(self.time, screen, "screen")]
        if screen is None or self.multiline or screen.endswith(keys):
            return [TypedCommand(self.time, keys, "keys")]
        if screen[0] == keys[0]:
            return [TypedCommand(self.time, screen, "screen"), TypedCommand(self.time, keys, "keys")]
        return [TypedCommand(self.time, keys, "keys", echo=echo)]


class _Tracker:
    """Follows one session: the emulated screen, the line being typed, and the lines entered so far."""

    def __init__(self, width: int, height: int) -> None:
        self.screen = _Screen(max(1, min(width, _MAX_COLUMNS)), max(1, min(height, _MAX_LINES)))
        self.stream = _Stream(self.screen)
        self.decoder, self.epoch = TextStream(), 0  # the epoch counts screen resets and resizes
        self.chunks: deque[bytes] = deque()
        self.buffered, self.overflow = 0, False  # bytes in chunks; whether older ones were dropped
        self.editor = LineEditor()
        self.input = TextStream()
        self.partial_key = ""
        self.anchor: _Anchor | None = None
        self.pending: _Line | None = None  # Enter was pressed; read the line when the shell's newline comes
        self.pending_fed = 0
        # Until the next key, the last line read off the screen is looked for in the output: typed
        # ahead, the terminal driver echoes it after whatever was printing; typed blind, it never shows.
        self.watch: tuple[_Line, bytes] | None = None
        self.watch_tail, self.watch_left = b"", 0
        self.lines: list[_Line] = []
        self.printed = self.line_start = 0  # output bytes so far, and at the first key of the line being typed

    def take(self, frame: Frame) -> None:
        """One frame of the recording: output, keys or a resize (metadata says nothing about the screen)."""
        if frame.code in ("o", "e"):
            self.output(frame.payload)
        elif frame.code == "i":
            self.keys(frame.time, frame.payload)
        elif frame.code == "r":
            self.resize(frame.payload)

    # output
    def output(self, data: bytes) -> None:
        self.printed += len(data)
        if self.watch is not None:
            self._watch(*self.watch, data)
        line = self.pending
        if line is not None and line.anchor is not None:
            newline = data.find(b"\n")
            self._feed(data if newline < 0 else data[:newline])
            self.pending_fed += len(data)
            if newline >= 0:
                line.screen = self._read(line.anchor)
            if newline >= 0 or self.pending_fed >= _TAIL:
                self.pending = None  # read; or not a shell's line after all, and the reading at Enter stands
            if newline < 0:
                return
            data = data[newline:]
        if data:
            self.chunks.append(data)
            self.buffered += len(data)
            while len(self.chunks) > 1 and self.buffered - len(self.chunks[0]) >= _TAIL:
                self.buffered -= len(self.chunks.popleft())
                self.overflow = True

    def _watch(self, line: _Line, needle: bytes, data: bytes) -> None:
        window = self.watch_tail + data[: self.watch_left]
        self.watch_left -= len(data)
        if needle in window:
            line.echoed_late = True
            self.watch = None
        elif self.watch_left <= 0:
            self.watch = None
        else:  # the needle may straddle two chunks
            self.watch_tail = window[max(0, len(window) - len(needle) + 1) :]

    def _feed(self, data: bytes) -> None:
        text, _ = self.decoder.decode(data)
        if text:
            self.stream.feed(text)

    def _flush(self) -> None:
        if not self.chunks:
            return
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        if self.overflow or len(data) > _TAIL:
            floor, end, start = max(0, len(data) - _TAIL), len(data), -1
            for _ in range(self.screen.lines + 1):  # what the screen shows, from the start of a line
                found = data.rfind(b"\n", floor, end)
                if found < 0:
                    break
                start = end = found
            data = data[start + 1 :] if start >= 0 else data[floor:]
            self.screen.reset()
            self.decoder = TextStream()
            self.epoch += 1
            self.overflow = False
        self._feed(data)

    def resize(self, payload: bytes) -> None:
        size = _SIZE.fullmatch(payload)
        if size is not None and int(size[1]) > 0 and int(size[2]) > 0:
            self._flush()
            self.screen.resize(lines=min(int(size[2]), _MAX_LINES), columns=min(int(size[1]), _MAX_COLUMNS))
            self.epoch += 1  # pyte drops rows from the top when shrinking: find the prompt again

    # input
    def settle(self) -> None:
        """A key came, or the recording ended: the last line entered stays as read, and its echo is no
        longer looked for. An empty reading that no output followed proves nothing: it counts as unread."""
        if self.pending is not None and self.pending_fed == 0 and self.pending.screen == "":
            self.pending.screen = None
        self.pending = self.watch = None

    def keys(self, time: float, payload: bytes) -> None:
        self.settle()
        self._flush()
        text, _ = self.input.decode(payload)
        tokens, self.partial_key = key_tokens(text, self.partial_key)
        for index, token in enumerate(tokens):
            if not self.editor.touched:
                self.line_start = self.printed
                if index == 0:
                    self.anchor = self._anchor()
            ending = self.editor.apply(token)
            if ending == "enter":
                editor = self.editor
                silent = self.line_start == self.printed
                line = _Line(time, editor.text, editor.unreliable, editor.multiline, self.anchor, silent)
                self.lines.append(line)
                if line.anchor is not None:
                    # Read now, and again at the shell's newline once the echo of this batch has come.
                    # Without a newline (echo off: ``read -s`` prints none) the reading now stands.
                    line.screen = self._read(line.anchor)
                    self.pending, self.pending_fed = line, 0
                    needle = line.keys.strip().encode()[:_ECHO_NEEDLE]
                    if needle:
                        self.watch, self.watch_tail, self.watch_left = (line, needle), b"", _ECHO_WATCH
            if ending is not None:
                self.editor.reset()
                self.anchor = None

    def _anchor(self) -> _Anchor:
        screen = self.screen
        row, column = screen.cursor.y, min(screen.cursor.x, screen.columns)
        return _Anchor(self.epoch, row, screen.scrolled, column, screen.cells(row, 0, column))

    def _read(self, anchor: _Anchor) -> str | None:
        screen = self.screen
        column = anchor.column
        row = anchor.row - (screen.scrolled - anchor.scrolled)
        if anchor.epoch != self.epoch or not 0 <= row < screen.lines or screen.cells(row, 0, column) != anchor.prompt:
            found = (y for y in range(min(screen.cursor.y, screen.lines - 1), -1, -1))
            row = next((y for y in found if screen.cells(y, 0, column) == anchor.prompt), -1)
            if row < 0:
                return None
        return "".join(self._rows(row, column)).rstrip()

    def _rows(self, row: int, column: int) -> Iterator[str]:
        screen = self.screen
        last = screen.columns - 1
        while row < screen.lines:
            yield screen.cells(row, column, screen.columns)
            # readline leaves the cursor on the last row of the line; a full row wraps onto the next
            if row >= screen.cursor.y and screen.buffer[row][last].data in (" ", ""):
                return
            row, column = row + 1, 0
