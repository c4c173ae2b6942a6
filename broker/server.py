"""The broker daemon: one asyncio process serving the control plane and the recording proxy.

It also runs the enforcement clock (invariant 6): a warning in the terminal before a grant ends, the
session cut off when it ends or is revoked (revocations made through any broker sharing the database
are seen within a second), and the recordings flushed at least once a second (invariant 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
from jit_ssh.ca import (
    AccessDenied,
    CADirectory,
    CARole,
    Certificate,
    InputError,
    JitSshError,
    PublicKey,
)
from jit_ssh.ca.audit import append_event
from jit_ssh.ca.files import private_dir, write_private
from jit_ssh.ca.grant import (
    Grant,
    GrantFacts,
    HostFacts,
    IssuedFacts,
    RequestFacts,
    check_grant,
    check_presented,
    onward_terms,
    recheck,
)
from jit_ssh.ca.inventory import user_for_key
from jit_ssh.ca.issuer import Issuer
from jit_ssh.ca.policy import Policy
from jit_ssh.ca.store import AccessRequest, Host, IssuedCertificate, RecordedSession, Store, User, loads
from jit_ssh.ca.workflow import Authority

from . import fastpath
from .config import BrokerConfig
from .control import (
    REVIEW_VERBS,
    ControlContext,
    dispatch,
    require_reviewer,
)
from .control_channel import ControlSession
from .enforcer import Enforcer
from .indexing import IndexQueue
from .isolate import Budget, Isolator
from .notify import Notifier
from .proxy import ProxySession
from .recording.store import LocalRecordingStore, RecordingStore, StoredRecording
from .recovery import close_orphans
from .refusals import RefusalAudit, RefusalLimiter
from .review import record_review, recording_of
from .session import ClientConnection
from .tcp import quick_acks

__all__ = ["Broker"]

log = logging.getLogger("jit_ssh.broker")
_SWEEP_INTERVAL = 5.0
_HOST_CERT_VALIDITY = timedelta(days=30)
_ONWARD_TIMEOUT = 15.0
#: Refusal events a minute (refused keys and certificates, failed sessions, refused reviews), and the
#: share of one source (a peer address or a user); the rest is counted in one summary (refusals.py).
REFUSAL_BURST = 60
REFUSAL_PER_SOURCE = 30
#: Control commands one user may have running at once (more wait their turn); and streams (export, watch:
#: they may last as long as a session, so more are refused).
MAX_COMMANDS_PER_USER = 4
MAX_STREAMS_PER_USER = 8
#: Verbs that decide (and end) access: threads of their own, never queued behind anyone's other work.
DECISION_VERBS = frozenset({"approve", "deny", "revoke", "cancel"})
#: The broker's own hop prefers AES-GCM, which asyncssh relays 1.5 to 2 times as fast as its default first
#: choice, chacha20-poly1305 (with AES-NI, on loopback); asyncssh's other defaults follow, for any host.
_ONWARD_CIPHERS = (
    "aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
    "aes256-ctr", "aes192-ctr", "aes128-ctr",
)  # fmt: skip


def broker_identity(data_dir: Path) -> str:
    """This broker's id in a shared store (sessions name the broker that records them): made once, kept in
    ``DATA_DIR/broker-id``."""
    path = data_dir / "broker-id"
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise JitSshError(f"cannot read {path}: {exc}") from exc
    if text:
        if not (len(text) <= 64 and text.replace("-", "").replace(".", "").isalnum()):
            raise JitSshError(f"{path} does not hold a broker id (expected letters, digits, '-' and '.')")
        return text
    name = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-.")[:40] or "broker"
    text = f"{name}-{secrets.token_hex(4)}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text + "\n")
    except FileExistsError:
        return broker_identity(data_dir)  # another process made it meanwhile
    except OSError as exc:
        raise JitSshError(f"cannot write {path}: {exc.strerror}") from exc
    return text


class _OnwardClient(asyncssh.SSHClient):
    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        quick_acks(conn)  # sshd writes its set-up packets with Nagle on: see tcp.py


class Broker:
    """Everything the bastion runs, built from a :class:`BrokerConfig`."""

    def __init__(self, config: BrokerConfig, *, passphrase: bytes | None) -> None:
        self.config = config
        ca = CADirectory(config.ca_dir)
        self.user_ca_key = ca.public_key(CARole.USER)
        signers = {role: ca.signer(role, passphrase=passphrase) for role in (CARole.HOST, CARole.ACCESS, CARole.USER)}
        self._access_ca_key = signers[CARole.ACCESS].public_key
        self._host_ca_ssh = asyncssh.import_public_key(signers[CARole.HOST].public_key.to_openssh())
        self.recordings: RecordingStore = LocalRecordingStore(config.recordings_dir)
        for directory in (config.data_dir, config.recordings_dir):
            try:
                private_dir(directory, 0o700)  # the mode set explicitly, never the umask's
            except OSError as exc:
                raise JitSshError(f"cannot create or restrict directory {directory}: {exc.strerror}") from exc
        self.store = Store(config.store_url)
        self.policy = Policy.load(config.policy)
        #: Signs every certificate of the broker's: engineers', onward, its own host certificate.
        self.issuer = Issuer(
            self.store,
            user_ca=signers[CARole.USER],
            access_ca=signers[CARole.ACCESS],
            host_ca=signers[CARole.HOST],
        )
        self.authority = Authority(
            self.store,
            self.policy,
            issuer=self.issuer,
            pending_timeout=config.pending_timeout,
        )
        self.notifier = Notifier(config.webhooks)
        self.broker_id = broker_identity(config.data_dir)
        self.enforcer = Enforcer(config, self.store, broker_id=self.broker_id)
        self.isolator = Isolator(
            config.data_dir / "jobs",
            Budget(
                cpu_seconds=config.index_cpu_budget, memory_bytes=config.index_memory,
                wall_seconds=4 * config.index_cpu_budget + 60,
            ),
            workers=config.index_workers,
        )  # fmt: skip
        self.indexer: IndexQueue | None = None
        #: Review queries (search, verify) read much: they get threads of their own, so that a reviewer's
        #: search never makes an approval or a revocation wait.
        self.review_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jit-ssh-review")
        # Each kind of work a user can cause has threads of its own, and each user a bounded share of it
        # (take_slot): a flood of one kind (session set-up, status commands) never queues a revocation,
        # an approval or another client's login behind it.
        self.auth_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jit-ssh-auth")
        self._decision_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jit-ssh-decide")
        self._control_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="jit-ssh-control")
        self._io_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="jit-ssh-io")
        self._slots: dict[tuple[str, str], int] = {}
        self._places: dict[str, list[Any]] = {}
        self._server: asyncssh.SSHAcceptor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self.refusals = RefusalAudit(self.store, RefusalLimiter(burst=REFUSAL_BURST, per_source=REFUSAL_PER_SOURCE))
        self.port = 0

    # -- host identity ---------------------------------------------------------------------------
    def _host_key(self) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
        path = self.config.host_key
        try:
            if not path.exists():
                # 0600 from its first byte, and never over a key another broker wrote meanwhile.
                private_dir(path.parent, 0o700)
                fresh = asyncssh.generate_private_key("ssh-ed25519").export_private_key()
                with contextlib.suppress(FileExistsError):
                    write_private(path, fresh, exclusive=True)
            key = asyncssh.read_private_key(str(path))
        except (OSError, asyncssh.KeyImportError) as exc:
            raise JitSshError(f"cannot read or create the broker host key {path}: {exc}") from exc
        cert = self.issuer.issue_broker_host(
            PublicKey(key.public_data), hostnames=list(self.config.host_names), validity=_HOST_CERT_VALIDITY
        )
        return key, asyncssh.import_certificate(cert.to_openssh())

    # -- life ------------------------------------------------------------------------------------
    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(self._io_pool)
        if os.environ.get("JIT_SSH_FASTPATH", "1") != "0":  # 0: asyncssh's own packet path (to compare)
            fastpath.install()
        await self.notifier.start()

        def listen(event: str, payload: Mapping[str, Any]) -> None:
            # The authority runs in worker threads; the notifier lives on this loop.
            loop.call_soon_threadsafe(self.notifier.notify, event, payload)

        self.authority.listeners.append(listen)
        key, cert = await asyncio.to_thread(self._host_key)
        await asyncio.to_thread(self.publish_krl)
        # Before recording anything: close what this broker was recording when it last stopped.
        await asyncio.to_thread(close_orphans, self.store, self.recordings, self.broker_id)
        self.indexer = IndexQueue(
            self.store, self.isolator, recordings=self.recordings, workers=self.config.index_workers,
            notify=self.notifier.notify, run_db=asyncio.to_thread,
        )  # fmt: skip
        for session_id, user in await asyncio.to_thread(self.indexer.unindexed, self.broker_id):
            self.indexer.submit(session_id, user)  # the orphans closed above among them
        try:
            self._server = await asyncssh.create_server(
                self._new_connection,
                self.config.listen_host,
                self.config.listen_port,
                server_host_keys=[(key, cert)],
                encoding=None,
                allow_scp=False,
                sftp_factory=None,
                agent_forwarding=False,
                x11_forwarding=False,
                keepalive_interval=30,
                keepalive_count_max=4,
                login_timeout=30,
                line_editor=False,  # bytes are relayed, never edited: no wrapper around every channel
            )
        except OSError as exc:
            raise JitSshError(
                f"cannot listen on {self.config.listen_host}:{self.config.listen_port}: {exc.strerror}"
            ) from exc
        sockets = self._server.sockets
        self.port = sockets[0].getsockname()[1] if sockets else self.config.listen_port
        self.enforcer.start()
        self._loops = [asyncio.create_task(self._sweeper())]
        log.info("broker listening on %s:%d", self.config.listen_host, self.port)
        return self.port

    def _new_connection(self) -> ClientConnection:
        return ClientConnection(self)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Stop accepting, end live sessions with complete recordings, then stop the rest."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for proxy in self.enforcer.sessions():
            proxy.end("the broker is shutting down")
        for task in self._loops:
            task.cancel()
        if self.indexer is not None:  # not waited for: what is not indexed now is indexed at the next start
            await self.indexer.stop()
        # What is left are the session_ended writes: the recordings' digests must reach the store.
        await asyncio.gather(*self._loops, *self._tasks, return_exceptions=True)
        await self.flush_refusals(force=True)
        await self.enforcer.stop()
        await self.notifier.stop()
        for pool in (self.review_pool, self.auth_pool, self._decision_pool, self._control_pool):
            pool.shutdown(wait=False, cancel_futures=True)
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
            await self.flush_refusals()  # a flood's count is reported once its minute is over, even if it stopped
            try:
                moved = await asyncio.to_thread(self.authority.sweep)
                if moved:
                    log.info("lapsed %d request(s)", moved)
            except JitSshError as exc:
                log.warning("sweep failed: %s", exc)

    # -- enforcement (invariants 5 and 6: broker/enforcer.py) ------------------------------------
    def register(self, request_id: int, proxy: ProxySession) -> None:
        self.enforcer.register(request_id, proxy)

    def unregister(self, request_id: int, proxy: ProxySession) -> None:
        self.enforcer.unregister(request_id, proxy)

    def end_grant(self, request_id: int, reason: str) -> int:
        """Cut off every live session of a grant; returns how many."""
        return self.enforcer.end_grant(request_id, reason)

    # -- the session face ------------------------------------------------------------------------
    def _refuse_session(self, username: str, cert: Certificate, peer: str, reason: str, audit: bool) -> AccessDenied:
        if audit:
            self.audit_refusal(
                "session.refused", f"target:{username}",
                {"serial": cert.serial, "key_id": cert.key_id, "peer": peer, "reason": reason},
            )  # fmt: skip
        return AccessDenied(reason)

    def session_grant(self, username: str, cert: Certificate, peer: str, audit: bool) -> Grant:
        """Invariant 4: the grant a presented certificate stands for, or AccessDenied with the reason."""
        try:
            presented = check_presented(cert, username, user_ca=self.user_ca_key, now=time.time())
            return check_grant(presented, self._grant_facts(cert.serial, host=presented.host), now=time.time())
        except AccessDenied as exc:
            raise self._refuse_session(username, cert, peer, exc.message, audit) from None

    def recheck_grant(self, grant: Grant) -> None:
        """Time of use: the grant must still be approved and running when a channel opens."""
        recheck(grant, self._grant_facts(grant.serial, request_id=grant.request_id), now=time.time())

    def _grant_facts(self, serial: int, *, request_id: int | None = None, host: str | None = None) -> GrantFacts:
        """What the store says of a certificate's grant: its issued row, the request (``request_id``, or the
        issued row's), the requester's user row and (when named) the host's inventory row."""
        with self.store.transaction() as session:
            issued = session.get(IssuedCertificate, serial)
            if request_id is None and issued is not None:
                request_id = issued.request_id
            request = session.get(AccessRequest, request_id) if request_id is not None else None
            owner = session.get(User, request.requester) if request is not None else None
            host_row = session.get(Host, host) if host is not None else None
        return GrantFacts(
            issued=None if issued is None else IssuedFacts(
                request_id=issued.request_id, ca_role=issued.ca_role, key_id=issued.key_id, revoked=issued.revoked,
            ),
            request=None if request is None or request.id is None else RequestFacts(
                id=request.id, requester=request.requester, state=request.state, hosts=tuple(request.hosts),
                login=request.login, starts_at=request.starts_at, expires_at=request.expires_at,
                extensions=tuple(loads(request.extensions_json)),
            ),
            owner_disabled=None if owner is None else owner.disabled,
            host=None if host_row is None else HostFacts(
                name=host_row.name, address=host_row.address, port=host_row.port, host_key=host_row.host_key,
            ),
        )  # fmt: skip

    async def connect_onward(self, grant: Grant, session_id: str) -> tuple[asyncssh.SSHClientConnection, int]:
        """The broker's own connection to the host, with a fresh key and an access-CA certificate."""
        key = asyncssh.generate_private_key("ssh-ed25519")
        subject = PublicKey(key.public_data)
        cert = await asyncio.to_thread(self._mint_onward, grant, session_id, subject)
        if grant.host_key:
            known: Any = ([asyncssh.import_public_key(grant.host_key)], [], [])
        else:
            known = ([], [self._host_ca_ssh], [])
        try:
            conn = await asyncssh.connect(
                grant.address,
                grant.port,
                username=grant.login,
                client_factory=_OnwardClient,
                client_keys=[(key, asyncssh.import_certificate(cert.to_openssh()))],
                known_hosts=known,
                host_key_alias=grant.host,
                config=None,
                agent_path=None,
                preferred_auth="publickey",
                keepalive_interval=30,
                keepalive_count_max=4,
                connect_timeout=_ONWARD_TIMEOUT,
                encryption_algs=_ONWARD_CIPHERS,
            )
        except asyncssh.PermissionDenied as exc:
            raise AccessDenied(
                f"host {grant.host} refused the broker's certificate for {grant.login} "
                "(is the host enrolled, with this login's principals file?)"
            ) from exc
        except asyncssh.HostKeyNotVerifiable as exc:
            raise AccessDenied(f"host {grant.host} did not prove its identity with a trusted host key") from exc
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise JitSshError(f"cannot reach host {grant.host} at {grant.address}:{grant.port}: {exc}") from exc
        return conn, cert.serial

    def _mint_onward(self, grant: Grant, session_id: str, subject: PublicKey) -> Certificate:
        now = datetime.now(UTC)
        terms = onward_terms(grant, session_id=session_id, source_addresses=self.config.source_addresses, now=now)
        return self.issuer.issue_onward(
            subject, terms, request_id=grant.request_id, user=grant.user, session_id=session_id, now=now
        )

    def session_started(
        self, proxy: ProxySession, grant: Grant, cert: Certificate, recording: str, onward_serial: int | None, peer: str
    ) -> None:
        with self.store.transaction() as session:
            session.add(
                RecordedSession(
                    id=proxy.session_id, request_id=grant.request_id, user=grant.user, host=grant.host,
                    login=grant.login, kind=proxy.kind, pty=proxy.term is not None, command=proxy.command,
                    client_serial=cert.serial, client_key_id=cert.key_id, onward_serial=onward_serial,
                    peer=peer, started_at=proxy.started, recording_path=recording, broker_id=self.broker_id,
                )
            )  # fmt: skip
            append_event(
                self.store, session, actor=grant.user, action="session.started", subject=f"session:{proxy.session_id}",
                details={"request": grant.request_id, "target": f"{grant.login}@{grant.host}", "kind": proxy.kind,
                         "command": proxy.command, "serial": cert.serial, "onward_serial": onward_serial,
                         "peer": peer},
            )  # fmt: skip
        log.info(
            "session %s started user=%s target=%s@%s kind=%s",
            proxy.session_id, grant.user, grant.login, grant.host, proxy.kind,
        )  # fmt: skip

    def session_onward(self, session_id: str, serial: int) -> None:
        """Record the onward certificate of a session whose row was written before it was minted."""
        with self.store.transaction() as session:
            row = session.get(RecordedSession, session_id)
            if row is not None:
                row.onward_serial = serial
                session.add(row)

    def session_ended(self, session_id: str, summary: dict[str, Any], size: int, digest: str) -> None:
        with self.store.transaction() as session:
            row = session.get(RecordedSession, session_id)
            if row is None:
                return
            row.ended_at = time.time()
            row.end_reason = str(summary.get("reason", ""))[:200]
            row.recording_size, row.recording_sha256 = size, digest
            row.bytes_in, row.bytes_out = int(summary["bytes_in"]), int(summary["bytes_out"])
            row.exit_status = summary.get("exit_status")
            row.exit_signal = summary.get("exit_signal")
            session.add(row)
            append_event(
                self.store, session, actor=row.user, action="session.ended", subject=f"session:{session_id}",
                details={**summary, "recording_sha256": digest, "recording_size": size},
            )  # fmt: skip
        log.info("session %s ended: %s", session_id, json.dumps(summary, default=str))

    def index_later(self, session_id: str, user: str) -> None:
        """Queue a closed session for its index (in a budgeted process of its own: broker/indexing.py)."""
        if self.indexer is not None:
            self.indexer.submit(session_id, user)

    # -- refusals clients can cause in bulk ------------------------------------------------------
    def audit_refusal(
        self, action: str, subject: str, details: Mapping[str, Any], source: str | None = None, actor: str = "jit-ssh"
    ) -> None:
        """Audit a refusal within the refusal limit (refusals.py), from a worker thread."""
        self.refusals.write(self.refusals.admit(action, subject, details, source=source, actor=actor))

    async def flush_refusals(self, *, force: bool = False) -> None:
        """Audit the count of refusals held back in a window that is over (``force``: now, at shutdown)."""
        events = self.refusals.summary(force=force)
        if events:
            await asyncio.to_thread(self.refusals.write, events)

    # -- authentication (control face) -----------------------------------------------------------
    async def authenticate(self, username: str, key: PublicKey, peer: str) -> str | None:
        """The user an enrolled ``key`` belongs to, if that is ``username``; refusals are audited."""
        try:
            user = await asyncio.get_running_loop().run_in_executor(self.auth_pool, user_for_key, self.store, key)
        except (AccessDenied, InputError) as exc:
            await self._audit_auth_refusal(username, {"key": key.fingerprint(), "peer": peer, "reason": exc.message})
            return None
        if user != username:
            reason = f"key belongs to {user}"
            await self._audit_auth_refusal(username, {"key": key.fingerprint(), "peer": peer, "reason": reason})
            return None
        return user

    async def _audit_auth_refusal(self, username: str, details: dict[str, Any]) -> None:
        """Audit a refused key within the refusal limit: clients that have not authenticated must not be
        able to flood the audit log. Decided here, so that a refusal held back costs no worker thread."""
        events = self.refusals.admit("auth.refused", f"user:{username[:64]}", details)
        if events:
            await asyncio.to_thread(self.refusals.write, events)

    # -- what one user may hold at once ---------------------------------------------------------
    def take_slot(self, kind: str, user: str) -> bool:
        """Take one of ``user``'s slots of ``kind`` (``session`` or ``stream``); False if all are taken."""
        most = self.config.sessions_per_user if kind == "session" else MAX_STREAMS_PER_USER
        held = self._slots.get((kind, user), 0)
        if held >= most:
            return False
        self._slots[kind, user] = held + 1
        return True

    @contextlib.asynccontextmanager
    async def command_place(self, user: str) -> AsyncIterator[None]:
        """One of ``user``'s places to run a control command (waited for, never refused)."""
        gate = self._places.get(user)
        if gate is None:
            gate = self._places[user] = [asyncio.Semaphore(MAX_COMMANDS_PER_USER), 0]
        gate[1] += 1
        try:
            async with gate[0]:
                yield
        finally:
            gate[1] -= 1
            if not gate[1]:
                del self._places[user]

    def give_slot(self, kind: str, user: str) -> None:
        held = self._slots.get((kind, user), 0) - 1
        if held > 0:
            self._slots[kind, user] = held
        else:
            self._slots.pop((kind, user), None)

    # -- control commands ------------------------------------------------------------------------
    def control_session(self, user: str, on_closed: Callable[[], None] | None = None) -> ControlSession:
        return ControlSession(self, user, on_closed)

    def current_krl(self) -> bytes:
        """The KRL hosts should use now: every revoked, unexpired serial of the access and user CAs."""
        return self.authority.krl(access_ca=self._access_ca_key, user_ca=self.user_ca_key).to_bytes()

    def publish_krl(self) -> None:
        """Write the current KRL to ``DATA_DIR/revoked.krl`` for local distribution, atomically.

        Only when it changes (a revocation), not on every fetch: hosts fetch every minute, and
        concurrent writers must never leave a file that sshd cannot read.
        """
        data = self.current_krl()
        target = self.config.data_dir / "revoked.krl"
        try:
            # Not secret, but in a private directory; 0640 lets a distribution job in the group read it.
            write_private(target, data, mode=0o640)
        except OSError as exc:
            log.warning("could not write %s: %s", target, exc)

    def live_session(self, session_id: str) -> ProxySession | None:
        return self.enforcer.session(session_id)

    async def open_stream(
        self, user: str, verb: str, args: Mapping[str, Any]
    ) -> tuple[StoredRecording, Callable[[], bool]]:
        """Check and audit a replay, export or watch; returns the recording and a 'still live' test.

        Following a live session is watching it, whatever the command: the user is told, and it is
        audited as ``session.watch`` (a replay of a live session follows it).
        """
        session_id = str(args["id"])
        purpose = str(args.get("purpose", "export")) if verb == "export" else "watch"
        if purpose not in ("export", "replay", "watch"):
            raise InputError(f"purpose must be export or replay, found {purpose[:20]!r}")
        follow = verb == "watch" or bool(args.get("follow"))

        def check() -> tuple[str, str]:
            require_reviewer(self.control_context(user), purpose, session_id)
            reference, running = recording_of(self.store, session_id)
            action = "watch" if follow and running else purpose
            record_review(self.store, actor=user, action=f"session.{action}", session_id=session_id)
            return reference, action

        reference, action = await asyncio.to_thread(check)
        proxy = self.live_session(session_id)
        if action == "watch" and proxy is not None and self.config.notify_watched:
            proxy.notice(f"{user} is watching this session")
        return StoredRecording(self.recordings, reference), lambda: self.live_session(session_id) is not None

    def control_context(self, user: str, on_revoke: Callable[[int, list[int]], None] | None = None) -> ControlContext:
        """What a control command of ``user`` runs with; its refusals count against the refusal limit as theirs."""

        def refused(action: str, subject: str, details: dict[str, Any]) -> None:
            self.audit_refusal(action, subject, details, source=f"user:{user}", actor=user)

        return ControlContext(self.authority, user, self.recordings, on_revoke=on_revoke, on_refusal=refused)

    async def run_control(self, user: str, command: str, raw: bytes) -> tuple[dict[str, Any], int]:
        started = time.monotonic()
        verb = command.strip().partition(" ")[0]
        loop = asyncio.get_running_loop()

        def revoked(request_id: int, serials: list[int]) -> None:
            loop.call_soon_threadsafe(self.end_grant, request_id, f"grant {request_id} revoked: session closed")
            self.publish_krl()  # the published KRL changes at once (we run in a worker thread here)

        ctx = self.control_context(user, on_revoke=revoked)
        pool = (
            self.review_pool if verb in REVIEW_VERBS else self._decision_pool if verb in DECISION_VERBS
            else self._control_pool
        )  # fmt: skip
        reply, code = await loop.run_in_executor(pool, dispatch, ctx, verb, raw)
        log.info("control user=%s verb=%s exit=%d ms=%.1f", user, verb[:32], code, (time.monotonic() - started) * 1000)
        return reply, code
