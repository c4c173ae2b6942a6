"""A real OpenSSH ``sshd``, set up as an enrolled host, driven by the real ``ssh`` client.

The host trusts the access CA (``TrustedUserCAKeys``), lists ``LOGIN@prod-web-3`` in the principals file
of the login, and reads our KRL (``RevokedKeys``) on every authentication. A certificate with the right
principal logs in; every refusal is checked in sshd's own log for its reason, so that a test cannot pass
because the login failed for some other cause.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from jit_ssh.ca import KRL, Certificate, KeySigner, KeyType, PublicKey
from jit_ssh.ca.certs import mint_user_certificate
from jit_ssh.cli.openssh import LocalSshd

pytestmark = pytest.mark.e2e

HOST = "prod-web-3"


@dataclass
class Host:
    """An sshd host and everything a test needs to log in to it."""

    sshd: LocalSshd
    login: str
    key_path: Path
    key: PublicKey
    known_hosts: Path
    folder: Path
    ssh: Callable[..., subprocess.CompletedProcess[str]]
    wait_for_log: Callable[..., str]

    @property
    def principal(self) -> str:
        return f"{self.login}@{HOST}"

    def mint(self, signer: KeySigner, **overrides: object) -> Certificate:
        now = datetime.now(UTC)
        arguments: dict[str, object] = {
            "principals": [self.principal],
            "key_id": "request 7 user alice session s-1",
            "serial": 1000,
            "valid_from": now,
            "valid_until": now + timedelta(minutes=5),
            "max_validity": timedelta(minutes=5),
        }
        arguments.update(overrides)
        return mint_user_certificate(signer, self.key, **arguments)  # type: ignore[arg-type]

    def write(self, cert: Certificate, name: str = "id-cert.pub") -> Path:
        path = self.folder / name
        path.write_text(cert.to_openssh() + "\n", encoding="utf-8")
        return path

    def attempt(
        self, cert: Certificate, command: str = "echo logged in as $(id -un)", *, key_path: Path | None = None
    ) -> tuple[subprocess.CompletedProcess[str], int]:
        """Log in with ``cert``; also return where sshd's log stood before, to read only this attempt."""
        offset = len(self.sshd.log())
        result = self.ssh(
            self.sshd,
            identity=key_path or self.key_path,
            certificate=self.write(cert),
            login=self.login,
            known_hosts=self.known_hosts,
            command=command,
        )
        return result, offset

    def assert_accepted(self, cert: Certificate, command: str = "echo logged in as $(id -un)") -> str:
        result, offset = self.attempt(cert, command)
        assert result.returncode == 0, result.stderr
        log = self.wait_for_log(
            self.sshd, f'Accepted certificate ID "{cert.key_id}" (serial {cert.serial})', after=offset
        )
        assert f'Accepted certificate ID "{cert.key_id}" (serial {cert.serial})' in log
        assert f"Accepted publickey for {self.login}" in log
        return result.stdout

    def assert_refused(self, cert: Certificate, reason: str) -> str:
        result, offset = self.attempt(cert, "echo SHOULD NOT RUN")
        assert result.returncode == 255, (result.returncode, result.stdout, result.stderr)
        assert "SHOULD NOT RUN" not in result.stdout
        assert "Permission denied (publickey)" in result.stderr
        log = self.wait_for_log(self.sshd, reason, after=offset)
        assert reason in log, log
        assert f"Accepted publickey for {self.login}" not in log
        return log


@pytest.fixture
def host(
    sshd_factory: Callable[..., LocalSshd],
    access_ca: KeySigner,
    host_ca: KeySigner,
    login: str,
    user_key: tuple[Path, PublicKey],
    host_known_hosts: Path,
    tmp_path: Path,
    ssh_client: Callable[..., subprocess.CompletedProcess[str]],
    sshd_log_waiter: Callable[..., str],
) -> Host:
    sshd = sshd_factory(
        HOST, trusted_user_ca=access_ca.public_key, principals={login: [f"{login}@{HOST}"]}, host_ca=host_ca
    )
    return Host(sshd, login, user_key[0], user_key[1], host_known_hosts, tmp_path, ssh_client, sshd_log_waiter)


# -- the happy path ---------------------------------------------------------------------------------------


def test_certificate_with_the_right_principal_logs_in(host: Host, access_ca: KeySigner) -> None:
    cert = host.mint(access_ca, source_address=["127.0.0.1"])
    assert host.assert_accepted(cert).strip() == f"logged in as {host.login}"


@pytest.mark.parametrize("subject_type", ["ecdsa", "rsa"])
def test_other_subject_key_types_log_in(
    host: Host, access_ca: KeySigner, subject_keys: dict[str, tuple[Path, PublicKey]], subject_type: str
) -> None:
    key_path, key = subject_keys[subject_type]
    now = datetime.now(UTC)
    cert = mint_user_certificate(
        access_ca,
        key,
        principals=[host.principal],
        key_id=f"{subject_type} subject",
        serial=2000,
        valid_from=now,
        valid_until=now + timedelta(minutes=5),
        max_validity=timedelta(minutes=5),
    )
    offset = len(host.sshd.log())
    result = host.ssh(
        host.sshd,
        identity=key_path,
        certificate=host.write(cert, f"{subject_type}-cert.pub"),
        login=host.login,
        known_hosts=host.known_hosts,
        command="echo ok",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert f'Accepted certificate ID "{subject_type} subject"' in host.wait_for_log(
        host.sshd, "Accepted certificate", after=offset
    )


@pytest.mark.parametrize("ca_type", [KeyType.ECDSA, KeyType.RSA])
def test_ecdsa_and_rsa_cas_are_trusted_by_sshd_too(
    ca_type: KeyType,
    ca_signers: dict[KeyType, KeySigner],
    sshd_factory: Callable[..., LocalSshd],
    host_ca: KeySigner,
    login: str,
    user_key: tuple[Path, PublicKey],
    host_known_hosts: Path,
    tmp_path: Path,
    ssh_client: Callable[..., subprocess.CompletedProcess[str]],
    sshd_log_waiter: Callable[..., str],
) -> None:
    signer = ca_signers[ca_type]
    sshd = sshd_factory(
        HOST, trusted_user_ca=signer.public_key, principals={login: [f"{login}@{HOST}"]}, host_ca=host_ca
    )
    host = Host(sshd, login, user_key[0], user_key[1], host_known_hosts, tmp_path, ssh_client, sshd_log_waiter)
    assert host.assert_accepted(host.mint(signer)).strip() == f"logged in as {login}"
    # Negative control: the same host refuses the Ed25519 access CA it does not trust.
    other = next(s for t, s in ca_signers.items() if t is not ca_type)
    log = host.assert_refused(host.mint(other), other.public_key.fingerprint())
    assert "Accepted certificate" not in log


def test_force_command_runs_instead_of_the_command_asked(host: Host, access_ca: KeySigner) -> None:
    cert = host.mint(access_ca, force_command="echo forced command")
    assert host.assert_accepted(cert, "echo what the user asked").strip() == "forced command"


# -- refusals, each with its reason in sshd's log -----------------------------------------------------------


def test_wrong_principal_is_refused(host: Host, access_ca: KeySigner) -> None:
    host.assert_refused(
        host.mint(access_ca, principals=[f"{host.login}@prod-web-4"]),
        "Certificate does not contain an authorized principal",
    )
    # The bare login, which sshd would accept without a principals file, is refused too.
    host.assert_refused(host.mint(access_ca, principals=[host.login]), "does not contain an authorized principal")
    # Positive control on the same host: the right principal still works.
    host.assert_accepted(host.mint(access_ca))


def test_expired_certificate_is_refused(host: Host, access_ca: KeySigner) -> None:
    past = datetime.now(UTC) - timedelta(hours=2)
    cert = host.mint(
        access_ca, now=past, valid_from=past, valid_until=past + timedelta(minutes=5), key_id="expired one"
    )
    host.assert_refused(cert, "Certificate invalid: expired")


def test_not_yet_valid_certificate_is_refused(host: Host, access_ca: KeySigner) -> None:
    start = datetime.now(UTC) + timedelta(minutes=10)
    cert = host.mint(access_ca, valid_from=start, valid_until=start + timedelta(minutes=5), key_id="future one")
    host.assert_refused(cert, "Certificate invalid: not yet valid")


def test_source_address_mismatch_is_refused(host: Host, access_ca: KeySigner) -> None:
    log = host.assert_refused(
        host.mint(access_ca, source_address=["10.9.9.9/32"]), "not from a permitted source address"
    )
    assert "Refused by certificate options" in log
    # Positive control: the loopback network the client really comes from is accepted.
    host.assert_accepted(host.mint(access_ca, source_address=["10.9.9.9/32", "127.0.0.0/8"]))


def test_certificate_from_the_user_ca_is_refused(host: Host, user_ca: KeySigner, access_ca: KeySigner) -> None:
    """An engineer's certificate (user CA) opens nothing but the broker: hosts trust only the access CA."""
    cert = host.mint(user_ca, key_id="engineer cert")
    log = host.assert_refused(cert, f"CA ED25519 {user_ca.public_key.fingerprint()}")
    # sshd names the failing certificate and its (untrusted) CA, and never reached the principal check.
    assert "ID engineer cert (serial 1000) CA ED25519" in log
    assert "Accepted certificate" not in log
    assert "authorized principal" not in log
    assert user_ca.public_key != access_ca.public_key


def test_revoked_serial_is_refused(host: Host, access_ca: KeySigner) -> None:
    cert = host.mint(access_ca, serial=4242)
    host.assert_accepted(cert)
    krl = KRL.build(serials={access_ca.public_key: [4242]}, version=1)
    host.sshd.write_krl(krl)
    # sshd re-reads RevokedKeys on every authentication: no restart needed.
    host.assert_refused(cert, f"revoked by file {host.sshd.krl_path}")
    # ssh-keygen agrees with our KRL and with sshd.
    query = subprocess.run(
        ["ssh-keygen", "-Q", "-f", str(host.sshd.krl_path), str(host.write(cert))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert query.returncode == 1
    assert krl.is_revoked(cert)
    # Negative control: another serial of the same CA is still accepted.
    other = host.mint(access_ca, serial=4243)
    assert not krl.is_revoked(other)
    host.assert_accepted(other)


def test_revoked_range_and_key_id_are_refused(host: Host, access_ca: KeySigner, user_ca: KeySigner) -> None:
    in_range = host.mint(access_ca, serial=505)
    by_id = host.mint(access_ca, serial=9000, key_id="request 13 user mallory")
    untouched = host.mint(access_ca, serial=510)
    host.sshd.write_krl(
        KRL.build(
            serials={access_ca.public_key: range(500, 510), user_ca.public_key: [510]},
            key_ids={access_ca.public_key: ["request 13 user mallory"]},
            version=2,
        )
    )
    host.assert_refused(in_range, "revoked by file")
    host.assert_refused(by_id, "revoked by file")
    # Serial 510 is revoked only under the user CA: the access CA's 510 is another certificate.
    host.assert_accepted(untouched)


def test_emptied_krl_lets_the_certificate_in_again(host: Host, access_ca: KeySigner) -> None:
    cert = host.mint(access_ca, serial=77)
    host.sshd.write_krl(KRL.build(serials={access_ca.public_key: [77]}, version=1))
    host.assert_refused(cert, "revoked by file")
    host.sshd.write_krl(KRL.build(version=2))
    host.assert_accepted(cert)
