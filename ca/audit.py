"""The audit log: append-only and hash-chained (DESIGN.md, invariant 7).

Each event's hash covers its sequence number, time, actor, action, subject, details and the previous
event's hash; the chain's head (last sequence number and hash) is kept in the ``counters`` table and
updated in the same transaction. :func:`verify_chain` therefore detects an edited event (its hash no
longer matches), a deleted one (a gap, or a head that points past the end), a reordered pair (their
links break) and an inserted one. Someone able to rewrite the whole table *and* the head can forge a
consistent chain; exporting events to a SIEM as they happen is the defence against that.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from .store import AuditEvent, Counter, Store, dumps, loads

__all__ = ["GENESIS", "AuditProblem", "append_event", "event_dict", "iter_events", "verify_chain"]

GENESIS = "0" * 64
_HEAD = "audit"
_MAX_DETAIL = 4096


def _digest(seq: int, moment: float, actor: str, action: str, subject: str, details_json: str, prev: str) -> str:
    body = dumps([seq, repr(moment), actor, action, subject, details_json, prev])
    return hashlib.sha256(body.encode()).hexdigest()


def append_event(
    store: Store,
    session: Session,
    *,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any] | None = None,
    moment: float | None = None,
) -> AuditEvent:
    """Append one event in ``session``'s transaction (so it commits or rolls back with the change)."""
    head = store.lock_counter(session, _HEAD)
    seq = head.value + 1
    prev = head.text_value or GENESIS
    details_json = dumps(dict(details or {}))
    if len(details_json) > _MAX_DETAIL:
        details_json = dumps({"truncated": details_json[: _MAX_DETAIL - 64]})
    when = time.time() if moment is None else moment
    digest = _digest(seq, when, actor, action, subject, details_json, prev)
    row = AuditEvent(
        seq=seq,
        time=when,
        actor=actor,
        action=action,
        subject=subject,
        details_json=details_json,
        prev_hash=prev,
        hash=digest,
    )
    session.add(row)
    head.value = seq
    head.text_value = digest
    session.add(head)
    return row


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """The first broken link of the chain: which event, and what is wrong with it."""

    seq: int
    message: str


def verify_chain(store: Store) -> tuple[int, AuditProblem | None]:
    """Walk the whole chain; return how many events were checked and the first problem, if any."""
    with store.transaction() as session:
        head = session.get(Counter, _HEAD)
        expected_seq = 1
        prev = GENESIS
        count = 0
        for event in session.exec(select(AuditEvent).order_by(col(AuditEvent.seq))):
            count += 1
            if event.seq > expected_seq:  # the report names the missing event, not the intact one after it
                return count, AuditProblem(
                    expected_seq, f"event {expected_seq} is missing (found event {event.seq} next)"
                )
            if event.seq != expected_seq:
                return count, AuditProblem(event.seq, f"sequence repeats (found event {event.seq} next)")
            if event.prev_hash != prev:
                return count, AuditProblem(event.seq, f"event {event.seq} does not link to event {event.seq - 1}")
            digest = _digest(
                event.seq,
                event.time,
                event.actor,
                event.action,
                event.subject,
                event.details_json,
                event.prev_hash,
            )
            if digest != event.hash:
                return count, AuditProblem(event.seq, f"event {event.seq} ({event.action}) was modified")
            prev = event.hash
            expected_seq += 1
        last = expected_seq - 1
        head_seq = head.value if head else 0
        if head_seq != last or (head is not None and last and head.text_value != prev):
            return count, AuditProblem(
                last + 1 if head_seq > last else last,
                f"the chain ends at event {last} but its head records event {head_seq}: events were removed",
            )
    return count, None


def event_dict(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "time": event.time,
        "actor": event.actor,
        "action": event.action,
        "subject": event.subject,
        "details": loads(event.details_json),
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def iter_events(store: Store, *, since: float | None = None) -> Iterator[dict[str, Any]]:
    with store.transaction() as session:
        statement = select(AuditEvent).order_by(col(AuditEvent.seq))
        if since is not None:
            statement = statement.where(AuditEvent.time >= since)
        rows = list(session.exec(statement))
    for row in rows:
        yield event_dict(row)
