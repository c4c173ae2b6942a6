"""Request, approve, fetch a certificate: two people on different keys, the real CLI, a running broker.

The bastion is set up as an admin would (``jit-ssh ca init``, ``user add``, ``host add``), the broker runs
as ``jit-ssh serve``, and each engineer drives the ``jit-ssh`` command with their own client settings.
Every success is followed by the refusals beside it: the requester approving, a non-approver approving,
one approver counted twice, and denied, cancelled, expired and revoked requests.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from jit_ssh.ca import CADirectory, CARole, Certificate, PublicKey

from tests.integration.broker_fixture import (
    BrokerProcess,
    BrokerSite,
    add_key,
    create_site,
    openssh_call,
    running_brokers,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bastion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerSite, BrokerProcess]]:
    site = create_site(tmp_path_factory.mktemp("bastion"), via_cli=True)
    with running_brokers(site) as (broker,):
        # alice sets up her client with `jit-ssh config set`; the others get the same file written directly.
        for user in site.keys:
            site.configure_client(user, broker.port, via_cli=user == "alice")
        yield site, broker


@pytest.fixture
def site(bastion: tuple[BrokerSite, BrokerProcess]) -> BrokerSite:
    return bastion[0]


def ok(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return json.loads(done.stdout) if done.stdout.lstrip().startswith(("{", "[")) else done.stdout


def refused(done: subprocess.CompletedProcess[str], match: str, *, code: int = 3) -> str:
    """A refusal: exit ``code``, nothing on stdout, one line on stderr naming the reason, no traceback."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    line = done.stderr.strip()
    assert "\n" not in line, done.stderr
    assert "Traceback" not in done.stderr
    assert line.startswith("error: "), line
    assert re.search(match, line), line
    return line


def request(site: BrokerSite, user: str, *args: str) -> dict[str, Any]:
    reply = ok(site.as_user(user, "request", *args, "--reason", "disk full on /var", "--no-wait", "--json"))
    assert isinstance(reply, dict)
    return reply


def status(site: BrokerSite, user: str, request_id: int) -> dict[str, Any]:
    reply = ok(site.as_user(user, "status", str(request_id), "--json"))
    assert isinstance(reply, dict)
    return reply


def keygen_listing(path: Path) -> dict[str, Any]:
    """``ssh-keygen -L``, read into a dict: the independent check of what we minted."""
    text = subprocess.run(["ssh-keygen", "-L", "-f", str(path)], capture_output=True, text=True, check=True).stdout
    fields: dict[str, Any] = {}
    section = ""
    for line in text.splitlines()[1:]:
        stripped = line.strip()
        if line.startswith("        ") and not line.startswith("                "):
            key, _, value = stripped.partition(":")
            section = key
            fields[key] = value.strip() if value.strip() else []
        elif stripped:
            fields[section].append(stripped)
    return fields


def check_certificate(site: BrokerSite, path: Path, *, user: str, grant: dict[str, Any]) -> Certificate:
    """The certificate matches the grant exactly, read by ssh-keygen and by our parser."""
    cert = Certificate.parse(path.read_text())
    listing = keygen_listing(path)
    ca = CADirectory(site.ca_dir)
    user_ca = ca.public_key(CARole.USER)
    assert listing["Type"].endswith("user certificate")
    assert listing["Signing CA"].split()[1] == user_ca.fingerprint()
    # Signed by the user CA only: neither of the keys that hosts or clients trust.
    assert user_ca.fingerprint() not in {
        ca.public_key(CARole.ACCESS).fingerprint(),
        ca.public_key(CARole.HOST).fingerprint(),
    }
    own_key = PublicKey.parse(Path(f"{site.keys[user]}.pub").read_text())
    assert listing["Public key"].split()[1] == own_key.fingerprint()
    assert cert.subject == own_key
    key_id = listing["Key ID"].strip('"')
    assert key_id == cert.key_id
    assert f"request={grant['id']}" in key_id.split()
    assert f"user={user}" in key_id.split()
    assert int(listing["Serial"]) == cert.serial
    assert sorted(listing["Principals"]) == sorted(f"{grant['login']}@{host}" for host in grant["hosts"])
    assert listing["Principals"] == list(cert.principals)
    assert listing["Critical Options"] == "(none)"
    assert sorted(listing["Extensions"]) == sorted(grant["extensions"])
    # ssh-keygen prints the window in local time: "from 2026-11-25T07:26:02 to 2026-11-25T07:57:01".
    found = re.fullmatch(r"from (\S+) to (\S+)", listing["Valid"])
    assert found, listing["Valid"]
    after, before = (int(datetime.fromisoformat(t).timestamp()) for t in found.groups())
    assert (after, before) == (cert.valid_after, cert.valid_before)
    # Inside the grant: backdated by at most 60 s, never past its end, never longer than it.
    assert grant["starts_at"] - 61 <= cert.valid_after
    assert cert.valid_before <= grant["expires_at"]
    assert cert.valid_before - cert.valid_after <= (grant["expires_at"] - grant["starts_at"]) + 61
    cert.check(
        trusted_ca=user_ca, cert_type=cert.cert_type, now=datetime.fromtimestamp(grant["starts_at"] + 1).astimezone()
    )
    rows = site.query(
        "SELECT request_id, key_fingerprint, revoked, valid_after, valid_before FROM certificates WHERE serial = ?",
        (cert.serial,),
    )
    assert rows == [(grant["id"], own_key.fingerprint(), 0, cert.valid_after, cert.valid_before)]
    return cert


def approvers_of(site: BrokerSite, request_id: int) -> list[str]:
    return [r[0] for r in site.query("SELECT approver FROM approvals WHERE request_id = ? ORDER BY id", (request_id,))]


def certificates_of(site: BrokerSite, request_id: int) -> int:
    return int(site.query("SELECT count(*) FROM certificates WHERE request_id = ?", (request_id,))[0][0])


def test_alice_requests_bob_approves_alice_fetches_her_certificate(site: BrokerSite) -> None:
    pending = request(site, "alice", "prod-web-3", "--login", "ubuntu", "--for", "30m")
    rid = pending["id"]
    assert pending["state"] == "pending"
    assert pending["principals"] == ["ubuntu@prod-web-3"]
    assert pending["approvals_required"] == 1

    # Nothing before approval, and neither the requester nor a non-approver can approve.
    refused(site.as_user("alice", "cert", str(rid)), rf"request {rid} is pending, not approved")
    refused(site.as_user("alice", "approve", str(rid)), "you cannot approve your own request")
    refused(site.as_user("carol", "approve", str(rid)), rf"carol may not approve request {rid}: approvers are sre")
    assert approvers_of(site, rid) == []
    assert status(site, "alice", rid)["state"] == "pending"
    assert certificates_of(site, rid) == 0

    assert f"Request {rid} is now approved" in ok(site.as_user("bob", "approve", str(rid), "--comment", "go ahead"))
    grant = status(site, "alice", rid)
    assert grant["state"] == "approved"
    assert grant["decided_by"] == "bob"
    assert [a["approver"] for a in grant["approvals"]] == ["bob"]

    fetched = ok(site.as_user("alice", "cert", str(rid), "--json"))
    path = Path(fetched["path"])
    assert path == site.cached_certificate("alice", rid)
    assert path.stat().st_mode & 0o777 == 0o600
    cert = check_certificate(site, path, user="alice", grant=grant)
    assert fetched["serial"] == cert.serial
    assert fetched["principals"] == ["ubuntu@prod-web-3"]

    # The grant is alice's: bob (an approver, with his own key) gets no certificate for it.
    refused(site.as_user("bob", "cert", str(rid)), rf"request {rid} belongs to alice, not bob")
    # An approved request cannot be approved again.
    refused(site.as_user("bob", "approve", str(rid)), rf"request {rid} is approved, not pending")
    assert certificates_of(site, rid) == 1

    actions = [a for _, _, a, s in site.audit_actions() if s == f"request:{rid}"]
    assert actions[0] == "request.created"
    assert actions.count("request.approve.refused") == 3
    assert actions.count("certificate.issue.refused") == 2
    assert "request.approval" in actions
    assert "request.approved" in actions
    assert actions.count("certificate.issued") == 1
    assert "Audit chain intact" in ok(site.admin("audit", "verify"))


def test_two_of_three_needs_two_distinct_approvers(site: BrokerSite) -> None:
    pending = request(site, "alice", "db-1", "--login", "postgres", "--for", "1h")
    rid = pending["id"]
    assert pending["approvals_required"] == 2
    assert pending["approver_groups"] == ["dba"]

    assert f"Request {rid} is now pending" in ok(site.as_user("bob", "approve", str(rid)))
    # The same approver twice counts once.
    refused(site.as_user("bob", "approve", str(rid)), rf"bob has already approved request {rid}")
    refused(site.as_user("alice", "cert", str(rid)), "pending, not approved")
    refused(site.as_user("carol", "approve", str(rid)), "may not approve")
    assert approvers_of(site, rid) == ["bob"]
    # erin is a dba through `user add --group dba`, not through the policy's [groups].
    assert f"Request {rid} is now approved" in ok(site.as_user("erin", "approve", str(rid)))
    assert approvers_of(site, rid) == ["bob", "erin"]
    grant = status(site, "alice", rid)
    ok(site.as_user("alice", "cert", str(rid)))
    check_certificate(site, site.cached_certificate("alice", rid), user="alice", grant=grant)
    assert grant["extensions"] == ["permit-pty"]  # port forwarding is allowed by the rule, but was not asked for


def test_a_requester_who_is_an_approver_does_not_count(site: BrokerSite) -> None:
    rid = request(site, "bob", "db-1", "--login", "postgres", "--for", "1h")["id"]
    refused(site.as_user("bob", "approve", str(rid)), "you cannot approve your own request")
    ok(site.as_user("dave", "approve", str(rid)))
    assert status(site, "bob", rid)["state"] == "pending"
    refused(site.as_user("bob", "cert", str(rid)), "pending, not approved")
    ok(site.as_user("erin", "approve", str(rid)))
    assert approvers_of(site, rid) == ["dave", "erin"]
    ok(site.as_user("bob", "cert", str(rid)))
    check_certificate(site, site.cached_certificate("bob", rid), user="bob", grant=status(site, "bob", rid))


def test_a_denied_request_yields_no_certificate(site: BrokerSite) -> None:
    rid = request(site, "alice", "prod-web-3", "--login", "ubuntu")["id"]
    refused(site.as_user("bob", "deny", str(rid)), "a reason is required", code=2)
    refused(site.as_user("carol", "deny", str(rid), "--reason", "no"), "may not approve")
    refused(site.as_user("alice", "deny", str(rid), "--reason", "no"), "your own request")
    assert "now denied" in ok(site.as_user("bob", "deny", str(rid), "--reason", "use the runbook"))
    denied = status(site, "alice", rid)
    assert (denied["state"], denied["decided_by"], denied["decision_note"]) == ("denied", "bob", "use the runbook")
    refused(site.as_user("alice", "cert", str(rid)), "is denied, not approved")
    refused(site.as_user("bob", "approve", str(rid)), "is denied, not pending")
    refused(site.as_user("alice", "cancel", str(rid)), "only a pending request can be cancelled")
    assert certificates_of(site, rid) == 0
    assert approvers_of(site, rid) == []


def test_a_cancelled_request_yields_no_certificate(site: BrokerSite) -> None:
    rid = request(site, "alice", "prod-web-3", "--login", "ubuntu")["id"]
    refused(site.as_user("carol", "cancel", str(rid)), f"only alice can cancel request {rid}")
    refused(site.as_user("bob", "cancel", str(rid)), f"only alice can cancel request {rid}")
    assert "now cancelled" in ok(site.as_user("alice", "cancel", str(rid)))
    refused(site.as_user("bob", "approve", str(rid)), "is cancelled, not pending")
    refused(site.as_user("alice", "cert", str(rid)), "is cancelled, not approved")
    assert certificates_of(site, rid) == 0


def test_a_revoked_grant_yields_no_further_certificate(site: BrokerSite) -> None:
    rid = request(site, "alice", "prod-web-3", "prod-web-4", "--login", "deploy", "--for", "2h")["id"]
    ok(site.as_user("bob", "approve", str(rid)))
    grant = status(site, "alice", rid)
    assert grant["principals"] == ["deploy@prod-web-3", "deploy@prod-web-4"]
    ok(site.as_user("alice", "cert", str(rid)))
    cert = check_certificate(site, site.cached_certificate("alice", rid), user="alice", grant=grant)
    refused(site.as_user("carol", "revoke", str(rid)), f"carol may not revoke request {rid}")
    assert "now revoked" in ok(site.as_user("bob", "revoke", str(rid), "--reason", "incident over"))
    assert site.query("SELECT revoked FROM certificates WHERE serial = ?", (cert.serial,)) == [(1,)]
    refused(site.as_user("alice", "cert", str(rid)), "is revoked, not approved")
    refused(site.as_user("bob", "revoke", str(rid)), "is revoked; nothing to revoke")
    assert certificates_of(site, rid) == 1
    # A KRL of the user CA made from the revoked serial (as the broker's proxy checks it) refuses the certificate.
    krl = site.root / "krl.bin"
    ok(
        site.run(
            "ca", "krl", "--ca", "user", "--ca-dir", str(site.ca_dir), "--serial", str(cert.serial), "-o", str(krl)
        )
    )
    listed = subprocess.run(
        ["ssh-keygen", "-Q", "-f", str(krl), str(site.cached_certificate("alice", rid))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert listed.returncode != 0
    assert "REVOKED" in listed.stdout


def test_an_expired_grant_yields_no_certificate(site: BrokerSite) -> None:
    rid = request(site, "alice", "prod-web-3", "--login", "ubuntu", "--for", "1s")["id"]
    ok(site.as_user("bob", "approve", str(rid)))
    expires_at = status(site, "alice", rid)["expires_at"]
    while time.time() < expires_at + 0.2:  # the broker's own clock decides; wait past the grant's end
        time.sleep(0.2)
    refused(site.as_user("alice", "cert", str(rid)), f"the grant of request {rid} has expired")
    assert certificates_of(site, rid) == 0


def test_break_glass_and_auto_approve_are_granted_at_once_and_flagged(site: BrokerSite) -> None:
    urgent = request(site, "dave", "prod-web-3", "--login", "ubuntu", "--for", "30m", "--break-glass")
    assert (urgent["state"], urgent["break_glass"], urgent["review_required"]) == ("approved", True, True)
    assert urgent["decided_by"] == "policy"
    ok(site.as_user("dave", "cert", str(urgent["id"])))
    check_certificate(site, site.cached_certificate("dave", urgent["id"]), user="dave", grant=urgent)
    # Break-glass is for the on-call group only, within its rule's terms; an ordinary request of dave's is refused.
    refused(
        site.as_user("carol", "request", "prod-web-3", "--break-glass", "--reason", "x", "--login", "ubuntu"),
        "policy refuses: prod-web-3: no break-glass rule lets carol in",
    )
    refused(
        site.as_user(
            "dave", "request", "prod-web-3", "--break-glass", "--reason", "x", "--login", "ubuntu", "--for", "2h"
        ),
        "allows at most 1h",
    )
    refused(site.as_user("dave", "request", "prod-web-3", "--reason", "x", "--login", "ubuntu"), "policy refuses")

    staged = request(site, "carol", "staging-1", "--login", "ubuntu", "--for", "8h")
    assert (staged["state"], staged["auto_approved"], staged["break_glass"]) == ("approved", True, False)
    ok(site.as_user("carol", "cert", str(staged["id"])))
    check_certificate(site, site.cached_certificate("carol", staged["id"]), user="carol", grant=staged)
    refused(site.as_user("carol", "request", "staging-1", "--reason", "x", "--login", "ubuntu", "--for", "9h"), "8h")
    refused(site.as_user("carol", "request", "prod-odd", "--reason", "x", "--login", "ubuntu"), "no rule matches")
    refused(site.as_user("carol", "request", "nope-1", "--reason", "x", "--login", "ubuntu"), "unknown host", code=2)
    actions = {a for _, _, a, s in site.audit_actions() if s == f"request:{urgent['id']}"}
    assert {"request.created", "request.approved", "certificate.issued"} <= actions


def test_openssh_client_speaks_the_control_plane(bastion: tuple[BrokerSite, BrokerProcess]) -> None:
    site, broker = bastion
    done = openssh_call(site, broker.port, "alice", b"whoami", b"{}")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"ok": True, "result": {"user": "alice"}}
    done = openssh_call(site, broker.port, "alice", b"status", b'{"id": "1"}')
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"]["message"] == "status: id must be a int, found str"
    # bob's key does not make anyone alice.
    done = openssh_call(site, broker.port, "alice", b"whoami", b"{}", key=site.keys["bob"])
    assert done.returncode == 255
    assert b"Permission denied" in done.stderr


def test_unknown_and_disabled_users_are_refused_and_audited(bastion: tuple[BrokerSite, BrokerProcess]) -> None:
    site, broker = bastion
    before = site.last_seq()
    for name in ("mallory", "frank"):
        site.keys[name], _ = add_key(site, name)
        site.configure_client(name, broker.port, via_cli=False)
    refused(site.as_user("mallory", "status"), "the broker at 127.0.0.1:[0-9]+ refused user 'mallory' with this key")

    ok(site.admin("user", "add", "frank", "--key", f"{site.keys['frank']}.pub", "--group", "dev"))
    assert ok(site.as_user("frank", "status", "--json")) == []
    ok(site.admin("user", "disable", "frank"))
    refused(site.as_user("frank", "status"), "refused user 'frank'")

    refusals = [
        (actor, subject) for _, actor, action, subject in site.audit_actions(before) if action == "auth.refused"
    ]
    assert ("jit-ssh", "user:mallory") in refusals
    assert ("jit-ssh", "user:frank") in refusals
    reasons = [
        json.loads(details)["reason"]
        for (details,) in site.query(
            "SELECT details_json FROM audit_events WHERE action = 'auth.refused' AND seq > ?", (before,)
        )
    ]
    assert any(r.endswith("is not enrolled") for r in reasons), reasons
    assert "user 'frank' is disabled" in reasons


def test_the_pending_cap_is_explained_and_refuses_one_request_more(site: BrokerSite) -> None:
    explained = ok(site.admin("policy", "explain", "carol", "prod-web-3", "--json"))
    assert explained["pending_per_user"] == 10
    filed = [request(site, "carol", "prod-web-3", "--login", "ubuntu")["id"] for _ in range(10 - explained["pending"])]
    text = ok(site.admin("policy", "explain", "carol", "prod-web-3"))
    assert "pending requests: at most 10 a user (limits.pending_per_user); carol has 10" in text
    before = site.last_seq()
    line = refused(
        site.as_user("carol", "request", "prod-web-3", "--reason", "one more", "--login", "ubuntu", "--no-wait"),
        r"carol has 10 pending requests and the policy allows at most 10 \(limits\.pending_per_user\)",
    )
    assert [(actor, action) for _, actor, action, _ in site.audit_actions(before)] == [
        ("carol", "request.create.refused")
    ], line
    for request_id in filed:  # the requests of later tests are not held back by these
        ok(site.as_user("carol", "cancel", str(request_id)))
