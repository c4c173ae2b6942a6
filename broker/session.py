"""One client connection to the broker, with its two faces.

* Control face: the SSH user name is a jit-ssh user name, the key an enrolled one; exec runs one
  control command (broker/control.py).
* Session face: the SSH user name is ``LOGIN@HOST`` and the key a certificate from the user CA. Before
  asyncssh checks the certificate (CA, principal, window, source-address, signature), the broker checks
  the grant behind it (invariant 4): serial issued and not revoked, request approved and active now,
  host and login among those approved. A refusal is audited and told to the client in an auth banner.
  Each session channel is then bridged to the host over the broker's own connection, authenticated
  by a per-connection onward certificate from the access CA (invariant 3), and recorded.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import asyncssh
from jit_ssh.ca import AccessDenied, Certificate, CertificateError, InputError, JitSshError, PublicKey
from jit_ssh.ca.grant import Grant

from .ports import SessionBroker
from .proxy import Onward, ProxySession, allowed_env
from .recording.recorder import FULL, Recorder
from .refusals import source_of
from .tcp import quick_acks

__all__ = ["MAX_CHANNELS_PER_CONNECTION", "ClientConnection"]

log = logging.getLogger("jit_ssh.broker.session")

#: Channels one client connection may have open or opening at once (sshd's own MaxSessions is 10).
MAX_CHANNELS_PER_CONNECTION = 10


def _retrieve(task: asyncio.Task[Any]) -> None:
    """The onward connection's failure is reported by the channel that needed it, not by asyncio."""
    if not task.cancelled():
        task.exception()


def _close_onward(task: asyncio.Task[tuple[asyncssh.SSHClientConnection, int]]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result()[0].close()


def capture_limits(proxy: ProxySession, limit: int) -> dict[str, int | None]:
    """What each stream keeps (invariant 5): a terminal session everything; without one, the input in full
    (it reaches the shell or the command as surely as typed keys do) and the output up to ``limit``.

    No exec command is trusted to be a file transfer: ``scp -t`` and ``rsync --server`` run through the
    user's shell on the host, which the user's own start-up files can make read its input as commands.
    SFTP records operations and digests (broker/sftp.py); its subsystem's input is not captured.
    """
    if proxy.term is not None:
        return {"o": FULL, "e": FULL, "i": FULL}
    return {"o": limit, "e": limit, "i": FULL}


def new_session_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(4)


class ClientConnection(asyncssh.SSHServer):
    """Authentication decisions (each denying by default) and the channels of one connection."""

    def __init__(self, broker: SessionBroker) -> None:
        self.broker = broker
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = "?"
        self.peer_host = ""
        self.user: str | None = None  # control face
        self.grant: Grant | None = None  # session face
        self.cert: Certificate | None = None
        self._candidates: dict[tuple[str, bytes], tuple[Grant, Certificate]] = {}
        self._refused: set[tuple[str, bytes]] = set()
        self.session_id = new_session_id()
        self._channels = 0
        self._onward_task: asyncio.Task[tuple[asyncssh.SSHClientConnection, int]] | None = None
        self._opening = 0  # channels between their request and their place in self.live
        self._idle_timer: asyncio.TimerHandle | None = None
        self.live: set[ProxySession] = set()
        #: Channels open or opening on this connection (bounded: see session_requested).
        self.channels = 0

    # -- authentication --------------------------------------------------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        quick_acks(conn)
        peer = conn.get_extra_info("peername")
        if peer:
            self.peer_host = str(peer[0])
            self.peer = f"{peer[0]}:{peer[1]}"
        # asyncssh hands an SSHServer only the CA key of a certificate, but invariant 4 needs its
        # serial and the grant behind it: look at the presented blob before asyncssh's own checks.
        original = conn.validate_public_key

        async def validate(username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
            if "@" in username and not await self._check_certificate(username, key_data):
                return False
            accepted = await original(username, key_data, msg, signature)
            if accepted and msg and "@" in username:
                self.grant, self.cert = self._candidates[username, key_data]
                self._start_onward(self.grant)
            return accepted

        conn.validate_public_key = validate  # type: ignore[method-assign]

    async def _check_certificate(self, username: str, key_data: bytes) -> bool:
        if (username, key_data) in self._candidates:
            return True
        if (username, key_data) in self._refused:
            return False  # told and audited once per connection, whether probed or signed
        try:
            cert = Certificate.from_blob(key_data)
        except (CertificateError, InputError):
            return False  # not a certificate: the session face takes nothing else
        # OpenSSH probes with a key before it signs, and never signs once the probe is refused: the
        # first refusal, probe or not, is the one the user must see and the audit log must hold.
        try:
            grant = await asyncio.get_running_loop().run_in_executor(
                self.broker.auth_pool, self.broker.session_grant, username, cert, self.peer, True
            )
        except AccessDenied as exc:
            self._refused.add((username, key_data))
            if self.conn is not None:
                self.conn.send_auth_banner(f"jit-ssh: access refused: {exc.message}\r\n")
            return False
        self._candidates[username, key_data] = (grant, cert)
        return True

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Only the user CA, and only for the session face (LOGIN@HOST user names).
        return "@" in username and key.public_data == self.broker.user_ca_key.blob

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if "@" in username:
            return False  # LOGIN@HOST is the session face: certificates only
        try:
            public = PublicKey(key.public_data)
        except InputError:
            return False
        user = await self.broker.authenticate(username, public, self.peer)
        if user is None:
            return False
        self.user = user
        return True

    def session_requested(self) -> asyncssh.SSHServerSession[bytes] | bool:
        """A new channel: refused before any other work beyond what one connection and one user may hold."""
        if self.grant is None and self.user is None:
            return False
        if self.channels >= MAX_CHANNELS_PER_CONNECTION:
            self._refuse_channel(f"at most {MAX_CHANNELS_PER_CONNECTION} channels at once on one connection")
        if self.grant is not None:
            if not self.broker.take_slot("session", self.grant.user):
                self._refuse_channel(f"at most {self.broker.config.sessions_per_user} sessions of one user at once")
            session: asyncssh.SSHServerSession[bytes] = ProxySession(self)
        else:
            session = self.broker.control_session(str(self.user), lambda: self.channel_closed(None))
        self.channels += 1
        return session

    def _refuse_channel(self, reason: str) -> None:
        who = self.grant.user if self.grant is not None else str(self.user)
        self.broker.spawn(
            asyncio.to_thread(
                self.broker.audit_refusal, "channel.refused", f"user:{who}", {"peer": self.peer, "reason": reason},
                source_of(self.peer),
            )
        )  # fmt: skip
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"jit-ssh: {reason}")

    def channel_closed(self, session: object) -> None:
        """A channel of this connection closed: its place (and, for a session, its user's slot) is free."""
        self.channels = max(0, self.channels - 1)
        if isinstance(session, ProxySession) and self.grant is not None:
            self.broker.give_slot("session", self.grant.user)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        # Port forwarding is not recorded yet, so it is refused whatever the grant says.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        for session in list(self.live):
            session.connection_lost(exc)
        task, self._onward_task = self._onward_task, None
        if task is not None:  # now, or when it is made (not cancelled: a connection made meanwhile would leak)
            task.add_done_callback(_close_onward)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    # -- channels --------------------------------------------------------------------------------
    def _start_onward(self, grant: Grant) -> asyncio.Task[tuple[asyncssh.SSHClientConnection, int]]:
        """Connect to the host as soon as the client has authenticated, while it opens its channel.

        The host's TCP connect, key exchange and authentication (about 30 ms here, most of it sshd
        starting its per-connection process) then run beside the grant's recheck and the start of the
        recording instead of after them. No data flows on it before a session is recorded: a channel
        opens on it only in :meth:`open_channel`, after the recheck and the recording. A connection
        that failed or has since closed is replaced by a new one.
        """
        task = self._onward_task
        if task is not None and task.done() and self._live_onward() is None:
            task = None
        if task is None:
            task = asyncio.get_running_loop().create_task(self.broker.connect_onward(grant, self.session_id))
            task.add_done_callback(_retrieve)
            self._onward_task = task
            self._close_when_idle()
        return task

    def _close_when_idle(self) -> None:
        """Close the onward connection if no session uses it for ``onward_idle`` from now.

        It was made for the client's sessions: kept without one (a client that authenticates and then
        waits, or keeps its connection open after its sessions, as ssh's ControlPersist does), it would
        keep a login on the host past the grant's end. The next session makes a new one.
        """
        if self.live or self._onward_task is None:
            return  # armed again when the last session ends
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        delay = self.broker.config.onward_idle.total_seconds()
        self._idle_timer = asyncio.get_running_loop().call_later(delay, self._close_if_idle)

    def _close_if_idle(self) -> None:
        self._idle_timer = None
        if self.live or self._opening:
            return
        live = self._live_onward()
        if live is not None:
            log.info("closing the idle connection to host %s", self.grant.host if self.grant else "?")
            live[0].close()
        elif self._onward_task is not None and not self._onward_task.done():
            self._close_when_idle()  # still connecting: look again later

    def _live_onward(self) -> tuple[asyncssh.SSHClientConnection, int] | None:
        """The onward connection and its certificate's serial, if it is made and still open."""
        task = self._onward_task
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return None
        conn, serial = task.result()
        return None if conn.is_closed() else (conn, serial)

    async def _onward_connection(self, grant: Grant) -> tuple[asyncssh.SSHClientConnection, int]:
        return await asyncio.shield(self._start_onward(grant))

    async def open_channel(self, proxy: ProxySession) -> None:
        """Check the grant again, start the recording, open the host's channel, attach them."""
        self._opening += 1
        try:
            await self._open_channel(proxy)
        finally:
            self._opening -= 1
            self._close_when_idle()

    async def _open_channel(self, proxy: ProxySession) -> None:
        grant, cert, chan = self.grant, self.cert, proxy.chan
        if grant is None or cert is None or chan is None:
            raise AccessDenied("no grant on this connection")
        await asyncio.to_thread(self.broker.recheck_grant, grant)
        self._channels += 1
        proxy.session_id = f"{self.session_id}-{self._channels}"
        term = proxy.term
        size = term[1] if term else (80, 24, 0, 0)
        # Every variable that reaches the host is in the recording with its value (it can carry a command:
        # LC_X='...' ssh HOST 'eval "$LC_X"'); the names refused are recorded too.
        env, refused_env = allowed_env(chan.get_environment(), self.broker.config.env_allow)
        header = {
            "version": 2,
            "width": size[0] or 80,
            "height": size[1] or 24,
            "timestamp": int(time.time()),
            "title": f"{grant.user}: {grant.login}@{grant.host} ({proxy.kind})",
            "env": {"TERM": term[0] if term else "", "SHELL": ""},
            "jit_ssh": {
                "session": proxy.session_id, "request": grant.request_id, "user": grant.user,
                "host": grant.host, "login": grant.login, "key_id": cert.key_id, "serial": cert.serial,
                "kind": proxy.kind, "pty": term is not None, "command": proxy.command, "peer": self.peer,
                "started": time.time(),
            },
        }  # fmt: skip
        # Not cancelled halfway when the client leaves meanwhile: the file and the row it makes are then
        # closed by channel_finished, not left open (the worker threads would finish them regardless).
        begun = asyncio.get_running_loop().create_task(
            self._begin_recording(proxy, grant, cert, header, env, refused_env)
        )
        begun.add_done_callback(_retrieve)
        recorded_serial = await asyncio.shield(begun)
        if proxy.closed:
            return
        self.live.add(proxy)
        self.broker.register(grant.request_id, proxy)
        onward_conn, onward_serial = await self._onward_connection(grant)
        if onward_serial != recorded_serial:  # reached after the row was written
            await asyncio.to_thread(self.broker.session_onward, proxy.session_id, onward_serial)
        options: dict[str, Any] = {"env": env, "encoding": None}
        if term is not None:
            options.update(request_pty=True, term_type=term[0], term_size=term[1], term_modes=term[2])
        else:
            options["request_pty"] = False
        if proxy.kind == "sftp":
            options["subsystem"] = "sftp"
        try:
            await onward_conn.create_session(
                lambda: Onward(proxy), proxy.command if proxy.kind == "exec" else None, **options
            )
        except asyncssh.ChannelOpenError as exc:
            raise JitSshError(f"host {grant.host} refused a new session: {exc.reason}") from exc
        except (OSError, asyncssh.Error) as exc:
            raise JitSshError(f"lost the connection to host {grant.host}: {exc}") from exc
        proxy.attach()

    async def _begin_recording(
        self,
        proxy: ProxySession,
        grant: Grant,
        cert: Certificate,
        header: dict[str, Any],
        env: dict[str, str],
        refused_env: list[str],
    ) -> int | None:
        """Open the recording and the session's row, and hand the recording to the proxy.

        Returns the onward certificate's serial written in the row (None if the host is not reached yet).
        """
        new = self.broker.recordings.create(proxy.session_id)
        recorder = await asyncio.to_thread(
            Recorder.open, new.path, header, limits=capture_limits(proxy, self.broker.config.capture_limit)
        )
        recorder.file.set_loop(asyncio.get_running_loop())
        # The session row exists from here on, so that a session the host refuses is on record too:
        # a failure below ends the proxy, which closes the recording and the row with the reason.
        live = self._live_onward()  # the host may have been reached meanwhile
        serial = live[1] if live is not None else None
        try:
            await asyncio.to_thread(self.broker.session_started, proxy, grant, cert, new.reference, serial, self.peer)
        except BaseException:
            recorder.abandon()  # no row, no session: a recording of nothing is not kept
            self.broker.recordings.delete(new.reference)
            raise
        proxy.begin_recording(recorder)
        if proxy.command is not None:
            recorder.meta({"exec": proxy.command})
        if env or refused_env:
            recorder.meta({"env": env, **({"env_refused": refused_env} if refused_env else {})})
        if proxy.closed:  # the client left while this ran: close the recording and the row now
            self.channel_finished(proxy)
        return serial

    def channel_finished(self, proxy: ProxySession) -> None:
        self.live.discard(proxy)
        self._close_when_idle()
        grant = self.grant
        if grant is not None:
            self.broker.unregister(grant.request_id, proxy)
        recorder = proxy.recorder
        if recorder is None:
            return
        onward = proxy.onward
        summary: dict[str, Any] = {
            "reason": proxy.ending or "closed",
            "bytes_in": proxy.bytes_in,
            "bytes_out": proxy.bytes_out,
        }
        if onward is not None:
            summary["exit_status"] = onward.exit_status
            if onward.exit_signal is not None:
                summary["exit_signal"] = onward.exit_signal[0]
        if proxy.sftp is not None:
            proxy.sftp.close()
        self.broker.spawn(self._seal(proxy.session_id, recorder, summary))

    async def _seal(self, session_id: str, recorder: Recorder, summary: dict[str, Any]) -> None:
        """Wait for the recording to be on disk, then write its size and digest to the row and the audit log."""
        try:
            size, digest = await asyncio.wrap_future(recorder.finish(summary))
        except JitSshError as exc:
            log.warning("recording %s could not be closed cleanly: %s", recorder.path, exc)
            size, digest = recorder.size, ""
        failed = recorder.file.failed
        if failed is not None and not str(summary.get("reason", "")).startswith("recording failed"):
            # The last write failed after the session had ended: its row must not say it closed cleanly.
            summary["reason"] = f"recording failed, the end of the session is missing: {failed.message}"
        await asyncio.to_thread(self.broker.session_ended, session_id, summary, size, digest)
        self.broker.index_later(session_id, self.grant.user if self.grant is not None else "")
