"""Grants: what one engineer's certificate may open through the broker (invariant 4), decided purely.

The broker reads the store and asks; these functions decide, from values alone:

* :func:`check_presented`: the certificate is the user CA's, a user certificate valid now, for the
  principal ``LOGIN@HOST`` that the client sent as its SSH user name. Nothing of the store is needed,
  so a certificate that fails here costs no query and no hostile user name reaches the database.
* :func:`check_grant`: the grant behind it, from what the store says (:class:`GrantFacts`) and the time.
* :func:`recheck`: at the time of use (a channel opening), whether the grant still stands.
* :func:`onward_terms`: what the broker's own certificate for the host says (invariants 2, 3 and 8).

Each refusal is :class:`AccessDenied` with the reason the user is told and the audit log keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .authority import CARole
from .certs import MAX_BACKDATE, Certificate, CertType
from .errors import AccessDenied, InputError, JitSshError
from .issuer import OnwardTerms
from .keys import PublicKey
from .validate import target_principal
from .workflow import RequestState

__all__ = [
    "Grant",
    "GrantFacts",
    "HostFacts",
    "IssuedFacts",
    "OnwardTerms",
    "Presented",
    "RequestFacts",
    "check_grant",
    "check_presented",
    "onward_terms",
    "recheck",
]


@dataclass(frozen=True, slots=True)
class Grant:
    """What one engineer's certificate may open, as the store says now."""

    request_id: int
    user: str
    host: str
    address: str
    port: int
    host_key: str | None
    login: str
    starts_at: float
    expires_at: float
    extensions: tuple[str, ...]
    serial: int
    key_id: str


# -- what the store says -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class IssuedFacts:
    """The issued-certificate row of a serial; ``request_id`` is None for a host's certificate or the broker's."""

    request_id: int | None
    ca_role: str
    key_id: str
    revoked: bool


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """The request row behind an issued certificate; the window is unset until the grant is approved."""

    id: int
    requester: str
    state: str
    hosts: tuple[str, ...]
    login: str
    starts_at: float | None
    expires_at: float | None
    extensions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HostFacts:
    """An inventory row: where the broker connects, and the pinned host key if any."""

    name: str
    address: str
    port: int
    host_key: str | None


@dataclass(frozen=True, slots=True)
class GrantFacts:
    """What the store says of a certificate's grant, read in one transaction.

    ``owner_disabled`` is the requester's user row's flag, None when there is no such row (a user who
    is gone has no access either); ``host`` is None when the host is not in the inventory (or not asked).
    """

    issued: IssuedFacts | None
    request: RequestFacts | None
    owner_disabled: bool | None
    host: HostFacts | None = None


# -- the decisions ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Presented:
    """A certificate from the user CA, valid when checked, for ``LOGIN@HOST``; made by :func:`check_presented`."""

    cert: Certificate
    login: str
    host: str

    @property
    def principal(self) -> str:
        return f"{self.login}@{self.host}"


def check_presented(cert: Certificate, username: str, *, user_ca: PublicKey, now: float) -> Presented:
    """The certificate and the SSH user name ``LOGIN@HOST`` it is presented for, checked without the store:
    signed by ``user_ca``, a user certificate, valid at ``now`` (epoch seconds), listing that principal."""
    login, _, host = username.partition("@")
    try:
        principal = target_principal(login, host)
        moment = datetime.fromtimestamp(now, UTC)
        cert.check(trusted_ca=user_ca, cert_type=CertType.USER, principal=principal, now=moment)
    except (InputError, JitSshError) as exc:
        raise AccessDenied(exc.message) from None
    return Presented(cert, login, host)


def check_grant(presented: Presented, facts: GrantFacts, *, now: float) -> Grant:
    """The grant ``presented`` stands for at ``now`` (epoch seconds), or :class:`AccessDenied` with the reason.

    The checks run in a fixed order, so that a certificate is told the first thing wrong with it: issued by
    us (serial, role and key id), its user enabled, not revoked, its request approved, the window started
    and not ended, the host and login covered, the host still in the inventory.
    """
    cert, issued, request, host = presented.cert, facts.issued, facts.request, facts.host
    if issued is None or issued.ca_role != CARole.USER or issued.key_id != cert.key_id:
        raise AccessDenied(f"certificate serial {cert.serial} was not issued by this broker")
    if request is not None and request.id != issued.request_id:
        request = None  # another request's row says nothing of this certificate
    if host is not None and host.name != presented.host:
        host = None
    if request is not None and facts.owner_disabled is not False:
        raise AccessDenied(f"user {request.requester} is disabled")
    if issued.revoked:
        raise AccessDenied(f"certificate serial {cert.serial} is revoked")
    if request is None or request.state != RequestState.APPROVED:
        raise AccessDenied(f"request {issued.request_id} is {request.state if request else 'missing'}, not approved")
    starts_at, expires_at = request.starts_at, request.expires_at
    if starts_at is None or expires_at is None or not starts_at <= now:
        raise AccessDenied(f"the grant of request {request.id} has not started")
    if now >= expires_at:
        raise AccessDenied(f"the grant of request {request.id} has expired")
    if presented.host not in request.hosts or presented.login != request.login:
        raise AccessDenied(f"request {request.id} does not cover {presented.principal}")
    if host is None:
        raise AccessDenied(f"host {presented.host} is no longer in the inventory")
    return Grant(
        request_id=request.id, user=request.requester, host=presented.host, address=host.address,
        port=host.port, host_key=host.host_key, login=presented.login, starts_at=starts_at,
        expires_at=expires_at, extensions=request.extensions, serial=cert.serial, key_id=cert.key_id,
    )  # fmt: skip


def recheck(grant: Grant, facts: GrantFacts, *, now: float) -> None:
    """Time of use: :class:`AccessDenied` unless the grant is still approved, its user enabled, its
    certificate unrevoked, and ``now`` before its end. ``facts`` are those of the grant's own request."""
    request, issued = facts.request, facts.issued
    if request is not None and request.id != grant.request_id:
        request = None
    if request is not None and facts.owner_disabled is not False:
        raise AccessDenied(f"user {grant.user} is disabled")
    if request is None or request.state != RequestState.APPROVED or issued is None or issued.revoked:
        raise AccessDenied(f"request {grant.request_id} is no longer approved")
    if now >= grant.expires_at:
        raise AccessDenied(f"the grant of request {grant.request_id} has expired")


# -- the broker's own certificate ---------------------------------------------------------------------
#: How far an onward certificate starts before it is minted, for the host's clock (invariant 2's limit).
ONWARD_BACKDATE = MAX_BACKDATE
_SHORTEST = timedelta(seconds=1)


def onward_terms(grant: Grant, *, session_id: str, source_addresses: tuple[str, ...], now: datetime) -> OnwardTerms:
    """The terms of the onward certificate for ``grant``'s session ``session_id``, minted at ``now``."""
    until = datetime.fromtimestamp(grant.expires_at, UTC)
    return OnwardTerms(
        principals=(target_principal(grant.login, grant.host),),
        key_id=f"jit-ssh session={session_id} request={grant.request_id} user={grant.user}",
        valid_from=now,
        valid_until=until,
        max_validity=max(until - now, _SHORTEST),
        extensions=grant.extensions,
        source_address=tuple(source_addresses),
        backdate=ONWARD_BACKDATE,
    )
