"""The broker's side of indexing: which sessions to index, the jobs in their budgeted processes, the results.

A closed session is queued; a worker runs its index (broker/recording/index.py) in a process of its own
(broker/isolate.py) and writes the result to the store. What goes wrong is loud (DESIGN.md, invariant 5):
a recording that cannot be read or indexed gets ``index_error`` on its row, a ``session.index_failed``
audit event, a flag and a webhook; an index that stopped over its budget or reached a cap says so in its
``problems`` and flags the session. Sessions that ended while the broker was down, or before their index
was written, are queued again when the broker starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from jit_ssh.ca import JitSshError
from jit_ssh.ca.audit import append_event
from jit_ssh.ca.store import RecordedSession, SessionCommand, Store, dumps, loads
from sqlmodel import col, select

from .isolate import Isolator
from .recording.flags import merge
from .recording.index import RecordingIndex
from .recording.store import RecordingStore

__all__ = ["IndexQueue", "save_index"]

log = logging.getLogger("jit_ssh.broker.indexing")
_TARGET = "jit_ssh.broker.recording.index:run_index_job"


def save_index(store: Store, session_id: str, index: RecordingIndex | None, error: str | None = None) -> list[str]:
    """Write an index (or why there is none) to the session's row; returns the session's flags."""
    with store.transaction() as session:
        row = session.get(RecordedSession, session_id)
        if row is None:
            return []
        flags: list[str] = loads(row.flags_json) if row.flags_json else []
        if index is not None:
            old = session.exec(select(SessionCommand).where(SessionCommand.session_id == session_id)).all()
            for command in old:  # indexed again (after a restart): the new index replaces the old
                session.delete(command)
            for moment, text, source in index.commands:
                session.add(SessionCommand(session_id=session_id, time=moment, command=text, source=source))
            row.commands_count = len(index.commands)
            row.index_json = dumps(
                {"transfers": index.transfers, "transfers_dropped": index.transfers_dropped, "end": index.end,
                 "output_lines": index.output_lines, "input_lines": index.input_lines, "truncated": index.truncated,
                 "problems": index.problems}
            )  # fmt: skip
            merge(flags, index.flags)
            merge(flags, (f"index incomplete: {problem}" for problem in index.problems))
        if error is not None:
            row.index_error = error[:1000]
            merge(flags, [f"recording not indexed: {error[:200]}"])
            append_event(
                store, session, actor="jit-ssh", action="session.index_failed", subject=f"session:{session_id}",
                details={"error": error[:1000]},
            )  # fmt: skip
        if flags != (loads(row.flags_json) if row.flags_json else []):
            row.flags_json = dumps(flags)
            append_event(
                store, session, actor="jit-ssh", action="session.flagged", subject=f"session:{session_id}",
                details={"flags": flags},
            )  # fmt: skip
        session.add(row)
        return flags


class IndexQueue:
    """Sessions waiting for their index, and the workers that index them (as many as the isolator allows)."""

    def __init__(
        self,
        store: Store,
        isolator: Isolator,
        *,
        recordings: RecordingStore,
        workers: int,
        notify: Callable[[str, Mapping[str, Any]], None],
        run_db: Callable[..., Any],
    ) -> None:
        self.store = store
        self.isolator = isolator
        self.recordings = recordings
        self._notify = notify
        self._run_db = run_db  # runs a blocking store call off the event loop: (function, *args) -> awaitable
        # Round robin by user: one user's backlog (a flood of recordings that each take the whole budget)
        # delays another user's index by one job at most, not by all of it.
        self._waiting: dict[str, deque[str]] = {}
        self._turns: deque[str] = deque()
        self._ready = asyncio.Semaphore(0)
        self._queued: set[str] = set()
        self._workers = [asyncio.get_running_loop().create_task(self._work()) for _ in range(workers)]
        self.idle = asyncio.Event()
        self.idle.set()

    def submit(self, session_id: str, user: str) -> None:
        if session_id in self._queued:
            return
        self._queued.add(session_id)
        self.idle.clear()
        if user not in self._waiting:
            self._waiting[user] = deque()
            self._turns.append(user)
        self._waiting[user].append(session_id)
        self._ready.release()

    async def _next(self) -> str:
        await self._ready.acquire()
        user = self._turns.popleft()
        waiting = self._waiting[user]
        session_id = waiting.popleft()
        if waiting:
            self._turns.append(user)  # this user's next one after everybody else's next one
        else:
            del self._waiting[user]
        return session_id

    def unindexed(self, broker_id: str) -> list[tuple[str, str]]:
        """Sessions (and users) of this broker that ended without an index (the broker stopped first)."""
        with self.store.transaction() as session:
            rows = session.exec(
                select(RecordedSession.id, RecordedSession.user).where(
                    col(RecordedSession.ended_at).is_not(None),
                    col(RecordedSession.index_json).is_(None),
                    col(RecordedSession.index_error).is_(None),
                    col(RecordedSession.pruned_at).is_(None),
                    RecordedSession.broker_id == broker_id,
                )
            ).all()
        return [(str(session_id), str(user)) for session_id, user in rows]

    async def stop(self) -> None:
        """Stop at once: running jobs are killed, their sessions are indexed when the broker starts again."""
        self.isolator.kill_all()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            session_id = await self._next()
            try:
                await self._index(session_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must cost one index, loudly, not the worker
                log.exception("indexing session %s failed", session_id)
                with contextlib.suppress(JitSshError):
                    await self._run_db(save_index, self.store, session_id, None, "internal error while indexing")
            finally:
                self._queued.discard(session_id)
                if not self._queued:
                    self.idle.set()

    async def _index(self, session_id: str) -> None:
        def load() -> RecordedSession | None:
            with self.store.transaction() as session:
                return session.get(RecordedSession, session_id)

        row = await self._run_db(load)
        if row is None or row.pruned_at is not None:
            return
        index: RecordingIndex | None = None
        error: str | None = None
        try:
            # The job reads a local file in its own process (a remote store gives its local copy).
            path = self.recordings.local_path(row.recording_path)
            job = {"path": str(path), "kind": row.kind, "command": row.command, "pty": row.pty}
            result = await self.isolator.run(_TARGET, job)
        except JitSshError as exc:
            error = exc.message
        else:
            if "error" in result:
                error = str(result["error"])
            else:
                index = RecordingIndex.from_dict(result["index"])
        if error is not None:
            log.warning("session %s could not be indexed: %s", session_id, error)
        flags = await self._run_db(save_index, self.store, session_id, index, error)
        new = [f for f in flags if row.flags_json is None or f not in loads(row.flags_json)]
        if new:
            self._notify(
                "session.flagged",
                {"session": session_id, "user": row.user, "hosts": [row.host], "login": row.login,
                 "request_id": row.request_id, "flags": flags},
            )  # fmt: skip
