"""Enforcement (invariant 6): the live sessions of each grant, and the clocks that end them.

Three tasks, each depending on nothing that user data can fill:

* the *clock* (every 0.25 s) ends sessions whose grant expired, warns a minute before, closes idle
  sessions and hands buffered recordings to the writer thread; it awaits nothing but its own sleep;
* the *poller* (every second) reads the grants' states and their users' (a revocation or a disabled user
  on any broker sharing the store ends the sessions here within a second); it reads through
  :meth:`Store.read`, which never queues behind a write, on a thread of its own;
* the *heartbeat* (every few seconds) tells the store this broker is alive and records each live
  recording's size and digest so far (a checkpoint that a crash cannot take back), on another thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from jit_ssh.ca import StoreError
from jit_ssh.ca.store import AccessRequest, BrokerProcess, RecordedSession, Store, User
from jit_ssh.ca.workflow import RequestState
from sqlmodel import col, select

if TYPE_CHECKING:
    from .config import BrokerConfig
    from .proxy import ProxySession

__all__ = ["HEARTBEAT", "Enforcer"]

log = logging.getLogger("jit_ssh.broker.enforcer")
_CLOCK = 0.25
_POLL = 1.0
#: Seconds between heartbeats; a broker not seen for three of them is taken as stopped.
HEARTBEAT = 5.0


class Enforcer:
    """Live sessions by grant; started with the broker, stopped with it."""

    def __init__(self, config: BrokerConfig, store: Store, *, broker_id: str) -> None:
        self.config = config
        self.store = store
        self.broker_id = broker_id
        self.live: dict[int, set[ProxySession]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jit-ssh-enforce")
        self._writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jit-ssh-heartbeat")
        self._checkpoints: dict[str, int] = {}
        self.started = time.time()

    # -- the registry -------------------------------------------------------------------------------
    def register(self, request_id: int, proxy: ProxySession) -> None:
        self.live.setdefault(request_id, set()).add(proxy)

    def unregister(self, request_id: int, proxy: ProxySession) -> None:
        sessions = self.live.get(request_id)
        if sessions is not None:
            sessions.discard(proxy)
            if not sessions:
                del self.live[request_id]
        self._checkpoints.pop(proxy.session_id, None)

    def sessions(self) -> list[ProxySession]:
        return [proxy for sessions in self.live.values() for proxy in sessions]

    def session(self, session_id: str) -> ProxySession | None:
        return next((proxy for proxy in self.sessions() if proxy.session_id == session_id), None)

    def end_grant(self, request_id: int, reason: str) -> int:
        """Cut off every live session of a grant; returns how many."""
        sessions = list(self.live.get(request_id, ()))
        for proxy in sessions:
            proxy.end(reason)
        return len(sessions)

    # -- life -------------------------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._clock()), loop.create_task(self._poller()),
                       loop.create_task(self._heartbeat())]  # fmt: skip

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(StoreError):
            await asyncio.get_running_loop().run_in_executor(self._writes, self._beat, [], True)
        self._reads.shutdown(wait=False)
        self._writes.shutdown(wait=False)

    async def _clock(self) -> None:
        warn = self.config.warn_before.total_seconds()
        idle = self.config.idle_timeout.total_seconds()
        while True:
            await asyncio.sleep(_CLOCK)
            now, mono = time.time(), time.monotonic()
            for request_id, sessions in list(self.live.items()):
                for proxy in list(sessions):
                    grant = proxy.client.grant
                    if grant is None:
                        continue
                    if now >= grant.expires_at:
                        proxy.end(f"grant {request_id} expired: session closed")
                    elif not proxy.warned and now >= grant.expires_at - warn:
                        proxy.warned = True
                        left = int(grant.expires_at - now)
                        proxy.notice(f"access to {grant.login}@{grant.host} ends in {left} s (request {request_id})")
                    elif idle and mono - proxy.last_activity >= idle:
                        proxy.end(f"idle for {int(idle)} s: session closed")
                    elif proxy.recorder is not None:
                        proxy.flush()

    def _states(self, ids: list[int]) -> tuple[dict[int, str], set[str]]:
        """The grants' states, and which of their users are disabled (a plain read, never queued)."""
        with self.store.read() as session:
            rows = session.exec(
                select(AccessRequest.id, AccessRequest.state, AccessRequest.requester).where(
                    col(AccessRequest.id).in_(ids)
                )
            ).all()
            users = {requester for _, _, requester in rows}
            enabled = set(
                session.exec(select(User.name).where(col(User.name).in_(users), col(User.disabled).is_(False))).all()
            )
        # A user removed from the store is as disabled as one marked so.
        return {int(rid): state for rid, state, _ in rows if rid is not None}, users - enabled

    async def _poller(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_POLL)
            if not self.live:
                continue
            try:
                states, disabled = await loop.run_in_executor(self._reads, self._states, list(self.live))
            except StoreError as exc:
                log.warning("could not read grant states: %s", exc)
                continue
            for proxy in self.sessions():  # first: disabling a user also revokes their grants
                grant = proxy.client.grant
                if grant is not None and grant.user in disabled:
                    proxy.end(f"user {grant.user} was disabled: session closed")
            for request_id, state in states.items():
                if state != RequestState.APPROVED:
                    self.end_grant(request_id, f"grant {request_id} was {state}: session closed")

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            points = []
            for proxy in self.sessions():
                recorder = proxy.recorder
                if recorder is None or not proxy.session_id:
                    continue
                size, digest = recorder.file.checkpoint
                if size and self._checkpoints.get(proxy.session_id) != size:
                    points.append((proxy.session_id, size, digest))
            try:
                await loop.run_in_executor(self._writes, self._beat, points, False)
                self._checkpoints.update((session_id, size) for session_id, size, _ in points)
            except StoreError as exc:
                log.warning("could not write the heartbeat: %s", exc)
            await asyncio.sleep(HEARTBEAT)

    def _beat(self, points: list[tuple[str, int, str]], stopping: bool) -> None:
        """Write this broker's heartbeat (or, stopping, its departure) and the recordings' checkpoints."""
        now = time.time()
        with self.store.transaction() as session:
            row = session.get(BrokerProcess, self.broker_id)
            if row is None:
                row = BrokerProcess(
                    id=self.broker_id, host=socket.gethostname()[:253], pid=os.getpid(), started_at=self.started,
                    seen_at=now,
                )  # fmt: skip
            row.pid, row.started_at = os.getpid(), self.started
            row.seen_at = 0.0 if stopping else now
            session.add(row)
            for session_id, size, digest in points:
                recorded = session.get(RecordedSession, session_id)
                if recorded is not None and recorded.ended_at is None:
                    recorded.checkpoint_size, recorded.checkpoint_sha256 = size, digest
                    session.add(recorded)


def alive(store: Store, *, now: float | None = None) -> set[str]:
    """The brokers seen within three heartbeats, less those known dead: on this host, a broker whose process
    is gone died without saying so (``kill -9``) and need not be waited for."""
    moment = time.time() if now is None else now
    here = socket.gethostname()[:253]
    with store.read() as session:
        rows = session.exec(select(BrokerProcess).where(BrokerProcess.seen_at > moment - 3 * HEARTBEAT)).all()
    return {row.id for row in rows if row.host != here or _running(row.pid)}


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, perhaps not ours; the heartbeat's age decides
    return True
