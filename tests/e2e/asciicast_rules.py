"""asciicast v2 and v3 as asciinema 3 reads them: its parsers' rules, mirrored line for line in Python.

The source is asciinema/asciinema at e53220fbf9495b0f20a7b241bf9ca2dd84f39f39 (asciinema 3):
``src/asciicast.rs`` (``open``: the first line is tried as v3, then v2), ``src/asciicast/v2.rs``
(``V2Header``, ``V2Event``, ``parse_event``, ``deserialize_code``), ``src/asciicast/v3.rs`` (``V3Header``,
``V3Term``, ``V3Event``, the ``x`` exit event) and ``src/asciicast/util.rs`` (``deserialize_time``). Its
types are serde structs read by serde_json, so serde_json's rules apply too: no NaN or Infinity, no lone
surrogate in a string, integers that fit the field's type, no duplicate field, nothing after the value;
unknown header fields are ignored (no ``deny_unknown_fields``). Python's ``json`` is laxer on each of
these, so the checks below add them. Where the specification text is stricter than asciinema (an event is
"a 3-element JSON array", times since the start do not go back), the check follows the specification and
says so.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

__all__ = ["V2Cast", "V3Cast", "check_v2", "check_v3"]

V2Cast = tuple[dict[str, Any], list[tuple[int, str, str]]]
V3Cast = tuple[dict[str, Any], list[tuple[int, str, str]]]

_U8, _U16, _U64 = 2**8 - 1, 2**16 - 1, 2**64 - 1
_I32 = (-(2**31), 2**31 - 1)
# Rust's FromStr for integers: an optional sign ('-' only for signed types), then ASCII digits.
_UNSIGNED = re.compile(r"\+?[0-9]+")
_SIGNED = re.compile(r"[+-]?[0-9]+")
# serde deserialises the event code as &str: borrowed, so a JSON string with an escape in it is refused.
_CODE_TOKEN = re.compile(r'\s*\[\s*[-+0-9.eE]+\s*,\s*"([^"\\]*)"\s*,')


class CastError(AssertionError):
    """A line asciinema 3 would refuse (or, where said, the specification forbids)."""


def _no_constant(name: str) -> Any:
    raise CastError(f"{name} is not JSON (serde_json refuses it)")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise CastError(f"duplicate key in {keys}")
    return dict(pairs)


def _loads(line: str) -> Any:
    """A JSON value as serde_json reads it (a line, so nothing but whitespace after the value)."""
    try:
        value = json.loads(line, parse_constant=_no_constant, object_pairs_hook=_unique)
    except json.JSONDecodeError as exc:
        raise CastError(f"not JSON: {exc}: {line[:200]!r}") from exc
    _valid_strings(value)
    return value


def _valid_strings(value: Any) -> None:
    """serde_json refuses a lone surrogate escape (\\ud800); Python's json decodes it to a lone surrogate."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CastError(f"a lone surrogate in {value[:80]!r}") from exc
    elif isinstance(value, list):
        for item in value:
            _valid_strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _valid_strings(key)
            _valid_strings(item)


def _integer(header: dict[str, Any], key: str, top: int, *, required: bool) -> None:
    """A Rust integer field (u8/u16/u64): a JSON integer in range; serde_json refuses 2.0 for one."""
    if key not in header or header[key] is None:
        if required:
            raise CastError(f"header field {key!r} is required")
        return
    value = header[key]
    if type(value) is not int or not 0 <= value <= top:
        raise CastError(f"header field {key!r} must be an integer in 0..{top}, found {value!r}")


def _optional(header: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> None:
    value = header.get(key)
    if value is not None and (type(value) not in (kind if isinstance(kind, tuple) else (kind,))):
        raise CastError(f"header field {key!r} must be {kind}, found {value!r}")


def _theme(theme: Any) -> None:
    """``V2Theme``/``V3Theme``: fg and bg as #rrggbb, a palette of 8 or 16 of them joined by colons."""
    if theme is None:
        return

    def color(text: Any) -> bool:
        return isinstance(text, str) and len(text) == 7 and all(_hex(text[i : i + 2]) for i in (1, 3, 5))

    if not isinstance(theme, dict) or not color(theme.get("fg")) or not color(theme.get("bg")):
        raise CastError(f"theme: {theme!r}")
    palette = theme.get("palette")
    if not isinstance(palette, str) or len([c for c in palette.split(":") if color(c)]) not in (8, 16):
        raise CastError(f"theme palette: {palette!r}")


def _hex(text: str) -> bool:
    return re.fullmatch(r"\+?[0-9a-fA-F]+", text) is not None  # u8::from_str_radix(_, 16)


def _time_micros(value: Any) -> int:
    """``util::deserialize_time``: a JSON number, printed as Rust prints an f64, split at the dot, each part
    parsed as u64; the fraction cut (not rounded) to microseconds. A negative time fails the u64 parse."""
    if type(value) not in (int, float):
        raise CastError(f"time must be a number, found {value!r}")
    text = format(Decimal(repr(float(value))), "f")  # Rust's f64 Display: shortest round trip, no exponent
    if text.endswith(".0"):
        text = text[:-2]
    left, _, right = text.partition(".")
    if not _UNSIGNED.fullmatch(left) or int(left) > _U64:
        raise CastError(f"time {value!r} is not a u64 of seconds")
    micros = int((right[:6] or "0").ljust(6, "0"))
    return int(left) * 1_000_000 + micros


def _event(line: str) -> tuple[int, str, str]:
    """``V2Event``/``V3Event``: [time, code, data], the code a non-empty unescaped string, data a string."""
    event = _loads(line)
    if not isinstance(event, list) or len(event) != 3:
        raise CastError(f"an event is a 3-element JSON array (the specification): {line[:200]!r}")
    moment, code, data = event
    micros = _time_micros(moment)
    if not isinstance(code, str) or not _CODE_TOKEN.match(line):
        raise CastError(f"the code must be a string without escapes (serde borrows it as &str): {line[:200]!r}")
    if code == "":
        raise CastError("missing event code")
    if not isinstance(data, str):
        raise CastError(f"event data must be a string: {line[:200]!r}")
    if code == "r":
        cols, sep, rows = data.partition("x")
        for value in (cols, rows):
            if not sep or not _UNSIGNED.fullmatch(value) or int(value) > _U16:
                raise CastError(f"invalid size value in resize event: {data!r}")
    return micros, code[0], data


def _lines(text: str) -> list[str]:
    """``BufRead::lines``: split at \\n, a \\r before it dropped; the file must be UTF-8 (the caller's str)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _v2_header(line: str) -> dict[str, Any]:
    header = _loads(line)
    if not isinstance(header, dict):
        raise CastError("the header is a JSON object")
    _integer(header, "version", _U8, required=True)
    _integer(header, "width", _U16, required=True)
    _integer(header, "height", _U16, required=True)
    _integer(header, "timestamp", _U64, required=False)
    _optional(header, "idle_time_limit", (int, float))
    _optional(header, "command", str)
    _optional(header, "title", str)
    env = header.get("env")
    if env is not None and (not isinstance(env, dict) or any(type(v) not in (str, type(None)) for v in env.values())):
        raise CastError(f"env must map strings to strings or null: {env!r}")
    _theme(header.get("theme"))
    if header["version"] != 2:
        raise CastError("not an asciicast v2 file")
    return header


def _v3_header(line: str) -> dict[str, Any]:
    header = _loads(line)
    if not isinstance(header, dict):
        raise CastError("the header is a JSON object")
    _integer(header, "version", _U8, required=True)
    term = header.get("term")
    if not isinstance(term, dict):
        raise CastError("header field 'term' is required")
    _integer(term, "cols", _U16, required=True)
    _integer(term, "rows", _U16, required=True)
    _optional(term, "type", str)
    _optional(term, "version", str)
    _theme(term.get("theme"))
    _integer(header, "timestamp", _U64, required=False)
    _optional(header, "idle_time_limit", (int, float))
    _optional(header, "command", str)
    _optional(header, "title", str)
    env = header.get("env")
    if env is not None and (not isinstance(env, dict) or any(type(v) is not str for v in env.values())):
        raise CastError(f"v3 env must map strings to strings (no null): {env!r}")
    if header["version"] != 3:
        raise CastError("not an asciicast v3 file")
    return header


def _is_v3(line: str) -> bool:
    try:
        _v3_header(line)
    except CastError:
        return False
    return True


def check_v2(text: str) -> V2Cast:
    """The header and events ``(micros since start, code, data)`` of an asciicast v2 file asciinema 3 reads
    as v2; raises CastError for the first line it would refuse. Times must not go back (the specification:
    "the number of seconds since the beginning of the recording session")."""
    lines = _lines(text)
    if not lines:
        raise CastError("empty file")
    if _is_v3(lines[0]):
        raise CastError("the header reads as v3")
    header = _v2_header(lines[0])
    events, previous = [], 0
    for line in lines[1:]:
        if line == "":
            continue  # parse_line skips empty lines
        micros, code, data = _event(line)
        if micros < previous:
            raise CastError(f"time goes back at {line[:120]!r}")
        previous = micros
        events.append((micros, code, data))
    return header, events


def check_v3(text: str) -> V3Cast:
    """The header and events ``(micros since start, code, data)`` of an asciicast v3 file as asciinema 3
    reads it: intervals summed, comment lines skipped, an ``x`` event's data an i32."""
    lines = _lines(text)
    if not lines:
        raise CastError("empty file")
    header = _v3_header(lines[0])
    events, now = [], 0
    for line in lines[1:]:
        if line == "" or line.startswith("#"):
            continue
        micros, code, data = _event(line)
        if code == "x" and (not _SIGNED.fullmatch(data) or not _I32[0] <= int(data) <= _I32[1]):
            raise CastError(f"an exit event's data must be an i32: {data!r}")
        now += micros
        events.append((now, code, data))
    return header, events
