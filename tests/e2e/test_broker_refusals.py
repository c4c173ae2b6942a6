"""What the broker (and the host behind it) refuses, each with a clear message and an audit event.

Invariant 4: the broker proxies only for a certificate from the user CA, not revoked, whose grant is
active now, for a host among its principals and a login the grant allows. Certificates the real CLI
cannot produce (a serial never issued, principals beyond the grant) are forged with the real user CA,
so that the broker's own checks are what refuses them. Each refusal sits beside its positive control.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from jit_ssh.ca import CADirectory, CARole, KeySigner, KeyType
from jit_ssh.ca.signer import generate_private_key
from jit_ssh.cli.bastion.stack import DEFAULT_POLICY, LocalStack

from tests.e2e.stack_fixture import (
    audit_events,
    cached_certificate,
    forge_certificate,
    granted,
    last_audit_seq,
    read_certificate,
    run_ssh,
    session_rows,
    ssh_argv,
    ssh_options,
    started_stack,
    wait_for,
)

pytestmark = pytest.mark.e2e

WEB, DB = "prod-web-3", "prod-db-1"
SHORT = 4  # seconds of the grant that the expiry refusal waits out


@dataclass
class Site:
    stack: LocalStack
    request_id: int  # alice's grant for WEB as the local login
    short_id: int  # alice's grant that lapses after SHORT seconds
    work: Path

    def user_ca(self) -> KeySigner:
        return CADirectory(self.stack.ca_dir).signer(CARole.USER, passphrase=None)

    def access_ca(self) -> KeySigner:
        return CADirectory(self.stack.ca_dir).signer(CARole.ACCESS, passphrase=None)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("refusals")
    # "nobody" may be granted, but no host has a principals file for it: the host refuses it.
    policy = DEFAULT_POLICY.replace('logins = ["{login}", "ubuntu"]', 'logins = ["{login}", "ubuntu", "nobody"]')
    assert policy != DEFAULT_POLICY
    with started_stack(work / "site", hosts=(WEB, DB), policy=policy, sshd_config=["MaxSessions 1"]) as stack:
        short_id = stack.grant("alice", "bob", duration=f"{SHORT}s")
        stack.jit("alice", "cert", str(short_id), check=True)
        request_id = granted(stack)
        yield Site(stack, request_id, short_id, work)


def refused(site: Site, argv: list[str], reason: str, *, target: str) -> str:
    """ssh is refused with the reason in the auth banner, and the refusal is audited once."""
    before = last_audit_seq(site.stack)
    done = run_ssh([*argv, "echo should-not-run"], timeout=30)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 255, stderr
    assert done.stdout == b""
    lines = [line for line in stderr.splitlines() if line.startswith("jit-ssh: access refused: ")]
    assert len(lines) == 1, stderr
    assert reason in lines[0], stderr
    events = audit_events(site.stack, "session.refused", after_seq=before)
    assert [e["subject"] for e in events] == [f"target:{target}"], events
    assert reason in events[0]["details"]["reason"]
    assert events[0]["details"]["reason"] in lines[0]
    return lines[0]


def works(argv: list[str]) -> None:
    done = run_ssh([*argv, "echo allowed"], timeout=30)
    assert (done.returncode, done.stdout) == (0, b"allowed\n"), done.stderr


def test_certificate_for_another_host(site: Site) -> None:
    st = site.stack
    works(ssh_argv(st, "alice", site.request_id))
    refused(site, ssh_argv(st, "alice", site.request_id, host=DB), f"not valid for '{st.login}@{DB}'",
            target=f"{st.login}@{DB}")  # fmt: skip


def test_certificate_never_issued(site: Site) -> None:
    # Signed by the real user CA, yet no grant stands behind it: the broker has no record of the serial.
    st = site.stack
    cert = forge_certificate(
        st, "alice", site.user_ca(), site.work / "never-issued-cert.pub",
        principals=[f"{st.login}@{WEB}"], serial=987654, key_id="jit-ssh request=1 user=alice serial=987654",
    )  # fmt: skip
    refused(site, ssh_argv(st, "alice", 0, cert=cert), "serial 987654 was not issued by this broker",
            target=f"{st.login}@{WEB}")  # fmt: skip


def test_host_outside_the_grant(site: Site) -> None:
    # A certificate with the real serial and key id but one principal more than the grant: the broker
    # checks the grant behind a certificate, not only the certificate.
    st = site.stack
    real = read_certificate(cached_certificate(st, "alice", site.request_id))
    cert = forge_certificate(
        st, "alice", site.user_ca(), site.work / "wider-cert.pub",
        principals=[f"{st.login}@{WEB}", f"{st.login}@{DB}"], serial=real.serial, key_id=real.key_id,
    )  # fmt: skip
    works(ssh_argv(st, "alice", 0, cert=cert))  # the principal the grant covers still passes
    refused(site, ssh_argv(st, "alice", 0, cert=cert, host=DB), f"request {site.request_id} does not cover",
            target=f"{st.login}@{DB}")  # fmt: skip


def test_wrong_login(site: Site) -> None:
    st = site.stack
    refused(site, ssh_argv(st, "alice", site.request_id, login="ubuntu"), f"not valid for 'ubuntu@{WEB}'",
            target=f"ubuntu@{WEB}")  # fmt: skip
    real = read_certificate(cached_certificate(st, "alice", site.request_id))
    cert = forge_certificate(
        st, "alice", site.user_ca(), site.work / "login-cert.pub",
        principals=[f"ubuntu@{WEB}"], serial=real.serial, key_id=real.key_id,
    )  # fmt: skip
    refused(site, ssh_argv(st, "alice", 0, cert=cert, login="ubuntu"), f"request {site.request_id} does not cover",
            target=f"ubuntu@{WEB}")  # fmt: skip


def test_certificate_from_the_wrong_ca(site: Site) -> None:
    st = site.stack
    target = f"{st.login}@{WEB}"
    real = read_certificate(cached_certificate(st, "alice", site.request_id))
    foreign = KeySigner(generate_private_key(KeyType.ED25519))
    for name, signer in (("access", site.access_ca()), ("foreign", foreign)):
        cert = forge_certificate(
            st, "alice", signer, site.work / f"{name}-cert.pub",
            principals=[target], serial=real.serial, key_id=real.key_id,
        )  # fmt: skip
        refused(site, ssh_argv(st, "alice", 0, cert=cert), "not by the trusted CA", target=target)


def test_revoked_grant(site: Site) -> None:
    st = site.stack
    request_id = st.grant("alice", "bob")
    st.jit("alice", "cert", str(request_id), check=True)
    works(ssh_argv(st, "alice", request_id))
    st.jit("bob", "revoke", str(request_id), check=True)
    serial = read_certificate(cached_certificate(st, "alice", request_id)).serial
    refused(site, ssh_argv(st, "alice", request_id), f"serial {serial} is revoked", target=f"{st.login}@{WEB}")


def test_expired_grant(site: Site) -> None:
    st = site.stack
    cert_path = cached_certificate(st, "alice", site.short_id)
    real = read_certificate(cert_path)
    wait_for(lambda: time.time() > real.valid_before + 1, timeout=SHORT + 30, what="the short grant to lapse")
    refused(site, ssh_argv(st, "alice", site.short_id), "expired", target=f"{st.login}@{WEB}")
    # A certificate that outlives its grant (forged: the broker never issues one) is refused all the same.
    cert = forge_certificate(
        st, "alice", site.user_ca(), site.work / "outlives-cert.pub", principals=list(real.principals),
        serial=real.serial, key_id=real.key_id, valid_for=timedelta(hours=1),
    )  # fmt: skip
    line = refused(site, ssh_argv(st, "alice", 0, cert=cert), f"request {site.short_id}", target=f"{st.login}@{WEB}")
    assert "expired" in line


def test_engineer_certificate_refused_by_the_host(site: Site) -> None:
    """Hosts trust only the access CA: an engineer's certificate opens nothing but a broker session."""
    st = site.stack
    sshd = st.hosts[WEB]
    target = f"{st.login}@{WEB}"

    def direct(cert: Path) -> subprocess.CompletedProcess[bytes]:
        options = ssh_options(st, "alice", cert, st.login)
        return run_ssh(["ssh", *options, "-o", f"HostKeyAlias={WEB}", "-p", str(sshd.port), "127.0.0.1", "echo in"])

    log_before = len(sshd.log())
    done = direct(cached_certificate(st, "alice", site.request_id))
    assert done.returncode == 255
    assert done.stdout == b""
    assert b"Permission denied" in done.stderr
    user_ca = CADirectory(st.ca_dir).public_key(CARole.USER).fingerprint()
    failed = f"Failed publickey for {st.login} from 127.0.0.1"
    log = wait_for(lambda: failed in sshd.log()[log_before:] and sshd.log()[log_before:], timeout=10,
                   what="sshd to log the refused certificate")  # fmt: skip
    assert f"CA ED25519 {user_ca}" in log
    assert "Accepted" not in log

    # Positive control: the same principal from the access CA is let in, so the CA is what was refused.
    real = read_certificate(cached_certificate(st, "alice", site.request_id))
    onward = forge_certificate(
        st, "alice", site.access_ca(), site.work / "direct-access-cert.pub",
        principals=[target], serial=real.serial + 100000, key_id="test: access-CA control",
    )  # fmt: skip
    done = direct(onward)
    assert (done.returncode, done.stdout) == (0, b"in\n"), done.stderr


# -- the host's own refusals reach the client ---------------------------------------------------------
def test_host_refuses_the_login(site: Site) -> None:
    st = site.stack
    request_id = st.grant("alice", "bob", login="nobody")
    st.jit("alice", "cert", str(request_id), check=True)
    done = run_ssh([*ssh_argv(st, "alice", request_id, login="nobody"), "true"], timeout=60)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 255, stderr
    assert f"jit-ssh: host {WEB} refused the broker's certificate for nobody" in stderr


def test_host_max_sessions_reaches_the_client(site: Site) -> None:
    """sshd's MaxSessions 1: the second channel of one client connection is refused by the host."""
    st = site.stack
    control = site.work / "mux.sock"
    base = ssh_argv(st, "alice", site.request_id, extra=["-S", str(control)])
    master = subprocess.Popen(
        [*base[:1], "-M", "-N", "-o", "ControlPersist=no", *base[1:]],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    first: subprocess.Popen[bytes] | None = None
    try:
        wait_for(control.exists, timeout=30, what="the control master")
        since = time.time() - 0.01
        first = subprocess.Popen(
            [*base, "echo first-open; sleep 60"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert first.stdout is not None
        assert first.stdout.readline() == b"first-open\n"
        done = run_ssh([*base, "echo second"], timeout=60)
        stderr = done.stderr.decode(errors="replace")
        assert (done.returncode, done.stdout) == (255, b""), stderr
        assert f"jit-ssh: host {WEB} refused a new session" in stderr
        # The first session is untouched by its neighbour's refusal.
        assert first.poll() is None
        rows = wait_for(
            lambda: [r for r in session_rows(st, since=since) if r["ended_at"] is not None], what="the refused row"
        )
        assert "refused a new session" in rows[0]["end_reason"]
    finally:
        if first is not None:
            first.kill()
            first.wait()
            if first.stdout is not None:
                first.stdout.close()
        subprocess.run([*base[:1], "-S", str(control), "-O", "exit", "127.0.0.1"], capture_output=True,
                       timeout=30, check=False)  # fmt: skip
        try:
            master.wait(timeout=30)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait()
        if master.stderr is not None:
            master.stderr.close()
