"""The request workflow against a real SQLite store with a controllable clock.

First the lifecycle one case at a time (expiry, time-out, a scheduled start, revocation, who may
approve), then a stateful property test: hypothesis drives random sequences of create, approve (by
anyone, the requester included), deny, cancel, revoke, issue, sweep and clock jumps, and checks each
outcome against an independent model of the policy. No sequence may yield a certificate without the
required distinct approvals (or an explicit auto-approve or break-glass rule), and no certificate may
exceed the approved hosts, login, window or extensions (DESIGN.md, invariants 1 and 2).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from jit_ssh.ca import AccessDenied, Certificate, CertType, GrantExpired, InputError, JitSshError, KeySigner, PublicKey
from jit_ssh.ca.audit import verify_chain
from jit_ssh.ca.inventory import add_host, add_user
from jit_ssh.ca.policy import DEFAULT_PENDING_PER_USER, Policy
from jit_ssh.ca.store import Store
from jit_ssh.ca.workflow import MAX_REASON, Authority, RequestState

from tests.integration.broker_fixture import HOSTS, POLICY

START = 1_800_000_000.0
HOUR = 3600
#: Groups per user as the policy sees them: the policy's [groups] plus those given at enrollment.
GROUPS: dict[str, frozenset[str]] = {
    "alice": frozenset({"sre"}),
    "bob": frozenset({"sre", "dba"}),
    "carol": frozenset({"dev"}),
    "dave": frozenset({"dba", "oncall"}),
    "erin": frozenset({"dba"}),
}
STORE_GROUPS = {"erin": ["dba"], "mallory": ["sre"]}
ENABLED = tuple(GROUPS)
ACTORS = (*ENABLED, "mallory", "ghost")  # mallory is enrolled but disabled; ghost was never enrolled


def _key() -> PublicKey:
    raw = ed25519.Ed25519PrivateKey.generate().public_key()
    return PublicKey.parse(
        raw.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    )


KEYS = (_key(), _key())


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_authority(path: str | Path, signer: KeySigner, clock: Clock) -> Authority:
    store = Store(path)
    for name in (*ENABLED, "mallory"):
        add_user(store, name, keys=[], groups=STORE_GROUPS.get(name, []))
    for host, labels in HOSTS.items():
        add_host(store, host, address="127.0.0.1", labels=labels)
    authority = Authority(store, Policy.loads(POLICY), user_ca=signer, clock=clock)
    authority.disable_user("mallory")
    return authority


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def authority(tmp_path: Path, user_ca: KeySigner, clock: Clock) -> Iterator[Authority]:
    auth = make_authority(tmp_path / "jit-ssh.db", user_ca, clock)
    yield auth
    count, problem = verify_chain(auth.store)
    assert problem is None, problem
    assert count > 0
    auth.store.dispose()


def audit(authority: Authority, subject: str) -> list[tuple[str, str, dict[str, Any]]]:
    with authority.store.transaction() as session:
        rows = session.connection().exec_driver_sql(
            "SELECT actor, action, details_json FROM audit_events WHERE subject = ? ORDER BY seq", (subject,)
        )
        return [(actor, action, json.loads(details)) for actor, action, details in rows]


def certificates(authority: Authority, request_id: int) -> int:
    with authority.store.transaction() as session:
        result = session.connection().exec_driver_sql(
            "SELECT count(*) FROM certificates WHERE request_id = ?", (request_id,)
        )
        return int(result.scalar_one())


def prod_request(authority: Authority, **changes: Any) -> int:
    args: dict[str, Any] = {
        "requester": "alice", "hosts": ["prod-web-3"], "login": "ubuntu", "duration": timedelta(hours=1),
        "reason": "rotate logs", **changes,
    }  # fmt: skip
    return authority.create_request(**args).id


# -- the lifecycle, case by case --------------------------------------------------------------------------


def test_an_expired_grant_yields_no_certificate(authority: Authority, clock: Clock) -> None:
    rid = prod_request(authority, duration=timedelta(minutes=30))
    view = authority.approve(rid, approver="bob")
    assert view.expires_at == START + 1800
    clock.advance(1799)
    cert, _ = authority.issue_certificate(rid, user="alice", public_key=KEYS[0])
    assert cert.valid_before == START + 1800
    assert cert.valid_after == START + 1799 - 60  # a certificate fetched late covers only the rest of the grant
    clock.advance(1)
    with pytest.raises(GrantExpired, match=f"the grant of request {rid} has expired"):
        authority.issue_certificate(rid, user="alice", public_key=KEYS[0])
    assert certificates(authority, rid) == 1
    assert authority.sweep() == 1
    assert authority.get(rid).state is RequestState.EXPIRED
    with pytest.raises(GrantExpired):
        authority.issue_certificate(rid, user="alice", public_key=KEYS[0])
    with pytest.raises(AccessDenied, match="nothing to revoke"):
        authority.revoke(rid, actor="bob")
    actions = [action for _, action, _ in audit(authority, f"request:{rid}")]
    assert actions.count("certificate.issue.refused") == 2
    assert actions[-3:] == ["request.expired", "certificate.issue.refused", "request.revoke.refused"]


def test_a_pending_request_times_out(authority: Authority, clock: Clock) -> None:
    rid = prod_request(authority)
    clock.advance(HOUR)
    with pytest.raises(AccessDenied, match="is timed_out, not pending"):
        authority.approve(rid, approver="bob")
    with pytest.raises(AccessDenied, match="is timed_out, not approved"):
        authority.issue_certificate(rid, user="alice", public_key=KEYS[0])
    assert authority.sweep() == 1
    assert authority.get(rid).state is RequestState.TIMED_OUT
    assert certificates(authority, rid) == 0


def test_a_scheduled_grant_starts_at_its_start(authority: Authority, clock: Clock) -> None:
    start = datetime.fromtimestamp(START + 2 * HOUR, UTC)
    rid = prod_request(authority, start=start, duration=timedelta(hours=1))
    view = authority.approve(rid, approver="bob")
    assert (view.starts_at, view.expires_at) == (START + 2 * HOUR, START + 3 * HOUR)
    cert, _ = authority.issue_certificate(rid, user="alice", public_key=KEYS[0])
    assert (cert.valid_after, cert.valid_before) == (START + 2 * HOUR - 60, START + 3 * HOUR)
    with pytest.raises(InputError, match="more than 7 days ahead"):
        prod_request(authority, start=datetime.fromtimestamp(START + 8 * 24 * HOUR, UTC))
    with pytest.raises(InputError, match="needs a time zone"):
        prod_request(authority, start=datetime(2030, 1, 1))  # naive: the point of the test


def test_who_may_approve(authority: Authority) -> None:
    rid = prod_request(authority)
    for approver, message in (
        ("alice", "you cannot approve your own request"),
        ("carol", f"carol may not approve request {rid}: approvers are sre"),
        ("erin", "erin may not approve"),
        ("mallory", "user 'mallory' is disabled"),
        ("ghost", "unknown user 'ghost'"),
    ):
        with pytest.raises(AccessDenied, match=message):
            authority.approve(rid, approver=approver)
        with pytest.raises(AccessDenied):
            authority.deny(rid, approver=approver, reason="no")
    with pytest.raises(InputError, match="no request 999"):
        authority.approve(999, approver="bob")
    with pytest.raises(InputError, match="expected a request id"):
        authority.approve(2**63, approver="bob")
    assert authority.get(rid).state is RequestState.PENDING
    assert authority.get(rid).approvals == ()
    refusals = [(actor, action) for actor, action, _ in audit(authority, f"request:{rid}")]
    assert refusals.count(("alice", "request.approve.refused")) == 1
    assert refusals.count(("ghost", "request.deny.refused")) == 1


def test_the_audit_logs_own_actors_cannot_be_enrolled(authority: Authority) -> None:
    # An enrolled "admin" would pass Authority.revoke's check for the bastion's local operator.
    for name in ("admin", "policy", "jit-ssh"):
        with pytest.raises(InputError, match=f"user name '{name}' is reserved"):
            add_user(authority.store, name, keys=[KEYS[0]], groups=["sre"])
    rid = prod_request(authority)
    with pytest.raises(AccessDenied, match="unknown user 'admin'"):
        authority.approve(rid, approver="admin")


def test_two_of_three_counts_distinct_approvers_never_the_requester(authority: Authority) -> None:
    rid = authority.create_request(
        requester="bob", hosts=["db-1"], login="postgres", duration=timedelta(hours=1), reason="vacuum"
    ).id
    with pytest.raises(AccessDenied, match="you cannot approve your own request"):
        authority.approve(rid, approver="bob")  # bob is a dba, but it is his request
    assert authority.approve(rid, approver="dave").state is RequestState.PENDING
    with pytest.raises(AccessDenied, match=f"dave has already approved request {rid}"):
        authority.approve(rid, approver="dave")
    with pytest.raises(AccessDenied, match="is pending, not approved"):
        authority.issue_certificate(rid, user="bob", public_key=KEYS[0])
    view = authority.approve(rid, approver="erin")
    assert view.state is RequestState.APPROVED
    assert [a for a, _, _ in view.approvals] == ["dave", "erin"]
    cert, _ = authority.issue_certificate(rid, user="bob", public_key=KEYS[0])
    assert cert.principals == ("postgres@db-1",)
    assert set(cert.extensions) == {"permit-pty"}


def test_revoking_a_grant_revokes_its_certificates(authority: Authority) -> None:
    rid = prod_request(authority)
    authority.approve(rid, approver="bob")
    serials = [authority.issue_certificate(rid, user="alice", public_key=k)[0].serial for k in KEYS]
    with pytest.raises(AccessDenied, match=f"carol may not revoke request {rid}"):
        authority.revoke(rid, actor="carol")
    view, revoked = authority.revoke(rid, actor="alice", reason="done early")  # the requester may end it
    assert view.state is RequestState.REVOKED
    assert revoked == serials
    assert authority.revoked_serials(ca_role="user") == serials
    with pytest.raises(AccessDenied, match="is revoked, not approved"):
        authority.issue_certificate(rid, user="alice", public_key=KEYS[0])
    assert audit(authority, f"request:{rid}")[-2][1:] == ("request.revoked", {"from": "approved", "note": "done early",
                                                                              "serials": serials})  # fmt: skip


def test_auto_approve_and_break_glass_are_explicit_and_audited(authority: Authority) -> None:
    staged = authority.create_request(
        requester="carol", hosts=["staging-1"], login="ubuntu", duration=timedelta(hours=8), reason="try"
    )
    assert (staged.state, staged.auto_approved, staged.break_glass, staged.approvals_required) == (
        RequestState.APPROVED, True, False, 0,
    )  # fmt: skip
    urgent = authority.create_request(
        requester="dave", hosts=["prod-web-3", "prod-web-4"], login="ubuntu", duration=timedelta(hours=1),
        reason="outage", break_glass=True,
    )  # fmt: skip
    assert (urgent.state, urgent.break_glass, urgent.review_required) == (RequestState.APPROVED, True, True)
    for view in (staged, urgent):
        (actor, action, details) = audit(authority, f"request:{view.id}")[1]
        assert (actor, action) == ("policy", "request.approved")
        assert details["break_glass"] is view.break_glass
    # Break-glass needs a break-glass rule: staging has none, and an ordinary request of dave's matches none.
    with pytest.raises(AccessDenied, match="no break-glass rule"):
        authority.create_request(
            requester="dave", hosts=["staging-1"], login="ubuntu", duration=timedelta(hours=1), reason="x",
            break_glass=True,
        )  # fmt: skip
    with pytest.raises(AccessDenied, match="only break-glass rules"):
        prod_request(authority, requester="dave")
    # A mixed request is as strict as its strictest host: staging joined to prod waits for approval.
    mixed = authority.create_request(
        requester="alice", hosts=["staging-1", "prod-web-3"], login="ubuntu", duration=timedelta(hours=1), reason="x"
    )
    assert (mixed.state, mixed.auto_approved, mixed.approvals_required) == (RequestState.PENDING, False, 1)


def test_bad_input_changes_nothing(authority: Authority) -> None:
    rid = prod_request(authority)
    before = audit(authority, "request:new")
    for changes, error in (
        ({"reason": "x" * (MAX_REASON + 1)}, InputError),
        ({"reason": " \t "}, InputError),
        ({"reason": "a\x00b"}, InputError),
        ({"ticket": "t" * 65}, InputError),
        ({"login": "Ubuntu"}, InputError),
        ({"hosts": ["prod_web"]}, InputError),
        ({"hosts": ["nope-1"]}, InputError),
        ({"hosts": []}, InputError),
        ({"selector": {"env": "moon"}, "hosts": []}, InputError),
        ({"duration": timedelta(0)}, InputError),
        ({"duration": timedelta(hours=5)}, AccessDenied),
        ({"extensions": ["permit-agent-forwarding"]}, AccessDenied),
        ({"requester": "ghost"}, AccessDenied),
        ({"requester": "mallory"}, AccessDenied),
    ):
        with pytest.raises(error):
            prod_request(authority, **changes)
    assert authority.list_requests(viewer=None, include_final=True)[0].id == rid
    assert len(authority.list_requests(viewer=None, include_final=True)) == 1
    # Only policy refusals are audited (as refusals); malformed input is refused before any transaction.
    refused = audit(authority, "request:new")[len(before) :]
    assert [action for _, action, _ in refused] == ["request.create.refused"] * 4


# -- the property test ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Terms:
    """What the model says a request is granted on."""

    required: int
    approver_groups: frozenset[str]
    extensions: frozenset[str]
    at_once: bool
    auto: bool


@dataclass
class ModelRequest:
    id: int
    requester: str
    hosts: tuple[str, ...]
    login: str
    duration: int
    terms: Terms
    created: float
    start: float | None
    state: str = "pending"
    approvals: set[str] = field(default_factory=set)
    starts: float | None = None
    expires: float | None = None
    serials: list[int] = field(default_factory=list)


_RULES: dict[str, dict[str, Any]] = {
    "prod": {"logins": {"ubuntu", "deploy"}, "max": 4 * HOUR, "approvals": 1, "approvers": {"sre"},
             "extensions": {"permit-pty"}, "auto": False},
    "db": {"logins": {"postgres", "ubuntu"}, "max": 2 * HOUR, "approvals": 2, "approvers": {"dba"},
           "extensions": {"permit-pty", "permit-port-forwarding"}, "auto": False},
    "staging": {"logins": {"ubuntu"}, "max": 8 * HOUR, "approvals": 0, "approvers": set(),
                "extensions": {"permit-pty"}, "auto": True},
    "break-glass": {"logins": {"ubuntu"}, "max": HOUR, "approvals": 0, "approvers": set(),
                    "extensions": {"permit-pty"}, "auto": False},
}  # fmt: skip


def _rule_for(host: str, groups: frozenset[str], break_glass: bool) -> str | None:
    """The model of the test policy, written from its text, independently of Policy.evaluate."""
    prod = host in ("prod-web-3", "prod-web-4")  # prod-odd lacks the env=prod label every prod rule needs
    if break_glass:
        return "break-glass" if prod and "oncall" in groups else None
    if prod or host == "db-1":
        return ("prod" if prod else "db") if groups & {"sre", "dev"} else None
    return "staging" if host == "staging-1" else None


def model_decision(
    requester: str, hosts: list[str], login: str, duration: int, extensions: set[str], break_glass: bool
) -> Terms | None:
    if requester not in GROUPS or not hosts or not set(hosts) <= set(HOSTS):
        return None
    rules = [_rule_for(h, GROUPS[requester], break_glass) for h in hosts]
    if None in rules:
        return None
    chosen = [_RULES[r] for r in rules if r is not None]
    extra = extensions - {"permit-pty"}
    if any(login not in r["logins"] or duration > r["max"] or not extra <= r["extensions"] for r in chosen):
        return None
    approving = [r for r in chosen if r["approvals"]]
    approvers = frozenset.intersection(*(frozenset(r["approvers"]) for r in approving)) if approving else frozenset()
    if approving and not approvers:
        return None
    auto = all(r["auto"] for r in chosen)
    return Terms(
        required=max(r["approvals"] for r in chosen),
        approver_groups=approvers,
        extensions=frozenset(extra | {"permit-pty"}),
        at_once=auto or break_glass,
        auto=auto and not break_glass,
    )


Plausible = tuple[str, tuple[str, ...], str, int, frozenset[str], bool]
#: (requester, hosts, login, minutes, extensions, break_glass, reason, start offset in seconds)
RequestSpec = tuple[str, list[str], str, int, set[str], bool, str, int | None]

#: (requester, hosts, login, minutes, extensions, break_glass) that the policy grants.
PLAUSIBLE: list[Plausible] = [
    ("alice", ("prod-web-3",), "ubuntu", 60, frozenset(), False),
    ("carol", ("prod-web-4",), "deploy", 240, frozenset({"permit-pty"}), False),
    ("alice", ("prod-web-3", "prod-web-4"), "deploy", 30, frozenset(), False),
    ("carol", ("db-1",), "postgres", 60, frozenset({"permit-port-forwarding"}), False),
    ("bob", ("db-1",), "postgres", 120, frozenset(), False),
    ("bob", ("db-1",), "ubuntu", 1, frozenset({"permit-port-forwarding"}), False),
    ("carol", ("staging-1",), "ubuntu", 480, frozenset(), False),
    ("erin", ("staging-1",), "ubuntu", 30, frozenset(), False),
    ("alice", ("staging-1", "prod-web-3"), "ubuntu", 60, frozenset(), False),
    ("dave", ("prod-web-4",), "ubuntu", 30, frozenset(), True),
    ("dave", ("prod-web-3", "prod-web-4"), "ubuntu", 60, frozenset(), True),
]

#: Any request at all: mostly refused, by the policy or by input validation.
ANY_REQUESTS = st.tuples(
    st.sampled_from(ACTORS),
    st.lists(st.sampled_from([*HOSTS, "nope-1"]), max_size=3, unique=True),
    st.sampled_from(["ubuntu", "ubuntu", "deploy", "postgres", "root", "Root"]),
    st.sampled_from([1, 30, 60, 120, 240, 480, 540]),
    st.sets(st.sampled_from(["permit-pty", "permit-port-forwarding", "permit-agent-forwarding"])),
    st.booleans(),
    st.sampled_from(["fix the disk", "fix the disk", "", "r" * (MAX_REASON + 1)]),
    st.sampled_from([None, None, 0, 600, 8 * 24 * HOUR]),
)


def _plausible(spec: Plausible, extra_host: str | None, start: int | None) -> RequestSpec:
    requester, hosts, login, minutes, extensions, break_glass = spec
    more = [extra_host] if extra_host is not None and extra_host not in hosts else []
    return requester, [*hosts, *more], login, minutes, set(extensions), break_glass, "on call", start


#: Requests the policy mostly grants, sometimes with one host too many.
PLAUSIBLE_REQUESTS = st.builds(
    _plausible,
    st.sampled_from(PLAUSIBLE),
    st.sampled_from([None, None, None, None, *HOSTS]),
    st.sampled_from([None, None, 600]),
)


class WorkflowMachine(RuleBasedStateMachine):
    """Random operations on an Authority, each checked against the model; invariants checked on the store."""

    signer: ClassVar[KeySigner | None] = None

    def __init__(self) -> None:
        super().__init__()
        assert self.signer is not None
        self.tmp = tempfile.TemporaryDirectory(prefix="jit-ssh-workflow-")
        self.clock = Clock()
        self.authority = make_authority(Path(self.tmp.name) / "jit-ssh.db", self.signer, self.clock)
        self.requests: list[ModelRequest] = []
        self.serials: set[int] = set()

    def teardown(self) -> None:
        try:
            _, problem = verify_chain(self.authority.store)
            assert problem is None, problem
        finally:
            self.authority.store.dispose()
            self.tmp.cleanup()

    # -- the model ---------------------------------------------------------------------------------
    def _lapse(self, req: ModelRequest) -> str:
        now = self.clock()
        if req.state == "pending" and now >= req.created + HOUR:
            req.state = "timed_out"
        elif req.state == "approved" and req.expires is not None and now >= req.expires:
            req.state = "expired"
        return req.state

    def _pick(self, index: int) -> tuple[int, ModelRequest | None]:
        """Index 0 (or no request yet): an id that does not exist; 1: the latest request, 2: the one before..."""
        if index == 0 or not self.requests:
            return 10_000 + index, None
        req = self.requests[-1 - (index - 1) % len(self.requests)]
        return req.id, req

    def _is_approver(self, user: str, req: ModelRequest) -> bool:
        return user in GROUPS and user != req.requester and bool(GROUPS[user] & req.terms.approver_groups)

    def _grant(self, req: ModelRequest) -> None:
        now = self.clock()
        req.state = "approved"
        req.starts = max(now, req.start or now)
        req.expires = req.starts + req.duration

    def _who(self, who: str, req: ModelRequest | None) -> str:
        """``who`` itself, or for "requester" and "approver" someone in that role for ``req``."""
        if who not in ("requester", "approver"):
            return who
        if req is None:
            return "bob"
        if who == "requester":
            return req.requester
        eligible = [u for u in ENABLED if self._is_approver(u, req) and u not in req.approvals]
        return eligible[0] if eligible else "carol"

    # -- operations ----------------------------------------------------------------------------------
    # Few rules, each with many cases, so that approvals and certificates get their share of the steps.
    @initialize(plausible=st.lists(st.sampled_from(PLAUSIBLE), min_size=1, max_size=3))
    def some_requests(self, plausible: list[Plausible]) -> None:
        for requester, hosts, login, minutes, extensions, break_glass in plausible:
            self.create((requester, list(hosts), login, minutes, set(extensions), break_glass, "on call", None))

    @rule(spec=st.one_of(PLAUSIBLE_REQUESTS, ANY_REQUESTS))
    def create(self, spec: RequestSpec) -> None:
        requester, hosts, login, minutes, extensions, break_glass, reason, start = spec
        now = self.clock()
        terms = model_decision(requester, hosts, login, minutes * 60, extensions, break_glass)
        valid_input = login != "Root" and bool(reason) and len(reason) <= MAX_REASON and start != 8 * 24 * HOUR
        waiting = sum(req.requester == requester and self._lapse(req) == "pending" for req in self.requests)
        capped = terms is not None and not terms.at_once and waiting >= DEFAULT_PENDING_PER_USER
        try:
            view = self.authority.create_request(
                requester=requester, hosts=hosts, login=login, duration=timedelta(minutes=minutes), reason=reason,
                start=None if start is None else datetime.fromtimestamp(now + start, UTC),
                extensions=extensions, break_glass=break_glass,
            )  # fmt: skip
        except JitSshError:
            assert terms is None or not valid_input or capped, spec
            event("create: refused (pending cap)" if valid_input and capped else "create: refused")
            return
        assert terms is not None, f"granted a request the policy refuses: {spec}"
        assert not capped, f"a pending request beyond the cap: {spec}"
        assert valid_input
        event(f"create: {'granted at once' if view.state is RequestState.APPROVED else 'pending'}")
        assert set(view.hosts) == set(hosts)
        assert set(view.principals) == {f"{login}@{h}" for h in hosts}
        assert view.approvals_required == terms.required
        assert frozenset(view.approver_groups) == terms.approver_groups
        assert frozenset(view.extensions) == terms.extensions
        assert (view.auto_approved, view.break_glass, view.review_required) == (terms.auto, break_glass, break_glass)
        req = ModelRequest(
            id=view.id, requester=requester, hosts=view.hosts, login=login, duration=minutes * 60, terms=terms,
            created=now, start=None if start is None else now + start,
        )  # fmt: skip
        if terms.at_once:
            self._grant(req)
        assert view.state.value == req.state
        assert (view.starts_at, view.expires_at) == (req.starts, req.expires)
        self.requests.append(req)

    @rule(index=st.integers(0, 4), who=st.sampled_from(["approver", "approver", "approver", "requester", *ACTORS]))
    def approve(self, index: int, who: str) -> None:
        rid, req = self._pick(index)
        approver = self._who(who, req)
        allowed = (
            req is not None
            and self._lapse(req) == "pending"
            and self._is_approver(approver, req)
            and approver not in req.approvals
        )
        try:
            view = self.authority.approve(rid, approver=approver)
        except JitSshError:
            assert not allowed, (rid, approver)
            event("approve: refused")
            return
        assert allowed, f"{approver} approved request {rid} but may not"
        assert req is not None
        event("approve: accepted")
        req.approvals.add(approver)
        if len(req.approvals) >= req.terms.required:
            self._grant(req)
        assert view.state.value == req.state
        assert {a for a, _, _ in view.approvals} == req.approvals

    @rule(
        kind=st.sampled_from(["deny", "cancel", "revoke"]),
        index=st.integers(0, 4),
        who=st.sampled_from(["approver", "requester", *ACTORS, "admin"]),
    )
    def decide(self, kind: str, index: int, who: str) -> None:
        """Deny (approvers), cancel (the requester) or revoke (the requester, approvers, the local admin)."""
        rid, req = self._pick(index)
        actor = self._who(who, req)
        state = self._lapse(req) if req is not None else None
        may_approve = req is not None and self._is_approver(actor, req)
        if kind == "deny":
            allowed = state == "pending" and may_approve
        elif kind == "cancel":
            allowed = state == "pending" and req is not None and actor == req.requester and actor in GROUPS
        else:
            allowed = state in ("pending", "approved") and (
                actor == "admin" or may_approve or (req is not None and actor == req.requester and actor in GROUPS)
            )
        try:
            if kind == "deny":
                self.authority.deny(rid, approver=actor, reason="no")
            elif kind == "cancel":
                self.authority.cancel(rid, actor=actor)
            else:
                _, serials = self.authority.revoke(rid, actor=actor)
        except JitSshError:
            assert not allowed, (kind, rid, actor, state)
            return
        assert allowed, f"{actor} could {kind} request {rid} ({state})"
        assert req is not None
        event(f"{kind}: accepted")
        if kind == "revoke":
            assert sorted(serials) == sorted(req.serials)
        req.state = {"deny": "denied", "cancel": "cancelled", "revoke": "revoked"}[kind]

    @rule(index=st.integers(0, 4), who=st.sampled_from(["requester"] * 4 + [*ACTORS]), key=st.sampled_from(KEYS))
    def issue(self, index: int, who: str, key: PublicKey) -> None:
        rid, req = self._pick(index)
        user = self._who(who, req)
        allowed = req is not None and user in GROUPS and user == req.requester and self._lapse(req) == "approved"
        try:
            cert, _ = self.authority.issue_certificate(rid, user=user, public_key=key)
        except JitSshError:
            assert not allowed, (rid, user, req)
            event("issue: refused")
            return
        assert allowed, f"certificate for request {rid} issued to {user}: {req}"
        assert req is not None
        event(f"issue: {'at once' if req.terms.at_once else f'after {len(req.approvals)} approvals'}")
        self.check_certificate(cert, req, key)
        req.serials.append(cert.serial)
        self.serials.add(cert.serial)

    def check_certificate(self, cert: Certificate, req: ModelRequest, key: PublicKey) -> None:
        now = self.clock()
        assert req.starts is not None
        assert req.expires is not None
        assert cert.serial not in self.serials, f"serial {cert.serial} issued twice"
        assert cert.cert_type is CertType.USER
        assert cert.subject == key
        assert self.signer is not None
        assert cert.signature_key == self.signer.public_key
        assert cert.signature_valid()
        assert set(cert.principals) == {f"{req.login}@{h}" for h in req.hosts}
        assert len(cert.principals) == len(req.hosts)
        assert cert.key_id == f"jit-ssh request={req.id} user={req.requester} serial={cert.serial}"
        assert frozenset(cert.extensions) == req.terms.extensions
        assert cert.critical_options == {}
        start = max(now, req.starts)  # never before the grant, nor (beyond 60 s of skew) before it was minted
        assert math.floor(start) - 60 <= cert.valid_after <= start - 59, (cert.valid_after, start)
        assert req.expires - 1 <= cert.valid_before <= req.expires
        assert cert.valid_before - cert.valid_after <= req.duration + 61

    @rule(
        how=st.sampled_from(["wait", "wait", "deadline", "sweep"]),
        seconds=st.sampled_from([1, 59, 600, 600, 1800, HOUR, 3 * HOUR]),
        index=st.integers(1, 4),
        which=st.sampled_from(["expires", "timeout", "start"]),
        delta=st.sampled_from([-1, 0]),
    )
    def time_passes(self, how: str, seconds: int, index: int, which: str, delta: int) -> None:
        """Wait; or jump to just before or exactly onto a deadline (where off-by-one errors live); or sweep."""
        if how == "wait":
            self.clock.advance(seconds)
        elif how == "deadline":
            _, req = self._pick(index)
            deadline = None if req is None else {"expires": req.expires, "timeout": req.created + HOUR,
                                                 "start": req.start}[which]  # fmt: skip
            if deadline is not None and deadline + delta > self.clock():
                self.clock.now = deadline + delta
        else:
            self.authority.sweep()
            with self.authority.store.transaction() as session:
                stored = dict(session.connection().exec_driver_sql("SELECT id, state FROM requests").all())
            assert stored == {req.id: self._lapse(req) for req in self.requests}

    # -- invariants on what the store holds ----------------------------------------------------------------
    @invariant()
    def every_certificate_has_its_approvals(self) -> None:
        with self.authority.store.transaction() as session:
            conn = session.connection()
            certs = conn.exec_driver_sql("SELECT serial, request_id, principals_json, revoked FROM certificates").all()
            approvals = conn.exec_driver_sql("SELECT request_id, approver FROM approvals").all()
            requests = conn.exec_driver_sql("SELECT count(*) FROM requests").scalar_one()
        assert requests == len(self.requests)
        assert {serial for serial, *_ in certs} == self.serials
        by_id = {req.id: req for req in self.requests}
        for serial, request_id, principals_json, revoked in certs:
            req = by_id[request_id]
            approvers = {a for rid, a in approvals if rid == request_id}
            counted = {a for a in approvers if self._is_approver(a, req)}
            assert approvers == counted, f"request {request_id} has approvals from {approvers - counted}"
            if not req.terms.at_once:
                assert len(counted) >= req.terms.required >= 1, f"serial {serial} without its approvals"
            assert set(json.loads(principals_json)) == {f"{req.login}@{h}" for h in req.hosts}
            assert bool(revoked) == (req.state == "revoked"), (serial, req.state)


@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
def test_no_sequence_of_operations_breaks_the_grant_invariants(user_ca: KeySigner) -> None:
    WorkflowMachine.signer = user_ca
    try:
        run_state_machine_as_test(
            WorkflowMachine,
            settings=settings(
                max_examples=100,
                stateful_step_count=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        WorkflowMachine.signer = None
