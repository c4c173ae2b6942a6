"""The control plane over real SSH: bad input on every command is refused in one line and changes nothing,
and unknown or disabled users never get in (and are audited).

One broker process serves the module. Each case sends raw bytes on stdin (asyncssh, and OpenSSH's ``ssh``
for a few) and compares every table a command could change before and after; refusals may only add
``*.refused`` audit events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import asyncssh
import pytest
from jit_ssh.broker.control import _SPECS, VERBS
from jit_ssh.ca.inventory import add_user
from jit_ssh.ca.policy import Policy
from jit_ssh.ca.store import Store
from jit_ssh.ca.workflow import Authority

from tests.integration.broker_fixture import (
    POLICY,
    BrokerProcess,
    BrokerSite,
    SshReply,
    add_key,
    create_site,
    openssh_call,
    running_brokers,
    ssh_call,
)

ED25519_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@pytest.fixture(scope="module")
def bastion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerSite, BrokerProcess]]:
    site = create_site(tmp_path_factory.mktemp("control"))
    with running_brokers(site) as (broker,):
        yield site, broker


@pytest.fixture(scope="module")
def requests(bastion: tuple[BrokerSite, BrokerProcess]) -> dict[str, int]:
    """One pending request of alice's and one approved one, for the commands that take an id."""
    site, broker = bastion

    def call(user: str, verb: str, args: dict[str, Any]) -> Any:
        reply = ssh_call(site, broker.port, user, verb, json.dumps(args).encode())
        assert reply.exit_status == 0, reply
        return reply.json()["result"]

    base = {"hosts": ["prod-web-3"], "login": "ubuntu", "duration": "30m", "reason": "fixture"}
    pending = call("alice", "request", base)["id"]
    approved = call("alice", "request", base)["id"]
    call("bob", "approve", {"id": approved})
    return {"pending": pending, "approved": approved}


def refused(site: BrokerSite, broker: BrokerProcess, user: str, command: str, stdin: bytes) -> tuple[SshReply, str]:
    """Run one command that must be refused; check that it changed nothing but the audit of refusals."""
    before, seq = site.snapshot(), site.last_seq()
    reply = ssh_call(site, broker.port, user, command, stdin)
    assert site.snapshot() == before
    new_events = site.audit_actions(seq)
    assert all(action.endswith(".refused") for _, _, action, _ in new_events), new_events
    assert reply.stderr == b""
    body = reply.json()
    assert body["ok"] is False, body
    error = body["error"]
    assert reply.exit_status == error["exit_code"]
    message = error["message"]
    assert "\n" not in message
    assert "Traceback" not in message
    assert 0 < len(message) <= 400, message
    return reply, message


LONG = "x" * 501
REQ = {"hosts": ["prod-web-3"], "login": "ubuntu", "duration": "30m", "reason": "disk full"}


def _req(**changes: Any) -> bytes:
    args: dict[str, Any] = {**REQ, **changes}
    return json.dumps({k: v for k, v in args.items() if v is not ...}).encode()


# (id, user, command, stdin, exit status, part of the message). "{pending}" and "{approved}" are filled in.
CASES: list[tuple[str, str, str, bytes, int, str]] = [
    # -- any verb ----------------------------------------------------------------------------------
    ("unknown-verb", "alice", "rm", b"{}", 2, "unknown command 'rm'; expected one of approve, cancel, cert"),
    ("unknown-verb-case", "alice", "APPROVE", b'{"id": 1}', 2, "unknown command 'APPROVE'"),
    ("unknown-verb-long", "alice", "x" * 5000, b"", 2, "unknown command 'xxxxxxxx"),
    ("no-command", "alice", "", b"", 2, "the control plane runs commands, not shells"),
    ("not-json", "alice", "status", b"{", 2, "arguments are not valid JSON: Expecting property name"),
    ("not-json-trailing", "alice", "status", b"{} {}", 2, "arguments are not valid JSON: Extra data"),
    ("not-object", "alice", "status", b"[1, 2]", 2, "arguments must be one JSON object"),
    ("json-string", "alice", "requests", b'"all"', 2, "arguments must be one JSON object"),
    ("not-utf8", "alice", "status", b'{"id": 1, "x": "\xff\xfe"}', 2, "arguments are not UTF-8 text"),
    ("not-utf8-only", "alice", "request", b"\xc3\x28\xa0\xa1", 2, "arguments are not UTF-8 text"),
    ("oversized", "alice", "request", b'{"reason": "' + b"a" * 70_000 + b'"}', 2, "bytes; at most 65536"),
    ("deeply-nested", "alice", "status", b"[" * 60_000, 2, "arguments are not valid JSON"),
    ("huge-integer-text", "alice", "status", b'{"id": ' + b"9" * 5000 + b"}", 2, "arguments are not valid JSON"),
    ("nan", "alice", "status", b'{"id": NaN}', 2, "status: id must be a int, found float"),
    ("inline-wrong-type", "alice", 'approve {"id": "1"}', b"", 2, "approve: id must be a int, found str"),
    # -- whoami, status, requests --------------------------------------------------------------------
    ("whoami-argument", "alice", "whoami", b'{"user": "bob"}', 2, "whoami: unknown argument 'user'; expected none"),
    ("status-id-string", "alice", "status", b'{"id": "1"}', 2, "status: id must be a int, found str"),
    ("status-id-bool", "alice", "status", b'{"id": true}', 2, "status: id must be a int, found bool"),
    ("status-id-float", "alice", "status", b'{"id": 1.0}', 2, "status: id must be a int, found float"),
    ("status-id-zero", "alice", "status", b'{"id": 0}', 2, "expected a request id (a positive number), found 0"),
    ("status-id-negative", "alice", "status", b'{"id": -3}', 2, "expected a request id (a positive number)"),
    ("status-id-huge", "alice", "status", b'{"id": 100000000000000000000000}', 2, "expected a request id"),
    ("status-id-2-63", "alice", "status", b'{"id": 9223372036854775808}', 2, "expected a request id"),
    ("status-id-missing", "alice", "status", b'{"id": 999999}', 2, "no request 999999"),
    ("status-not-yours", "carol", "status", b'{"id": {approved}}', 3, "is neither yours nor one you may approve"),
    ("requests-unknown", "alice", "requests", b'{"pending": true, "limit": 5}', 2, "unknown argument 'limit'"),
    ("requests-type", "alice", "requests", b'{"all": "yes"}', 2, "requests: all must be a bool, found str"),
    ("requests-int-bool", "alice", "requests", b'{"mine": 1}', 2, "requests: mine must be a bool, found int"),
    # -- request ------------------------------------------------------------------------------------
    ("request-empty", "alice", "request", b"", 2, "request: missing argument 'login'"),
    ("request-no-reason", "alice", "request", _req(reason=...), 2, "request: missing argument 'reason'"),
    ("request-unknown-arg", "alice", "request", _req(approver="alice"), 2, "unknown argument 'approver'"),
    ("request-hosts-string", "alice", "request", _req(hosts="prod-web-3"), 2, "hosts must be a list, found str"),
    ("request-hosts-ints", "alice", "request", _req(hosts=[1]), 2, "hosts must be a list of at most 32 strings"),
    ("request-hosts-many", "alice", "request", _req(hosts=[f"h{i}" for i in range(40)]), 2, "at most 32 strings"),
    ("request-no-hosts", "alice", "request", _req(hosts=[]), 2, "name at least one host (or a label selector)"),
    ("request-unknown-host", "alice", "request", _req(hosts=["nope-1"]), 2, "unknown host 'nope-1'"),
    ("request-bad-host", "alice", "request", _req(hosts=["prod;rm -rf"]), 2, "expected a host name"),
    ("request-login-type", "alice", "request", _req(login=0), 2, "request: login must be a str, found int"),
    ("request-bad-login", "alice", "request", _req(login="Root"), 2, "expected a login name such as 'ubuntu'"),
    ("request-login-policy", "alice", "request", _req(login="root"), 3, "allows logins deploy, ubuntu, not 'root'"),
    ("request-duration-int", "alice", "request", _req(duration=30), 2, "duration must be a str, found int"),
    ("request-duration-word", "alice", "request", _req(duration="forever"), 2, "expected a duration such as 30m"),
    ("request-duration-zero", "alice", "request", _req(duration="0m"), 2, "expected a positive duration"),
    ("request-duration-negative", "alice", "request", _req(duration="-5m"), 2, "expected a duration"),
    ("request-duration-empty", "alice", "request", _req(duration=""), 2, "expected a duration"),
    ("request-duration-huge", "alice", "request", _req(duration="9999999999d"), 2, "duration"),
    ("request-duration-year", "alice", "request", _req(duration="400d"), 2, "is longer than a year"),
    ("request-duration-policy", "alice", "request", _req(duration="5h"), 3, "allows at most 4h, asked for 5h"),
    ("request-reason-long", "alice", "request", _req(reason=LONG), 2, "reason is 501 characters long; at most 500"),
    ("request-reason-blank", "alice", "request", _req(reason="   "), 2, "a reason is required"),
    ("request-reason-escape", "alice", "request", _req(reason="ok\x1b[2J"), 2, "reason contains control characters"),
    ("request-reason-null", "alice", "request", _req(reason=None), 2, "reason must be a str, found NoneType"),
    (
        "request-reason-surrogate",
        "alice",
        "request",
        b'{"hosts": ["prod-web-3"], "login": "ubuntu", "duration": "30m", "reason": "\\ud800"}',
        2,
        "arguments are not valid text: a string holds a lone surrogate",
    ),
    ("session-id-surrogate", "bob", "session", b'{"id": "\\udfff"}', 2, "a string holds a lone surrogate"),
    ("request-ticket-long", "alice", "request", _req(ticket="T" * 65), 2, "ticket is 65 characters long; at most 64"),
    ("request-start-word", "alice", "request", _req(start="tomorrow"), 2, "start: expected an ISO 8601 time"),
    ("request-start-naive", "alice", "request", _req(start="2030-01-01T00:00:00"), 2, "start: the time needs a zone"),
    ("request-start-far", "alice", "request", _req(start="2099-01-01T00:00:00+00:00"), 2, "more than 7 days ahead"),
    ("request-selector-list", "alice", "request", _req(selector=["env"]), 2, "selector must be a dict, found list"),
    ("request-selector-int", "alice", "request", _req(selector={"env": 1}), 2, "selector must map label names"),
    ("request-selector-none", "alice", "request", _req(hosts=..., selector={"env": "mars"}), 2, "labels env=mars"),
    ("request-ext-string", "alice", "request", _req(extensions="permit-pty"), 2, "extensions must be a list"),
    ("request-ext-policy", "alice", "request", _req(extensions=["permit-X11-forwarding"]), 3, "does not allow"),
    ("request-break-glass-str", "alice", "request", _req(break_glass="yes"), 2, "break_glass must be a bool"),
    ("request-break-glass", "alice", "request", _req(break_glass=True), 3, "no break-glass rule lets alice in"),
    ("request-no-rule", "alice", "request", _req(hosts=["prod-odd"]), 3, "prod-odd: no rule matches this host"),
    ("request-mixed", "alice", "request", _req(hosts=["prod-web-3", "db-1"]), 3, "share no approver group"),
    # -- approve, deny, cancel, revoke --------------------------------------------------------------
    ("approve-no-id", "bob", "approve", b"{}", 2, "approve: missing argument 'id'"),
    ("approve-id-list", "bob", "approve", b'{"id": [1]}', 2, "approve: id must be a int, found list"),
    ("approve-comment-int", "bob", "approve", b'{"id": {pending}, "comment": 5}', 2, "comment must be a str"),
    (
        "approve-comment-long",
        "bob",
        "approve",
        b'{"id": {pending}, "comment": "' + b"c" * 501 + b'"}',
        2,
        "comment is 501 characters long",
    ),
    ("approve-own", "alice", "approve", b'{"id": {pending}}', 3, "you cannot approve your own request"),
    ("approve-not-approver", "carol", "approve", b'{"id": {pending}}', 3, "carol may not approve request"),
    ("approve-approved", "bob", "approve", b'{"id": {approved}}', 3, "is approved, not pending"),
    ("approve-missing", "bob", "approve", b'{"id": 424242}', 2, "no request 424242"),
    ("deny-no-reason", "bob", "deny", b'{"id": {pending}}', 2, "deny: missing argument 'reason'"),
    ("deny-blank-reason", "bob", "deny", b'{"id": {pending}, "reason": " "}', 2, "a reason is required"),
    ("deny-reason-long", "bob", "deny", b'{"id": {pending}, "reason": "' + LONG.encode() + b'"}', 2, "at most 500"),
    ("deny-own", "alice", "deny", b'{"id": {pending}, "reason": "no"}', 3, "you cannot approve your own request"),
    ("deny-not-approver", "carol", "deny", b'{"id": {pending}, "reason": "no"}', 3, "may not approve"),
    ("cancel-id-null", "alice", "cancel", b'{"id": null}', 2, "cancel: id must be a int, found NoneType"),
    ("cancel-extra", "alice", "cancel", b'{"id": {pending}, "reason": "x"}', 2, "cancel: unknown argument 'reason'"),
    ("cancel-other", "bob", "cancel", b'{"id": {pending}}', 3, "only alice can cancel request"),
    ("cancel-approved", "alice", "cancel", b'{"id": {approved}}', 3, "only a pending request can be cancelled"),
    ("revoke-reason-int", "bob", "revoke", b'{"id": {approved}, "reason": 7}', 2, "revoke: reason must be a str"),
    ("revoke-not-approver", "carol", "revoke", b'{"id": {approved}}', 3, "carol may not revoke request"),
    ("revoke-missing", "bob", "revoke", b'{"id": 31337}', 2, "no request 31337"),
    # -- cert ---------------------------------------------------------------------------------------
    ("cert-no-key", "alice", "cert", b'{"id": {approved}}', 2, "cert: missing argument 'public_key'"),
    ("cert-key-int", "alice", "cert", b'{"id": {approved}, "public_key": 5}', 2, "public_key must be a str"),
    (
        "cert-key-word",
        "alice",
        "cert",
        b'{"id": {approved}, "public_key": "hello"}',
        2,
        "expected an OpenSSH public key",
    ),
    ("cert-key-empty", "alice", "cert", b'{"id": {approved}, "public_key": ""}', 2, "expected an OpenSSH public key"),
    ("cert-key-truncated", "alice", "cert", b'{"id": {approved}, "public_key": "ssh-ed25519 AAAA"}', 2, "truncated"),
    ("cert-key-base64", "alice", "cert", b'{"id": {approved}, "public_key": "ssh-ed25519 !!!"}', 2, "does not decode"),
    (
        "cert-key-type-mismatch",
        "alice",
        "cert",
        b'{"id": {approved}, "public_key": "ssh-rsa ' + ED25519_LINE.split()[1].encode() + b'"}',
        2,
        "public key",
    ),
    (
        "cert-key-long",
        "alice",
        "cert",
        b'{"id": {approved}, "public_key": "ssh-ed25519 ' + b"A" * 20000 + b'"}',
        2,
        "at most 16384",
    ),
    ("cert-key-nul", "alice", "cert", b'{"id": {approved}, "public_key": "ssh-ed25519\\u0000AAAA"}', 2, "public key"),
    (
        "cert-pending",
        "alice",
        "cert",
        b'{"id": {pending}, "public_key": "' + ED25519_LINE.encode() + b'"}',
        3,
        "is pending, not approved",
    ),
    (
        "cert-not-yours",
        "bob",
        "cert",
        b'{"id": {approved}, "public_key": "' + ED25519_LINE.encode() + b'"}',
        3,
        "belongs to alice, not bob",
    ),
    (
        "cert-missing",
        "alice",
        "cert",
        b'{"id": 777, "public_key": "' + ED25519_LINE.encode() + b'"}',
        2,
        "no request 777",
    ),
]


@pytest.mark.parametrize(
    ("user", "command", "stdin", "status", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_refused_in_one_line_and_changes_nothing(
    bastion: tuple[BrokerSite, BrokerProcess],
    requests: dict[str, int],
    user: str,
    command: str,
    stdin: bytes,
    status: int,
    expected: str,
) -> None:
    site, broker = bastion
    for name, rid in requests.items():
        stdin = stdin.replace(b"{%s}" % name.encode(), str(rid).encode())
    reply, message = refused(site, broker, user, command, stdin)
    assert expected in message
    assert reply.exit_status == status, message


WORKFLOW_VERBS = {"whoami", "request", "status", "requests", "approve", "deny", "cancel", "revoke", "cert"}
_WRONG: dict[type, Any] = {int: "1", str: 1, bool: 1, list: "x", dict: []}


def test_every_workflow_verb_has_its_own_bad_input_cases() -> None:
    covered = {c[2].split()[0] for c in CASES if c[2]}
    assert covered >= WORKFLOW_VERBS


def generic_cases(verb: str) -> list[tuple[str, bytes, str]]:
    """(what, stdin, part of the message) that every verb must refuse, derived from its argument spec."""
    spec = _SPECS[verb]
    cases = [
        ("unknown argument", b'{"no_such_argument": 1}', f"{verb}: unknown argument 'no_such_argument'"),
        ("not UTF-8", b'{"\xff": 1}', "arguments are not UTF-8 text"),
        ("not JSON", b"{'a': 1}", "arguments are not valid JSON"),
        ("not an object", b"[]", "arguments must be one JSON object"),
        ("too deep", b"[" * 50_000, "arguments are not valid JSON"),
        ("too large", b" " * 70_000, "at most 65536"),
    ]
    for key, (kind, _) in spec.items():
        wrong = _WRONG[kind]
        cases.append((f"{key} mistyped", json.dumps({key: wrong}).encode(), f"{verb}: {key} must be a {kind.__name__}"))
    required = [k for k, (_, needed) in spec.items() if needed]
    if required:
        cases.append(("missing argument", b"{}", f"{verb}: missing argument {required[0]!r}"))
    return cases


def test_every_verb_refuses_malformed_arguments(bastion: tuple[BrokerSite, BrokerProcess]) -> None:
    """All verbs, the session-review ones included: the checks every command shares, through real SSH."""
    site, broker = bastion
    assert VERBS >= WORKFLOW_VERBS
    for verb in sorted(VERBS):
        for what, stdin, expected in generic_cases(verb):
            reply, message = refused(site, broker, "bob", verb, stdin)
            assert expected in message, (verb, what, message)
            assert reply.exit_status == 2, (verb, what, message)


def test_the_broker_survives_bad_input_and_still_answers(
    bastion: tuple[BrokerSite, BrokerProcess], requests: dict[str, int]
) -> None:
    site, broker = bastion
    reply = ssh_call(site, broker.port, "alice", "status", json.dumps({"id": requests["approved"]}).encode())
    assert reply.exit_status == 0
    assert reply.json()["result"]["state"] == "approved"
    assert broker.alive
    assert "Traceback" not in broker.log()
    assert "Error" not in broker.log()


def test_openssh_client_with_raw_bytes(bastion: tuple[BrokerSite, BrokerProcess], requests: dict[str, int]) -> None:
    """The same refusals through stock ``ssh``, including bytes that are not UTF-8 in the command itself."""
    site, broker = bastion
    before = site.snapshot()
    cases = [
        (b"approve", b"\xff\xfe\xfd", 2, "arguments are not UTF-8 text"),
        (
            b"approve",
            b'{"id": "' + str(requests["pending"]).encode() + b'"}',
            2,
            "approve: id must be a int, found str",
        ),
        (b"cert", b"{\x00}", 2, "arguments are not valid JSON"),
        (
            b"request",
            b'{"hosts": ["prod-web-3"], "login": "ubuntu", "duration": "30m", "reason": "\xe9t\xe9"}',
            2,
            "arguments are not UTF-8 text",
        ),
    ]
    for command, stdin, status, expected in cases:
        done = openssh_call(site, broker.port, "bob", command, stdin)
        body = json.loads(done.stdout)
        assert body["ok"] is False
        assert expected in body["error"]["message"], (command, body)
        assert done.returncode == status
    # A command line that is not UTF-8 never reaches the control plane: asyncssh refuses the exec request.
    for command in (b"\xff\xfe", b"approve\xff"):
        done = openssh_call(site, broker.port, "bob", command, b"{}")
        assert (done.returncode, done.stdout) == (255, b"")
        assert b"exec request failed" in done.stderr
    assert site.snapshot() == before
    assert broker.alive


def _connect(site: BrokerSite, port: int, user: str, keys: list[str]) -> None:
    async def attempt() -> None:
        async with asyncssh.connect(
            "127.0.0.1", port, username=user, client_keys=keys, agent_path=None,
            known_hosts=str(site.known_hosts), config=None, connect_timeout=30,
        ) as conn:  # fmt: skip
            await conn.run("whoami", input="{}", check=True)

    asyncio.run(attempt())


def auth_refusals(site: BrokerSite, since: int) -> list[tuple[str, dict[str, Any]]]:
    rows = site.query(
        "SELECT subject, details_json FROM audit_events WHERE action = 'auth.refused' AND seq > ? ORDER BY seq",
        (since,),
    )
    return [(str(subject), json.loads(details)) for subject, details in rows]


def test_unknown_users_and_foreign_keys_are_refused_at_ssh_level_and_audited(
    bastion: tuple[BrokerSite, BrokerProcess],
) -> None:
    site, broker = bastion
    ghost_key, ghost_public = add_key(site, "ghost")
    before, seq = site.snapshot(), site.last_seq()
    attempts = [
        ("ghost", [str(ghost_key)], "user:ghost", "is not enrolled"),  # unknown user, unknown key
        ("alice", [str(ghost_key)], "user:alice", "is not enrolled"),  # known user, someone else's unknown key
        ("alice", [str(site.keys["bob"])], "user:alice", "key belongs to bob"),  # known user, another user's key
        ("nobody", [str(site.keys["carol"])], "user:nobody", "key belongs to carol"),
    ]
    for user, keys, subject, reason in attempts:
        with pytest.raises(asyncssh.PermissionDenied):
            _connect(site, broker.port, user, keys)
        refusals = auth_refusals(site, seq)
        assert any(s == subject and reason in d["reason"] for s, d in refusals), (subject, refusals)
        seq = site.last_seq()
    # No key at all: refused before any key is looked at.
    with pytest.raises(asyncssh.PermissionDenied):
        _connect(site, broker.port, "alice", [])
    # A session-face user name (LOGIN@HOST) accepts certificates only, never an enrolled key.
    with pytest.raises(asyncssh.PermissionDenied):
        _connect(site, broker.port, "ubuntu@prod-web-3", [str(site.keys["alice"])])
    assert site.snapshot() == before
    assert ghost_public.fingerprint() in {d["key"] for _, d in auth_refusals(site, 0)}


def test_a_disabled_user_is_refused_at_ssh_level_and_audited(bastion: tuple[BrokerSite, BrokerProcess]) -> None:
    site, broker = bastion
    key, public = add_key(site, "zoe")
    # The admin enrolls and disables zoe on the bastion while the broker runs (same database).
    store = Store(site.db_path)
    try:
        add_user(store, "zoe", keys=[public], groups=["dev"])
        _connect(site, broker.port, "zoe", [str(key)])  # gets in while enabled
        seq = site.last_seq()
        Authority(store, Policy.loads(POLICY)).disable_user("zoe")
    finally:
        store.dispose()
    with pytest.raises(asyncssh.PermissionDenied):
        _connect(site, broker.port, "zoe", [str(key)])
    refusals = auth_refusals(site, seq)
    assert refusals
    assert all(s == "user:zoe" and d["reason"] == "user 'zoe' is disabled" for s, d in refusals), refusals
    assert {d["key"] for _, d in refusals} == {public.fingerprint()}
