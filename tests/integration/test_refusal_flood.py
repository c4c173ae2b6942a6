"""A flood of refused logins cannot flood the audit log, and no refusal event loses who tried it (issue 10,
item 11).

Against a real ``jit-ssh serve``: clients that never authenticate present hundreds of self-signed
certificates with huge key ids, principals and user names on the session face, and unenrolled keys under
huge user names on the control face. The audit log keeps a bounded number of refusal events, each whole
(the peer address and the reason always there, every field bounded); the rest are counted, exactly, in a
``refusals.suppressed`` summary written when the broker stops. Enrolled users are served throughout.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncssh
from jit_ssh.ca.audit import verify_chain
from jit_ssh.ca.store import Store

from tests.integration.broker_fixture import BrokerSite, create_site, running_brokers, ssh_call

#: The broker's limit for one source in one window (broker/server.py); every client here is 127.0.0.1.
PER_SOURCE = 30
MAX_EVENT = 2048  # the size of a refusal's details, far below the 4 KiB at which the audit log cuts
CONNECTIONS = 4
CERTS_PER_CONNECTION = 40
FOREIGN_KEYS = 30


def _self_signed(count: int) -> list[tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]]:
    """Certificates from a CA nobody trusts, as large as one SSH packet carries."""
    ca = asyncssh.generate_private_key("ssh-ed25519")
    key = asyncssh.generate_private_key("ssh-ed25519")
    principals = [f"ubuntu@{'p' * 190}{i:02d}" for i in range(20)]
    out = []
    for i in range(count):
        cert = ca.generate_user_certificate(
            key, f"{i:04d}" + "K" * 6000, principals=principals, valid_after=0, valid_before=2**63
        )
        out.append((key, cert))
    return out


async def _present_certificates(site: BrokerSite, port: int, username: str) -> None:
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, username=username, client_keys=_self_signed(CERTS_PER_CONNECTION),
            agent_path=None, known_hosts=str(site.known_hosts), config=None, connect_timeout=30,
        ):  # fmt: skip
            raise AssertionError("a self-signed certificate was accepted")
    except asyncssh.PermissionDenied:
        pass


async def _present_keys(site: BrokerSite, port: int, username: str) -> None:
    keys = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(FOREIGN_KEYS)]
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, username=username, client_keys=keys, agent_path=None,
            known_hosts=str(site.known_hosts), config=None, connect_timeout=30,
        ):  # fmt: skip
            raise AssertionError("an unenrolled key was accepted")
    except asyncssh.PermissionDenied:
        pass


def _events(site: BrokerSite, since: int) -> list[dict[str, Any]]:
    rows = site.query(
        "SELECT action, actor, subject, details_json FROM audit_events WHERE seq > ? ORDER BY seq", (since,)
    )
    return [
        {"action": a, "actor": actor, "subject": s, "details": json.loads(d), "size": len(d)} for a, actor, s, d in rows
    ]


def test_refused_certificates_and_keys_are_audited_at_a_bounded_rate_and_counted(tmp_path: Path) -> None:
    site = create_site(tmp_path / "site")
    since = 0
    with running_brokers(site) as (broker,):
        since = site.last_seq()  # after the broker's own start-up events
        started = time.monotonic()

        async def flood() -> None:
            huge_target = "ubuntu@" + "h" * 1000  # asyncssh takes user names up to 1 KiB
            await asyncio.gather(
                *(_present_certificates(site, broker.port, huge_target if i % 2 else "ubuntu@prod-web-3")
                  for i in range(CONNECTIONS)),
                _present_keys(site, broker.port, "mallory-" + "m" * 1000),
            )  # fmt: skip

        asyncio.run(flood())
        windows = math.floor((time.monotonic() - started) / timedelta(minutes=1).total_seconds()) + 1
        # Enrolled users are served all along.
        assert ssh_call(site, broker.port, "alice", "whoami", b"{}").json()["result"] == {"user": "alice"}
    events = _events(site, since)

    refusals = [e for e in events if e["action"] in ("session.refused", "auth.refused")]
    by_action = Counter(e["action"] for e in refusals)
    assert by_action["session.refused"] >= 1  # the first of each kind is always heard
    assert by_action["auth.refused"] >= 1
    assert len(refusals) <= PER_SOURCE * windows, by_action
    for event in refusals:
        details = event["details"]
        assert "truncated" not in details, event
        assert details["peer"].startswith("127.0.0.1:"), event
        assert details["reason"], event
        assert event["size"] <= MAX_EVENT, event
        assert len(event["subject"]) <= 320, event
    assert all("K" * 300 not in e["details"].get("key_id", "") for e in refusals)

    # Everything held back is counted in summaries: the first windows' as refusals go on, the last one's
    # when the broker stopped. Each certificate and key presented was refused exactly once.
    summaries = [e for e in events if e["action"] == "refusals.suppressed"]
    assert summaries
    held: Counter[str] = Counter()
    for summary in summaries:
        held.update(summary["details"]["actions"])
        assert summary["details"]["sources"].get("127.0.0.1") == summary["details"]["count"]
        assert summary["actor"] == "jit-ssh"
    assert by_action["session.refused"] + held["session.refused"] == CONNECTIONS * CERTS_PER_CONNECTION
    assert by_action["auth.refused"] + held["auth.refused"] == FOREIGN_KEYS
    assert sum(s["details"]["count"] for s in summaries) == sum(held.values())
    store = Store(site.db_path)
    try:
        assert verify_chain(store)[1] is None
    finally:
        store.dispose()
