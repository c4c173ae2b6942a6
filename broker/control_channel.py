"""One control command on its channel: ``VERB`` with JSON arguments inline or on stdin, the reply on stdout.

Streaming verbs (export, watch, krl) write their output as it comes, with flow control; a stream that stops
on an error says so on stderr, with a non-zero exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import asyncssh
from jit_ssh.ca import InputError, JitSshError

from .control import MAX_ARGUMENTS, STREAM_VERBS, error_reply, parse_arguments
from .ports import ControlBroker
from .recording.asciicast import AsciicastWriter, CastFormat
from .recording.format import follow_frames

__all__ = ["ControlSession"]

log = logging.getLogger("jit_ssh.broker")
_STDIN_TIMEOUT = 30.0


class ControlSession(asyncssh.SSHServerSession[bytes]):
    """One control command: ``VERB`` with JSON arguments inline or on stdin (read to EOF, bounded)."""

    def __init__(self, broker: ControlBroker, user: str, on_closed: Callable[[], None] | None = None) -> None:
        self.broker = broker
        self.user = user
        self._on_closed = on_closed
        self._slot: str | None = None
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.command = ""
        self.inline = b""
        self.buffer = bytearray()
        self.done = False
        self.closed = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan

    def shell_requested(self) -> bool:
        return True  # answered with an error once started

    def exec_requested(self, command: str) -> bool:
        verb, _, inline = command.strip().partition(" ")
        self.command, self.inline = verb, inline.strip().encode()
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        return False

    def session_started(self) -> None:
        if not self.command:
            self._reply(error_reply(InputError("the control plane runs commands, not shells")), 2)
        elif self.inline:
            self._run(self.inline)
        else:
            self._timer = asyncio.get_running_loop().call_later(_STDIN_TIMEOUT, self._timed_out)

    def _timed_out(self) -> None:
        self._reply(error_reply(InputError("send the arguments as JSON on stdin, then close it")), 2)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self.done or self.inline:
            return
        room = MAX_ARGUMENTS + 1 - len(self.buffer)
        if room > 0:
            self.buffer += data[:room]
        if len(self.buffer) > MAX_ARGUMENTS:
            self._run(bytes(self.buffer))  # parse_arguments reports the size

    def eof_received(self) -> bool:
        if not self.done and not self.inline and self.command:
            self._run(bytes(self.buffer))
        return True

    def _run(self, raw: bytes) -> None:
        if self.done:
            return
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
        if self.command in STREAM_VERBS:
            if not self.broker.take_slot("stream", self.user):
                # Refused before any work (a stream may last as long as a session): bounded per user.
                busy = JitSshError(f"{self.user} has too many exports and watches running at once")
                self._send(error_reply(busy), 1)
                return
            self._slot = "stream"
            self.broker.spawn(self._released(self._stream(raw)))
            return

        async def go() -> None:
            # One user's commands wait for that user's own few places: a flood of them holds no thread
            # that another user's command waits for.
            async with self.broker.command_place(self.user):
                if self.closed:
                    return
                reply, code = await self.broker.run_control(self.user, self.command, raw)
            self._send(reply, code)

        self.broker.spawn(go())

    async def _released(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        finally:
            if self._slot is not None:
                self.broker.give_slot(self._slot, self.user)
                self._slot = None

    async def _stream(self, raw: bytes) -> None:
        """export / watch: the recording as asciicast text (v2, or v3 for an export that asks), following it
        while the session runs."""
        try:
            args = parse_arguments(self.command, raw)
            if self.command == "krl":
                data = await asyncio.to_thread(self.broker.current_krl)
                await self._write(data)
                if self.chan is not None:
                    self.chan.exit(0)
                return
            writer = AsciicastWriter(str(args.get("format", CastFormat.V2)))  # a bad format: refused, not audited
            path, live = await self.broker.open_stream(self.user, self.command, args)
        except JitSshError as exc:
            self._send(error_reply(exc), exc.exit_code)
            return
        follow = self.command == "watch" or bool(args.get("follow"))
        try:
            async for header, frame in follow_frames(path, live=live if follow else lambda: False):
                text = writer.header(header) if frame is None else writer.frame(frame)
                if text and not await self._write(text.encode()):
                    return
                await asyncio.sleep(0)  # a long recording must not hold the loop (and the enforcement clock)
            await self._write(writer.finish().encode())
        except Exception as exc:  # noqa: BLE001 - the reviewer must learn the stream is incomplete, not get a hang
            error = exc if isinstance(exc, JitSshError) else JitSshError(f"cannot read the recording: {exc}")
            log.warning("streaming %s failed: %s", path, error.message)
            self._fail_stream(error)
            return
        if self.chan is not None:
            with contextlib.suppress(OSError, asyncssh.Error):
                self.chan.exit(0)

    def _fail_stream(self, error: JitSshError) -> None:
        """A stream cut by an error: the error on stderr (one JSON line) and a non-zero exit status."""
        if self.chan is None:
            return
        with contextlib.suppress(OSError, asyncssh.Error):
            self.chan.write(json.dumps(error_reply(error)).encode() + b"\n", asyncssh.EXTENDED_DATA_STDERR)
            self.chan.exit(error.exit_code or 1)

    async def _write(self, data: bytes) -> bool:
        """Write with flow control: wait while the client cannot take more. False if it went away."""
        if self.chan is None or self.closed:
            return False
        self.chan.write(data)
        await self._writable.wait()
        return not self.closed

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _reply(self, reply: dict[str, Any], code: int) -> None:
        self.done = True
        self._send(reply, code)

    def _send(self, reply: dict[str, Any], code: int) -> None:
        if self.chan is None:
            return
        try:
            self.chan.write(json.dumps(reply, default=str).encode() + b"\n")
            self.chan.exit(code)
        except (OSError, asyncssh.Error):
            pass  # the client went away; the command's effect (if any) is committed and audited

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()
        if self._timer is not None:
            self._timer.cancel()
        if not self.closed and self._on_closed is not None:
            self._on_closed()  # the connection's channel count
        self.closed = True
