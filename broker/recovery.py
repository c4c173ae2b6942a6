"""After a crash: the sessions a broker was recording when it died are closed when it starts again.

A broker killed mid-session (``kill -9``, a power cut) leaves rows without an end and recordings without
a sealed digest: listed as active for ever, and open to being edited unnoticed, since verification took
every session without an end as live. On start, a broker closes the sessions *it* recorded (several
brokers share a store: each only its own, by the id in ``sessions.broker_id``): the end time is the
recording's last write, the reason "cut by broker restart", and the digest of what is on disk is written
to the row and the audit chain. If the bytes on disk no longer start with what the last checkpoint
recorded (size and SHA-256, written while the session ran), the recording was altered while the broker
was down: that is said in the row, the audit event and a flag.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import IO

from jit_ssh.ca.audit import append_event
from jit_ssh.ca.store import RecordedSession, Store, dumps, loads
from sqlmodel import col, select

from .recording.flags import merge
from .recording.store import RecordingReferenceError, RecordingStore

__all__ = ["CUT_BY_RESTART", "close_orphans", "prefix_digest"]

log = logging.getLogger("jit_ssh.broker.recovery")
CUT_BY_RESTART = "cut by broker restart"


def prefix_digest(handle: IO[bytes], size: int | None = None) -> tuple[int, str, str | None]:
    """(size, SHA-256 of the whole recording, SHA-256 of its first ``size`` bytes or None if it is shorter)."""
    whole, prefix = hashlib.sha256(), hashlib.sha256()
    total = 0
    prefix_done: str | None = None
    with handle:
        while chunk := handle.read(1 << 20):
            whole.update(chunk)
            if size is not None and prefix_done is None:
                take = chunk[: max(0, size - total)]
                prefix.update(take)
                if total + len(chunk) >= size:
                    prefix_done = prefix.hexdigest()
            total += len(chunk)
    if size is not None and prefix_done is None and total >= size:
        prefix_done = prefix.hexdigest()
    return total, whole.hexdigest(), prefix_done


def close_orphans(store: Store, recordings: RecordingStore, broker_id: str) -> list[str]:
    """Close this broker's sessions that have no end (run before it records anything); returns their ids."""
    with store.transaction() as session:
        ids = session.exec(
            select(RecordedSession.id).where(
                RecordedSession.broker_id == broker_id, col(RecordedSession.ended_at).is_(None)
            )
        ).all()
    closed = []
    for session_id in ids:
        _close(store, recordings, session_id)
        closed.append(session_id)
    if closed:
        log.warning("closed %d session(s) cut off when this broker last stopped", len(closed))
    return closed


def _close(store: Store, recordings: RecordingStore, session_id: str) -> None:
    with store.transaction() as session:
        row = session.get(RecordedSession, session_id)
        if row is None or row.ended_at is not None:
            return
        reference = row.recording_path
        reason = CUT_BY_RESTART
        flags: list[str] = loads(row.flags_json) if row.flags_json else []
        try:
            size, digest, prefix = prefix_digest(recordings.open(reference), row.checkpoint_size)
            ended = max(recordings.modified(reference), row.started_at)
            with contextlib.suppress(OSError):
                recordings.trim(reference, size)  # gives back the space claimed beyond its end (broker/space.py)
        except (OSError, RecordingReferenceError) as exc:
            why = exc.message if isinstance(exc, RecordingReferenceError) else exc.strerror
            size, digest, prefix, ended = 0, "", None, row.started_at
            reason = f"{CUT_BY_RESTART}; recording unreadable: {why}"
            merge(flags, [f"recording missing after a broker crash: {why}"])
        else:
            if row.checkpoint_size and prefix != row.checkpoint_sha256:
                reason = f"{CUT_BY_RESTART}; recording altered after its last checkpoint"
                merge(flags, ["recording altered while the broker was down"])
        row.ended_at = ended
        row.end_reason = reason
        row.recording_size, row.recording_sha256 = size, digest
        if flags:
            row.flags_json = dumps(flags)
        session.add(row)
        append_event(
            store, session, actor="jit-ssh", action="session.ended", subject=f"session:{session_id}",
            details={"reason": reason, "recording_sha256": digest, "recording_size": size, "recovered": True,
                     "checkpoint_size": row.checkpoint_size},
        )  # fmt: skip
        if flags:
            append_event(
                store, session, actor="jit-ssh", action="session.flagged", subject=f"session:{session_id}",
                details={"flags": flags},
            )  # fmt: skip
