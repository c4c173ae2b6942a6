"""The session face: bridge one client session channel to the host, recording it.

A :class:`ProxySession` is the server side of a channel the engineer's ``ssh`` opened; once the
client asks for a shell, a command or the ``sftp`` subsystem, it opens a channel of the same kind on
the broker's own connection to the host (:class:`Onward`) and relays both ways, every byte passing
the recorder first. Flow control is end to end: when one side cannot take more, reading from the
other pauses, so the broker never holds a whole transfer in memory.

Data (and EOF) the client sends before the host's channel is open is kept: the first chunk here, the
rest in asyncssh's receive buffer (reading pauses at once), and all of it delivered once the host is
ready.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

import asyncssh
from asyncssh.connection import SSHConnection
from jit_ssh.ca.grant import Grant

from . import fastpath
from .recording.recorder import Recorder, RecordingError
from .sftp import SftpObserver

__all__ = ["LOCALE_ENV", "Connection", "Onward", "ProxySession", "allowed_env"]

log = logging.getLogger("jit_ssh.broker.proxy")

#: Environment variables passed on to the host, by exact name: the locale (sshd's AcceptEnv on Debian
#: takes ``LANG LC_*``); more with ``env_allow`` in broker.toml (git's protocol v2 needs GIT_PROTOCOL).
LOCALE_ENV = frozenset(
    {
        "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_NUMERIC", "LC_TIME", "LC_COLLATE", "LC_MONETARY",
        "LC_MESSAGES", "LC_PAPER", "LC_NAME", "LC_ADDRESS", "LC_TELEPHONE", "LC_MEASUREMENT", "LC_IDENTIFICATION",
    }
)  # fmt: skip
_MAX_ENV = 32
_MAX_ENV_VALUE = 1024
_MAX_DIMENSION = 10_000
_STDERR = asyncssh.EXTENDED_DATA_STDERR


def allowed_env(env: Mapping[Any, Any], extra: frozenset[str] = frozenset()) -> tuple[dict[str, str], list[str]]:
    """The variables passed on to the host (every one is recorded with its value), and the names refused."""
    out: dict[str, str] = {}
    refused: list[str] = []
    for key, value in env.items():
        name = key.decode("ascii", "replace") if isinstance(key, bytes) else str(key)
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if (name in LOCALE_ENV or name in extra) and len(text) <= _MAX_ENV_VALUE and len(out) < _MAX_ENV:
            out[name] = text
        elif len(refused) < _MAX_ENV:
            refused.append(name[:64])
    return out, refused


class _BatchedTransport:
    """Packets written while the event loop handles one batch of input leave in one ``send()``.

    asyncssh writes each SSH packet to its transport at once, a system call each: 65,000 for 256 MiB
    of pty output in 4 KiB packets, more time than the cryptography. The batch goes out when the loop
    has handled what it read, before it polls again: packets keep their order and nothing waits
    longer than that (a keystroke's echo neither). Everything else is the transport's own.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def batch_writes(conn: SSHConnection) -> None:
    """Send ``conn``'s packets in batches; once per connection, and nothing if asyncssh changed inside."""
    transport = getattr(conn, "_transport", None)
    if isinstance(transport, asyncio.Transport):
        conn._transport = cast(asyncio.Transport, _BatchedTransport(transport, asyncio.get_running_loop()))


class Onward(asyncssh.SSHClientSession[bytes]):
    """The host side of one bridged channel."""

    def __init__(self, proxy: ProxySession) -> None:
        self.proxy = proxy
        self.exit_status: int | None = None
        self.exit_signal: tuple[str, bool, str] | None = None
        proxy.onward = self  # the host may answer (and even close) before create_session returns

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.proxy.onward_chan = chan
        batch_writes(chan.get_connection())

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.proxy.from_host(data, datatype)

    def eof_received(self) -> bool:
        self.proxy.host_eof()
        return True

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = (signal, core_dumped, msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.host_closed(exc)

    def pause_writing(self) -> None:
        self.proxy.pause_client()

    def resume_writing(self) -> None:
        self.proxy.resume_client()


class RefusalAudit(Protocol):
    """The one thing a session channel asks of the broker itself: to audit a failed session."""

    def audit_refusal(
        self, action: str, subject: str, details: Mapping[str, Any], source: str | None = None, actor: str = "jit-ssh"
    ) -> None: ...


class Connection(Protocol):
    """What a session channel needs of its client connection (:class:`~jit_ssh.broker.session.ClientConnection`)."""

    @property
    def grant(self) -> Grant | None: ...

    @property
    def peer(self) -> str: ...

    @property
    def broker(self) -> RefusalAudit: ...

    async def open_channel(self, proxy: ProxySession) -> None: ...

    def channel_finished(self, proxy: ProxySession) -> None: ...

    def channel_closed(self, session: object) -> None: ...


class ProxySession(asyncssh.SSHServerSession[bytes]):
    """The client side of one bridged channel; also the unit of recording and enforcement."""

    def __init__(self, client: Connection) -> None:
        self.client = client
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.onward_chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.onward: Onward | None = None
        self.recorder: Recorder | None = None
        self.sftp: SftpObserver | None = None
        self.kind = "shell"
        self.command: str | None = None
        self.term: tuple[str, tuple[int, int, int, int], dict[int, int]] | None = None
        self.session_id = ""
        self.started = time.time()
        self.bytes_in = 0
        self.bytes_out = 0
        #: Monotonic time of the last byte either way (the idle timeout reads it).
        self.last_activity = time.monotonic()
        self.warned = False
        self.ending: str | None = None
        self._closed = False
        #: Why reading pauses: the host is slow (a count: each hop's channel may ask), the client is slow,
        #: the recording's writer is behind; data came before the host's channel was open.
        self._host_slow = 0
        self._client_slow = False
        self._backlog = False
        self._task: asyncio.Task[None] | None = None
        self._attached = False
        self._early: list[bytes] = []
        self._early_eof = False
        self._released = False

    @property
    def closed(self) -> bool:
        """The session has ended (or never started); its recording, if any, is closed or being closed."""
        return self._closed

    # -- the client's requests -------------------------------------------------------------------
    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan
        batch_writes(chan.get_connection())

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any) -> bool:
        cols, rows = term_size[0], term_size[1]
        if not (term_type.isprintable() and len(term_type) <= 64) or max(cols, rows) > _MAX_DIMENSION:
            return False
        self.term = (term_type, term_size, dict(term_modes))
        return True

    def shell_requested(self) -> bool:
        self.kind = "shell"
        return True

    def exec_requested(self, command: str) -> bool:
        if len(command) > 64 * 1024:
            return False
        self.kind, self.command = "exec", command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem != "sftp":
            return False  # nothing else can be recorded meaningfully: refused
        self.kind = "sftp"
        return True

    def session_started(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        try:
            await self.client.open_channel(self)
        except Exception as exc:  # noqa: BLE001 - every failure ends the session with a message, not a hang
            message = str(exc) or type(exc).__name__
            log.warning("session %s not started: %s", self.session_id or "-", message)
            if self.recorder is None:  # refused before its recording (and row) began: audit it here
                grant = self.client.grant
                details = {"reason": message, "kind": self.kind, "request": grant.request_id if grant else None,
                           "peer": self.client.peer}  # fmt: skip
                loop = asyncio.get_running_loop()
                loop.run_in_executor(
                    None, self.client.broker.audit_refusal, "session.failed", f"session:{self.session_id or '-'}",
                    details,
                )  # fmt: skip
            self.fail(f"jit-ssh: {message}")

    def begin_recording(self, recorder: Recorder) -> None:
        """Set before the host's channel opens, so that nothing the host sends goes unrecorded."""
        self.recorder = recorder
        recorder.watch(on_failure=self._recording_failed, on_backlog=self._recording_backlog)
        if self.kind == "sftp":
            self.sftp = SftpObserver(self._sftp_op, self._sftp_content)

    def _recording_failed(self, exc: RecordingError) -> None:
        if self.ending is None:
            self.end(f"recording failed, session closed: {exc.message}")

    def _recording_backlog(self, behind: bool) -> None:
        """The writer is behind on this recording (a flood of input or output): stop reading until it is not."""
        self._backlog = behind
        self._sync_reading()

    def attach(self) -> None:
        """The host's channel is open and its request sent: let the client's data flow."""
        self._attached = True
        early, self._early = self._early, []
        for data in early:
            self.data_received(data, None)
        if self._early_eof:
            self.eof_received()
        self._sync_reading()

    def _sftp_op(self, op: dict[str, Any]) -> None:
        self._record(lambda r: r.meta({"sftp": op}))

    def _sftp_content(self, path: str, head: bytes, complete: bool) -> None:
        """The first bytes of a file written over SFTP, kept in the recording (a script that runs later)."""
        content = {"path": path, "base64": base64.b64encode(head).decode("ascii"), "complete": complete}
        self._record(lambda r: r.meta({"sftp_content": content}))

    # -- data, both ways -------------------------------------------------------------------------
    def _record(self, action: Callable[[Recorder], None]) -> bool:
        if self.recorder is None:
            return False
        try:
            action(self.recorder)
        except RecordingError as exc:
            if self.ending is None:  # end() itself records its notice: fail once, do not recurse
                self.end(f"recording failed, session closed: {exc.message}")
            return False
        return True

    def _observe(self, stream: str, data: bytes) -> bool:
        """Record a chunk before it is relayed (SFTP: as operations); False once the session ended for it."""
        sftp = self.sftp
        if sftp is None:
            return self._record(lambda r: r.data(stream, data))
        if stream == "i":
            sftp.client_data(data)
        else:
            sftp.server_data(data)
        if sftp.failed is not None:
            self.end(f"recording failed, session closed: {sftp.failed}")
            return False
        return True

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if not self._attached:
            # asyncssh resumes reading when it reports the session started; hold what comes early.
            self._early.append(data)
            if self.chan is not None:
                self.chan.pause_reading()
            return
        if self.onward_chan is None or self._closed:
            return
        self.bytes_in += len(data)
        self.last_activity = time.monotonic()
        if self._observe("i", data):
            fastpath.write(self.onward_chan, data)

    def from_host(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self.chan is None or self._closed:
            return
        self.bytes_out += len(data)
        self.last_activity = time.monotonic()
        if self._observe("e" if datatype == _STDERR else "o", data):
            fastpath.write(self.chan, data, datatype)

    def eof_received(self) -> bool:
        if not self._attached:
            self._early_eof = True
        elif self.onward_chan is not None:
            self.onward_chan.write_eof()
        return True  # half-open until the host closes

    def host_eof(self) -> None:
        """The host's output ended. Not passed on yet: the client learns it with the exit status, which
        sshd sends just after. A client that has closed its input (``ssh host cmd < /dev/null``, a
        ControlMaster's session) closes the channel as soon as it sees EOF both ways, and an exit status
        that comes after that is lost: ssh then exits 255 instead of the command's status. The channel's
        close, after the exit status, ends the client's output instead."""

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if max(width, height) > _MAX_DIMENSION:
            return
        if self.term is not None:
            self.term = (self.term[0], (width, height, pixwidth, pixheight), self.term[2])
        if self.onward_chan is not None:
            self._record(lambda r: r.resize(width, height))
            self.onward_chan.change_terminal_size(width, height, pixwidth, pixheight)

    def signal_received(self, signal: str) -> None:
        if self.onward_chan is not None and signal.isalnum() and len(signal) <= 16:
            self._record(lambda r: r.meta({"signal": signal}))
            self.onward_chan.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        if self.onward_chan is None:
            return False
        self._record(lambda r: r.meta({"break": msec}))
        self.onward_chan.send_break(msec)
        return True

    # -- flow control ----------------------------------------------------------------------------
    def pause_writing(self) -> None:  # the client is slow: stop reading the host
        self._client_slow = True
        self._sync_reading()

    def resume_writing(self) -> None:
        self._client_slow = False
        self._sync_reading()

    def pause_client(self) -> None:  # the host is slow: stop reading the client
        self._host_slow += 1
        self._sync_reading()

    def resume_client(self) -> None:
        self._host_slow = max(0, self._host_slow - 1)
        self._sync_reading()

    def _sync_reading(self) -> None:
        """Read from each side unless a reason to pause holds (asyncssh's pause/resume do not count)."""
        if self._closed:
            return
        if self.chan is not None and self._attached:
            if self._host_slow or self._backlog:
                self.chan.pause_reading()
            else:
                self.chan.resume_reading()
        if self.onward_chan is not None:
            if self._client_slow or self._backlog:
                self.onward_chan.pause_reading()
            else:
                self.onward_chan.resume_reading()

    def flush(self) -> None:
        """Push buffered recording to disk (the broker calls this at least once a second)."""
        self._record(lambda r: r.flush())

    # -- ends ------------------------------------------------------------------------------------
    def notice(self, text: str) -> None:
        """A line from jit-ssh to the user's terminal (stderr without a terminal); recorded."""
        if self.chan is None or self._closed:
            return
        data = f"\r\n[jit-ssh] {text}\r\n".encode()
        self._record(lambda r: r.meta({"notice": text}))
        if self._closed:
            return  # recording the notice failed, and end() has told the user so
        self.chan.write(data, None if self.term else _STDERR)

    def fail(self, message: str) -> None:
        """End a session that could not start: the message on stderr, exit status 255 (as ssh does)."""
        if self._closed:
            return
        self.ending = message
        self._finish()
        if self.onward_chan is not None:
            self.onward_chan.close()
        if self.chan is not None:
            with contextlib.suppress(OSError, asyncssh.Error):  # the client may have gone already
                self.chan.write((message + "\r\n" if self.term else message + "\n").encode(), _STDERR)
                self.chan.exit(255)

    def end(self, reason: str) -> None:
        """Cut the session off (expiry, revocation, recording failure); the host channel closes too."""
        if self._closed:
            return
        self.ending = reason
        self.notice(reason)
        if self.onward_chan is not None:
            self.onward_chan.close()
        self._finish()
        if self.chan is not None:
            self.chan.exit(255)

    def host_closed(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._finish()
        chan, onward = self.chan, self.onward
        if chan is None:
            return
        if onward is not None and onward.exit_signal is not None:
            signal, core, msg = onward.exit_signal
            chan.exit_with_signal(signal, core, msg)
        elif onward is not None and onward.exit_status is not None:
            chan.exit(onward.exit_status)
        else:
            if exc is not None:
                chan.write(f"jit-ssh: the connection to the host was lost: {exc}\n".encode(), _STDERR)
            chan.exit(255)

    def _finish(self) -> None:
        self._closed = True
        self.client.channel_finished(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.onward_chan is not None:
            self.onward_chan.close()
        if not self._closed:
            self.ending = self.ending or "client disconnected"
            self._finish()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if not self._released:  # once, though the channel and its connection may both report it
            self._released = True
            self.client.channel_closed(self)
