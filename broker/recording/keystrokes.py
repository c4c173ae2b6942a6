"""Typed command lines as keystrokes show them: a model of readline's emacs-mode line editing.

Text inserts at the cursor; Backspace, Delete and Ctrl-D delete; Ctrl-A/E/B/F, Home, End, the arrows,
Alt-B/F and Ctrl-arrows move; Ctrl-U/K/W, Alt-D and Alt-Backspace kill and Ctrl-Y yanks the last kill;
Ctrl-C abandons the line; Enter ends it; bracketed pastes insert literally. History (up/down,
Ctrl-P/N/R), Tab and keys the model does not know make the line *unreliable*: the shell changed it in
a way the keys do not show (broker/recording/typed_commands.py then reads it off the screen). Vi mode and custom key
bindings are not modelled. Every edit is a string operation on a line of at most 16 Ki characters,
and a session's editing work is bounded, so hostile input costs time in proportion to its size.
"""

from __future__ import annotations

import re

__all__ = ["LineEditor", "key_tokens", "printable"]

_ESCAPE_MAX = 32
_MAX_LINE = 16 * 1024  # characters kept of one typed line
_MAX_WORK = 50_000_000  # edits cost the line's length each: past this, a session's keys are not modelled

_TEXT = re.compile(r"[^\x00-\x1f\x7f-\x9f]+")  # a run of characters that insert themselves


def key_tokens(text: str, pending: str) -> tuple[list[str], str]:
    """Split input into keys: runs of text, control characters and whole escape sequences (an unfinished
    escape sequence at the end is returned to be continued by the next input event)."""
    data, tokens, i = pending + text, [], 0
    while i < len(data):
        run = _TEXT.match(data, i)
        if run is not None:
            tokens.append(run.group())
            i = run.end()
            continue
        end = i + 1
        if data[i] == "\x1b":
            end += 1
            if end > len(data):
                return tokens, data[i:]
            if data[i + 1] == "[":
                while end < len(data) and "\x20" <= data[end] <= "\x3f" and end - i < _ESCAPE_MAX:
                    end += 1
                end += 1  # the final byte (or whatever ended the sequence)
            elif data[i + 1] == "O":
                end += 1
            if end > len(data):
                return tokens, data[i:]
        tokens.append(data[i:end])
        i = end
    return tokens, ""


_ACTIONS: dict[str, str] = {
    **dict.fromkeys(("\x01", "\x1b[H", "\x1bOH", "\x1b[1~", "\x1b[7~"), "home"),
    **dict.fromkeys(("\x05", "\x1b[F", "\x1bOF", "\x1b[4~", "\x1b[8~"), "end"),
    **dict.fromkeys(("\x02", "\x1b[D", "\x1bOD"), "left"),
    **dict.fromkeys(("\x06", "\x1b[C", "\x1bOC"), "right"),
    **dict.fromkeys(("\x1bb", "\x1b[1;5D", "\x1b[1;3D"), "word_left"),
    **dict.fromkeys(("\x1bf", "\x1b[1;5C", "\x1b[1;3C"), "word_right"),
    **dict.fromkeys(("\x7f", "\x08"), "backspace"),
    **dict.fromkeys(("\x1b\x7f", "\x1b\x08"), "kill_word_left"),
    **dict.fromkeys(("\r", "\n"), "enter"),
    **dict.fromkeys(("\x0c", "\x07"), "ignore"),
    "\x0b": "kill_end",
    "\x15": "kill_start",
    "\x17": "rubout",
    "\x19": "yank",
    "\x03": "abandon",
    "\x1bd": "kill_word_right",
    "\x1b[3~": "delete",
    "\x04": "eof_or_delete",
    "\x1b[200~": "paste_start",
}


_WORD_BACK = re.compile(r"[\W_]*[^\W_]*")  # readline's words are letters and digits
_BLANKS_BACK = re.compile(r"\s*\S*")  # unix-word-rubout: back over blanks, then to the previous blank


def printable(text: str) -> str:
    return text if text.isprintable() else "".join(char for char in text if char.isprintable() or char == "\n")


def _length(pattern: re.Pattern[str], text: str, start: int) -> int:
    match = pattern.match(text, start)
    return 0 if match is None else match.end() - start


class LineEditor:
    """Readline's emacs-mode editing of one line, as far as keystrokes show it."""

    def __init__(self) -> None:
        self.killed = ""
        self.work = 0  # characters copied or scanned so far, in every line of the session
        self.reset()

    def reset(self) -> None:
        self.text = ""
        self.cursor = 0
        self.unreliable = self.multiline = self.pasting = self.touched = False

    def apply(self, key: str) -> str | None:
        """Apply one key (or run of text); returns ``"enter"`` or ``"abandon"`` when the line ends."""
        self.touched = True
        self.work += len(self.text) + len(key)
        flooded = self.work > _MAX_WORK  # a flood of edits on long lines: stop modelling them
        if self.pasting:
            if key == "\x1b[201~":
                self.pasting = False
            elif flooded:
                self.unreliable = True
            elif key in ("\r", "\n"):
                self.multiline = True
                self._insert("\n")
            elif key[0] != "\x1b":
                self._insert(key)
            return None
        action = _ACTIONS.get(key)
        if action in ("enter", "abandon"):
            return action
        if action is not None and not flooded:
            self._act(action)
        elif _TEXT.fullmatch(key) and not flooded:
            self._insert(key)
        else:
            self.unreliable = True  # history, completion, or a key this model does not know
        return None

    def _act(self, action: str) -> None:
        text, cursor = self.text, self.cursor
        moves = {"home": 0, "end": len(text), "left": max(0, cursor - 1), "right": min(len(text), cursor + 1)}
        if action in moves:
            self.cursor = moves[action]
        elif action == "word_left":
            self.cursor = self._back(_WORD_BACK)
        elif action == "word_right":
            self.cursor = cursor + _length(_WORD_BACK, text, cursor)
        elif action == "backspace":
            self._kill(max(0, cursor - 1), cursor, keep=False)
        elif action == "delete" or (action == "eof_or_delete" and text):
            self._kill(cursor, cursor + 1, keep=False)
        elif action == "kill_end":
            self._kill(cursor, len(text))
        elif action == "kill_start":
            self._kill(0, cursor)
        elif action == "rubout":
            self._kill(self._back(_BLANKS_BACK), cursor)
        elif action == "kill_word_left":
            self._kill(self._back(_WORD_BACK), cursor)
        elif action == "kill_word_right":
            self._kill(cursor, cursor + _length(_WORD_BACK, text, cursor))
        elif action == "yank":
            self._insert(self.killed)
        elif action == "paste_start":
            self.pasting = True

    def _back(self, pattern: re.Pattern[str]) -> int:
        """Where ``pattern``, matched backwards from the cursor, ends."""
        return self.cursor - _length(pattern, self.text[: self.cursor][::-1], 0)

    def _insert(self, text: str) -> None:
        text = printable(text)
        if len(self.text) + len(text) > _MAX_LINE:
            text = text[: max(0, _MAX_LINE - len(self.text))]
            self.unreliable = True
        self.text = self.text[: self.cursor] + text + self.text[self.cursor :]
        self.cursor += len(text)

    def _kill(self, start: int, end: int, *, keep: bool = True) -> None:
        if start < end:
            if keep:
                self.killed = self.text[start:end]
            self.text = self.text[:start] + self.text[end:]
            self.cursor = start
