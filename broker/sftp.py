"""SFTP as the recorder sees it: the operations of a session, read off both directions of the stream.

Content is not recorded (a copy of a 10 GB file would be a 10 GB recording); each file that was read
or written gets its path, byte count and SHA-256 (over the bytes in transfer order, which is the
file's own digest for sequential transfers, as OpenSSH's sftp and scp do them). Renames, removals,
directory and attribute changes are recorded as they are asked for. Protocol: draft-ietf-secsh-
filexfer-02 (version 3), which OpenSSH speaks.
"""

from __future__ import annotations

import contextlib
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .digest import StreamTally

__all__ = ["SftpObserver"]

_U32 = struct.Struct(">I")
_MAX_PACKET = 1024 * 1024  # larger is a protocol error (OpenSSH's sftp-server allows 256 KiB)
_MAX_PENDING = 4096  # requests outstanding (OpenSSH's sftp and scp keep at most a few hundred)
_MAX_FILES = 1024
_MAX_PATH = 4096

FXP_OPEN, FXP_CLOSE, FXP_READ, FXP_WRITE = 3, 4, 5, 6
FXP_SETSTAT, FXP_OPENDIR, FXP_REMOVE, FXP_MKDIR, FXP_RMDIR = 9, 11, 13, 14, 15
FXP_RENAME, FXP_SYMLINK, FXP_EXTENDED = 18, 20, 200
FXP_STATUS, FXP_HANDLE, FXP_DATA = 101, 102, 103
_PF_WRITE = 0x02


@dataclass
class _File:
    path: str
    writing: bool
    read: StreamTally = field(default_factory=StreamTally)
    written: StreamTally = field(default_factory=StreamTally)


@dataclass(slots=True)
class _Request:
    """What a reply with this request's id will be about."""

    kind: str  # open, read, close, other
    path: str = ""
    writing: bool = False
    file: _File | None = None


class _Stream:
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
        length = int(_U32.unpack_from(head, 0)[0])
        if length > _MAX_PACKET or length == 0:
            self.broken = True  # larger is a protocol error: the observer stops (content still flows)
            return 0
        total = 4 + length
        if head[4] == self._bulk_kind and total >= 13:
            if len(head) < 13:
                return 13  # FXP_DATA: id, data length. FXP_WRITE: id, handle length, ...
            start = 13 if self._bulk_kind == FXP_DATA else 25 + int(_U32.unpack_from(head, 9)[0])  # ..., offset, length
            if start <= total:
                if len(head) < start:
                    return start
                (size,) = _U32.unpack_from(head, start - 4)
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


def _string(packet: memoryview, pos: int) -> tuple[memoryview, int]:
    (length,) = _U32.unpack_from(packet, pos)
    end = pos + 4 + length
    if end > len(packet):
        raise ValueError("short string")
    return packet[pos + 4 : end], end


def _text(packet: memoryview, pos: int) -> tuple[str, int]:
    raw, end = _string(packet, pos)
    if len(raw) > _MAX_PATH:  # no such path exists (PATH_MAX); what was asked for is cut, and says so
        return bytes(raw[:_MAX_PATH]).decode("utf-8", "replace") + f"...[{len(raw)} bytes]", end
    return bytes(raw).decode("utf-8", "replace"), end


class SftpObserver:
    """Feed it the client's and the server's bytes; it calls ``emit`` with one dict per operation.

    Every request gets exactly one reply carrying its id, so replies are matched to requests in a
    first-in first-out queue per id: a client reusing an id cannot make one file's content count for
    another. A read holds the file it was asked of, and a file is reported when its close is answered,
    so reads still in flight when the client closes are counted. What the observer cannot follow
    (more requests outstanding or files open than the caps, a packet over 1 MiB) sets :attr:`failed`;
    the broker then ends the session rather than leave transfers unrecorded.
    """

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self.emit = emit
        self.failed: str | None = None
        self._up = _Stream(FXP_WRITE, self._request_packet, self._write_head)
        self._down = _Stream(FXP_DATA, self._reply_packet, self._data_head)
        self._pending: dict[int, deque[_Request]] = {}
        self._outstanding = 0
        self._files: dict[bytes, _File] = {}
        self._closing: list[_File] = []  # closed by the client, not yet answered

    def client_data(self, data: bytes) -> None:
        self._up.feed(data)
        self._check_stream(self._up)

    def server_data(self, data: bytes) -> None:
        self._down.feed(data)
        self._check_stream(self._down)

    def _check_stream(self, stream: _Stream) -> None:
        if stream.broken and self.failed is None:
            self._fail("an SFTP packet over 1 MiB (or of length 0) cannot be followed")

    def _fail(self, reason: str) -> None:
        if self.failed is None:
            self.failed = reason
            self._up.broken = self._down.broken = True

    # -- matching replies to requests ------------------------------------------------------------
    def _expect(self, request_id: int, request: _Request) -> None:
        if self._outstanding >= _MAX_PENDING:
            self._fail(f"more than {_MAX_PENDING} SFTP requests outstanding cannot be followed")
            return
        self._pending.setdefault(request_id, deque()).append(request)
        self._outstanding += 1

    def _answered(self, request_id: int) -> _Request | None:
        queue = self._pending.get(request_id)
        if not queue:
            return None
        request = queue.popleft()
        if not queue:
            del self._pending[request_id]
        self._outstanding -= 1
        return request

    def _request_packet(self, packet: memoryview) -> None:
        with contextlib.suppress(ValueError, struct.error):  # malformed: the server's to refuse, nothing to record
            self._request(packet)

    def _reply_packet(self, packet: memoryview) -> None:
        with contextlib.suppress(ValueError, struct.error):
            self._reply(packet)

    def _write_head(self, head: memoryview) -> StreamTally | None:
        """An FXP_WRITE up to its data (id, handle, offset, length): the file's written tally."""
        (request_id,) = _U32.unpack_from(head, 1)
        self._expect(request_id, _Request("other"))
        handle, _ = _string(head, 5)
        state = self._files.get(bytes(handle))
        return state.written if state is not None else None

    def _data_head(self, head: memoryview) -> StreamTally | None:
        """An FXP_DATA up to its data (id, length): the tally of the file the read was for."""
        (request_id,) = _U32.unpack_from(head, 1)
        request = self._answered(request_id)
        if request is None or request.kind != "read" or request.file is None:
            return None
        return request.file.read

    def _request(self, packet: memoryview) -> None:
        kind = packet[0]
        if kind < FXP_OPEN:
            return  # FXP_INIT: no id, answered by FXP_VERSION
        (request_id,) = _U32.unpack_from(packet, 1)
        request = _Request("other")
        pos = 5
        try:
            if kind == FXP_OPEN:
                path, pos = _text(packet, pos)
                (pflags,) = _U32.unpack_from(packet, pos)
                request = _Request("open", path=path, writing=bool(pflags & _PF_WRITE))
            elif kind == FXP_READ:
                handle, pos = _string(packet, pos)
                request = _Request("read", file=self._files.get(bytes(handle)))
            elif kind == FXP_WRITE:  # a whole FXP_WRITE comes here only when its fields do not fit
                handle, pos = _string(packet, pos)
                data, _ = _string(packet, pos + 8)
                state = self._files.get(bytes(handle))
                if state is not None:
                    state.written.add(bytes(data))
            elif kind == FXP_CLOSE:
                handle, _ = _string(packet, pos)
                state = self._files.pop(bytes(handle), None)
                if state is not None:
                    request = _Request("close", file=state)
                    self._closing.append(state)
            elif kind in (FXP_REMOVE, FXP_MKDIR, FXP_RMDIR, FXP_SETSTAT, FXP_OPENDIR):
                path, _ = _text(packet, pos)
                names = {FXP_REMOVE: "remove", FXP_MKDIR: "mkdir", FXP_RMDIR: "rmdir", FXP_SETSTAT: "setstat"}
                if kind != FXP_OPENDIR:
                    self.emit({"op": names[kind], "path": path})
            elif kind in (FXP_RENAME, FXP_SYMLINK):
                first, pos = _text(packet, pos)
                second, _ = _text(packet, pos)
                self.emit({"op": "rename" if kind == FXP_RENAME else "symlink", "from": first, "to": second})
            elif kind == FXP_EXTENDED:
                name, pos = _text(packet, pos)
                if name in ("posix-rename@openssh.com", "hardlink@openssh.com"):
                    first, pos = _text(packet, pos)
                    second, _ = _text(packet, pos)
                    self.emit({"op": name.split("@")[0], "from": first, "to": second})
        finally:
            self._expect(request_id, request)  # every request is answered once, malformed or not

    def _reply(self, packet: memoryview) -> None:
        kind = packet[0]
        if kind < FXP_STATUS:
            return  # FXP_VERSION: no id
        (request_id,) = _U32.unpack_from(packet, 1)
        request = self._answered(request_id)
        if request is None:
            return
        if kind == FXP_HANDLE and request.kind == "open":
            handle, _ = _string(packet, 5)
            if len(self._files) >= _MAX_FILES:
                self._fail(f"more than {_MAX_FILES} files open over SFTP cannot be followed")
                return
            self._files[bytes(handle)] = _File(path=request.path, writing=request.writing)
        elif kind == FXP_DATA and request.kind == "read" and request.file is not None:
            data, _ = _string(packet, 5)
            request.file.read.add(bytes(data))
        elif request.kind == "close" and request.file is not None:
            self._closing.remove(request.file)
            self._file_done(request.file)

    def _file_done(self, state: _File) -> None:
        if state.written.bytes or state.writing:
            self.emit({"op": "write", "path": state.path, **state.written.summary()})
        if state.read.bytes or not state.writing:
            self.emit({"op": "read", "path": state.path, **state.read.summary()})

    def close(self) -> None:
        """Report files still open, or closed without an answer, when the session ended."""
        for state in [*self._closing, *self._files.values()]:
            self._file_done(state)
        self._closing.clear()
        self._files.clear()
