"""SFTP as the recorder sees it: every request of a session, with what the server answered.

Content is not recorded (a copy of a 10 GB file would be a 10 GB recording); each file that was read
or written gets its path, open flags, byte count and SHA-256 (over the bytes in transfer order, which
is the file's own digest for sequential transfers, as OpenSSH's sftp and scp do them). Every other
request (renames, removals, links, attribute changes, copies made by the server, extensions, lookups)
is one operation with its fields. Each operation carries its ``outcome``: ``ok``, the server's status
(``permission denied``, with its ``message``), or ``no reply`` when the session ended first; so it is
emitted when answered. An open that may change the file (write, append, create, truncate, exclusive)
is a write, whether or not it asked to write. Wire format: :mod:`.sftp_wire`.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import sftp_wire as fx
from .recording.digest import StreamTally
from .sftp_wire import PacketStream, Reader, open_flag_names

__all__ = ["SftpObserver"]

_MAX_PENDING = 4096  # requests outstanding (OpenSSH's sftp and scp keep at most a few hundred)
_MAX_PENDING_TEXT = 4 * 1024 * 1024  # characters of paths held for them
_MAX_FILES = 1024  # handles open
#: Bytes kept of each file written, and of all of a session's files: start-up files and scripts are small,
#: and what a file that runs later says must be in the recording, not only its digest.
CONTENT_PER_FILE = 64 * 1024
CONTENT_PER_SESSION = 1024 * 1024

# The requests OpenSSH's sftp-server answers, by name. It answers nothing else, so anything else is
# refused here: a request never answered would leave a later reply with its id to the wrong request.
_REQUESTS = {3: "open", 4: "close", 5: "read", 6: "write", 7: "lstat", 8: "fstat", 9: "setstat", 10: "fsetstat",
             11: "opendir", 12: "readdir", 13: "remove", 14: "mkdir", 15: "rmdir", 16: "realpath", 17: "stat",
             18: "rename", 19: "readlink", 20: "symlink", 200: "extended"}  # fmt: skip
_ON_HANDLE = frozenset({fx.FXP_CLOSE, fx.FXP_READ, fx.FXP_WRITE, fx.FXP_FSTAT, fx.FXP_FSETSTAT, fx.FXP_READDIR})
_REPLIES = frozenset({fx.FXP_STATUS, fx.FXP_HANDLE, fx.FXP_DATA, fx.FXP_NAME, fx.FXP_ATTRS, fx.FXP_EXTENDED_REPLY})
_PATHS = {"posix-rename@openssh.com": ("from", "to"), "hardlink@openssh.com": ("from", "to"),
          "statvfs@openssh.com": ("path",), "expand-path@openssh.com": ("path",), "limits@openssh.com": ()}  # fmt: skip
_ON_HANDLES = {"fsync@openssh.com", "fstatvfs@openssh.com"}


class _Content(StreamTally):
    """A written file's byte count and digest, and its first bytes within the session's budget."""

    __slots__ = ("budget", "head")

    def __init__(self, budget: list[int]) -> None:
        super().__init__()
        self.budget = budget
        self.head = bytearray()

    def add(self, data: bytes | memoryview) -> None:
        super().add(data)
        room = min(CONTENT_PER_FILE - len(self.head), self.budget[0])
        if room > 0:
            kept = data[:room]
            self.head += kept
            self.budget[0] -= len(kept)


@dataclass(slots=True, eq=False)
class _Handle:
    """An open file or directory: what its records will say when it is closed."""

    record: dict[str, Any]  # op ("read", "write" or "list"), path, open flags and attributes
    append: bool = False
    read: StreamTally = field(default_factory=StreamTally)
    written: StreamTally = field(default_factory=StreamTally)
    entries: int = 0
    outcome: str = "ok"  # the first thing that went wrong
    message: str = ""
    errors: int = 0  # reads, writes and listings refused
    next_write: int = 0
    sequential: bool = True
    copies: int = 0

    @property
    def path(self) -> str:
        return str(self.record["path"])

    def went_wrong(self, outcome: str, message: str = "", *, error: bool = True) -> None:
        self.errors += error
        if self.outcome == "ok":
            self.outcome, self.message = outcome, message


@dataclass(slots=True, eq=False)
class _Request:
    """What a reply with this request's id will be about."""

    kind: str  # op, open, opendir (their record is op); read, write, readdir, close (of handle)
    op: dict[str, Any] | None = None
    handle: _Handle | None = None
    seq: int = 0
    cost: int = 0


def _outcome(op: dict[str, Any], outcome: str, message: str) -> dict[str, Any]:
    op["outcome"] = outcome
    if message and outcome != "ok":
        op["message"] = message
    return op


class SftpObserver:
    """Feed it the client's and the server's bytes; it calls ``emit`` with one dict per operation.

    Every request gets exactly one reply carrying its id, so replies are matched to requests in a
    first-in first-out queue per id: a client reusing an id cannot make one file's content or one
    request's outcome count for another. A file is reported when its close is answered, so reads
    still in flight when the client closes are counted. What the observer cannot follow (more
    requests outstanding or files open than the caps, a packet over 1 MiB, a malformed request, a
    request type or protocol version sftp-server does not speak) sets :attr:`failed`; the broker then
    ends the session, relaying nothing more, rather than leave operations unrecorded.
    """

    def __init__(
        self,
        emit: Callable[[dict[str, Any]], None],
        emit_content: Callable[[str, bytes, bool], None] | None = None,
    ) -> None:
        self.emit = emit
        self.emit_content = emit_content
        self.failed: str | None = None
        self._up = PacketStream(fx.FXP_WRITE, self._request_packet, self._write_head)
        self._down = PacketStream(fx.FXP_DATA, self._reply_packet, self._data_head)
        self._pending: dict[int, deque[_Request]] = {}
        self._outstanding = 0
        self._pending_text = 0
        self._seq = itertools.count()
        self._files: dict[bytes, _Handle] = {}
        self._content_budget = [CONTENT_PER_SESSION]

    def client_data(self, data: bytes) -> None:
        self._up.feed(data)
        self._check_stream(self._up)

    def server_data(self, data: bytes) -> None:
        self._down.feed(data)
        self._check_stream(self._down)

    def _check_stream(self, stream: PacketStream) -> None:
        if stream.broken and self.failed is None:
            self._fail("an SFTP packet over 1 MiB (or of length 0) cannot be followed")

    def _fail(self, reason: str) -> None:
        if self.failed is None:
            self.failed = reason
            self._up.broken = self._down.broken = True

    # -- matching replies to requests ------------------------------------------------------------
    def _expect(self, request_id: int, request: _Request) -> None:
        if request.op is not None:
            request.cost = sum(len(v) for v in request.op.values() if isinstance(v, str))
        if self._outstanding >= _MAX_PENDING or self._pending_text + request.cost > _MAX_PENDING_TEXT:
            self._fail(f"more than {_MAX_PENDING} SFTP requests (or 4 MiB of paths) outstanding cannot be followed")
            return
        request.seq = next(self._seq)
        self._pending.setdefault(request_id, deque()).append(request)
        self._outstanding += 1
        self._pending_text += request.cost

    def _answered(self, request_id: int) -> _Request | None:
        queue = self._pending.get(request_id)
        if not queue:
            return None
        request = queue.popleft()
        if not queue:
            del self._pending[request_id]
        self._outstanding -= 1
        self._pending_text -= request.cost
        return request

    def _request_packet(self, packet: memoryview) -> None:
        kind = packet[0]
        if kind == fx.FXP_INIT:
            return  # no id; answered by FXP_VERSION
        name = _REQUESTS.get(kind)
        if name is None:
            self._fail(f"an SFTP request of unknown type {kind} cannot be followed")
            return
        reader = Reader(packet, 1)
        try:
            request_id = reader.u32()
            request = self._request(kind, reader, {"op": name})
        except (ValueError, struct.error):
            # sftp-server reads a field that overruns its packet from the bytes after it, acts on it, and
            # only then gives up: such a request must not reach it (the broker relays nothing after this).
            self._fail(f"a malformed SFTP {name} request cannot be followed")
            return
        self._expect(request_id, request)

    def _reply_packet(self, packet: memoryview) -> None:
        kind = packet[0]
        reader = Reader(packet, 1)
        with contextlib.suppress(ValueError, struct.error):
            if kind == fx.FXP_VERSION:
                version = reader.u32()
                if version != 3:
                    self._fail(f"SFTP version {version} cannot be followed (only version 3)")
                return
            request = self._answered(reader.u32())
            if request is None:
                return
            try:
                self._reply(request, kind, reader)
            except (ValueError, struct.error):
                self._settle(request, "bad reply", "")

    # -- requests --------------------------------------------------------------------------------
    def _handle(self, reader: Reader, op: dict[str, Any], key: str = "path", *, close: bool = False) -> _Handle | None:
        """Read a handle; ``op[key]`` names its file, or ``op["handle"]`` (``from_handle``...) the handle."""
        raw = bytes(reader.string())
        state = self._files.pop(raw, None) if close else self._files.get(raw)
        if state is not None:
            op[key] = state.path
        else:
            op["handle" if key == "path" else f"{key}_handle"] = raw[:64].hex()
        return state

    def _request(self, kind: int, reader: Reader, op: dict[str, Any]) -> _Request:
        if kind == fx.FXP_OPEN:
            op["path"] = reader.text()
            pflags = reader.u32()
            op["op"] = "write" if pflags & fx.FXF_MODIFYING else "read"
            op["flags"] = open_flag_names(pflags)
            reader.attrs(op)
            handle = _Handle(op, append=bool(pflags & fx.FXF_APPEND), written=_Content(self._content_budget))
            return _Request("open", op, handle)
        if kind == fx.FXP_OPENDIR:
            op["op"], op["path"] = "list", reader.text()
            return _Request("opendir", op, _Handle(op))
        if kind in _ON_HANDLE:
            state = self._handle(reader, op, close=kind == fx.FXP_CLOSE)
            if kind in (fx.FXP_READ, fx.FXP_WRITE):
                offset = reader.u64()
                size = reader.u32() if kind == fx.FXP_READ else len(data := reader.string())
                if state is None:
                    op["offset"], op["length"] = offset, size
                elif kind == fx.FXP_WRITE:  # a whole FXP_WRITE comes here only when its fields do not fit
                    self._wrote(state, offset, size)
                    state.written.add(bytes(data))
            elif kind == fx.FXP_FSETSTAT:
                reader.attrs(op)
            if state is None or kind in (fx.FXP_FSTAT, fx.FXP_FSETSTAT):
                return _Request("op", op)
            return _Request(_REQUESTS[kind], None, state)
        if kind == fx.FXP_RENAME:
            op["from"], op["to"] = reader.text(), reader.text()
        elif kind == fx.FXP_SYMLINK:  # OpenSSH's order, the reverse of the draft's: the target, then the new link
            op["target"], op["path"] = reader.text(), reader.text()
        elif kind == fx.FXP_EXTENDED:
            self._extended(reader, op)
        else:  # a path, and for setstat and mkdir the attributes to set
            op["path"] = reader.text()
            if kind in (fx.FXP_SETSTAT, fx.FXP_MKDIR):
                reader.attrs(op)
        return _Request("op", op)

    def _extended(self, reader: Reader, op: dict[str, Any]) -> None:
        """The extensions of OpenSSH's PROTOCOL and sftp-server; any other is recorded by its name."""
        name = reader.text(256)
        op["op"] = name.split("@")[0]
        if name in _PATHS:
            for key in _PATHS[name]:
                op[key] = reader.text()
        elif name in _ON_HANDLES:
            self._handle(reader, op)
        elif name == "lsetstat@openssh.com":
            op["path"] = reader.text()
            reader.attrs(op)
        elif name == "copy-data":
            source = self._handle(reader, op, "from")
            op["read_offset"], op["read_length"] = reader.u64(), reader.u64()
            sink = self._handle(reader, op, "to")
            op["write_offset"] = reader.u64()
            if source is not None:
                source.copies += 1
            if sink is not None and sink is not source:
                sink.copies += 1
        elif name == "home-directory":
            op["user"] = reader.text(256)
        elif name == "users-groups-by-id@openssh.com":
            op["uids"], op["gids"] = len(reader.string()) // 4, len(reader.string()) // 4
        else:
            op["op"], op["name"] = "extended", name

    def _wrote(self, state: _Handle, offset: int, size: int) -> None:
        if offset != state.next_write and not state.append:
            state.sequential = False  # a patch inside the file: its digest is not the file's
        state.next_write = offset + size

    def _write_head(self, head: memoryview) -> StreamTally | None:
        """An FXP_WRITE up to its data (id, handle, offset, length): the file's written tally."""
        reader = Reader(head, 1)
        request_id = reader.u32()
        op: dict[str, Any] = {"op": "write"}
        state = self._handle(reader, op)
        offset, size = reader.u64(), reader.u32()
        if state is None:
            self._expect(request_id, _Request("op", {**op, "offset": offset, "length": size}))
            return None
        self._wrote(state, offset, size)
        self._expect(request_id, _Request("write", None, state))
        return state.written

    # -- replies ---------------------------------------------------------------------------------
    def _data_head(self, head: memoryview) -> StreamTally | None:
        """An FXP_DATA up to its data (id, length): the tally of the file the read was for."""
        request = self._answered(Reader(head, 1).u32())
        if request is None:
            return None
        if request.kind == "read" and request.handle is not None:
            return request.handle.read
        self._settle(request, "ok", "")
        return None

    def _reply(self, request: _Request, kind: int, reader: Reader) -> None:
        if kind not in _REPLIES:
            self._settle(request, "bad reply", "")
            return
        outcome, message = reader.status() if kind == fx.FXP_STATUS else ("ok", "")
        state = request.handle
        if request.kind in ("open", "opendir") and kind == fx.FXP_HANDLE and state is not None:
            if len(self._files) >= _MAX_FILES:
                self._fail(f"more than {_MAX_FILES} files open over SFTP cannot be followed")
                self._file_done(state)  # opened all the same: its open (a truncation, say) is recorded
                return
            handle = bytes(reader.string())
            if handle in self._files:  # reused while open (not by OpenSSH): the file it named is done
                self._file_done(self._files[handle])
            self._files[handle] = state
        elif request.kind == "read" and kind == fx.FXP_DATA and state is not None:
            state.read.add(bytes(reader.string()))  # only when the data did not fit its packet: malformed
        elif request.kind == "readdir" and kind == fx.FXP_NAME and state is not None:
            state.entries += reader.u32()
        else:
            self._settle(request, outcome, message)

    def _settle(self, request: _Request, outcome: str, message: str) -> None:
        """The request is answered (or never will be): record it, or mark its file."""
        state = request.handle
        if request.kind in ("op", "open", "opendir") and request.op is not None:
            self.emit(_outcome(request.op, outcome, message))
        elif state is not None and outcome not in ("ok", "eof"):
            state.went_wrong(outcome, message, error=request.kind != "close" and outcome != "no reply")
        if request.kind == "close" and state is not None:
            self._file_done(state)

    def _file_done(self, state: _Handle) -> None:
        record = state.record
        rest = {k: v for k, v in record.items() if k not in ("op", "path")}
        rest = _outcome(rest, state.outcome, state.message)
        if state.errors:
            rest["errors"] = state.errors
        if state.copies:
            rest["copy_data"] = state.copies
        if record["op"] == "list":
            self.emit({"op": "list", "path": state.path, "entries": state.entries, **rest})
            return
        writing = record["op"] == "write"
        if state.written.bytes or writing:
            more = {} if state.sequential else {"sequential": False}
            self.emit({"op": "write", "path": state.path, **state.written.summary(), **rest, **more})
            head = state.written.head if isinstance(state.written, _Content) else b""
            if head and self.emit_content is not None:
                # The file's first bytes in the order written (all of a small file written in order).
                complete = len(head) == state.written.bytes and state.sequential
                self.emit_content(state.path, bytes(head), complete)
        if state.read.bytes or not writing:
            self.emit({"op": "read", "path": state.path, **state.read.summary(), **rest})

    def close(self) -> None:
        """The session ended: requests never answered say so, and files still open are reported."""
        pending = sorted((r for queue in self._pending.values() for r in queue), key=lambda r: r.seq)
        self._pending.clear()
        self._outstanding = self._pending_text = 0
        for request in pending:
            self._settle(request, "no reply", "")
        for state in self._files.values():
            self._file_done(state)
        self._files.clear()
