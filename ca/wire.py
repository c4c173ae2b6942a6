"""SSH wire encoding (RFC 4251 section 5): the few types certificates and KRLs are made of."""

from __future__ import annotations

import struct

from .errors import InputError

__all__ = ["Reader", "mpint", "string", "uint32", "uint64"]

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def uint32(value: int) -> bytes:
    return _U32.pack(value)


def uint64(value: int) -> bytes:
    return _U64.pack(value)


def string(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def mpint(value: int) -> bytes:
    """Encode a non-negative integer as an SSH mpint (two's complement, minimal, leading zero if needed)."""
    if value < 0:
        raise ValueError("negative mpint")
    if value == 0:
        return _U32.pack(0)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big")
    return _U32.pack(len(raw)) + raw


class Reader:
    """Reads SSH wire types from a buffer; every malformed input raises ``InputError`` naming ``what``."""

    __slots__ = ("_data", "_pos", "what")

    def __init__(self, data: bytes, what: str = "SSH data") -> None:
        self._data = memoryview(data)
        self._pos = 0
        self.what = what

    def _take(self, n: int) -> bytes:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise InputError(f"{self.what} is truncated: expected {n} more bytes at offset {self._pos}")
        out = self._data[self._pos : end].tobytes()
        self._pos = end
        return out

    def byte(self) -> int:
        return self._take(1)[0]

    def uint32(self) -> int:
        value: int = _U32.unpack(self._take(4))[0]
        return value

    def uint64(self) -> int:
        value: int = _U64.unpack(self._take(8))[0]
        return value

    def string(self) -> bytes:
        return self._take(self.uint32())

    def text(self) -> str:
        raw = self.string()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{self.what} holds a string that is not UTF-8") from exc

    def mpint(self) -> int:
        raw = self.string()
        if raw and raw[0] & 0x80:
            raise InputError(f"{self.what} holds a negative integer")
        return int.from_bytes(raw, "big")

    @property
    def offset(self) -> int:
        return self._pos

    def remaining(self) -> bytes:
        return self._take(len(self._data) - self._pos)

    def at_end(self) -> bool:
        return self._pos == len(self._data)

    def expect_end(self) -> None:
        if not self.at_end():
            raise InputError(f"{self.what} has {len(self._data) - self._pos} unexpected trailing bytes")
