"""The issuer: the one place where the system signs certificates.

Every certificate jit-ssh signs goes through :class:`Issuer`, one method per kind:

* :meth:`Issuer.issue_user`: an engineer's certificate, from the user CA, for an approved request;
* :meth:`Issuer.issue_onward`: the broker's certificate, from the access CA, for one session's
  connection to its host;
* :meth:`Issuer.issue_host`: a host's own key, from the host CA, when the host is enrolled;
* :meth:`Issuer.issue_broker_host`: the broker's own host key, from the host CA, when it starts.

Each takes the next serial, signs, writes the certificate's row (:class:`IssuedCertificate`) and appends
its audit event in one transaction: a certificate the system signed always has both, and a failure (a
window the mint functions refuse, the signer, the database) leaves neither and uses no serial. Whether
someone may have a certificate is decided before, in ``ca/workflow.py`` and ``ca/grant.py``; the
issuer signs what it is told, within the limits the mint functions in ``ca/certs.py`` enforce.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Session

from .audit import append_event
from .authority import CARole
from .certs import Certificate, mint_host_certificate, mint_user_certificate
from .errors import JitSshError
from .keys import PublicKey
from .signer import Signer
from .store import IssuedCertificate, Store, dumps
from .validate import ADMIN

__all__ = ["ACTIONS", "Issuer", "OnwardTerms"]

#: The audit action of each kind of certificate (docs/security.md lists them).
ACTIONS = {
    "user": "certificate.issued",
    "onward": "certificate.onward",
    "host": "host.certificate",
    "broker": "broker.host_certificate",
}
#: The actor of what the system does on its own (the broker's certificates).
SYSTEM = "jit-ssh"


@dataclass(frozen=True, slots=True)
class OnwardTerms:
    """What the broker's certificate for one session's connection to the host says (invariants 3 and 8):
    the one principal of the session, from now to the end of the grant, the grant's extensions, the
    bastion's addresses as ``source-address``, and the session, request and user in the key id."""

    principals: tuple[str, ...]
    key_id: str
    valid_from: datetime
    valid_until: datetime
    max_validity: timedelta
    extensions: tuple[str, ...]
    source_address: tuple[str, ...]
    backdate: timedelta


@dataclass(frozen=True, slots=True)
class _Entry:
    """The row and the audit event of one certificate, besides what the certificate itself says."""

    kind: str
    ca_role: CARole
    subject: str
    actor: str
    audit_subject: str
    request_id: int | None = None
    session_id: str | None = None

    @property
    def names_key(self) -> str:
        """What the audit event calls the certificate's principals (as the events have always named them)."""
        return "names" if self.ca_role is CARole.HOST else "principals"


class Issuer:
    """Signs every certificate the system issues, with its serial, row and audit event (see the module).

    A signer left out (the CLI loads only the host CA to enroll a host) makes the methods that need it
    raise :class:`JitSshError`.
    """

    def __init__(
        self,
        store: Store,
        *,
        user_ca: Signer | None = None,
        access_ca: Signer | None = None,
        host_ca: Signer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._signers = {CARole.USER: user_ca, CARole.ACCESS: access_ca, CARole.HOST: host_ca}
        self.clock = clock

    def can_sign(self, role: CARole) -> bool:
        return self._signers[role] is not None

    def _signer(self, role: CARole) -> Signer:
        signer = self._signers[role]
        if signer is None:
            raise JitSshError(f"this issuer has no {role.value} CA signer loaded")
        return signer

    @contextmanager
    def _transaction(self, session: Session | None) -> Iterator[Session]:
        """The caller's transaction (whose checks must commit with the certificate), or one of our own."""
        if session is not None:
            yield session
            return
        with self.store.transaction() as own:
            yield own

    def _issue(
        self,
        entry: _Entry,
        subject_key: PublicKey,
        mint: Callable[[Signer, int], Certificate],
        *,
        now: float,
        details: Mapping[str, Any],
        session: Session | None,
    ) -> Certificate:
        signer = self._signer(entry.ca_role)
        with self._transaction(session) as db:
            serial = self.store.next_serial(db)
            cert = mint(signer, serial)
            fingerprint = subject_key.fingerprint()
            db.add(
                IssuedCertificate(
                    serial=serial, request_id=entry.request_id, ca_role=entry.ca_role.value, subject=entry.subject,
                    key_id=cert.key_id, key_fingerprint=fingerprint, principals_json=dumps(list(cert.principals)),
                    valid_after=cert.valid_after, valid_before=cert.valid_before, session_id=entry.session_id,
                    created_at=now,
                )
            )  # fmt: skip
            append_event(
                self.store, db, actor=entry.actor, action=ACTIONS[entry.kind], subject=entry.audit_subject,
                details={"serial": serial, "key": fingerprint, entry.names_key: list(cert.principals), **details,
                         "valid_after": cert.valid_after, "valid_before": cert.valid_before},
                moment=now,
            )  # fmt: skip
        return cert

    def issue_user(
        self,
        public_key: PublicKey,
        *,
        request_id: int,
        user: str,
        principals: Sequence[str],
        valid_from: datetime,
        valid_until: datetime,
        max_validity: timedelta,
        extensions: Iterable[str],
        now: float | None = None,
        session: Session | None = None,
    ) -> Certificate:
        """An engineer's certificate from the user CA, for ``user``'s approved request ``request_id``.

        ``session``: the caller's transaction, in which it checked the request, so that the check and the
        certificate commit together; without it the issuer opens its own.
        """
        moment = self.clock() if now is None else now

        def mint(signer: Signer, serial: int) -> Certificate:
            return mint_user_certificate(
                signer, public_key, principals=principals,
                key_id=f"jit-ssh request={request_id} user={user} serial={serial}", serial=serial,
                valid_from=valid_from, valid_until=valid_until, max_validity=max_validity, extensions=extensions,
                now=datetime.fromtimestamp(moment, UTC),
            )  # fmt: skip

        entry = _Entry("user", CARole.USER, user, user, f"request:{request_id}", request_id=request_id)
        return self._issue(entry, public_key, mint, now=moment, details={}, session=session)

    def issue_onward(
        self,
        public_key: PublicKey,
        terms: OnwardTerms,
        *,
        request_id: int,
        user: str,
        session_id: str,
        now: datetime | None = None,
    ) -> Certificate:
        """The broker's certificate from the access CA for session ``session_id`` of ``user``'s grant
        ``request_id``, on ``terms`` (ca/grant.py's ``onward_terms``). Minted for every connection to a
        host: one transaction, one row, one audit event."""
        moment = datetime.now(UTC) if now is None else now

        def mint(signer: Signer, serial: int) -> Certificate:
            return mint_user_certificate(
                signer, public_key, principals=terms.principals, key_id=terms.key_id, serial=serial,
                valid_from=terms.valid_from, valid_until=terms.valid_until, max_validity=terms.max_validity,
                extensions=terms.extensions, source_address=terms.source_address, backdate=terms.backdate, now=moment,
            )  # fmt: skip

        entry = _Entry(
            "onward", CARole.ACCESS, user, user, f"session:{session_id}", request_id=request_id, session_id=session_id
        )
        details = {"request": request_id}
        return self._issue(entry, public_key, mint, now=moment.timestamp(), details=details, session=None)

    def issue_host(
        self,
        public_key: PublicKey,
        *,
        name: str,
        hostnames: Sequence[str],
        validity: timedelta,
        actor: str = ADMIN,
        now: float | None = None,
    ) -> Certificate:
        """Host ``name``'s own key from the host CA, for ``hostnames`` (its name and addresses), at enrolment."""
        return self._host(
            _Entry("host", CARole.HOST, name, actor, f"host:{name}"), public_key, hostnames,
            key_id=f"jit-ssh host {name}", validity=validity, now=now,
        )  # fmt: skip

    def issue_broker_host(
        self, public_key: PublicKey, *, hostnames: Sequence[str], validity: timedelta, now: float | None = None
    ) -> Certificate:
        """The broker's own host key from the host CA, for the names clients reach it by."""
        return self._host(
            _Entry("broker", CARole.HOST, "broker", SYSTEM, "broker"), public_key, hostnames,
            key_id="jit-ssh broker", validity=validity, now=now,
        )  # fmt: skip

    def _host(
        self,
        entry: _Entry,
        public_key: PublicKey,
        hostnames: Sequence[str],
        *,
        key_id: str,
        validity: timedelta,
        now: float | None,
    ) -> Certificate:
        moment = self.clock() if now is None else now
        start = datetime.fromtimestamp(moment, UTC)

        def mint(signer: Signer, serial: int) -> Certificate:
            return mint_host_certificate(
                signer, public_key, hostnames=hostnames, key_id=key_id, serial=serial, valid_from=start,
                valid_until=start + validity, max_validity=validity, now=start,
            )  # fmt: skip

        return self._issue(entry, public_key, mint, now=moment, details={}, session=None)
