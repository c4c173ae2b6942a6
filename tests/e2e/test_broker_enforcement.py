"""Invariant 6 end to end: a live interactive session is cut off when its grant is revoked or expires,
after a warning line in the terminal, and the end is in the recording, the session row and the audit log.

No wall-clock bounds are asserted: the tests wait (generously) for the end and check its reason and
order; the enforcement clock's own period is the broker's business.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jit_ssh.cli.bastion.stack import LocalStack

from tests.e2e.stack_fixture import (
    PtyClient,
    audit_events,
    cached_certificate,
    ended_session,
    granted,
    last_audit_seq,
    live_shell,
    metadata,
    read_certificate,
    recording_frames,
    ssh_argv,
    started_stack,
)

pytestmark = pytest.mark.e2e

WARN = 4  # seconds: broker.toml warn_before
SHORT = 10  # seconds: the grant that expires under a live session


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("enforcement") / "site"
    with started_stack(root, broker_settings={"warn_before": f'"{WARN}s"'}) as st:
        yield st


def _shell(stack: LocalStack, request_id: int) -> PtyClient:
    return live_shell(ssh_argv(stack, "alice", request_id, extra=["-tt"]))


def test_revocation_cuts_a_live_session_off(stack: LocalStack) -> None:
    request_id = granted(stack)
    since = time.time() - 0.01
    with _shell(stack, request_id) as client:
        mark = len(client.output)
        seq = last_audit_seq(stack)
        stack.jit("bob", "revoke", str(request_id), "--reason", "incident over", check=True)
        assert client.wait(timeout=30) == 255
        after = client.text()[mark:]
    assert f"grant {request_id} revoked: session closed" in after
    assert "ends in" not in after  # a 30-minute grant is never warned about here
    row = ended_session(stack, since=since)
    assert "revoked" in row["end_reason"]
    ended = [e for e in audit_events(stack, "session.ended", after_seq=seq) if e["subject"] == f"session:{row['id']}"]
    assert len(ended) == 1
    assert "revoked" in ended[0]["details"]["reason"]
    assert audit_events(stack, "request.revoked", after_seq=seq)
    _, frames, truncated = recording_frames(Path(row["recording_path"]))
    assert not truncated
    meta = metadata(frames)
    assert {"notice": f"grant {request_id} revoked: session closed"} in meta
    assert "revoked" in meta[-1]["end"]["reason"]


def test_expiry_warns_then_cuts_a_live_session_off(stack: LocalStack) -> None:
    request_id = stack.grant("alice", "bob", duration=f"{SHORT}s")
    stack.jit("alice", "cert", str(request_id), check=True)
    expires = read_certificate(cached_certificate(stack, "alice", request_id)).valid_before
    since = time.time() - 0.01
    with _shell(stack, request_id) as client:
        warned = client.expect(f"[jit-ssh] access to {stack.login}@{stack.host_names[0]} ends in", timeout=SHORT + 30)
        client.expect(f"[jit-ssh] grant {request_id} expired: session closed", start=warned, timeout=SHORT + 30)
        assert client.wait(timeout=30) == 255
    # The grant's end is the certificate's end: the session did not outlive it by more than a poll.
    assert time.time() >= expires - 1
    row = ended_session(stack, since=since)
    assert "expired" in row["end_reason"]
    _, frames, _ = recording_frames(Path(row["recording_path"]))
    notices = [m["notice"] for m in metadata(frames) if "notice" in m]
    assert len(notices) == 2, notices
    assert "ends in" in notices[0]
    assert f"(request {request_id})" in notices[0]
    assert notices[1] == f"grant {request_id} expired: session closed"
    assert "expired" in metadata(frames)[-1]["end"]["reason"]
