"""Reviewing recorded sessions: the queries over the index written when a session closes (broker/recording/index.py).

Listing and searching read only the store and the index's text files, never the recordings, so they stay
fast however much a session printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import re2
from jit_ssh.ca import InputError, JitSshError
from jit_ssh.ca.audit import append_event, iter_events
from jit_ssh.ca.store import (
    AccessRequest,
    Approval,
    IssuedCertificate,
    RecordedSession,
    SessionCommand,
    Store,
    loads,
)
from jit_ssh.ca.validate import parse_duration
from sqlmodel import Session, col, select

from .enforcer import alive
from .recording.index import input_lines_path, lines_path
from .recording.store import RecordingReferenceError, RecordingStore
from .recovery import prefix_digest

__all__ = [
    "list_sessions",
    "prune_sessions",
    "session_detail",
    "set_hold",
    "verify_sessions",
]

_MAX_PATTERN = 200


# -- queries ---------------------------------------------------------------------------------------
def _pattern(text: str | None, what: str) -> Any:
    """A search pattern, compiled for RE2: matching is linear in the text, whatever the pattern (Python's
    ``re`` backtracks: ``(a+)+$`` froze the broker for 40 s)."""
    if text is None:
        return None
    if not text or len(text) > _MAX_PATTERN:
        raise InputError(f"{what} must be 1-{_MAX_PATTERN} characters")
    options = re2.Options()
    options.max_mem = 8 << 20  # a pattern that needs more is refused, not built
    options.log_errors = False
    try:
        return re2.compile(text, options)
    except re2.error as exc:
        raise InputError(f"{what} is not a valid regular expression (RE2 syntax): {exc}") from exc


def _summary(row: RecordedSession, request: AccessRequest | None, live_brokers: set[str]) -> dict[str, Any]:
    ended = row.ended_at
    if ended is not None:
        state = "ended"
    elif row.broker_id is None or row.broker_id in live_brokers:
        state = "active"
    else:  # its broker stopped without closing it: closed when that broker starts again
        state = "cut"
    index = loads(row.index_json) if row.index_json else None
    if row.index_error:
        index_state = "failed"
    elif index is None:
        index_state = "pending" if ended is not None else "-"
    else:
        index_state = "partial" if index.get("problems") else "ok"
    return {
        "id": row.id,
        "request_id": row.request_id,
        "reason": request.reason if request else None,
        "user": row.user,
        "host": row.host,
        "login": row.login,
        "kind": row.kind,
        "pty": row.pty,
        "command": row.command,
        "started_at": row.started_at,
        "ended_at": ended,
        "duration": round((ended or time.time()) - row.started_at, 3),
        "active": state == "active",
        "state": state,
        "bytes_in": row.bytes_in,
        "bytes_out": row.bytes_out,
        "recording_size": row.recording_size,
        "exit_status": row.exit_status,
        "exit_signal": row.exit_signal,
        "end_reason": row.end_reason,
        "commands": row.commands_count,
        "hold": row.hold,
        "pruned": row.pruned_at is not None,
        "flags": loads(row.flags_json) if row.flags_json else [],
        "index": index_state,
        "index_error": row.index_error,
    }


def list_sessions(
    store: Store,
    *,
    recordings: RecordingStore,
    user: str | None = None,
    host: str | None = None,
    since: float | None = None,
    active: bool = False,
    request: int | None = None,
    grep: str | None = None,
    grep_output: str | None = None,
    flagged: bool = False,
    limit: int = 200,
) -> tuple[list[dict[str, Any]], bool]:
    """Sessions, newest first, filtered; ``grep`` searches commands (run, typed, fed on stdin, passed in
    the environment), ``grep_output`` what was printed; ``flagged`` keeps those that need review.

    Returns them and whether more matched than ``limit`` (a listing cut short must say so: a reviewer's
    queue of flagged sessions could otherwise be pushed out of sight by newer ones)."""
    command_re, output_re = _pattern(grep, "--grep"), _pattern(grep_output, "--grep-output")
    if not 0 < limit <= 10_000:
        raise InputError("limit must be from 1 to 10000")
    if request is not None and not 0 < request < 2**63:  # a larger one overflows the database's column
        raise InputError(f"request: expected a request id (a positive number), found {str(request)[:24]}")
    live_brokers = alive(store)
    with store.read() as session:
        statement = select(RecordedSession).order_by(col(RecordedSession.started_at).desc())
        if user:
            statement = statement.where(RecordedSession.user == user)
        if host:
            statement = statement.where(RecordedSession.host == host)
        if since is not None:
            statement = statement.where(RecordedSession.started_at >= since)
        if active:
            statement = statement.where(col(RecordedSession.ended_at).is_(None))
        if request is not None:
            statement = statement.where(RecordedSession.request_id == request)
        if flagged:
            statement = statement.where(col(RecordedSession.flags_json).is_not(None))
        searching = command_re is not None or output_re is not None
        rows = list(session.exec(statement.limit(100_000 if searching else limit + 1)))
        if active:
            rows = [r for r in rows if r.broker_id is None or r.broker_id in live_brokers]
        matches: dict[str, list[dict[str, Any]]] = {}
        if command_re is not None and rows:
            for start in range(0, len(rows), 500):
                ids = [r.id for r in rows[start : start + 500]]
                for cmd in session.exec(select(SessionCommand).where(col(SessionCommand.session_id).in_(ids))):
                    if command_re.search(cmd.command):
                        matches.setdefault(cmd.session_id, []).append({"time": cmd.time, "command": cmd.command})
        requests = {
            r.id: r
            for r in session.exec(
                select(AccessRequest).where(col(AccessRequest.id).in_({row.request_id for row in rows}))
            )
        }
    out: list[dict[str, Any]] = []
    for row in rows:
        if command_re is not None and row.id not in matches:
            typed = _lines_matching(_index_text(recordings, row, input_lines_path), command_re)
            if not typed:
                continue
            matches[row.id] = [{"time": None, "command": line, "source": "input"} for line in typed]
        if output_re is not None and not _lines_matching(_index_text(recordings, row, lines_path), output_re):
            continue
        item = _summary(row, requests.get(row.request_id), live_brokers)
        if row.id in matches:
            item["matched_commands"] = matches[row.id][:20]
        if len(out) >= limit:
            return out, True
        out.append(item)
    return out, False


def _index_text(recordings: RecordingStore, row: RecordedSession, kind: Callable[[Path], Path]) -> Path | None:
    """An index text file of a session's recording (None if its reference is refused: it has no index to search)."""
    try:
        return kind(recordings.local_path(row.recording_path))
    except RecordingReferenceError:
        return None


def _lines_matching(path: Path | None, pattern: Any, *, most: int = 5) -> list[str]:
    """Up to ``most`` lines of an index text file that ``pattern`` matches."""
    found: list[str] = []
    if path is None:
        return found
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if pattern.search(line):
                    found.append(line.rstrip("\n"))
                    if len(found) >= most:
                        break
    except OSError:
        return []
    return found


def session_detail(store: Store, session_id: str) -> dict[str, Any]:
    """Everything about one session: metadata, its request and approvals, certificates, commands."""
    live_brokers = alive(store)
    with store.read() as session:
        row = _get(session, session_id)
        request = session.get(AccessRequest, row.request_id)
        approvals = session.exec(select(Approval).where(Approval.request_id == row.request_id)).all()
        certs = session.exec(
            select(IssuedCertificate).where(
                col(IssuedCertificate.serial).in_([s for s in (row.client_serial, row.onward_serial) if s])
            )
        ).all()
        commands = session.exec(
            select(SessionCommand).where(SessionCommand.session_id == session_id).order_by(col(SessionCommand.time))
        ).all()
    detail = _summary(row, request, live_brokers)
    index = loads(row.index_json) if row.index_json else {}
    environment = {}
    for command in commands:
        if command.source == "env":
            name, _, value = command.command.partition("=")
            environment[name] = value
    detail.update(
        peer=row.peer,
        recording_path=row.recording_path,
        recording_sha256=row.recording_sha256,
        request={
            "id": request.id, "requester": request.requester, "hosts": request.hosts, "login": request.login,
            "reason": request.reason, "ticket": request.ticket, "state": request.state,
            "break_glass": request.break_glass, "starts_at": request.starts_at, "expires_at": request.expires_at,
            "approvals": [{"approver": a.approver, "comment": a.comment, "at": a.created_at} for a in approvals],
        } if request else None,
        certificates=[
            {"serial": c.serial, "ca": c.ca_role, "key_id": c.key_id, "key": c.key_fingerprint,
             "principals": loads(c.principals_json), "valid_after": c.valid_after, "valid_before": c.valid_before,
             "revoked": c.revoked}
            for c in certs
        ],
        commands_run=[{"time": c.time, "command": c.command, "source": c.source} for c in commands
                      if c.source != "env"],
        environment=environment,
        transfers=index.get("transfers", []),
        transfers_dropped=index.get("transfers_dropped", 0),
        index_problems=index.get("problems", []),
        streams=index.get("end", {}).get("streams", {}),
    )  # fmt: skip
    return detail


def _get(session: Session, session_id: str) -> RecordedSession:
    if not session_id or len(session_id) > 64:
        raise InputError(f"expected a session id, found {session_id[:64]!r}")
    row = session.get(RecordedSession, session_id)
    if row is None:
        raise InputError(f"no session {session_id!r}")
    return row


def recording_of(store: Store, session_id: str) -> tuple[str, bool]:
    """The recording reference of a session (for its RecordingStore) and whether the session is still running."""
    with store.read() as session:
        row = _get(session, session_id)
    if row.pruned_at is not None:
        raise JitSshError(f"the recording of session {session_id} was pruned")
    return row.recording_path, row.ended_at is None


def record_review(store: Store, *, actor: str, action: str, session_id: str) -> None:
    """Replays, watches and exports are themselves audited."""
    with store.transaction() as session:
        append_event(store, session, actor=actor, action=action, subject=f"session:{session_id}")


def verify_sessions(store: Store, session_id: str | None = None, *, recordings: RecordingStore) -> list[dict[str, Any]]:
    """Check every recording that is not being written by a running broker: its digest against its row and
    the audit log, and that review tools could read it. One result each."""
    live_brokers = alive(store)
    with store.read() as session:
        if session_id is not None:
            rows: Iterable[RecordedSession] = [_get(session, session_id)]
        else:
            rows = list(session.exec(select(RecordedSession).order_by(col(RecordedSession.started_at))))
    audited: dict[str, str] = {}
    for event in iter_events(store):
        if event["action"] == "session.ended":
            audited[event["subject"].removeprefix("session:")] = event["details"].get("recording_sha256", "")
    return [_verify(recordings, row, audited, live_brokers) for row in rows]


def _verify(
    recordings: RecordingStore, row: RecordedSession, audited: dict[str, str], live_brokers: set[str]
) -> dict[str, Any]:
    if row.pruned_at is not None:
        return {"id": row.id, "ok": True, "status": "pruned"}
    try:
        handle = recordings.open(row.recording_path)
        size, digest, prefix = prefix_digest(handle, row.checkpoint_size if row.ended_at is None else None)
    except OSError:
        return {"id": row.id, "ok": False, "status": "recording is missing or unreadable"}
    except RecordingReferenceError as exc:
        return {"id": row.id, "ok": False, "status": exc.message}
    problem: str | None = None
    if row.ended_at is None:
        if row.broker_id is not None and row.broker_id not in live_brokers:
            problem = f"cut off: broker {row.broker_id} stopped without sealing it (sealed when that broker starts)"
        elif row.checkpoint_size and prefix != row.checkpoint_sha256:
            problem = "recording was altered (differs from its last checkpoint)"
        else:
            return {"id": row.id, "ok": True, "status": "active"}
        return {"id": row.id, "ok": False, "status": problem}
    if not row.recording_sha256:
        problem = "recording was never sealed (no digest)"
    elif row.id not in audited:
        problem = "the audit log has no end for this session"
    elif audited[row.id] != row.recording_sha256:
        problem = "session row's digest differs from the audit log's"
    elif size != row.recording_size:
        problem = f"recording is {size} bytes, {row.recording_size} were recorded (truncated or extended)"
    elif digest != row.recording_sha256:
        problem = "recording was altered (SHA-256 differs)"
    elif row.end_reason and "altered" in row.end_reason:
        problem = f"sealed after a crash, but {row.end_reason.partition('; ')[2]}"
    elif row.index_error:
        problem = f"unreadable by review tools: {row.index_error}"
    return {"id": row.id, "ok": problem is None, "status": problem or "ok"}


def set_hold(store: Store, session_id: str, *, hold: bool, actor: str) -> None:
    with store.transaction() as session:
        row = _get(session, session_id)
        row.hold = hold
        session.add(row)
        append_event(
            store, session, actor=actor, action="session.hold" if hold else "session.release",
            subject=f"session:{session_id}",
        )  # fmt: skip


def prune_sessions(
    store: Store, *, recordings: RecordingStore, older_than: timedelta, apply: bool, actor: str = "admin"
) -> tuple[list[str], list[tuple[str, str]]]:
    """Recordings of sessions that ended before ``older_than`` ago: (pruned or to prune, refused)."""
    cutoff = time.time() - older_than.total_seconds()
    chosen: list[str] = []
    refused: list[tuple[str, str]] = []
    with store.transaction() as session:
        rows = session.exec(
            select(RecordedSession).where(
                col(RecordedSession.ended_at).is_not(None),
                col(RecordedSession.ended_at) < cutoff,
                col(RecordedSession.pruned_at).is_(None),
            )
        ).all()
        for row in rows:
            request = session.get(AccessRequest, row.request_id)
            if row.hold:
                refused.append((row.id, "legal hold"))
                continue
            if request is not None and request.review_required:
                refused.append((row.id, "under review (break-glass access)"))
                continue
            try:
                path = recordings.local_path(row.recording_path)
            except RecordingReferenceError as exc:  # never deleted: it may name any file
                refused.append((row.id, exc.message))
                continue
            # Inside the directory is not enough: the reference (after links) must name this session's own
            # recording, never another session's (one under a hold), a directory, or an index file.
            if path.name != f"{row.id}{path.suffix}" or path.suffix in (".lines", ".input"):
                refused.append((row.id, f"its recording reference names {path.name[:100]!r}, not this session's"))
                continue
            if apply:
                try:
                    lines_path(path).unlink(missing_ok=True)
                    input_lines_path(path).unlink(missing_ok=True)  # what was sent: a script, a password typed blind
                    recordings.delete(row.recording_path)
                except OSError as exc:  # kept, and the others pruned and audited all the same
                    refused.append((row.id, f"cannot delete its recording: {exc.strerror or exc}"))
                    continue
                row.pruned_at = time.time()
                session.add(row)
            chosen.append(row.id)
        if apply and chosen:
            append_event(
                store, session, actor=actor, action="sessions.pruned", subject="sessions",
                details={"count": len(chosen), "older_than_s": int(older_than.total_seconds())},
            )  # fmt: skip
    return chosen, refused


def parse_since(text: str) -> float:
    """``2h`` (that long ago) or an ISO date/time (UTC unless it says otherwise), as epoch seconds."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return time.time() - parse_duration(text).total_seconds()
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
