"""The broker daemon: one asyncio process, an asyncssh server with the control plane on it.

Users authenticate with an enrolled public key; their SSH user name must be their jit-ssh user name.
(A user name of the form ``LOGIN@HOST`` is the session face, which authenticates by certificate.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncssh
from jit_ssh.ca import (
    AccessDenied,
    CADirectory,
    CARole,
    InputError,
    JitSshError,
    PublicKey,
    StoreError,
    mint_host_certificate,
)
from jit_ssh.ca.audit import append_event
from jit_ssh.ca.inventory import user_for_key
from jit_ssh.ca.policy import Policy
from jit_ssh.ca.store import Store
from jit_ssh.ca.workflow import Authority

from .config import BrokerConfig
from .control import MAX_ARGUMENTS, ControlContext, dispatch, error_reply
from .notify import Notifier

__all__ = ["Broker"]

log = logging.getLogger("jit_ssh.broker")
_STDIN_TIMEOUT = 30.0
_SWEEP_INTERVAL = 5.0
_HOST_CERT_VALIDITY = timedelta(days=30)


class Broker:
    """Everything the bastion runs, built from a :class:`BrokerConfig`."""

    def __init__(self, config: BrokerConfig, *, passphrase: bytes | None) -> None:
        self.config = config
        ca = CADirectory(config.ca_dir)
        self.user_ca_key = ca.public_key(CARole.USER)
        self._host_ca = ca.signer(CARole.HOST, passphrase=passphrase)
        try:
            config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise JitSshError(f"cannot create data directory {config.data_dir}: {exc.strerror}") from exc
        self.store = Store(config.store_url)
        self.policy = Policy.load(config.policy)
        self.authority = Authority(
            self.store,
            self.policy,
            user_ca=ca.signer(CARole.USER, passphrase=passphrase),
            pending_timeout=config.pending_timeout,
        )
        self.notifier = Notifier(config.webhooks)
        self._server: asyncssh.SSHAcceptor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0

    # -- host identity ---------------------------------------------------------------------------
    def _host_key(self) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
        path = self.config.host_key
        try:
            if path.exists():
                key = asyncssh.read_private_key(str(path))
            else:
                key = asyncssh.generate_private_key("ssh-ed25519")
                path.parent.mkdir(parents=True, exist_ok=True)
                key.write_private_key(str(path))
                path.chmod(0o600)
        except (OSError, asyncssh.KeyImportError) as exc:
            raise JitSshError(f"cannot read or create the broker host key {path}: {exc}") from exc
        now = datetime.now(UTC)
        with self.store.transaction() as session:
            serial = self.store.next_serial(session)
            append_event(
                self.store, session, actor="jit-ssh", action="broker.host_certificate", subject="broker",
                details={"serial": serial, "names": list(self.config.host_names)},
            )  # fmt: skip
        cert = mint_host_certificate(
            self._host_ca,
            PublicKey(key.public_data),
            hostnames=list(self.config.host_names),
            key_id="jit-ssh broker",
            serial=serial,
            valid_from=now,
            valid_until=now + _HOST_CERT_VALIDITY,
            max_validity=_HOST_CERT_VALIDITY,
        )
        return key, asyncssh.import_certificate(cert.to_openssh())

    # -- life ------------------------------------------------------------------------------------
    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        await self.notifier.start()
        # The authority runs in worker threads; the notifier lives on this loop.

        def listen(event: str, payload: Mapping[str, Any]) -> None:
            loop.call_soon_threadsafe(self.notifier.notify, event, payload)

        self.authority.listeners.append(listen)
        key, cert = await asyncio.to_thread(self._host_key)
        try:
            self._server = await asyncssh.create_server(
                lambda: _Connection(self),
                self.config.listen_host,
                self.config.listen_port,
                server_host_keys=[(key, cert)],
                process_factory=self._handle_process,
                encoding=None,
                allow_scp=False,
                sftp_factory=None,
                agent_forwarding=False,
                x11_forwarding=False,
                keepalive_interval=30,
                login_timeout=30,
            )
        except OSError as exc:
            raise JitSshError(
                f"cannot listen on {self.config.listen_host}:{self.config.listen_port}: {exc.strerror}"
            ) from exc
        sockets = self._server.sockets
        self.port = sockets[0].getsockname()[1] if sockets else self.config.listen_port
        self._tasks.append(asyncio.create_task(self._sweeper()))
        log.info("broker listening on %s:%d", self.config.listen_host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.notifier.stop()
        self.store.dispose()

    async def serve_forever(self) -> None:
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
            log.info("broker stopping")
        finally:
            await self.stop()

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            try:
                moved = await asyncio.to_thread(self.authority.sweep)
                if moved:
                    log.info("lapsed %d request(s)", moved)
            except JitSshError as exc:
                log.warning("sweep failed: %s", exc)

    # -- authentication --------------------------------------------------------------------------
    def audit_refusal(self, action: str, subject: str, details: dict[str, Any]) -> None:
        try:
            with self.store.transaction() as session:
                append_event(self.store, session, actor="jit-ssh", action=action, subject=subject, details=details)
        except StoreError as exc:
            log.warning("could not audit %s: %s", action, exc)

    async def authenticate(self, username: str, key: PublicKey, peer: str) -> str | None:
        """The user an enrolled ``key`` belongs to, if that is ``username``; refusals are audited."""
        try:
            user = await asyncio.to_thread(user_for_key, self.store, key)
        except (AccessDenied, InputError) as exc:
            await asyncio.to_thread(
                self.audit_refusal, "auth.refused", f"user:{username[:64]}",
                {"key": key.fingerprint(), "peer": peer, "reason": exc.message},
            )  # fmt: skip
            return None
        if user != username:
            await asyncio.to_thread(
                self.audit_refusal, "auth.refused", f"user:{username[:64]}",
                {"key": key.fingerprint(), "peer": peer, "reason": f"key belongs to {user}"},
            )  # fmt: skip
            return None
        return user

    # -- control commands ------------------------------------------------------------------------
    async def _handle_process(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        conn = process.get_extra_info("connection")
        owner = conn.get_owner() if conn is not None else None
        user = owner.user if isinstance(owner, _Connection) else None
        started = time.monotonic()
        if user is None:  # pragma: no cover - asyncssh only opens sessions after authentication
            process.exit(3)
            return
        command = (process.command or "").strip()
        verb, _, inline = command.partition(" ")
        if not verb:
            reply, code = error_reply(InputError("the control plane runs commands, not shells")), 2
        else:
            raw = inline.encode() if inline.strip() else await _read_stdin(process)
            if raw is None:
                reply, code = error_reply(InputError("send the arguments as JSON on stdin, then close it")), 2
            else:
                ctx = ControlContext(self.authority, user)
                reply, code = await asyncio.to_thread(dispatch, ctx, verb, raw)
        process.stdout.write(json.dumps(reply, default=str).encode() + b"\n")
        log.info(
            "control user=%s verb=%s exit=%d ms=%.1f",
            user,
            verb[:32],
            code,
            (time.monotonic() - started) * 1000,
        )
        process.exit(code)


async def _read_stdin(process: asyncssh.SSHServerProcess[bytes]) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(_STDIN_TIMEOUT):
            while True:
                chunk = await process.stdin.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_ARGUMENTS:
                    break  # parse_arguments reports the size
    except TimeoutError:
        return None
    except asyncssh.Error:
        return None
    return b"".join(chunks)


class _Connection(asyncssh.SSHServer):
    """One client connection: authentication decisions, each denying by default."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.user: str | None = None
        self.peer = "?"

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        peer = conn.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

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
