"""The grant check of invariant 4, pure: certificates minted by ca itself, store rows as values, no server.

Every refusal reason has its test, and beside it the nearest input that passes. Property tests then throw
arbitrary certificates, rows and times at the check: whatever comes out never reaches beyond the certificate
and the request, and the broker's onward certificate never beyond the grant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from jit_ssh.ca import (
    ALL_USER_EXTENSIONS,
    AccessDenied,
    Certificate,
    CertificateError,
    PublicKey,
)
from jit_ssh.ca.certs import mint_host_certificate, mint_user_certificate
from jit_ssh.ca.grant import (
    Grant,
    GrantFacts,
    HostFacts,
    IssuedFacts,
    OnwardTerms,
    RequestFacts,
    check_grant,
    check_presented,
    onward_terms,
    recheck,
)
from jit_ssh.ca.signer import KeySigner, KeyType, generate_private_key
from jit_ssh.ca.workflow import RequestState

USER_CA = KeySigner(generate_private_key(KeyType.ED25519))
ACCESS_CA = KeySigner(generate_private_key(KeyType.ED25519))
OTHER_CA = KeySigner(generate_private_key(KeyType.ED25519))
SUBJECT = KeySigner(generate_private_key(KeyType.ED25519)).public_key
NOW = 1_900_000_000.0
SERIAL = 7
KEY_ID = "jit-ssh request=42 user=alice"
USERNAME = "ubuntu@prod-web-3"
PRINCIPALS = ("ubuntu@prod-web-3", "ubuntu@prod-db-1", "deploy@prod-web-3")
BASTION = ("192.0.2.10",)


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def mint(
    *,
    signer: KeySigner = USER_CA,
    principals: tuple[str, ...] = PRINCIPALS,
    serial: int = SERIAL,
    key_id: str = KEY_ID,
    start: float = NOW - 60,
    end: float = NOW + 3600,
) -> Certificate:
    return mint_user_certificate(
        signer, SUBJECT, principals=principals, key_id=key_id, serial=serial, valid_from=_at(start),
        valid_until=_at(end), max_validity=timedelta(days=7), backdate=timedelta(0), now=_at(start),
    )  # fmt: skip


CERT = mint()
ISSUED = IssuedFacts(request_id=42, ca_role="user", key_id=KEY_ID, revoked=False)
REQUEST = RequestFacts(
    id=42, requester="alice", state="approved", hosts=("prod-web-3", "prod-db-1"), login="ubuntu",
    starts_at=NOW - 60, expires_at=NOW + 3600, extensions=("permit-pty",),
)  # fmt: skip
HOST = HostFacts(name="prod-web-3", address="10.0.0.3", port=2202, host_key=None)
FACTS = GrantFacts(issued=ISSUED, request=REQUEST, owner_disabled=False, host=HOST)


def decide(
    cert: Certificate = CERT,
    username: str = USERNAME,
    facts: GrantFacts = FACTS,
    now: float = NOW,
    user_ca: PublicKey = USER_CA.public_key,
) -> Grant:
    """Both steps, as the broker takes them."""
    return check_grant(check_presented(cert, username, user_ca=user_ca, now=now), facts, now=now)


def issued(base: GrantFacts = FACTS, **changes: Any) -> GrantFacts:
    """``base`` with its issued-certificate row changed."""
    assert base.issued is not None
    return dataclasses.replace(base, issued=dataclasses.replace(base.issued, **changes))


def request(base: GrantFacts = FACTS, **changes: Any) -> GrantFacts:
    """``base`` with its request row changed."""
    assert base.request is not None
    return dataclasses.replace(base, request=dataclasses.replace(base.request, **changes))


def test_a_certificate_for_an_active_grant_stands_for_it() -> None:
    grant = decide()
    assert grant == Grant(
        request_id=42, user="alice", host="prod-web-3", address="10.0.0.3", port=2202, host_key=None,
        login="ubuntu", starts_at=NOW - 60, expires_at=NOW + 3600, extensions=("permit-pty",), serial=SERIAL,
        key_id=KEY_ID,
    )  # fmt: skip
    # Another host the certificate and the request both name: the grant is for the host asked for.
    other = decide(
        username="ubuntu@prod-db-1", facts=dataclasses.replace(FACTS, host=HostFacts("prod-db-1", "h", 22, "k"))
    )
    assert (other.host, other.address, other.host_key) == ("prod-db-1", "h", "k")


# -- one test per refusal, each with the nearest input that passes ------------------------------------
#: (name, what is refused, what passes beside it, the reason told): each a dict of decide()'s arguments.
REFUSALS: list[tuple[str, dict[str, object], dict[str, object], str]] = [
    ("bad host name", {"username": "ubuntu@prod_web_3"}, {}, "expected a host name"),
    ("bad login", {"username": "Ubuntu@prod-web-3"}, {}, "expected a login name"),
    ("no host at all", {"username": "ubuntu"}, {}, "expected a host name"),
    ("untrusted CA", {"cert": mint(signer=OTHER_CA)}, {"cert": mint(signer=USER_CA)}, "not by the trusted CA"),
    ("access CA is not the user CA", {"user_ca": ACCESS_CA.public_key}, {}, "not by the trusted CA"),
    ("bad signature", {"cert": dataclasses.replace(CERT, signature=mint(serial=8).signature)}, {},
     "has an invalid signature"),
    ("not valid yet", {"now": float(CERT.valid_after - 1)}, {"now": float(CERT.valid_after)}, "is not valid yet"),
    ("certificate expired", {"cert": mint(end=NOW), "now": NOW}, {"cert": mint(end=NOW + 1), "now": NOW},
     "has expired"),
    ("principal not in the certificate", {"username": "root@prod-web-3"}, {"username": "deploy@prod-web-3",
     "facts": request(login="deploy")}, "is not valid for 'root@prod-web-3'"),
    ("serial never issued", {"facts": dataclasses.replace(FACTS, issued=None)}, {},
     f"certificate serial {SERIAL} was not issued by this broker"),
    ("issued by the access CA", {"facts": issued(ca_role="access")}, {"facts": issued(ca_role="user")},
     "was not issued by this broker"),
    ("a host certificate's row, which names no request",
     {"facts": issued(ca_role="host", request_id=None)}, {"facts": issued(ca_role="user", request_id=42)},
     "was not issued by this broker"),
    ("another key id under the serial", {"facts": issued(key_id=KEY_ID + "x")}, {"facts": issued(key_id=KEY_ID)},
     "was not issued by this broker"),
    ("user disabled", {"facts": dataclasses.replace(FACTS, owner_disabled=True)}, {}, "user alice is disabled"),
    ("user gone", {"facts": dataclasses.replace(FACTS, owner_disabled=None)}, {}, "user alice is disabled"),
    ("certificate revoked", {"facts": issued(revoked=True)}, {"facts": issued(revoked=False)},
     f"certificate serial {SERIAL} is revoked"),
    ("request gone", {"facts": dataclasses.replace(FACTS, request=None)}, {}, "request 42 is missing, not approved"),
    ("another request's row", {"facts": request(id=43)}, {"facts": request(id=42)},
     "request 42 is missing, not approved"),
    ("request pending", {"facts": request(state="pending")}, {"facts": request(state="approved")},
     "request 42 is pending, not approved"),
    ("request revoked", {"facts": request(state="revoked")}, {}, "request 42 is revoked, not approved"),
    ("request expired", {"facts": request(state="expired")}, {}, "request 42 is expired, not approved"),
    ("no window", {"facts": request(starts_at=None)}, {}, "the grant of request 42 has not started"),
    ("no end", {"facts": request(expires_at=None)}, {}, "the grant of request 42 has not started"),
    ("window not started", {"facts": request(starts_at=NOW + 1)}, {"facts": request(starts_at=NOW)},
     "the grant of request 42 has not started"),
    ("window ended", {"facts": request(expires_at=NOW)}, {"facts": request(expires_at=NOW + 0.001)},
     "the grant of request 42 has expired"),
    ("host not requested", {"username": "ubuntu@prod-db-1", "facts": request(hosts=("prod-web-3",))},
     {"username": "ubuntu@prod-web-3", "facts": request(hosts=("prod-web-3",))},
     "request 42 does not cover ubuntu@prod-db-1"),
    ("login not requested", {"username": "deploy@prod-web-3"}, {"username": "ubuntu@prod-web-3"},
     "request 42 does not cover deploy@prod-web-3"),
    ("host left the inventory", {"facts": dataclasses.replace(FACTS, host=None)}, {},
     "host prod-web-3 is no longer in the inventory"),
    ("another host's row", {"facts": dataclasses.replace(FACTS, host=dataclasses.replace(HOST, name="prod-db-1"))},
     {}, "host prod-web-3 is no longer in the inventory"),
]  # fmt: skip


@pytest.mark.parametrize(("refused", "passing", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_each_refusal_says_why_and_its_neighbour_passes(
    refused: dict[str, object], passing: dict[str, object], reason: str
) -> None:
    with pytest.raises(AccessDenied) as caught:
        decide(**refused)  # type: ignore[arg-type]
    assert reason in caught.value.message
    grant = decide(**passing)  # type: ignore[arg-type]
    assert grant.serial == SERIAL
    assert grant.request_id == 42


def test_a_host_certificate_is_refused_and_a_user_certificate_passes() -> None:
    host_cert = mint_host_certificate(
        USER_CA, SUBJECT, hostnames=["prod-web-3"], key_id=KEY_ID, serial=SERIAL, valid_from=_at(NOW - 60),
        valid_until=_at(NOW + 3600), max_validity=timedelta(days=1), now=_at(NOW),
    )  # fmt: skip
    with pytest.raises(AccessDenied, match="is a host certificate"):
        decide(cert=host_cert)
    assert decide(cert=CERT).login == "ubuntu"


def test_the_first_fault_in_order_is_the_one_told() -> None:
    """Faults are fixed one at a time, in the order of the checks: each fix reveals the next reason."""
    facts = GrantFacts(
        issued=dataclasses.replace(ISSUED, key_id="other", revoked=True),
        request=dataclasses.replace(REQUEST, state="pending", starts_at=NOW + 10, hosts=("prod-db-1",)),
        owner_disabled=True,
        host=None,
    )
    fixes: list[tuple[str, Callable[[GrantFacts], GrantFacts]]] = [
        ("was not issued by this broker", lambda f: issued(f, key_id=KEY_ID)),
        ("user alice is disabled", lambda f: dataclasses.replace(f, owner_disabled=False)),
        ("is revoked", lambda f: issued(f, revoked=False)),
        ("is pending, not approved", lambda f: request(f, state="approved")),
        ("has not started", lambda f: request(f, starts_at=NOW)),
        ("does not cover", lambda f: request(f, hosts=("prod-web-3",))),
        ("no longer in the inventory", lambda f: dataclasses.replace(f, host=HOST)),
    ]  # fmt: skip
    for reason, fix in fixes:
        with pytest.raises(AccessDenied) as caught:
            decide(facts=facts)
        assert reason in caught.value.message
        facts = fix(facts)
    assert decide(facts=facts).host == "prod-web-3"
    # Expiry comes after the start and before the coverage.
    late = request(hosts=("prod-db-1",), expires_at=NOW - 1)
    with pytest.raises(AccessDenied, match="has expired"):
        decide(facts=late)


# -- the time-of-use recheck --------------------------------------------------------------------------
GRANT = decide()


@pytest.mark.parametrize(
    ("facts", "now", "reason"),
    [
        (dataclasses.replace(FACTS, owner_disabled=True), NOW, "user alice is disabled"),
        (dataclasses.replace(FACTS, owner_disabled=None), NOW, "user alice is disabled"),
        (request(state="revoked"), NOW, "request 42 is no longer approved"),
        (request(state="expired"), NOW, "request 42 is no longer approved"),
        (dataclasses.replace(FACTS, request=None, owner_disabled=None), NOW, "request 42 is no longer approved"),
        (request(id=41), NOW, "request 42 is no longer approved"),
        (issued(revoked=True), NOW, "request 42 is no longer approved"),
        (dataclasses.replace(FACTS, issued=None), NOW, "request 42 is no longer approved"),
        (FACTS, NOW + 3600, "the grant of request 42 has expired"),
    ],
    ids=["disabled", "user gone", "revoked", "expired state", "request gone", "another request", "serial revoked",
         "serial gone", "window ended"],
)  # fmt: skip
def test_the_recheck_refuses_what_no_longer_stands(facts: GrantFacts, now: float, reason: str) -> None:
    with pytest.raises(AccessDenied) as caught:
        recheck(GRANT, facts, now=now)
    assert caught.value.message == reason
    recheck(GRANT, FACTS, now=min(now, NOW + 3599.999))  # the same grant, still standing, passes


def test_the_recheck_tells_a_disabled_user_before_a_revoked_request() -> None:
    facts = dataclasses.replace(request(state="revoked"), owner_disabled=True, issued=None)
    with pytest.raises(AccessDenied, match=r"^user alice is disabled$"):
        recheck(GRANT, facts, now=NOW + 7200)
    with pytest.raises(AccessDenied, match=r"^request 42 is no longer approved$"):
        recheck(GRANT, dataclasses.replace(facts, owner_disabled=False), now=NOW + 7200)


# -- the onward certificate ---------------------------------------------------------------------------
def test_onward_terms_name_the_session_and_end_with_the_grant() -> None:
    now = _at(NOW)
    terms = onward_terms(GRANT, session_id="20260101T000000-abcd", source_addresses=BASTION, now=now)
    assert terms.principals == ("ubuntu@prod-web-3",)
    assert terms.key_id == "jit-ssh session=20260101T000000-abcd request=42 user=alice"
    assert (terms.valid_from, terms.valid_until) == (now, _at(NOW + 3600))
    assert terms.max_validity == timedelta(hours=1)
    assert terms.extensions == ("permit-pty",)
    assert terms.source_address == BASTION
    assert terms.backdate == timedelta(seconds=60)
    cert = _mint_onward(terms, now)
    assert cert.principals == ("ubuntu@prod-web-3",)
    assert cert.critical_options == {"source-address": "192.0.2.10/32"}
    assert set(cert.extensions) == {"permit-pty"}
    assert (cert.valid_after, cert.valid_before) == (NOW - 60, NOW + 3600)
    # Negative control: a grant that has ended gets no onward certificate, even backdated.
    ended = onward_terms(GRANT, session_id="s", source_addresses=BASTION, now=_at(NOW + 3600))
    with pytest.raises(CertificateError, match="ends in the past"):
        _mint_onward(ended, _at(NOW + 3600))


def _mint_onward(terms: OnwardTerms, now: datetime) -> Certificate:
    return mint_user_certificate(
        ACCESS_CA, SUBJECT, principals=terms.principals, key_id=terms.key_id, serial=99,
        valid_from=terms.valid_from, valid_until=terms.valid_until, max_validity=terms.max_validity,
        extensions=terms.extensions, source_address=terms.source_address, backdate=terms.backdate, now=now,
    )  # fmt: skip


# -- properties -----------------------------------------------------------------------------------------
HOSTS = ("prod-web-3", "prod-db-1", "stage-1")
LOGINS = ("ubuntu", "deploy")
PAIRS = tuple(f"{login}@{host}" for login in LOGINS for host in HOSTS)
EXTENSIONS = sorted(ALL_USER_EXTENSIONS)


def _mostly(draw: st.DrawFn, coherent: Any, arbitrary: st.SearchStrategy[Any]) -> Any:
    """The value that agrees with the rest nine times in ten, else anything ``arbitrary`` gives: each field
    goes wrong on its own, and now and then none does, so that grants come out as well as refusals."""
    return draw(arbitrary) if draw(st.integers(0, 9)) == 0 else coherent


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Certificate, str, GrantFacts, float]:
    """A certificate, the user name it is presented for, the store's rows and the time."""
    now = draw(st.floats(NOW - 7200, NOW + 7200, allow_nan=False))
    username = _mostly(draw, draw(st.sampled_from(PAIRS)), st.text(max_size=20))
    login, _, host = username.partition("@")
    others = draw(st.lists(st.sampled_from(PAIRS), max_size=3))
    principals = _mostly(draw, (username, *others), st.lists(st.sampled_from(PAIRS), min_size=1, max_size=4))
    start = _mostly(draw, int(now) - draw(st.integers(0, 3600)), st.integers(int(NOW) - 7200, int(NOW) + 7200))
    cert = mint(
        signer=_mostly(draw, USER_CA, st.sampled_from((OTHER_CA, ACCESS_CA))),
        principals=tuple(dict.fromkeys(p for p in principals if "@" in p)) or PAIRS[:1],
        serial=draw(st.integers(1, 3)),
        key_id=draw(st.sampled_from(["k1", "k2"])),
        start=start,
        end=start + max(1, _mostly(draw, int(now) - start + draw(st.integers(1, 3600)), st.integers(1, 10800))),
    )
    rid = draw(st.integers(1, 3))
    window_start = _mostly(draw, now - draw(st.floats(0, 3600)), st.none() | st.floats(NOW - 7200, NOW + 7200))
    window_end = _mostly(draw, now + draw(st.floats(0.001, 3600)), st.none() | st.floats(NOW - 7200, NOW + 14400))
    ids = st.integers(1, 3)
    issued_row = IssuedFacts(
        request_id=_mostly(draw, rid, ids),
        ca_role=_mostly(draw, "user", st.sampled_from(["access", "host", "User"])),
        key_id=_mostly(draw, cert.key_id, st.sampled_from(["k1", "k2", ""])),
        revoked=_mostly(draw, False, st.booleans()),
    )
    request_row = RequestFacts(
        id=_mostly(draw, rid, ids),
        requester="alice",
        state=_mostly(draw, RequestState.APPROVED.value, st.sampled_from([s.value for s in RequestState])),
        hosts=_mostly(draw, (host, *HOSTS[: draw(st.integers(0, 2))]), st.lists(st.sampled_from(HOSTS)).map(tuple)),
        login=_mostly(draw, login, st.sampled_from(LOGINS)),
        starts_at=window_start,
        expires_at=window_end,
        extensions=tuple(draw(st.lists(st.sampled_from(EXTENSIONS), max_size=3, unique=True))),
    )
    host_row = HostFacts(name=_mostly(draw, host, st.sampled_from(HOSTS)), address="10.0.0.1", port=22, host_key=None)
    facts = GrantFacts(
        issued=_mostly(draw, issued_row, st.none()),
        request=_mostly(draw, request_row, st.none()),
        owner_disabled=_mostly(draw, False, st.sampled_from([True, None])),
        host=_mostly(draw, host_row, st.none()),
    )
    return cert, username, facts, now


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_no_input_yields_a_grant_beyond_the_certificate_and_the_request(
    scenario: tuple[Certificate, str, GrantFacts, float],
) -> None:
    cert, username, facts, now = scenario
    try:
        grant = decide(cert, username, facts, now)
    except AccessDenied as exc:
        refusal: str | None = exc.message
    else:
        refusal = None
    if refusal is not None:  # a refusal is one line that says something, and nothing else comes out
        event("refused")
        assert refusal
        assert "\n" not in refusal
        return
    event("granted")
    request, issued_row, host = facts.request, facts.issued, facts.host
    assert request is not None
    assert issued_row is not None
    assert host is not None
    # The certificate: the user CA's, valid now, naming this login on this host; its serial and key id.
    assert cert.signature_key == USER_CA.public_key
    assert cert.valid_after <= now < cert.valid_before
    assert f"{grant.login}@{grant.host}" in cert.principals
    assert f"{grant.login}@{grant.host}" == username
    assert (grant.serial, grant.key_id) == (cert.serial, cert.key_id)
    # The rows: ours, of this certificate, unrevoked; the request approved and covering host and login.
    assert (issued_row.ca_role, issued_row.key_id, issued_row.revoked) == ("user", cert.key_id, False)
    assert grant.request_id == request.id == issued_row.request_id
    assert facts.owner_disabled is False
    assert request.state == RequestState.APPROVED
    assert grant.host in request.hosts
    assert grant.login == request.login
    assert grant.user == request.requester
    assert grant.extensions == request.extensions
    assert (grant.address, grant.port) == (host.address, host.port)
    assert host.name == grant.host
    # The window: the request's own, and now inside it.
    assert request.starts_at is not None
    assert request.expires_at is not None
    assert request.starts_at <= grant.starts_at <= now < grant.expires_at <= request.expires_at
    # And the grant stands at its time of use, until it ends.
    recheck(grant, facts, now=now)
    with pytest.raises(AccessDenied):
        recheck(grant, facts, now=grant.expires_at)


@settings(max_examples=100, deadline=None)
@given(
    starts=st.floats(NOW - 7200, NOW, allow_nan=False),
    length=st.floats(0.5, 7 * 86400 - 1, allow_nan=False),
    used=st.floats(0, 1, allow_nan=False),
    extensions=st.lists(st.sampled_from(EXTENSIONS), max_size=5, unique=True).map(tuple),
    sources=st.lists(st.sampled_from(["192.0.2.10", "10.1.0.0/16", "2001:db8::1"]), min_size=1, unique=True),
)
# Found by hypothesis: a start with less than a microsecond past the second (the datetime drops it).
@example(starts=1899992800.0000002, length=1.0, used=0.0, extensions=(), sources=["192.0.2.10"])
def test_onward_terms_never_outlast_the_grant_nor_add_extensions(
    starts: float, length: float, used: float, extensions: tuple[str, ...], sources: list[str]
) -> None:
    now = starts + used * (length + 60)  # a session opens while the grant runs, or just after it ended
    grant = dataclasses.replace(GRANT, starts_at=starts, expires_at=starts + length, extensions=extensions)
    moment = _at(now)
    terms = onward_terms(grant, session_id="s-1", source_addresses=tuple(sources), now=moment)
    assert terms.principals == (f"{grant.login}@{grant.host}",)
    assert terms.valid_until <= _at(grant.expires_at)
    assert terms.valid_from == moment
    assert set(terms.extensions) <= set(grant.extensions)
    assert terms.backdate <= timedelta(seconds=60)
    assert terms.source_address == tuple(sources)
    try:
        cert: Certificate | None = _mint_onward(terms, moment)
    except CertificateError:
        cert = None
    if cert is None:  # only a grant (nearly) over may go without one
        assert grant.expires_at - now < 1
        event("no certificate: the grant is over")
        return
    event("minted")
    assert cert.valid_before <= grant.expires_at
    # Against the moment minted at: a datetime holds microseconds, so 1899992800.0000002 becomes ...800.0.
    assert cert.valid_after >= moment.timestamp() - 60
    assert set(cert.extensions) <= set(grant.extensions)
    assert cert.principals == terms.principals
    assert cert.key_id == "jit-ssh session=s-1 request=42 user=alice"
