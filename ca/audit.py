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

__all__ = [
    "GENESIS",
    "MAX_DETAIL",
    "AuditProblem",
    "append_event",
    "bounded_details",
    "event_dict",
    "iter_events",
    "verify_chain",
]

GENESIS = "0" * 64
_HEAD = "audit"
#: The most characters an event's details take; what is larger is cut field by field (bounded_details).
MAX_DETAIL = 4096
_KEY_CHARS = 32
_MAX_FIELDS = 32


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
    details_json = bounded_details(details or {})
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


def bounded_details(details: Mapping[str, Any]) -> str:
    """``details`` as JSON of at most :data:`MAX_DETAIL` characters, every field kept.

    Fields too large to fit are cut, never the event as a whole: cutting the whole object once lost a
    refused client's peer address behind its 6 KB key id. Small fields (a peer, a serial, a reason) stay
    whole; the large ones share the room left, each cut to a string (the start of the string, or of the
    value's JSON text) that ends in an ellipsis, and are named under ``"cut"``. Past :data:`_MAX_FIELDS`
    fields (no event of ours has that many), the largest are left out and counted under ``"omitted"``.
    """
    text = dumps(dict(details))
    if len(text) <= MAX_DETAIL:
        return text
    fields = sorted(((_key(k), dumps(v)) for k, v in details.items()), key=lambda kv: len(kv[1]))
    kept = fields[:_MAX_FIELDS]
    # Room for the values: less the braces and notes, each key with its colon and comma, and each key again
    # in the "cut" list in case it is cut. With the limits above, every share is at least 55 characters.
    room = MAX_DETAIL - 64 - sum(2 * len(dumps(key)) + 3 for key, _ in kept)
    out: dict[str, Any] = {}
    cut: list[str] = []
    for index, (key, encoded) in enumerate(kept):
        share = room // (len(kept) - index)
        value = loads(encoded)
        if len(encoded) > share:  # a string is cut as itself; anything else as its JSON text
            value = _cut(value if isinstance(value, str) else encoded, share)
            cut.append(key)
        out[key] = value
        room -= len(dumps(value))
    if cut:
        out["cut"] = sorted(cut)
    if len(fields) > len(kept):
        out["omitted"] = len(fields) - len(kept)
    return dumps(out)


def _key(name: object) -> str:
    # Our keys are short identifiers; anything else is made one, so that the room for keys is known.
    return "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "_" for c in str(name)[:_KEY_CHARS])


def _cut(value: str, room: int) -> str:
    """The longest prefix of ``value`` that fits ``room`` as a JSON string with an ellipsis."""
    text = value[:room]
    while text and len(dumps(text + "\u2026")) > room:  # escapes (quotes, control, non-ASCII) take more room
        text = text[: min(len(text) - 1, len(text) * room // len(dumps(text + "\u2026")))]
    return text + "\u2026"


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
