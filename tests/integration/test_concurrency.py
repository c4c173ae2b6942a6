"""Several brokers on one SQLite database, many clients at once: nothing is lost and no serial repeats.

Four ``jit-ssh serve`` processes share one data directory (as bastions behind a load balancer would share
a database); clients connect over SSH, spread across them, and run requests, approvals and certificate
fetches 50 and more at a time. Afterwards every table is reconciled with what the clients were told,
every serial ever handed out (user certificates and the brokers' own host certificates) appears exactly
once, and the audit chain still verifies.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from jit_ssh.ca import Certificate

from tests.integration.broker_fixture import (
    POLICY,
    BrokerProcess,
    BrokerSite,
    SshReply,
    create_site,
    running_brokers,
    ssh_calls,
)

BROKERS = 4
PER_USER = 25  # alice's prod requests and carol's db requests: 50 in all


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerSite, list[BrokerProcess]]]:
    site = create_site(tmp_path_factory.mktemp("cluster"))
    # 25 requests a user at once, all pending until approved: over the default cap of 10 (a test of its own).
    (site.root / "policy.toml").write_text(POLICY + "\n[limits]\npending_per_user = 100\n", encoding="utf-8")
    with running_brokers(site, BROKERS) as brokers:
        yield site, brokers


def run_all(
    site: BrokerSite, brokers: list[BrokerProcess], calls: list[tuple[str, str, dict[str, Any]]]
) -> list[SshReply]:
    """Run ``(user, verb, args)`` calls all at once, call i on broker i mod 4; no call may fail to connect."""
    spread = [
        (brokers[i % len(brokers)].port, user, verb, json.dumps(args).encode())
        for i, (user, verb, args) in enumerate(calls)
    ]
    replies = ssh_calls(site, spread)
    for reply in replies:
        assert isinstance(reply, SshReply), repr(reply)
    return [r for r in replies if isinstance(r, SshReply)]


def results(replies: list[SshReply]) -> list[Any]:
    out = []
    for reply in replies:
        body = reply.json()
        assert body["ok"] is True, body
        assert reply.exit_status == 0
        out.append(body["result"])
    return out


def test_many_clients_on_several_brokers_lose_nothing_and_never_repeat_a_serial(
    cluster: tuple[BrokerSite, list[BrokerProcess]],
) -> None:
    site, brokers = cluster
    start = site.counts()

    # 50 requests at once.
    prod = {"hosts": ["prod-web-3"], "login": "ubuntu", "duration": "1h", "reason": "load test"}
    db = {"hosts": ["db-1"], "login": "postgres", "duration": "1h", "reason": "load test"}
    created = results(run_all(site, brokers, [("alice", "request", prod), ("carol", "request", db)] * PER_USER))
    ids = [r["id"] for r in created]
    assert len(set(ids)) == 2 * PER_USER
    alice_ids = [r["id"] for r in created if r["requester"] == "alice"]
    carol_ids = [r["id"] for r in created if r["requester"] == "carol"]
    assert all(r["state"] == "pending" for r in created)

    # 80 approvals at once: bob on each of alice's (and a second, racing copy of 5 of them); dave and erin
    # both on each of carol's 2-of-3 requests, on different brokers.
    approvals = (
        [("bob", "approve", {"id": i}) for i in alice_ids]
        + [("bob", "approve", {"id": i}) for i in alice_ids[:5]]
        + [(who, "approve", {"id": i}) for i in carol_ids for who in ("dave", "erin")]
    )
    replies = run_all(site, brokers, approvals)
    won = [r for r in replies if r.exit_status == 0]
    lost = [r for r in replies if r.exit_status != 0]
    # The racing duplicates: exactly one of each pair counts; the other is refused, not lost or doubled.
    assert len(won) == len(approvals) - 5
    assert len(lost) == 5
    assert all(r.exit_status == 3 for r in lost)
    for reply in lost:
        assert re.fullmatch(r"bob has already approved request \d+|request \d+ is approved, not pending", reply.error)
        assert int(re.findall(r"\d+", reply.error)[0]) in alice_ids[:5]
    listed = ",".join(map(str, ids))
    in_ids = f"request_id IN ({listed})"
    per_request = Counter(rid for (rid,) in site.query("SELECT request_id FROM approvals WHERE " + in_ids))  # noqa: S608
    assert {i: per_request[i] for i in alice_ids} == dict.fromkeys(alice_ids, 1)
    assert {i: per_request[i] for i in carol_ids} == dict.fromkeys(carol_ids, 2)
    states = dict(site.query(f"SELECT id, state FROM requests WHERE id IN ({listed})"))  # noqa: S608
    assert set(states.values()) == {"approved"}

    # 100 certificate fetches at once: each requester twice per grant.
    fetches = [(user, "cert", {"id": i, "public_key": site_key(site, user)}) for user, grant in (
        *(("alice", i) for i in alice_ids), *(("carol", i) for i in carol_ids)
    ) for i in (grant, grant)]  # fmt: skip
    certs = results(run_all(site, brokers, fetches))
    serials = [c["serial"] for c in certs]
    assert len(serials) == len(set(serials)) == 4 * PER_USER
    for reply, (user, _, args) in zip(certs, fetches, strict=True):
        cert = Certificate.parse(reply["certificate"])
        assert cert.serial == reply["serial"]
        assert f"request={args['id']}" in cert.key_id.split()
        assert f"user={user}" in cert.key_id.split()

    # Approvals and certificate fetches mixed: 25 new requests approved while 25 grants are fetched again.
    fresh = [r["id"] for r in results(run_all(site, brokers, [("alice", "request", prod)] * PER_USER))]
    mixed = [("bob", "approve", {"id": i}) for i in fresh] + [
        ("carol", "cert", {"id": i, "public_key": site_key(site, "carol")}) for i in carol_ids
    ]
    mixed_results = results(run_all(site, brokers, mixed))
    serials += [r["serial"] for r in mixed_results[len(fresh) :]]
    assert len(serials) == len(set(serials)) == 5 * PER_USER

    # The tables agree with what the clients were told.
    end = site.counts()
    assert end["requests"] - start["requests"] == 3 * PER_USER
    assert end["approvals"] - start["approvals"] == PER_USER + 2 * PER_USER + PER_USER
    assert end["certificates"] - start["certificates"] == 5 * PER_USER
    stored = {int(s) for (s,) in site.query("SELECT serial FROM certificates")}
    assert set(serials) <= stored
    # Every serial ever handed out, the brokers' host certificates included, appears once: no gap, no repeat.
    handed_out = [
        json.loads(details)["serial"]
        for (details,) in site.query(
            "SELECT details_json FROM audit_events WHERE action IN ('certificate.issued', 'broker.host_certificate')"
        )
    ]
    (counter,) = site.query("SELECT value FROM counters WHERE name = 'serial'")[0]
    assert sorted(handed_out) == list(range(1, counter + 1))
    assert stored <= set(handed_out)
    actions = Counter(action for _, _, action, _ in site.audit_actions())
    assert actions["request.created"] == 3 * PER_USER
    assert actions["request.approved"] == 3 * PER_USER
    assert actions["certificate.issued"] == 5 * PER_USER
    assert actions["broker.host_certificate"] == BROKERS

    verified = site.admin("audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert all(b.alive for b in brokers)
    for broker in brokers:
        assert "database is locked" not in broker.log()
        assert broker.log().count("control user=") >= 50  # every broker took its share of the load


def site_key(site: BrokerSite, user: str) -> str:
    return (site.keys[user].parent / f"{site.keys[user].name}.pub").read_text().strip()
