"""What one user's requests can do to everyone else's (issue 10, items 12 and 9), on a real SQLite store.

Listings query what they show (pending requests the viewer may approve, the viewer's own unfinished
ones, and with ``--all`` a bounded newest-first list of finished ones), so a flood of requests by one
user hides nothing of anyone else's; the policy caps each user's pending requests (``[limits]
pending_per_user``, 10 by default), refused and audited like any other refusal; and disabling a user
revokes their grants and pending requests in the same transaction that marks them disabled.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from jit_ssh.ca import AccessDenied, InputError
from jit_ssh.ca.policy import Policy
from jit_ssh.ca.store import AccessRequest, IssuedCertificate, User, dumps
from jit_ssh.ca.workflow import LIST_LIMIT, Authority, RequestState, RequestView
from sqlmodel import select

from tests.integration import test_workflow
from tests.integration.broker_fixture import POLICY
from tests.integration.test_workflow import HOUR, KEYS, Clock, audit, prod_request

# The workflow tests' fixtures: a store with the test site's users and hosts, and its clock.
authority, clock = test_workflow.authority, test_workflow.clock

FLOOD_PENDING = 300
FLOOD_FINAL = 205  # with the pending ones: the 505 of the issue


def flood(authority: Authority, requester: str, count: int, state: RequestState) -> list[int]:
    """``count`` requests of ``requester`` for db-1 (approved by dba only), written straight into the store.

    The workflow now refuses a user's 11th pending request, so the issue's flood (505 requests of one user)
    cannot be filed through it any more; these rows stand for one filed before the cap, or by many users.
    They are the rows create_request writes, without their audit events, and newer than everything before.
    """
    now = authority.clock()
    rows = [
        AccessRequest(
            requester=requester,
            hosts_json=dumps(["db-1"]),
            login="postgres",
            duration_s=HOUR,
            reason="flood",
            state=state.value,
            rules_json=dumps(["db"]),
            approvals_required=2,
            approver_groups_json=dumps(["dba"]),
            max_duration_s=2 * HOUR,
            created_at=now,
            decided_at=None if state is RequestState.PENDING else now,
        )
        for _ in range(count)
    ]
    with authority.store.transaction() as session:
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows if row.id is not None]


def ids(views: list[RequestView]) -> list[int]:
    return [view.id for view in views]


def check_a_flood_hides_nothing(authority: Authority) -> None:
    """alice's pending request and grant, then carol's flood: every listing still shows what it should."""
    pending = prod_request(authority)
    grant = prod_request(authority)
    authority.approve(grant, approver="bob")
    flooded = flood(authority, "carol", FLOOD_PENDING, RequestState.PENDING)
    finished = flood(authority, "carol", FLOOD_FINAL, RequestState.CANCELLED)

    # bob (sre and dba) may approve alice's request and every one of carol's: all pending, newest first.
    waiting = ids(authority.list_requests(viewer="bob", pending=True))
    assert waiting == sorted([pending, *flooded], reverse=True)
    # alice approves prod (sre) but not db (dba): nothing waits for her, her own request least of all.
    assert authority.list_requests(viewer="alice", pending=True) == []
    # Her status (what `jit-ssh HOST` looks for her grant in) and her requests: her own, unfinished.
    assert ids(authority.list_requests(viewer="alice", mine=True, include_final=True)) == [grant, pending]
    assert ids(authority.list_requests(viewer="alice")) == [grant, pending]
    # carol sees her own unfinished ones; with --all, the newest LIST_LIMIT finished ones as well.
    assert ids(authority.list_requests(viewer="carol", mine=True)) == sorted(flooded, reverse=True)
    everything = ids(authority.list_requests(viewer="carol", mine=True, include_final=True))
    assert everything == sorted([*flooded, *finished[-LIST_LIMIT:]], reverse=True)
    # The local admin sees every unfinished request and a bounded list of finished ones.
    admin = ids(authority.list_requests(viewer=None, include_final=True))
    assert admin == sorted([pending, grant, *flooded, *finished[-LIST_LIMIT:]], reverse=True)


def test_a_flood_of_one_users_requests_hides_nobody_elses(authority: Authority) -> None:
    check_a_flood_hides_nothing(authority)


def test_listings_lapse_what_has_run_out(authority: Authority, clock: Clock) -> None:
    pending = prod_request(authority)
    grant = prod_request(authority, duration=timedelta(hours=2))
    authority.approve(grant, approver="bob")
    clock.advance(HOUR)  # the pending one times out; the grant runs on
    assert ids(authority.list_requests(viewer="bob", pending=True)) == []
    assert ids(authority.list_requests(viewer="alice", mine=True)) == [grant]
    assert ids(authority.list_requests(viewer="alice", mine=True, include_final=True)) == [grant, pending]
    assert authority.get(pending).state is RequestState.TIMED_OUT


# -- the per-user cap on pending requests -------------------------------------------------------------


def test_a_user_has_at_most_ten_pending_requests(authority: Authority, clock: Clock) -> None:
    assert authority.policy.pending_per_user == 10
    waiting = [prod_request(authority) for _ in range(10)]
    with pytest.raises(AccessDenied) as refused:
        prod_request(authority)
    message = refused.value.message
    assert message == (
        "alice has 10 pending requests and the policy allows at most 10 (limits.pending_per_user); "
        "cancel one or wait for a decision"
    )
    actor, action, details = audit(authority, "request:new")[-1]
    assert (actor, action, details) == ("alice", "request.create.refused", {"reason": message})
    # Nobody else is held back by alice's pile, and what is granted at once never waits: neither counts.
    assert authority.get(prod_request(authority, requester="carol")).state is RequestState.PENDING
    staging = prod_request(authority, hosts=["staging-1"])
    assert authority.get(staging).state is RequestState.APPROVED
    # A decision makes room for one more; so does time running out.
    authority.approve(waiting[0], approver="bob")
    prod_request(authority)
    with pytest.raises(AccessDenied, match="alice has 10 pending requests"):
        prod_request(authority)
    clock.advance(HOUR)
    prod_request(authority)


def test_the_cap_comes_from_the_policy(authority: Authority) -> None:
    authority.policy = Policy.loads(POLICY + "\n[limits]\npending_per_user = 2\n")
    prod_request(authority)
    prod_request(authority)
    with pytest.raises(AccessDenied, match=r"alice has 2 pending requests and the policy allows at most 2 "):
        prod_request(authority)


# -- disabling a user ends their access ---------------------------------------------------------------


def test_disabling_a_user_revokes_their_grants_in_the_same_transaction(authority: Authority, clock: Clock) -> None:
    grant = prod_request(authority, requester="carol")
    authority.approve(grant, approver="bob")
    serials = [authority.issue_certificate(grant, user="carol", public_key=key)[0].serial for key in KEYS]
    pending = prod_request(authority, requester="carol")
    lapsed = prod_request(authority, requester="carol", duration=timedelta(minutes=1))
    authority.approve(lapsed, approver="bob")
    others = prod_request(authority)
    clock.advance(120)

    revoked = authority.disable_user("carol")

    assert sorted((view.id, view.state, tuple(s)) for view, s in revoked) == [
        (grant, RequestState.REVOKED, tuple(serials)),
        (pending, RequestState.REVOKED, ()),
    ]
    assert authority.get(lapsed).state is RequestState.EXPIRED  # it had run out: expired, not revoked
    assert authority.get(others).state is RequestState.PENDING
    assert authority.revoked_serials(ca_role="user") == serials
    with authority.store.transaction() as session:
        user = session.get(User, "carol")
        assert user is not None
        assert user.disabled
        assert all(c.revoked for c in session.exec(select(IssuedCertificate)))
    assert audit(authority, "user:carol")[-1] == (
        "admin", "user.disabled", {"requests": [grant, pending], "serials": serials},
    )  # fmt: skip
    assert audit(authority, f"request:{grant}")[-1] == (
        "admin", "request.revoked", {"from": "approved", "note": "user carol disabled", "serials": serials},
    )  # fmt: skip
    with pytest.raises(AccessDenied, match="user 'carol' is disabled"):
        prod_request(authority, requester="carol")
    with pytest.raises(InputError, match="no user 'ghost'"):
        authority.disable_user("ghost")
