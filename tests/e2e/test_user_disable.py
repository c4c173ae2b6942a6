"""Disabling a user ends their access (issue 10, item 9; invariant 6), with real ssh, broker and sshd.

``jit-ssh user disable NAME --config ...`` on the bastion revokes the user's grants in the store (audited),
puts their certificates in the KRL the broker publishes (``DATA_DIR/revoked.krl``, checked with the real
``ssh-keygen -Q``), and the broker closes their live sessions and refuses their cached certificate. The
broker also checks the user's own state, apart from the grant's: a user disabled behind the workflow's
back (straight in the database, the grant left approved) loses live sessions, new connections and new
channels on a connection already made all the same.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jit_ssh.ca import KRL, CADirectory, CARole
from jit_ssh.cli.bastion.stack import DEFAULT_POLICY, LocalStack

from tests.e2e.stack_fixture import (
    audit_events,
    cached_certificate,
    control_master,
    ended_session,
    granted,
    last_audit_seq,
    live_shell,
    read_certificate,
    run_ssh,
    ssh_argv,
    started_stack,
)

pytestmark = pytest.mark.e2e

#: frank is an sre like dave: one is disabled through the CLI, the other behind its back.
POLICY = DEFAULT_POLICY.replace('sre = ["alice", "bob", "dave"]', 'sre = ["alice", "bob", "dave", "frank"]')


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    assert POLICY != DEFAULT_POLICY
    root = tmp_path_factory.mktemp("disable") / "site"
    with started_stack(root, users=("alice", "bob", "carol", "dave", "frank"), policy=POLICY) as st:
        yield st


def _krl_check(krl: Path, cert: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh-keygen", "-Q", "-f", str(krl), str(cert)], capture_output=True, text=True, check=False)


def _refused(argv: list[str], reason: str) -> str:
    done = run_ssh([*argv, "echo should-not-run"], timeout=30)
    stderr = done.stderr.decode(errors="replace")
    assert (done.returncode, done.stdout) == (255, b""), stderr
    lines = [line for line in stderr.splitlines() if line.startswith("jit-ssh: ")]
    assert len(lines) == 1, stderr
    assert reason in lines[0], stderr
    return lines[0]


def test_disabling_a_user_ends_their_session_revokes_their_grant_and_fills_the_krl(stack: LocalStack) -> None:
    request_id = granted(stack, "dave", "bob")
    cert = cached_certificate(stack, "dave", request_id)
    serial = read_certificate(cert).serial
    krl = stack.data_dir / "revoked.krl"
    assert _krl_check(krl, cert).returncode == 0  # the negative control: not revoked yet
    since = time.time() - 0.01
    with live_shell(ssh_argv(stack, "dave", request_id, extra=["-tt"])) as client:
        mark = len(client.output)
        seq = last_audit_seq(stack)
        done = stack.admin("user", "disable", "dave")
        assert done.stdout.split() == (
            f"User dave disabled; request {request_id} revoked, 2 certificate(s) in the KRL".split()
        ), done.stdout
        assert client.wait(timeout=30) == 255  # closed by the broker, which polls the store every second
        assert "disabled: session closed" in client.text()[mark:]
    row = ended_session(stack, since=since)
    assert "disabled" in row["end_reason"]

    # In the store, with its audit events: the grant revoked (both certificates, dave's and the session's
    # onward one), then the user disabled.
    revoked = audit_events(stack, "request.revoked", after_seq=seq)
    assert [(e["actor"], e["subject"], e["details"]["note"]) for e in revoked] == [
        ("admin", f"request:{request_id}", "user dave disabled")
    ]
    serials = sorted(revoked[0]["details"]["serials"])
    assert serials == sorted([serial, row["onward_serial"]])
    disabled = audit_events(stack, "user.disabled", after_seq=seq)
    assert [(e["subject"], e["details"]) for e in disabled] == [
        ("user:dave", {"requests": [request_id], "serials": revoked[0]["details"]["serials"]})
    ]

    # In the KRL the broker's data directory holds, as the real ssh-keygen reads it.
    checked = _krl_check(krl, cert)
    assert checked.returncode != 0, checked.stdout
    assert "REVOKED" in checked.stdout
    ca = CADirectory(stack.ca_dir)
    published = KRL.from_bytes(krl.read_bytes())
    assert serial in published.serials[ca.public_key(CARole.USER)]
    assert row["onward_serial"] in published.serials[ca.public_key(CARole.ACCESS)]

    # And dave's cached certificate opens nothing any more, with the reason on his terminal.
    _refused(ssh_argv(stack, "dave", request_id), "access refused: user dave is disabled")


def _disable_in_the_database(stack: LocalStack, user: str) -> None:
    with contextlib.closing(sqlite3.connect(stack.data_dir / "jit-ssh.db", timeout=10)) as db, db:
        assert db.execute("UPDATE users SET disabled = 1 WHERE name = ?", (user,)).rowcount == 1


def test_the_broker_checks_the_users_state_as_well_as_the_grant(stack: LocalStack, tmp_path: Path) -> None:
    request_id = granted(stack, "frank", "bob")
    argv = ssh_argv(stack, "frank", request_id)
    with control_master(argv, tmp_path / "ctl") as shared:
        # The positive control, on the connection made. Its output only: a multiplexed client sometimes closes
        # the channel before the broker relays the exit status (ssh then exits 255), a race of its own.
        done = run_ssh([*shared, "echo allowed"])
        assert done.stdout == b"allowed\n", done.stderr
        since = time.time() - 0.01
        with live_shell(ssh_argv(stack, "frank", request_id, extra=["-tt"])) as client:
            mark = len(client.output)
            seq = last_audit_seq(stack)
            _disable_in_the_database(stack, "frank")  # the grant stays approved, its certificates unrevoked
            assert client.wait(timeout=30) == 255
            assert "user frank was disabled: session closed" in client.text()[mark:]
        assert "disabled" in ended_session(stack, since=since)["end_reason"]
        # A new channel on the connection authenticated before: refused when it opens.
        _refused(shared, "user frank is disabled")
    # A new connection: refused at authentication, and audited.
    _refused(argv, "access refused: user frank is disabled")
    refusals = audit_events(stack, "session.refused", after_seq=seq)
    assert [e["details"]["reason"] for e in refusals] == ["user frank is disabled"]
    assert not audit_events(stack, "request.revoked", after_seq=seq)  # nothing but the user's state changed
