"""The issuer (ca/issuer.py) against a real SQLite store: every certificate the system signs, of every kind,
gets exactly one serial, one issued-certificate row and one audit event, in one transaction; a failure
leaves none of them. :func:`check_every_certificate_is_accounted_for` is the whole-store form of that
promise, which the end-to-end demo test applies after the demo (issue 11).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from jit_ssh.ca import CADirectory, CARole, Certificate, CertificateError, CertType, JitSshError, KeySigner, PublicKey
from jit_ssh.ca.audit import verify_chain
from jit_ssh.ca.issuer import ACTIONS, Issuer, OnwardTerms
from jit_ssh.ca.policy import Policy
from jit_ssh.ca.store import AccessRequest, AuditEvent, Counter, IssuedCertificate, Store, User, loads
from jit_ssh.cli.bastion.enroll import build_bundle
from sqlmodel import col, select

from tests.integration.broker_fixture import POLICY
from tests.integration.test_workflow import KEYS

NOW = datetime.now(UTC).replace(microsecond=0)
REQUEST = 1
PRINCIPALS = ("ubuntu@prod-web-3",)


def kind_of(row: IssuedCertificate) -> str:
    """Which kind of certificate a row is (the key of :data:`ACTIONS`)."""
    if row.ca_role == CARole.HOST:
        return "broker" if row.subject == "broker" else "host"
    return "onward" if row.ca_role == CARole.ACCESS else "user"


def check_every_certificate_is_accounted_for(store: Store) -> list[IssuedCertificate]:
    """Every serial ever handed out belongs to one issued-certificate row, and every row has exactly one
    audit event of its kind naming its serial; the audit chain is intact. Returns the rows, by serial."""
    with store.read() as session:
        rows = list(session.exec(select(IssuedCertificate).order_by(col(IssuedCertificate.serial))))
        events = list(session.exec(select(AuditEvent).where(col(AuditEvent.action).in_(set(ACTIONS.values())))))
        counter = session.get(Counter, "serial")
    assert rows, "no certificate at all"
    assert counter is not None
    assert [row.serial for row in rows] == list(range(1, counter.value + 1)), "a serial used without its row"
    by_serial: dict[int, list[AuditEvent]] = {}
    for event in events:
        by_serial.setdefault(loads(event.details_json)["serial"], []).append(event)
    assert sorted(by_serial) == [row.serial for row in rows], "an issuance event without its row, or the reverse"
    for row in rows:
        (event,) = by_serial[row.serial]
        details = loads(event.details_json)
        assert event.action == ACTIONS[kind_of(row)], (row, event)
        assert details["key"] == row.key_fingerprint
        assert (details["valid_after"], details["valid_before"]) == (row.valid_after, row.valid_before)
        assert row.subject, row
        assert (row.request_id is None) == (row.ca_role == CARole.HOST), row
    assert verify_chain(store) == (len(list(_all_events(store))), None)
    return rows


def _all_events(store: Store) -> list[AuditEvent]:
    with store.read() as session:
        return list(session.exec(select(AuditEvent)))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "jit-ssh.db")
    with store.transaction() as session:
        session.add(User(name="alice", created_at=0.0))
        session.add(
            AccessRequest(
                id=REQUEST, requester="alice", hosts_json='["prod-web-3"]', login="ubuntu", duration_s=3600,
                reason="test", state="approved", max_duration_s=3600, created_at=0.0,
            )
        )  # fmt: skip
    return store


@pytest.fixture
def issuer(store: Store, user_ca: KeySigner, access_ca: KeySigner, host_ca: KeySigner) -> Issuer:
    return Issuer(store, user_ca=user_ca, access_ca=access_ca, host_ca=host_ca)


def _user(issuer: Issuer, **changes: object) -> Certificate:
    arguments: dict[str, object] = {
        "request_id": REQUEST, "user": "alice", "principals": PRINCIPALS, "valid_from": NOW,
        "valid_until": NOW + timedelta(hours=1), "max_validity": timedelta(hours=1), "extensions": ("permit-pty",),
        "now": NOW.timestamp(),
    }  # fmt: skip
    arguments.update(changes)
    return issuer.issue_user(KEYS[0], **arguments)  # type: ignore[arg-type]


def _terms(**changes: object) -> OnwardTerms:
    arguments: dict[str, object] = {
        "principals": PRINCIPALS, "key_id": "jit-ssh session=s-1 request=1 user=alice", "valid_from": NOW,
        "valid_until": NOW + timedelta(minutes=30), "max_validity": timedelta(minutes=30),
        "extensions": ("permit-pty",), "source_address": ("127.0.0.1",), "backdate": timedelta(seconds=60),
    }  # fmt: skip
    arguments.update(changes)
    return OnwardTerms(**arguments)  # type: ignore[arg-type]


def _onward(issuer: Issuer, terms: OnwardTerms | None = None) -> Certificate:
    return issuer.issue_onward(KEYS[1], terms or _terms(), request_id=REQUEST, user="alice", session_id="s-1", now=NOW)


def _host(issuer: Issuer, name: str = "prod-web-3") -> Certificate:
    # At NOW, as the others: NOW is taken when the module is imported, maybe minutes before the test runs.
    return issuer.issue_host(
        KEYS[1], name=name, hostnames=[name, "10.0.0.3"], validity=timedelta(days=30), now=NOW.timestamp()
    )


def _broker(issuer: Issuer) -> Certificate:
    return issuer.issue_broker_host(KEYS[0], hostnames=["bastion"], validity=timedelta(days=30), now=NOW.timestamp())


def _counts(store: Store) -> tuple[int, int, int]:
    with store.read() as session:
        rows = len(list(session.exec(select(IssuedCertificate))))
        events = len(list(session.exec(select(AuditEvent))))
        counter = session.get(Counter, "serial")
    return rows, events, counter.value if counter is not None else 0


def test_each_kind_writes_one_row_and_one_event_with_increasing_serials(
    issuer: Issuer, store: Store, user_ca: KeySigner, access_ca: KeySigner, host_ca: KeySigner
) -> None:
    issued = []
    for kind, issue in (("user", _user), ("onward", _onward), ("host", _host), ("broker", _broker)):
        before = _counts(store)
        cert = issue(issuer)
        assert _counts(store) == (before[0] + 1, before[1] + 1, before[2] + 1), kind
        issued.append((kind, cert))
    assert [cert.serial for _, cert in issued] == [1, 2, 3, 4]
    rows = check_every_certificate_is_accounted_for(store)
    assert [kind_of(row) for row in rows] == ["user", "onward", "host", "broker"]
    user, onward, host, broker = rows
    assert (user.request_id, user.subject, user.session_id) == (REQUEST, "alice", None)
    assert user.key_id == "jit-ssh request=1 user=alice serial=1" == issued[0][1].key_id
    assert (onward.request_id, onward.subject, onward.session_id) == (REQUEST, "alice", "s-1")
    assert (host.request_id, host.subject, host.key_id) == (None, "prod-web-3", "jit-ssh host prod-web-3")
    assert loads(host.principals_json) == ["prod-web-3", "10.0.0.3"]
    assert (broker.request_id, broker.subject, broker.key_id) == (None, "broker", "jit-ssh broker")
    # Each is signed by its own CA, as the kind it is, for the key it was asked for.
    trust = {"user": (user_ca, CertType.USER), "onward": (access_ca, CertType.USER),
             "host": (host_ca, CertType.HOST), "broker": (host_ca, CertType.HOST)}  # fmt: skip
    for (kind, cert), row in zip(issued, rows, strict=True):
        ca, cert_type = trust[kind]
        cert.check(trusted_ca=ca.public_key, cert_type=cert_type, now=NOW + timedelta(minutes=1))
        assert cert.subject.fingerprint() == row.key_fingerprint
        assert list(cert.principals) == loads(row.principals_json)
        assert (cert.valid_after, cert.valid_before) == (row.valid_after, row.valid_before)
    with store.read() as session:
        events = {e.action: e for e in session.exec(select(AuditEvent))}
    assert (events["certificate.issued"].actor, events["certificate.issued"].subject) == ("alice", "request:1")
    assert (events["certificate.onward"].actor, events["certificate.onward"].subject) == ("alice", "session:s-1")
    assert loads(events["certificate.onward"].details_json)["request"] == REQUEST
    assert (events["host.certificate"].actor, events["host.certificate"].subject) == ("admin", "host:prod-web-3")
    assert loads(events["host.certificate"].details_json)["names"] == ["prod-web-3", "10.0.0.3"]
    assert (events["broker.host_certificate"].actor, events["broker.host_certificate"].subject) == ("jit-ssh", "broker")


@pytest.mark.parametrize(
    ("issue", "error"),
    [
        (lambda i: _user(i, valid_until=NOW - timedelta(hours=1)), CertificateError),  # the window ends first
        (lambda i: _user(i, principals=("not a principal",)), CertificateError),
        (lambda i: _onward(i, _terms(source_address=("bastion.example",))), CertificateError),
        (lambda i: _onward(i, _terms(max_validity=timedelta(minutes=1))), CertificateError),  # over the maximum
        (lambda i: _host(i, name="bad host"), CertificateError),
        (lambda i: _user(i, request_id=99), JitSshError),  # the row names no request: the database refuses
    ],
)
def test_a_failure_leaves_no_row_no_event_and_no_used_serial(issuer: Issuer, store: Store, issue, error) -> None:  # type: ignore[no-untyped-def]
    _host(issuer)
    before = _counts(store)
    with pytest.raises(error):
        issue(issuer)
    assert _counts(store) == before
    assert _user(issuer).serial == before[2] + 1  # the failed attempt's serial is handed out again
    check_every_certificate_is_accounted_for(store)


def test_in_the_callers_transaction_a_rollback_takes_the_certificate_with_it(issuer: Issuer, store: Store) -> None:
    before = _counts(store)

    def issue_then_fail() -> None:
        with store.transaction() as session:
            _user(issuer, session=session)
            assert _counts(store)[0] == before[0]  # nothing is seen outside the transaction before it commits
            raise RuntimeError("the caller's check failed after issuing")

    with pytest.raises(RuntimeError, match="after issuing"):
        issue_then_fail()
    assert _counts(store) == before
    with store.transaction() as session:
        cert = _user(issuer, session=session)
    assert cert.serial == 1
    check_every_certificate_is_accounted_for(store)


def test_a_missing_signer_is_an_error_before_anything_is_written(store: Store, host_ca: KeySigner) -> None:
    issuer = Issuer(store, host_ca=host_ca)
    assert issuer.can_sign(CARole.HOST)
    assert not issuer.can_sign(CARole.USER)
    for issue in (_user, _onward):
        with pytest.raises(JitSshError, match=r"no (user|access) CA signer"):
            issue(issuer)
    assert _counts(store) == (0, 0, 0)
    _host(issuer)
    assert _counts(store) == (1, 1, 1)


def test_concurrent_issuers_hand_out_unique_serials_each_with_its_row_and_event(
    store: Store, user_ca: KeySigner, access_ca: KeySigner, host_ca: KeySigner
) -> None:
    errors: list[BaseException] = []

    def work(index: int) -> None:
        # One issuer per thread, as several brokers would each have their own.
        own = Issuer(store, user_ca=user_ca, access_ca=access_ca, host_ca=host_ca)
        try:
            for step in range(4):
                (_user, _onward, _host, _broker)[(index + step) % 4](own)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    rows = check_every_certificate_is_accounted_for(store)
    assert len(rows) == 16
    assert sorted(kind_of(row) for row in rows).count("onward") == 4


def test_enrolling_a_host_issues_its_certificate_through_the_issuer(
    store: Store, session_ca: CADirectory, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY, encoding="utf-8")
    key: PublicKey = KEYS[1]
    bundle = build_bundle(
        name="prod-app-7", address="10.0.0.7", store=store, policy=Policy.load(policy), ca_dir=session_ca.path,
        labels={}, host_key=key, validity=timedelta(days=90),
    )  # fmt: skip
    cert = Certificate.parse(bundle.files["ssh_host_ed25519_key-cert.pub"].decode())
    (row,) = check_every_certificate_is_accounted_for(store)
    assert (row.serial, row.subject, row.ca_role, row.key_id) == (cert.serial, "prod-app-7", "host", cert.key_id)
    assert loads(row.principals_json) == ["prod-app-7", "10.0.0.7"]
    # A bundle without a host key signs nothing.
    build_bundle(
        name="prod-app-8", address="10.0.0.8", store=store, policy=Policy.load(policy), ca_dir=session_ca.path,
        labels={}, host_key=None,
    )  # fmt: skip
    assert len(check_every_certificate_is_accounted_for(store)) == 1


def test_the_whole_store_check_notices_a_serial_or_a_row_left_unaccounted(issuer: Issuer, store: Store) -> None:
    _host(issuer)
    _user(issuer)
    check_every_certificate_is_accounted_for(store)
    with store.transaction() as session:  # a serial taken and nothing written (the broker's host key once)
        serial = store.next_serial(session)
    with pytest.raises(AssertionError, match="a serial used without its row"):
        check_every_certificate_is_accounted_for(store)
    with store.transaction() as session:  # its row, but no event (onward certificates once)
        session.add(
            IssuedCertificate(
                serial=serial, request_id=REQUEST, ca_role="access", subject="alice", key_id="k",
                key_fingerprint=KEYS[1].fingerprint(), principals_json="[]", valid_after=0, valid_before=1,
                created_at=0.0,
            )
        )  # fmt: skip
    with pytest.raises(AssertionError, match="an issuance event without its row, or the reverse"):
        check_every_certificate_is_accounted_for(store)
