"""How the CLI speaks: human text with rich by default, JSON for scripts, one red line for errors.

Everything printed that came from a user, a request or a session (commands, paths, reasons, comments,
names, error messages quoting them) goes through :func:`printable` (or :func:`plain`, its rich form):
data is shown, never obeyed by the terminal nor read as rich markup (DESIGN.md invariant 10).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.text import Text

__all__ = ["console", "emit_json", "error_console", "plain", "print_error", "printable", "step"]

# emoji=False: a reason such as ":white_check_mark: approved" is text, not an emoji picked by rich.
console = Console(highlight=False, soft_wrap=True, emoji=False)
error_console = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(value: object, *, limit: int | None = None) -> str:
    """``value`` as text a terminal can only display: each character :meth:`str.isprintable` rejects
    becomes a visible escape, as in Python's ``repr`` (``\\x1b``, ``\\r``, ``\\n``, ``\\x9b``, ``\\u202e``).

    That covers C0 and C1 controls and DEL (escape sequences such as OSC 52 or cursor movement, and line
    breaks that would forge a line), format characters (bidi overrides, zero-width), line and paragraph
    separators, spaces other than the plain one, and lone surrogates (which would fail to encode).
    Backslash escapes rather than caret notation: one form covers C1 and Unicode too, ``^[`` is common in
    real commands (``grep '^[a-z]'``), and the escape can be pasted into ``printf`` or ``$'...'`` to get
    the bytes back. A backslash itself is left alone so that ordinary commands read unchanged; the
    ``--json`` output has every value exactly. With ``limit``, at most that many characters of the value
    are shown, followed by ``...`` if it was longer.
    """
    text = str(value)
    cut = limit is not None and len(text) > limit
    if cut:
        text = text[:limit]
    if not text.isprintable():
        text = "".join(char if char.isprintable() else _escape(char) for char in text)
    return text + "..." if cut else text


def plain(value: object, *, limit: int | None = None, style: str = "") -> Text:
    """:func:`printable` as a rich :class:`~rich.text.Text`: a table cell or line that is never markup."""
    return Text(printable(value, limit=limit), style=style)


def emit_json(value: Any) -> None:
    # json.dumps escapes every control character (and, with ensure_ascii, all of non-ASCII).
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def print_error(message: str) -> None:
    # soft_wrap keeps it one line however narrow the terminal is; printable keeps it one line whatever
    # the message quotes (a session id, a host name, a broker's reply).
    error_console.print(Text.assemble(("error:", "bold red"), " ", plain(message)))


def step(message: str) -> None:
    console.print(Text.assemble(("==>", "bold cyan"), " ", plain(message)))
