"""SFTP as the recorder sees it: the operations of a session, read off both directions of the stream.

Content is not recorded (a copy of a 10 GB file would be a 10 GB recording); each file that was read
or written gets its path, byte count and SHA-256 (over the bytes in transfer order, which is the
file's own digest for sequential transfers, as OpenSSH's sftp and scp do them). Renames, removals,
directory and attribute changes are recorded as they are asked for. Protocol: draft-ietf-secsh-
filexfer-02 (version 3), which OpenSSH speaks.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .digest import StreamDigest

__all__ = ["SftpObserver"]

_U32 = struct.Struct(">I")
_MAX_PACKET = 1024 * 1024  # larger is a protocol error; the observer stops parsing (content still flows)

FXP_OPEN, FXP_CLOSE, FXP_READ, FXP_WRITE = 3, 4, 5, 6
FXP_SETSTAT, FXP_OPENDIR, FXP_REMOVE, FXP_MKDIR, FXP_RMDIR = 9, 11, 13, 14, 15
FXP_RENAME, FXP_SYMLINK, FXP_EXTENDED = 18, 20, 200
FXP_STATUS, FXP_HANDLE, FXP_DATA = 101, 102, 103
_PF_WRITE = 0x02


@dataclass
class _File:
    path: str
    writing: bool
    bytes_read: int = 0
    bytes_written: int = 0
    read_digest: StreamDigest = field(default_factory=StreamDigest)
    write_digest: StreamDigest = field(default_factory=StreamDigest)


class _Packets:
    """Reassembles length-prefixed packets from a byte stream."""

    __slots__ = ("broken", "buffer")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.broken = False

    def feed(self, data: bytes) -> list[memoryview]:
        if self.broken:
            return []
        self.buffer += data
        packets: list[memoryview] = []
        view = memoryview(self.buffer)
        pos = 0
        while len(view) - pos >= 4:
            (length,) = _U32.unpack_from(view, pos)
            if length > _MAX_PACKET or length == 0:
                self.broken = True
                break
            if len(view) - pos - 4 < length:
                break
            packets.append(view[pos + 4 : pos + 4 + length])
            pos += 4 + length
        # A new buffer: the packets handed out still point into the old one.
        self.buffer = bytearray(view[pos:])
        return packets


def _string(packet: memoryview, pos: int) -> tuple[memoryview, int]:
    (length,) = _U32.unpack_from(packet, pos)
    end = pos + 4 + length
    if end > len(packet):
        raise ValueError("short string")
    return packet[pos + 4 : end], end


def _text(packet: memoryview, pos: int) -> tuple[str, int]:
    raw, end = _string(packet, pos)
    return bytes(raw).decode("utf-8", "replace"), end


class SftpObserver:
    """Feed it the client's and the server's bytes; it calls ``emit`` with one dict per operation."""

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self.emit = emit
        self._up = _Packets()
        self._down = _Packets()
        self._opens: dict[int, tuple[str, bool]] = {}
        self._reads: dict[int, bytes] = {}
        self._files: dict[bytes, _File] = {}

    def client_data(self, data: bytes) -> None:
        for packet in self._up.feed(data):
            try:
                self._request(packet)
            except (ValueError, struct.error):
                continue  # a malformed request is the server's to refuse; nothing to record of it

    def server_data(self, data: bytes) -> None:
        for packet in self._down.feed(data):
            try:
                self._reply(packet)
            except (ValueError, struct.error):
                continue

    def _request(self, packet: memoryview) -> None:
        kind = packet[0]
        if kind < FXP_OPEN:
            return
        (request_id,) = _U32.unpack_from(packet, 1)
        pos = 5
        if kind == FXP_OPEN:
            path, pos = _text(packet, pos)
            (pflags,) = _U32.unpack_from(packet, pos)
            self._opens[request_id] = (path, bool(pflags & _PF_WRITE))
        elif kind == FXP_READ:
            handle, pos = _string(packet, pos)
            self._reads[request_id] = bytes(handle)
        elif kind == FXP_WRITE:
            handle, pos = _string(packet, pos)
            pos += 8  # offset
            data, _ = _string(packet, pos)
            state = self._files.get(bytes(handle))
            if state is not None:
                state.bytes_written += len(data)
                state.write_digest.update(data)
        elif kind == FXP_CLOSE:
            handle, _ = _string(packet, pos)
            state = self._files.pop(bytes(handle), None)
            if state is not None:
                self._file_done(state)
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

    def _reply(self, packet: memoryview) -> None:
        kind = packet[0]
        if kind not in (FXP_HANDLE, FXP_DATA, FXP_STATUS):
            return
        (request_id,) = _U32.unpack_from(packet, 1)
        if kind == FXP_HANDLE:
            opened = self._opens.pop(request_id, None)
            if opened is not None:
                handle, _ = _string(packet, 5)
                self._files[bytes(handle)] = _File(path=opened[0], writing=opened[1])
        elif kind == FXP_DATA:
            handle_key = self._reads.pop(request_id, None)
            state = self._files.get(handle_key) if handle_key is not None else None
            if state is not None:
                data, _ = _string(packet, 5)
                state.bytes_read += len(data)
                state.read_digest.update(data)
        else:
            self._opens.pop(request_id, None)
            self._reads.pop(request_id, None)

    def _file_done(self, state: _File) -> None:
        if state.bytes_written or state.writing:
            self.emit(
                {"op": "write", "path": state.path, "bytes": state.bytes_written,
                 "sha256": state.write_digest.hexdigest()}
            )  # fmt: skip
        if state.bytes_read or not state.writing:
            self.emit(
                {"op": "read", "path": state.path, "bytes": state.bytes_read, "sha256": state.read_digest.hexdigest()}
            )

    def close(self) -> None:
        """Report files still open when the session ended."""
        for state in self._files.values():
            self._file_done(state)
        self._files.clear()
