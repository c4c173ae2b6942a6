"""The lifecycle of access: the one module that moves requests between states.

``pending → approved → expired | revoked`` and ``pending → denied | cancelled | timed_out``. Every
transition writes its audit event in the same transaction as the change, and every refusal of a
security decision is audited too, in a transaction of its own. Listeners (webhooks) hear about a
transition only after it committed.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, or_, true
from sqlmodel import Session, col, select

from .audit import append_event
from .authority import CARole
from .certs import Certificate
from .errors import AccessDenied, GrantExpired, InputError, JitSshError, StoreError
from .issuer import Issuer
from .keys import PublicKey
from .krl import KRL
from .policy import AccessQuery, Decision, HostInfo, Policy
from .signer import Signer
from .store import AccessRequest, Approval, Host, IssuedCertificate, Store, User, dumps, loads
from .validate import (
    ADMIN,
    RESERVED_USERS,
    check_hostname,
    check_login,
    check_user_name,
    format_duration,
    target_principal,
)

__all__ = ["LIST_LIMIT", "MAX_REASON", "MAX_TICKET", "Authority", "RequestState", "RequestView"]

MAX_REASON = 500
MAX_TICKET = 64
MAX_HOSTS = 32
MAX_COMMENT = 500
DEFAULT_PENDING_TIMEOUT = timedelta(hours=1)
#: Finished requests a listing shows at most (newest first); unfinished ones in view are all shown.
LIST_LIMIT = 200

Listener = Callable[[str, Mapping[str, Any]], None]


class RequestState(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    EXPIRED = "expired"
    REVOKED = "revoked"


_FINAL = frozenset(
    {
        RequestState.DENIED,
        RequestState.CANCELLED,
        RequestState.TIMED_OUT,
        RequestState.EXPIRED,
        RequestState.REVOKED,
    }
)
_OPEN = (RequestState.PENDING, RequestState.APPROVED)


@dataclass(frozen=True, slots=True)
class RequestView:
    """A request as callers see it (a snapshot; the store stays the truth)."""

    id: int
    requester: str
    hosts: tuple[str, ...]
    login: str
    duration: timedelta
    reason: str
    ticket: str | None
    state: RequestState
    break_glass: bool
    auto_approved: bool
    review_required: bool
    approvals_required: int
    approver_groups: tuple[str, ...]
    extensions: tuple[str, ...]
    rules: tuple[str, ...]
    created_at: float
    decided_at: float | None
    decided_by: str | None
    decision_note: str | None
    starts_at: float | None
    expires_at: float | None
    approvals: tuple[tuple[str, str | None, float], ...] = field(default=())

    @property
    def principals(self) -> tuple[str, ...]:
        return tuple(target_principal(self.login, host) for host in self.hosts)

    def active(self, now: float) -> bool:
        return (
            self.state is RequestState.APPROVED
            and self.starts_at is not None
            and self.expires_at is not None
            and self.starts_at <= now < self.expires_at
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "requester": self.requester,
            "hosts": list(self.hosts),
            "login": self.login,
            "principals": list(self.principals),
            "duration": format_duration(self.duration),
            "reason": self.reason,
            "ticket": self.ticket,
            "state": self.state.value,
            "break_glass": self.break_glass,
            "auto_approved": self.auto_approved,
            "review_required": self.review_required,
            "approvals_required": self.approvals_required,
            "approver_groups": list(self.approver_groups),
            "extensions": list(self.extensions),
            "rules": list(self.rules),
            "created_at": self.created_at,
            "decided_at": self.decided_at,
            "decided_by": self.decided_by,
            "decision_note": self.decision_note,
            "starts_at": self.starts_at,
            "expires_at": self.expires_at,
            "approvals": [{"approver": a, "comment": c, "at": t} for a, c, t in self.approvals],
        }


def _text(value: str, *, name: str, limit: int, required: bool) -> str | None:
    cleaned = " ".join(value.split()) if value else ""
    if not cleaned:
        if required:
            raise InputError(f"a {name} is required")
        return None
    if len(cleaned) > limit:
        raise InputError(f"{name} is {len(cleaned)} characters long; at most {limit}")
    if not cleaned.isprintable():
        raise InputError(f"{name} contains control characters")
    return cleaned


class Authority:
    """Requests, approvals, grants and certificates, under one policy, in one store."""

    def __init__(
        self,
        store: Store,
        policy: Policy,
        *,
        user_ca: Signer | None = None,
        issuer: Issuer | None = None,
        clock: Callable[[], float] = time.time,
        pending_timeout: timedelta = DEFAULT_PENDING_TIMEOUT,
    ) -> None:
        """``issuer`` signs the certificates (ca/issuer.py); without it, one of this store with ``user_ca``."""
        self.store = store
        self.policy = policy
        self.issuer = issuer if issuer is not None else Issuer(store, user_ca=user_ca, clock=clock)
        self.clock = clock
        self.pending_timeout = pending_timeout
        self.listeners: list[Listener] = []

    # -- helpers ---------------------------------------------------------------------------------
    def _notify(self, event: str, payload: Mapping[str, Any]) -> None:
        for listener in self.listeners:
            listener(event, payload)

    def _refuse(self, actor: str, action: str, subject: str, error: JitSshError) -> JitSshError:
        """Audit a refused decision (in its own transaction) and hand the error back for raising."""
        try:
            with self.store.transaction() as session:
                append_event(
                    self.store, session, actor=actor, action=f"{action}.refused", subject=subject,
                    details={"reason": error.message}, moment=self.clock(),
                )  # fmt: skip
        except StoreError:
            pass  # the refusal stands even if it could not be written down
        return error

    def _user(self, session: Session, name: str, *, lock: bool = False) -> User:
        # lock: the row stays locked to the end of the transaction (PostgreSQL; SQLite's writer lock is whole),
        # so that checks about the user (the pending cap, disabling) cannot interleave between brokers.
        user = session.get(User, name, with_for_update=lock or None)
        if user is None:
            raise AccessDenied(f"unknown user {name!r}")
        if user.disabled:
            raise AccessDenied(f"user {name!r} is disabled")
        return user

    def _groups(self, user: User) -> frozenset[str]:
        return self.policy.groups_of(user.name, user.groups)

    def _row(self, session: Session, request_id: int) -> AccessRequest:
        # Bounded above as well: a larger integer overflows the database's 64-bit column.
        if not isinstance(request_id, int) or not 0 < request_id < 2**63:
            raise InputError(f"expected a request id (a positive number), found {repr(request_id)[:24]}")
        row = session.get(AccessRequest, request_id)
        if row is None:
            raise InputError(f"no request {request_id}")
        self._lapse(session, row, self.clock())
        return row

    def _lapse(self, session: Session, row: AccessRequest, now: float) -> None:
        """Move a request whose time has run out to timed_out or expired (audited)."""
        if row.state == RequestState.PENDING and now >= row.created_at + self.pending_timeout.total_seconds():
            self._transition(session, row, RequestState.TIMED_OUT, actor="jit-ssh", now=now)
        elif row.state == RequestState.APPROVED and row.expires_at is not None and now >= row.expires_at:
            self._transition(session, row, RequestState.EXPIRED, actor="jit-ssh", now=now)

    def _transition(
        self,
        session: Session,
        row: AccessRequest,
        state: RequestState,
        *,
        actor: str,
        now: float,
        note: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        previous = row.state
        row.state = state.value
        if state not in (RequestState.EXPIRED,):
            row.decided_at = now
            row.decided_by = actor
            row.decision_note = note
        session.add(row)
        append_event(
            self.store,
            session,
            actor=actor,
            action=f"request.{state.value}",
            subject=f"request:{row.id}",
            details={"from": previous, **({"note": note} if note else {}), **dict(details or {})},
            moment=now,
        )

    def _view(self, session: Session, row: AccessRequest) -> RequestView:
        approvals = session.exec(
            select(Approval).where(Approval.request_id == row.id).order_by(col(Approval.created_at))
        ).all()
        if row.id is None:  # pragma: no cover - rows are flushed before they are viewed
            raise StoreError("request has no id yet")
        return RequestView(
            id=row.id,
            requester=row.requester,
            hosts=tuple(row.hosts),
            login=row.login,
            duration=timedelta(seconds=row.duration_s),
            reason=row.reason,
            ticket=row.ticket,
            state=RequestState(row.state),
            break_glass=row.break_glass,
            auto_approved=row.auto_approved,
            review_required=row.review_required,
            approvals_required=row.approvals_required,
            approver_groups=tuple(loads(row.approver_groups_json)),
            extensions=tuple(loads(row.extensions_json)),
            rules=tuple(loads(row.rules_json)),
            created_at=row.created_at,
            decided_at=row.decided_at,
            decided_by=row.decided_by,
            decision_note=row.decision_note,
            starts_at=row.starts_at,
            expires_at=row.expires_at,
            approvals=tuple((a.approver, a.comment, a.created_at) for a in approvals),
        )

    def _payload(self, view: RequestView, actor: str, **extra: Any) -> dict[str, Any]:
        return {
            "request_id": view.id,
            "requester": view.requester,
            "hosts": list(view.hosts),
            "login": view.login,
            "duration": format_duration(view.duration),
            "reason": view.reason,
            "ticket": view.ticket,
            "actor": actor,
            **extra,
        }

    def _resolve_hosts(
        self, session: Session, hosts: Sequence[str], selector: Mapping[str, str] | None
    ) -> list[HostInfo]:
        rows: list[Host] = []
        if selector:
            for row in session.exec(select(Host).order_by(col(Host.name))):
                if all(row.labels.get(k) == v for k, v in selector.items()):
                    rows.append(row)
            if not rows:
                labels = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
                raise InputError(f"no enrolled host has the labels {labels}")
        for name in hosts:
            check_hostname(name)
            found = session.get(Host, name)
            if found is None:
                raise InputError(f"unknown host {name!r}: enroll it with 'jit-ssh host add'")
            if found not in rows:
                rows.append(found)
        if not rows:
            raise InputError("name at least one host (or a label selector)")
        if len(rows) > MAX_HOSTS:
            raise InputError(f"{len(rows)} hosts in one request; at most {MAX_HOSTS}")
        return [HostInfo(name=r.name, labels=r.labels) for r in rows]

    # -- requests --------------------------------------------------------------------------------
    def create_request(
        self,
        *,
        requester: str,
        hosts: Sequence[str] = (),
        selector: Mapping[str, str] | None = None,
        login: str,
        duration: timedelta,
        reason: str,
        ticket: str | None = None,
        start: datetime | None = None,
        extensions: Iterable[str] = (),
        break_glass: bool = False,
    ) -> RequestView:
        """File a request; the policy decides whether it waits for approval or is granted at once."""
        check_login(login)
        clean_reason = _text(reason, name="reason", limit=MAX_REASON, required=True)
        clean_ticket = _text(ticket or "", name="ticket", limit=MAX_TICKET, required=False)
        if duration <= timedelta(0):
            raise InputError("duration must be positive")
        now = self.clock()
        start_at = None
        if start is not None:
            if start.tzinfo is None:
                raise InputError("start time needs a time zone")
            start_at = start.timestamp()
            if start_at > now + 7 * 86400:
                raise InputError("start time is more than 7 days ahead")
        try:
            with self.store.transaction() as session:
                user = self._user(session, requester, lock=True)
                host_infos = self._resolve_hosts(session, hosts, selector)
                decision = self.policy.evaluate(
                    AccessQuery(
                        user=requester,
                        groups=self._groups(user),
                        hosts=tuple(host_infos),
                        login=login,
                        duration=duration,
                        extensions=frozenset(extensions),
                        break_glass=break_glass,
                    )
                )
                if not decision.allowed:
                    raise AccessDenied("policy refuses: " + "; ".join(decision.reasons))
                if self._waits(decision):
                    self._check_pending_cap(session, requester, now)
                row = AccessRequest(
                    requester=requester,
                    hosts_json=dumps([h.name for h in host_infos]),
                    login=login,
                    duration_s=int(duration.total_seconds()),
                    reason=clean_reason or "",
                    ticket=clean_ticket,
                    state=RequestState.PENDING.value,
                    break_glass=decision.break_glass,
                    review_required=decision.break_glass,
                    rules_json=dumps(list(decision.rules)),
                    approvals_required=decision.approvals_required,
                    approver_groups_json=dumps(sorted(decision.approver_groups)),
                    extensions_json=dumps(sorted(decision.extensions)),
                    max_duration_s=int(decision.max_duration.total_seconds()),
                    requested_start=start_at,
                    created_at=now,
                )
                session.add(row)
                session.flush()
                append_event(
                    self.store, session, actor=requester, action="request.created", subject=f"request:{row.id}",
                    details={"hosts": row.hosts, "login": login, "duration_s": row.duration_s,
                             "reason": row.reason, "ticket": row.ticket, "rules": list(decision.rules)},
                    moment=now,
                )  # fmt: skip
                granted = self._grant_without_approval(session, row, decision, now)
                view = self._view(session, row)
        except AccessDenied as exc:
            raise self._refuse(requester, "request.create", "request:new", exc) from None
        self._notify("request.created", self._payload(view, requester))
        if granted:
            event = "breakglass.used" if view.break_glass else "request.approved"
            self._notify(event, self._payload(view, "policy"))
        return view

    @staticmethod
    def _waits(decision: Decision) -> bool:
        """Whether a request so decided waits for approval (rather than being granted at once)."""
        return not (decision.auto_approve or decision.break_glass) or decision.approvals_required > 0

    def _check_pending_cap(self, session: Session, requester: str, now: float) -> None:
        """One more pending request of ``requester`` must stay within the policy's cap (timed-out ones not counted)."""
        limit = self.policy.pending_per_user
        count = session.exec(
            select(func.count())
            .select_from(AccessRequest)
            .where(
                AccessRequest.requester == requester,
                AccessRequest.state == RequestState.PENDING.value,
                AccessRequest.created_at > now - self.pending_timeout.total_seconds(),
            )
        ).one()
        if count >= limit:
            raise AccessDenied(
                f"{requester} has {count} pending requests and the policy allows at most {limit} "
                "(limits.pending_per_user); cancel one or wait for a decision"
            )

    def _grant_without_approval(self, session: Session, row: AccessRequest, decision: Decision, now: float) -> bool:
        if self._waits(decision):
            return False
        row.auto_approved = decision.auto_approve
        self._start_grant(row, now)
        why = "break-glass rule" if decision.break_glass else "auto-approve rule"
        self._transition(
            session, row, RequestState.APPROVED, actor="policy", now=now,
            note=f"{why} {', '.join(decision.rules)}", details={"break_glass": decision.break_glass},
        )  # fmt: skip
        return True

    @staticmethod
    def _start_grant(row: AccessRequest, now: float) -> None:
        row.starts_at = max(now, row.requested_start or now)
        row.expires_at = row.starts_at + row.duration_s

    def approve(self, request_id: int, *, approver: str, comment: str | None = None) -> RequestView:
        """Record ``approver``'s approval; the grant starts when the required number is reached."""
        note = _text(comment or "", name="comment", limit=MAX_COMMENT, required=False)
        try:
            with self.store.transaction() as session:
                now = self.clock()
                row = self._row(session, request_id)
                view = self._view(session, row)
                user = self._user(session, approver)
                self._check_approver(view, approver, self._groups(user))
                if any(a == approver for a, _, _ in view.approvals):
                    raise AccessDenied(f"{approver} has already approved request {request_id}")
                session.add(Approval(request_id=request_id, approver=approver, comment=note, created_at=now))
                append_event(
                    self.store, session, actor=approver, action="request.approval", subject=f"request:{request_id}",
                    details={"comment": note, "count": len(view.approvals) + 1, "required": view.approvals_required},
                    moment=now,
                )  # fmt: skip
                session.flush()
                approvers = {
                    a.approver for a in session.exec(select(Approval).where(Approval.request_id == request_id))
                }
                approvers.discard(row.requester)  # belt and braces: never counted, whatever the table says
                granted = len(approvers) >= max(1, row.approvals_required)
                if granted:
                    self._start_grant(row, now)
                    self._transition(session, row, RequestState.APPROVED, actor=approver, now=now, note=note)
                view = self._view(session, row)
        except (AccessDenied, InputError) as exc:
            raise self._refuse(approver, "request.approve", f"request:{request_id}", exc) from None
        if granted:
            self._notify("request.approved", self._payload(view, approver, comment=note))
        return view

    def _check_approver(self, view: RequestView, approver: str, groups: frozenset[str]) -> None:
        if view.state is not RequestState.PENDING:
            raise AccessDenied(f"request {view.id} is {view.state.value}, not pending")
        if approver == view.requester:
            raise AccessDenied("you cannot approve your own request")
        if not groups & set(view.approver_groups):
            allowed = ", ".join(view.approver_groups) or "nobody"
            raise AccessDenied(f"{approver} may not approve request {view.id}: approvers are {allowed}")

    def deny(self, request_id: int, *, approver: str, reason: str) -> RequestView:
        note = _text(reason, name="reason", limit=MAX_REASON, required=True)
        try:
            with self.store.transaction() as session:
                row = self._row(session, request_id)
                view = self._view(session, row)
                self._check_approver(view, approver, self._groups(self._user(session, approver)))
                self._transition(session, row, RequestState.DENIED, actor=approver, now=self.clock(), note=note)
                view = self._view(session, row)
        except (AccessDenied, InputError) as exc:
            raise self._refuse(approver, "request.deny", f"request:{request_id}", exc) from None
        self._notify("request.denied", self._payload(view, approver, why=note))
        return view

    def cancel(self, request_id: int, *, actor: str) -> RequestView:
        try:
            with self.store.transaction() as session:
                row = self._row(session, request_id)
                self._user(session, actor)
                if row.requester != actor:
                    raise AccessDenied(f"only {row.requester} can cancel request {request_id}")
                if row.state != RequestState.PENDING:
                    raise AccessDenied(
                        f"request {request_id} is {row.state}; only a pending request can be cancelled (revoke a grant)"
                    )
                self._transition(session, row, RequestState.CANCELLED, actor=actor, now=self.clock())
                view = self._view(session, row)
        except (AccessDenied, InputError) as exc:
            raise self._refuse(actor, "request.cancel", f"request:{request_id}", exc) from None
        self._notify("request.cancelled", self._payload(view, actor))
        return view

    def revoke(self, request_id: int, *, actor: str, reason: str | None = None) -> tuple[RequestView, list[int]]:
        """End a grant: the request becomes revoked and every certificate issued for it is revoked."""
        note = _text(reason or "", name="reason", limit=MAX_REASON, required=False)
        try:
            with self.store.transaction() as session:
                row = self._row(session, request_id)
                view = self._view(session, row)
                if actor != "admin":  # the bastion's own operator, from `jit-ssh revoke` run locally
                    groups = self._groups(self._user(session, actor))
                    # Break-glass and auto-approved grants have no approvers: reviewers may end them.
                    allowed = set(view.approver_groups) | set(self.policy.reviewer_groups)
                    if actor != row.requester and not groups & allowed:
                        raise AccessDenied(f"{actor} may not revoke request {request_id}")
                if row.state not in _OPEN:
                    raise AccessDenied(f"request {request_id} is {row.state}; nothing to revoke")
                serials = self._revoke_row(session, row, actor=actor, now=self.clock(), note=note)
                view = self._view(session, row)
        except (AccessDenied, InputError) as exc:
            raise self._refuse(actor, "request.revoke", f"request:{request_id}", exc) from None
        self._notify("request.revoked", self._payload(view, actor, why=note))
        return view, serials

    def _revoke_row(
        self, session: Session, row: AccessRequest, *, actor: str, now: float, note: str | None
    ) -> list[int]:
        """Revoke a pending or approved request and every certificate issued for it; returns their serials."""
        certs = session.exec(select(IssuedCertificate).where(IssuedCertificate.request_id == row.id)).all()
        for cert in certs:
            cert.revoked = True
            session.add(cert)
        serials = [cert.serial for cert in certs]
        self._transition(
            session, row, RequestState.REVOKED, actor=actor, now=now, note=note, details={"serials": serials}
        )
        return serials

    def disable_user(self, name: str, *, actor: str = ADMIN) -> list[tuple[RequestView, list[int]]]:
        """Disable ``name`` and end what they hold, in one transaction: every grant and pending request of
        theirs is revoked, with its certificates (for the KRL), and the user is marked disabled. Brokers
        then close the user's live sessions and refuse their certificates and keys.

        Returns the revoked requests with the serials each revoked.
        """
        # A reserved name enrolled before names were reserved can still be disabled.
        if name not in RESERVED_USERS:
            check_user_name(name)
        with self.store.transaction() as session:
            now = self.clock()
            user = session.get(User, name, with_for_update=True)
            if user is None:
                raise InputError(f"no user {name!r}")
            rows = session.exec(
                select(AccessRequest)
                .where(AccessRequest.requester == name, col(AccessRequest.state).in_(_OPEN))
                .order_by(col(AccessRequest.id))
            ).all()
            ended: list[tuple[AccessRequest, list[int]]] = []
            for row in rows:
                self._lapse(session, row, now)  # what has run out expires as it would have; the rest is revoked
                if row.state in _OPEN:
                    ended.append(
                        (row, self._revoke_row(session, row, actor=actor, now=now, note=f"user {name} disabled"))
                    )
            user.disabled = True
            session.add(user)
            append_event(
                self.store, session, actor=actor, action="user.disabled", subject=f"user:{name}",
                details={"requests": [row.id for row, _ in ended], "serials": [s for _, ss in ended for s in ss]},
                moment=now,
            )  # fmt: skip
            revoked = [(self._view(session, row), serials) for row, serials in ended]
        for view, _ in revoked:
            self._notify("request.revoked", self._payload(view, actor, why=f"user {name} disabled"))
        return revoked

    # -- certificates ----------------------------------------------------------------------------
    def issue_certificate(
        self, request_id: int, *, user: str, public_key: PublicKey
    ) -> tuple[Certificate, RequestView]:
        """Sign ``public_key`` with the user CA for ``user``'s approved request (invariants 1 and 2)."""
        if not self.issuer.can_sign(CARole.USER):
            raise JitSshError("this authority has no user CA signer loaded")
        try:
            with self.store.transaction() as session:
                now = self.clock()
                row = self._row(session, request_id)
                self._user(session, user)
                if row.requester != user:
                    raise AccessDenied(f"request {request_id} belongs to {row.requester}, not {user}")
                if row.state == RequestState.EXPIRED:
                    raise GrantExpired(f"the grant of request {request_id} has expired")
                if row.state != RequestState.APPROVED or row.starts_at is None or row.expires_at is None:
                    raise AccessDenied(f"request {request_id} is {row.state}, not approved")
                view = self._view(session, row)
                cert = self.issuer.issue_user(
                    public_key, request_id=request_id, user=user, principals=list(view.principals),
                    valid_from=datetime.fromtimestamp(row.starts_at, UTC),
                    valid_until=datetime.fromtimestamp(row.expires_at, UTC),
                    max_validity=timedelta(seconds=min(row.duration_s, row.max_duration_s)),
                    extensions=view.extensions, now=now, session=session,
                )  # fmt: skip
        except (AccessDenied, InputError) as exc:
            raise self._refuse(user, "certificate.issue", f"request:{request_id}", exc) from None
        return cert, view

    def revoked_serials(self, *, ca_role: str, now: float | None = None) -> list[int]:
        """Serials of revoked certificates of ``ca_role`` that have not expired yet (for the KRL)."""
        moment = int(self.clock() if now is None else now)
        with self.store.transaction() as session:
            rows = session.exec(
                select(IssuedCertificate.serial).where(
                    IssuedCertificate.ca_role == ca_role,
                    col(IssuedCertificate.revoked).is_(True),
                    IssuedCertificate.valid_before > moment,
                )
            ).all()
        return sorted(rows)

    def krl(self, *, access_ca: PublicKey, user_ca: PublicKey, now: float | None = None) -> KRL:
        """The KRL to publish: every revoked serial, of either CA, whose certificate has not expired."""
        moment = self.clock() if now is None else now
        return KRL.build(
            serials={
                access_ca: self.revoked_serials(ca_role="access", now=moment),
                user_ca: self.revoked_serials(ca_role="user", now=moment),
            },
            version=int(moment),
            comment="jit-ssh",
            now=datetime.fromtimestamp(moment, UTC),
        )

    # -- reading ---------------------------------------------------------------------------------
    def get(self, request_id: int, *, viewer: str | None = None) -> RequestView:
        """One request; ``viewer`` (None for a local admin) must be its requester or an approver."""
        with self.store.transaction() as session:
            row = self._row(session, request_id)
            view = self._view(session, row)
            if viewer is not None and viewer != row.requester:
                groups = self._groups(self._user(session, viewer))
                if not groups & set(view.approver_groups):
                    raise AccessDenied(f"request {request_id} is neither yours nor one you may approve")
        return view

    def list_requests(
        self, *, viewer: str | None, mine: bool = False, pending: bool = False, include_final: bool = False
    ) -> list[RequestView]:
        """What ``viewer`` asked for and what waits for them, newest first; a local admin (None) sees everything.

        The database selects what is shown, so that nobody's requests, however many, push anyone else's out
        of a listing: every unfinished request in view (pending ones are capped per user by the policy, grants
        run out), and with ``include_final`` the newest :data:`LIST_LIMIT` finished ones as well.
        ``pending`` shows only the pending requests ``viewer`` may approve (never their own).
        """
        if pending and mine:
            return []  # nobody approves their own requests
        with self.store.transaction() as session:
            now = self.clock()
            shown: ColumnElement[bool] = true()
            if viewer is not None:
                own = col(AccessRequest.requester) == viewer
                approvable = self._approvable_by(viewer, self._groups(self._user(session, viewer)))
                shown = approvable if pending else own if mine else or_(own, approvable)
            states = [RequestState.PENDING] if pending else list(_OPEN)
            query = select(AccessRequest).order_by(col(AccessRequest.id).desc())
            rows = {}
            for row in session.exec(query.where(shown, col(AccessRequest.state).in_(states))).all():
                self._lapse(session, row, now)
                if row.state in states or (include_final and not pending):
                    rows[row.id] = row
            if include_final and not pending:
                finished = query.where(shown, col(AccessRequest.state).in_(_FINAL)).limit(LIST_LIMIT)
                for row in session.exec(finished).all():
                    rows.setdefault(row.id, row)  # those that lapsed just now are there already
            return [self._view(session, row) for row in sorted(rows.values(), key=lambda r: r.id or 0, reverse=True)]

    @staticmethod
    def _approvable_by(viewer: str, groups: frozenset[str]) -> ColumnElement[bool]:
        """Requests of others whose approver groups (a JSON list of names in the row) meet ``groups``."""
        column = col(AccessRequest.approver_groups_json)
        # '"sre"' inside '["dba","sre"]': names cannot hold quotes, and autoescape keeps '_' and '%' literal.
        meets = [column.contains(dumps(group), autoescape=True) for group in sorted(groups)]
        return and_(col(AccessRequest.requester) != viewer, or_(false(), *meets))

    def sweep(self) -> int:
        """Time out stale pending requests and expire finished grants; returns how many moved."""
        moved = 0
        with self.store.transaction() as session:
            now = self.clock()
            rows = session.exec(
                select(AccessRequest).where(col(AccessRequest.state).in_([RequestState.PENDING, RequestState.APPROVED]))
            ).all()
            for row in rows:
                before = row.state
                self._lapse(session, row, now)
                moved += row.state != before
        return moved
