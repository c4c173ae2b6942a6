"""SFTP operations as a reviewer reads them: one line each, and a bounded list for the review index.

A session may ask for millions of lookups (a mounted file system stats every file it shows); the
index keeps a bounded number of operations, those that change something or failed before the
successful lookups, and says how many it left out. The recording has them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["LOOKUPS", "TransferList", "describe"]

#: Operations that only look (an open for reading is a ``read``, not a lookup: content left the host).
LOOKUPS = frozenset({"stat", "lstat", "fstat", "realpath", "readlink", "list", "statvfs", "fstatvfs", "limits",
                     "expand-path", "home-directory", "users-groups-by-id"})  # fmt: skip


class TransferList:
    """At most ``limit`` operations in session order; successful lookups give way to all others."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self.total = 0
        self._others: list[tuple[int, dict[str, Any]]] = []
        self._lookups: list[tuple[int, dict[str, Any]]] = []

    def add(self, op: dict[str, Any]) -> None:
        name = op.get("op")
        looked = isinstance(name, str) and name in LOOKUPS and op.get("outcome") == "ok"  # a damaged one: a list
        bucket = self._lookups if looked else self._others
        if len(bucket) < self.limit:
            bucket.append((self.total, op))
        self.total += 1

    def kept(self) -> list[dict[str, Any]]:
        room = self.limit - len(self._others)
        return [op for _, op in sorted(self._others + self._lookups[:room], key=lambda pair: pair[0])]

    @property
    def dropped(self) -> int:
        return self.total - min(self.limit, len(self._others) + len(self._lookups))


_TARGET = ("path", "from", "to", "target", "handle", "from_handle", "to_handle", "flags", "bytes", "sha256")
_NOT_SHOWN = frozenset({"op", "outcome", "message", "time", *_TARGET})


def _named(op: Mapping[str, Any], key: str) -> str:
    if key in op:
        return str(op[key])
    handle = op.get("handle" if key == "path" else f"{key}_handle")
    return "" if handle is None else f"handle {handle}"


def describe(op: Mapping[str, Any], *, full: bool = False) -> str:
    """One line for a reviewer: ``setstat  /usr/bin/x mode 4755: permission denied (Permission denied)``.

    Values are as recorded: whoever prints the line escapes what a terminal would act on. ``full`` (an
    export's marker, read without the table around it): the name unpadded and the SHA-256 whole.
    """
    if "to" in op or "to_handle" in op:
        target = f"{_named(op, 'from')} -> {_named(op, 'to')}"
    elif "target" in op:
        target = f"{_named(op, 'path')} -> {op['target']}"
    else:
        target = _named(op, "path")
    parts = [f"{op.get('op', '?')!s:{'' if full else '<8'}}", target]
    if "flags" in op:
        parts.append(f"[{','.join(map(str, op['flags']))}]")
    parts += [f"{key} {value}" for key, value in op.items() if key not in _NOT_SHOWN]
    if "bytes" in op:
        digest = str(op.get("sha256"))
        parts.append(f"{op['bytes']} bytes sha256 {digest if full else digest[:16] + '...'}")
    line = " ".join(part for part in parts if part)
    if "outcome" in op:
        line += f": {op['outcome']}" + (f" ({op['message']})" if op.get("message") else "")
    return line
