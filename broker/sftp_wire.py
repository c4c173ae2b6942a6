"""SFTP version 3 on the wire, as OpenSSH's sftp-server speaks it: packets cut from a stream, and their fields.

Protocol: draft-ietf-secsh-filexfer-02 and OpenSSH's PROTOCOL (its extensions). Read by
:mod:`.sftp`, which makes operations of them; nothing here keeps state beyond one packet.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from .recording.digest import StreamTally

__all__ = ["PacketStream", "Reader", "open_flag_names", "status_outcome"]

U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
MAX_PACKET = 1024 * 1024  # larger is a protocol error (OpenSSH's sftp-server allows 256 KiB)
MAX_PATH = 4096
_MAX_MESSAGE = 256

# Requests (client to server) and replies; OpenSSH's sftp-server answers exactly these requests, each once.
FXP_INIT, FXP_VERSION, FXP_OPEN, FXP_CLOSE, FXP_READ, FXP_WRITE = 1, 2, 3, 4, 5, 6
FXP_LSTAT, FXP_FSTAT, FXP_SETSTAT, FXP_FSETSTAT, FXP_OPENDIR, FXP_READDIR = 7, 8, 9, 10, 11, 12
FXP_REMOVE, FXP_MKDIR, FXP_RMDIR, FXP_REALPATH, FXP_STAT, FXP_RENAME = 13, 14, 15, 16, 17, 18
FXP_READLINK, FXP_SYMLINK, FXP_EXTENDED = 19, 20, 200
FXP_STATUS, FXP_HANDLE, FXP_DATA, FXP_NAME, FXP_ATTRS, FXP_EXTENDED_REPLY = 101, 102, 103, 104, 105, 201

FX_OK, FX_EOF = 0, 1
_STATUS = ("ok", "eof", "no such file", "permission denied", "failure", "bad message", "no connection",
           "connection lost", "op unsupported")  # fmt: skip

# Open flags (pflags). sftp-server maps each to its open(2) flag whatever the others are: READ|TRUNC is
# O_RDONLY|O_TRUNC, which empties the file on Linux; CREAT alone creates it.
FXF_READ, FXF_WRITE, FXF_APPEND, FXF_CREAT, FXF_TRUNC, FXF_EXCL = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
FXF_MODIFYING = FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC | FXF_EXCL
_FLAG_NAMES = ((FXF_READ, "read"), (FXF_WRITE, "write"), (FXF_APPEND, "append"), (FXF_CREAT, "creat"),
               (FXF_TRUNC, "trunc"), (FXF_EXCL, "excl"))  # fmt: skip

_ATTR_SIZE, _ATTR_UIDGID, _ATTR_PERMISSIONS, _ATTR_ACMODTIME = 0x1, 0x2, 0x4, 0x8
_ATTR_EXTENDED = 0x80000000
_MAX_ATTR_EXTENDED = 0x100000  # as sftp-server's decode_attrib


def open_flag_names(pflags: int) -> list[str]:
    """``["write", "creat", "trunc"]``; bits the protocol does not define are shown in hex."""
    names = [name for bit, name in _FLAG_NAMES if pflags & bit]
    rest = pflags & ~0x3F
    return [*names, f"{rest:#x}"] if rest else names


def status_outcome(code: int) -> str:
    return _STATUS[code] if code < len(_STATUS) else f"status {code}"


class Reader:
    """The fields of one packet in order; a field that does not fit raises ``ValueError``."""

    __slots__ = ("data", "pos")

    def __init__(self, data: memoryview, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def u32(self) -> int:
        (value,) = U32.unpack_from(self.data, self.pos)  # struct.error when short, a ValueError
        self.pos += 4
        return int(value)

    def u64(self) -> int:
        (value,) = _U64.unpack_from(self.data, self.pos)
        self.pos += 8
        return int(value)

    def string(self) -> memoryview:
        length = self.u32()
        end = self.pos + length
        if end > len(self.data):
            raise ValueError("short string")
        raw, self.pos = self.data[self.pos : end], end
        return raw

    def text(self, limit: int = MAX_PATH) -> str:
        raw = self.string()
        if len(raw) > limit:  # no such path exists (PATH_MAX); what was asked for is cut, and says so
            return bytes(raw[:limit]).decode("utf-8", "replace") + f"...[{len(raw)} bytes]"
        return bytes(raw).decode("utf-8", "replace")

    def attrs(self, into: dict[str, Any]) -> None:
        """ATTRS, as the fields a reviewer reads (mode in octal, setuid and sticky bits included)."""
        flags = self.u32()
        if flags & _ATTR_SIZE:
            into["size"] = self.u64()
        if flags & _ATTR_UIDGID:
            into["uid"] = self.u32()
            into["gid"] = self.u32()
        if flags & _ATTR_PERMISSIONS:
            into["mode"] = f"{self.u32() & 0o7777:04o}"  # what sftp-server applies: the file type bits go
        if flags & _ATTR_ACMODTIME:
            into["atime"] = self.u32()
            into["mtime"] = self.u32()
        if flags & _ATTR_EXTENDED:
            # Only counted: nothing follows ATTRS in a request, and walking 100,000 empty pairs of a 1 MiB
            # packet would cost the event loop a tenth of a second. A count that cannot fit is refused.
            count = self.u32()
            if count > _MAX_ATTR_EXTENDED or count * 8 > len(self.data) - self.pos:
                raise ValueError("more extended attributes than the packet holds")
            into["extended"] = count

    def status(self) -> tuple[str, str]:
        """A STATUS reply's outcome and message (the message is optional before version 3)."""
        code = self.u32()
        message = ""
        if code != FX_OK and self.pos < len(self.data):
            message = self.text(_MAX_MESSAGE)
        return status_outcome(code), message


class PacketStream:
    """One direction of the SFTP stream, cut into packets as it arrives in chunks of any size.

    Packets are collected whole and handed to ``on_packet``, except the direction's bulk kind
    (FXP_WRITE from the client, FXP_DATA from the server): that is collected only up to where its data
    begins; ``on_bulk`` gets this head and returns the tally the data goes to (or None), and the data
    is passed on in views of the incoming chunks. So a gigabyte copied is never buffered or copied
    here, only hashed (on the digest worker). A bulk packet whose fields do not fit its length goes
    whole to ``on_packet`` like any other, which finds it malformed.
    """

    __slots__ = ("_bulk", "_bulk_kind", "_head", "_on_bulk", "_on_packet", "_sink", "_skip", "broken")

    def __init__(
        self,
        bulk_kind: int,
        on_packet: Callable[[memoryview], None],
        on_bulk: Callable[[memoryview], StreamTally | None],
    ) -> None:
        self._bulk_kind = bulk_kind
        self._on_packet = on_packet
        self._on_bulk = on_bulk
        self._head = bytearray()  # the packet (or bulk packet's head) being collected, length field included
        self._bulk = 0  # data bytes of the current bulk packet still to pass on
        self._sink: StreamTally | None = None
        self._skip = 0  # bytes after them, to the packet's end
        self.broken = False

    def feed(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            data = bytes(data)  # views handed on must be of bytes that cannot change
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end and not self.broken:
            if self._bulk:
                take = min(self._bulk, end - pos)
                if self._sink is not None:
                    self._sink.add(view[pos : pos + take])
                self._bulk -= take
                pos += take
            elif self._skip:
                take = min(self._skip, end - pos)
                self._skip -= take
                pos += take
            else:
                want = self._wanted()
                if want > len(self._head):
                    take = min(want - len(self._head), end - pos)
                    self._head += view[pos : pos + take]
                    pos += take
        if not self.broken and not self._bulk and not self._skip:
            self._wanted()  # a packet completed by the last chunk is handled now, not with the next

    def _wanted(self) -> int:
        """The length the head must reach next; 0 once a packet (or a bulk head) was dealt with."""
        head = self._head
        if len(head) < 5:
            return 5
        length = int(U32.unpack_from(head, 0)[0])
        if length > MAX_PACKET or length == 0:
            self.broken = True  # larger is a protocol error: the observer stops (content still flows)
            return 0
        total = 4 + length
        if head[4] == self._bulk_kind and total >= 13:
            if len(head) < 13:
                return 13  # FXP_DATA: id, data length. FXP_WRITE: id, handle length, ...
            start = 13 if self._bulk_kind == FXP_DATA else 25 + int(U32.unpack_from(head, 9)[0])  # ..., offset, length
            if start <= total:
                if len(head) < start:
                    return start
                (size,) = U32.unpack_from(head, start - 4)
                if start + size <= total:
                    self._head = bytearray()
                    self._sink = self._on_bulk(memoryview(head)[4:])
                    self._bulk, self._skip = size, total - start - size
                    return 0
        if len(head) < total:
            return total
        self._head = bytearray()
        self._on_packet(memoryview(head)[4:])
        return 0
