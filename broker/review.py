"""Reviewing recorded sessions: the index written when a session closes, and the queries over it.

Listing and searching read only the store, never the recordings, so they stay fast however much a
session printed: the commands (exec commands, and lines typed at a shell prompt as reconstructed by
broker/commands.py) go to ``session_commands``; file transfers and totals to ``sessions.index_json``;
and the distinct lines of output, up to :data:`OUTPUT_INDEX_LIMIT`, to a text file beside the
recording for ``--grep-output``.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jit_ssh.ca import AccessDenied, InputError, JitSshError
from jit_ssh.ca.audit import append_event, iter_events
from jit_ssh.ca.files import write_private
from jit_ssh.ca.store import (
    AccessRequest,
    Approval,
    IssuedCertificate,
    RecordedSession,
    SessionCommand,
    Store,
    dumps,
    loads,
)
from jit_ssh.ca.validate import parse_duration
from sqlmodel import Session, col, select

from .castlog import Frame, TextStream, read_recording

__all__ = [
    "OUTPUT_INDEX_LIMIT",
    "RecordingIndex",
    "index_recording",
    "list_sessions",
    "prune_sessions",
    "save_index",
    "session_detail",
    "set_hold",
    "verify_sessions",
]

OUTPUT_INDEX_LIMIT = 4 * 1024 * 1024
_MAX_LINE = 4096
_MAX_PATTERN = 200
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[PX^_][^\x1b]*(?:\x1b\\)?|.)")


@dataclass
class RecordingIndex:
    commands: list[tuple[float, str, str]] = field(default_factory=list)
    transfers: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] = field(default_factory=dict)
    output_lines: int = 0
    truncated: bool = False


def lines_path(recording: Path) -> Path:
    return recording.with_suffix(".lines")


def index_recording(path: Path, *, kind: str, command: str | None, pty: bool) -> RecordingIndex:
    """Read a closed recording once (twice for a shell) and build what review needs."""
    index = RecordingIndex()
    header, frames, truncated = read_recording(path)
    streams = {"o": TextStream(), "e": TextStream()}
    seen: set[str] = set()
    kept: list[str] = []
    size = 0
    pending = {"o": "", "e": ""}
    for frame in frames:
        if frame.code in streams and size < OUTPUT_INDEX_LIMIT:
            text, _ = streams[frame.code].decode(frame.payload)
            chunk = pending[frame.code] + _ANSI.sub("", text)
            *lines, rest = chunk.replace("\r", "\n").split("\n")
            if len(rest) > _MAX_LINE:
                # Output without line ends (head -c 1G /dev/zero) must not grow one string for ever,
                # which made indexing quadratic: index it in pieces of one long line each.
                lines.append(rest[:_MAX_LINE])
                rest = ""
            pending[frame.code] = rest
            for line in lines:
                clean = line.strip()
                if clean and clean not in seen:
                    seen.add(clean)
                    kept.append(clean)
                    size += len(clean) + 1
        elif frame.code == "x":
            _index_meta(index, frame)
    index.truncated = truncated[0]
    for rest in pending.values():
        if rest.strip() and rest.strip() not in seen:
            kept.append(rest.strip())
    write_private(lines_path(path), ("\n".join(kept) + "\n").encode(), mode=0o640)  # as the recording beside it
    index.output_lines = len(kept)
    if kind == "exec" and command is not None:
        index.commands.append((0.0, command, "exec"))
    # An exec with a terminal (ssh -t host bash, sudo -i) is typed into like a shell.
    if kind == "shell" or pty:
        from .commands import reconstruct_commands  # noqa: PLC0415 - pyte loads only when a shell is indexed

        _, frames_again, _ = read_recording(path)
        width, height = int(header.get("width") or 80), int(header.get("height") or 24)
        for typed in reconstruct_commands(frames_again, width=width, height=height):
            index.commands.append((typed.time, typed.command, typed.source))
    return index


def _index_meta(index: RecordingIndex, frame: Frame) -> None:
    try:
        meta = frame.json()
    except ValueError:
        return
    if not isinstance(meta, dict):
        return
    if "sftp" in meta:
        index.transfers.append({"time": round(frame.time, 3), **meta["sftp"]})
    elif "end" in meta:
        index.end = meta["end"]


def save_index(store: Store, session_id: str, index: RecordingIndex) -> None:
    with store.transaction() as session:
        row = session.get(RecordedSession, session_id)
        if row is None:
            return
        for moment, text, source in index.commands:
            session.add(SessionCommand(session_id=session_id, time=moment, command=text[:4096], source=source))
        row.commands_count = len(index.commands)
        row.index_json = dumps(
            {"transfers": index.transfers[:1000], "end": index.end, "output_lines": index.output_lines,
             "truncated": index.truncated}
        )  # fmt: skip
        session.add(row)


# -- queries ---------------------------------------------------------------------------------------
def _pattern(text: str | None, what: str) -> re.Pattern[str] | None:
    if text is None:
        return None
    if not text or len(text) > _MAX_PATTERN:
        raise InputError(f"{what} must be 1-{_MAX_PATTERN} characters")
    try:
        return re.compile(text)
    except re.error as exc:
        raise InputError(f"{what} is not a valid regular expression: {exc}") from exc


def _summary(row: RecordedSession, request: AccessRequest | None) -> dict[str, Any]:
    ended = row.ended_at
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
        "active": ended is None,
        "bytes_in": row.bytes_in,
        "bytes_out": row.bytes_out,
        "recording_size": row.recording_size,
        "exit_status": row.exit_status,
        "exit_signal": row.exit_signal,
        "end_reason": row.end_reason,
        "commands": row.commands_count,
        "hold": row.hold,
        "pruned": row.pruned_at is not None,
    }


def list_sessions(
    store: Store,
    *,
    user: str | None = None,
    host: str | None = None,
    since: float | None = None,
    active: bool = False,
    request: int | None = None,
    grep: str | None = None,
    grep_output: str | None = None,
    limit: int = 200,
) -> list[dict[str, Any]]:
    """Sessions, newest first, filtered; ``grep`` searches commands, ``grep_output`` what was printed."""
    command_re, output_re = _pattern(grep, "--grep"), _pattern(grep_output, "--grep-output")
    if not 0 < limit <= 10_000:
        raise InputError("limit must be from 1 to 10000")
    with store.transaction() as session:
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
        rows = list(session.exec(statement.limit(limit if command_re is None and output_re is None else 100_000)))
        matches: dict[str, list[dict[str, Any]]] = {}
        if command_re is not None and rows:
            for cmd in session.exec(
                select(SessionCommand).where(col(SessionCommand.session_id).in_([r.id for r in rows]))
            ):
                if command_re.search(cmd.command):
                    matches.setdefault(cmd.session_id, []).append({"time": cmd.time, "command": cmd.command})
            rows = [r for r in rows if r.id in matches]
        requests = {
            r.id: r
            for r in session.exec(
                select(AccessRequest).where(col(AccessRequest.id).in_({row.request_id for row in rows}))
            )
        }
    out = []
    for row in rows:
        if output_re is not None and not _output_matches(Path(row.recording_path), output_re):
            continue
        item = _summary(row, requests.get(row.request_id))
        if row.id in matches:
            item["matched_commands"] = matches[row.id]
        out.append(item)
        if len(out) >= limit:
            break
    return out


def _output_matches(recording: Path, pattern: re.Pattern[str]) -> bool:
    try:
        with lines_path(recording).open(encoding="utf-8", errors="replace") as handle:
            return any(pattern.search(line) for line in handle)
    except OSError:
        return False


def session_detail(store: Store, session_id: str) -> dict[str, Any]:
    """Everything about one session: metadata, its request and approvals, certificates, commands."""
    with store.transaction() as session:
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
    detail = _summary(row, request)
    index = loads(row.index_json) if row.index_json else {}
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
        commands_run=[{"time": c.time, "command": c.command, "source": c.source} for c in commands],
        transfers=index.get("transfers", []),
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


def recording_of(store: Store, session_id: str) -> tuple[Path, bool]:
    """The recording file of a session and whether the session is still running."""
    with store.transaction() as session:
        row = _get(session, session_id)
    if row.pruned_at is not None:
        raise JitSshError(f"the recording of session {session_id} was pruned")
    return Path(row.recording_path), row.ended_at is None


def record_review(store: Store, *, actor: str, action: str, session_id: str) -> None:
    """Replays, watches and exports are themselves audited."""
    with store.transaction() as session:
        append_event(store, session, actor=actor, action=action, subject=f"session:{session_id}")


def _digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def verify_sessions(store: Store, session_id: str | None = None) -> list[dict[str, Any]]:
    """Recompute each closed recording's digest against its row and the audit log; one result each."""
    with store.transaction() as session:
        if session_id is not None:
            rows: Iterable[RecordedSession] = [_get(session, session_id)]
        else:
            rows = list(session.exec(select(RecordedSession).order_by(col(RecordedSession.started_at))))
    audited: dict[str, str] = {}
    for event in iter_events(store):
        if event["action"] == "session.ended":
            audited[event["subject"].removeprefix("session:")] = event["details"].get("recording_sha256", "")
    results = []
    for row in rows:
        problem = None
        path = Path(row.recording_path)
        if row.pruned_at is not None:
            results.append({"id": row.id, "ok": True, "status": "pruned"})
            continue
        if row.ended_at is None:
            problem = None if path.exists() else "recording is missing"
            results.append({"id": row.id, "ok": problem is None, "status": problem or "active"})
            continue
        try:
            size, digest = _digest(path)
        except OSError:
            problem = "recording is missing or unreadable"
        else:
            if row.recording_sha256 and audited.get(row.id) not in (None, row.recording_sha256):
                problem = "session row's digest differs from the audit log's"
            elif size != row.recording_size:
                problem = f"recording is {size} bytes, {row.recording_size} were recorded (truncated or extended)"
            elif digest != row.recording_sha256:
                problem = "recording was altered (SHA-256 differs)"
        results.append({"id": row.id, "ok": problem is None, "status": problem or "ok"})
    return results


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
    store: Store, *, older_than: timedelta, apply: bool, actor: str = "admin"
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
            chosen.append(row.id)
            if apply:
                path = Path(row.recording_path)
                for target in (path, lines_path(path)):
                    target.unlink(missing_ok=True)
                row.pruned_at = time.time()
                session.add(row)
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


def check_reviewer(groups: frozenset[str], reviewer_groups: frozenset[str], user: str) -> None:
    if not groups & reviewer_groups:
        raise AccessDenied(f"{user} is not a reviewer (reviewers: {', '.join(sorted(reviewer_groups)) or 'nobody'})")
