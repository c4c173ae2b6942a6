"""Clients verify hosts by certificates from the host CA: no trust on first use.

With a ``@cert-authority prod-web-3 <host CA>`` known_hosts line, the real ``ssh`` client and an asyncssh
client (as the broker is) connect to a host whose key the host CA certified, without prompting; a host
whose key has no certificate, a certificate from another CA, or one for another name is refused.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncssh
import pytest
from jit_ssh.ca import Certificate, CertType, KeySigner, KeyType, PublicKey
from jit_ssh.ca.certs import mint_user_certificate
from jit_ssh.cli.openssh import LocalSshd

pytestmark = pytest.mark.e2e

HOST = "prod-web-3"
Ssh = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def user_cert(access_ca: KeySigner, user_key: tuple[Path, PublicKey], login: str, tmp_path: Path) -> Path:
    now = datetime.now(UTC)
    cert = mint_user_certificate(
        access_ca,
        user_key[1],
        principals=[f"{login}@{HOST}"],
        key_id="host verification test",
        serial=1,
        valid_from=now,
        valid_until=now + timedelta(minutes=10),
        max_validity=timedelta(minutes=10),
    )
    path = tmp_path / "id-cert.pub"
    path.write_text(cert.to_openssh() + "\n", encoding="utf-8")
    return path


@pytest.fixture
def start_host(sshd_factory: Callable[..., LocalSshd], access_ca: KeySigner, login: str) -> Callable[..., LocalSshd]:
    def start(*, name: str = HOST, host_ca: KeySigner | None) -> LocalSshd:
        return sshd_factory(
            name, trusted_user_ca=access_ca.public_key, principals={login: [f"{login}@{HOST}"]}, host_ca=host_ca
        )

    return start


@pytest.fixture(scope="module")
def other_ca(ca_signers: dict[KeyType, KeySigner]) -> KeySigner:
    """A CA nobody's known_hosts trusts for hosts."""
    return ca_signers[KeyType.ED25519]


def _connect(
    ssh_client: Ssh,
    server: LocalSshd,
    user_key: tuple[Path, PublicKey],
    user_cert: Path,
    login: str,
    known_hosts: Path,
    **kwargs: object,
) -> subprocess.CompletedProcess[str]:
    return ssh_client(
        server,
        identity=user_key[0],
        certificate=user_cert,
        login=login,
        known_hosts=known_hosts,
        command="echo connected",
        debug=True,
        **kwargs,
    )


def _assert_host_refused(result: subprocess.CompletedProcess[str], *reasons: str) -> None:
    assert result.returncode == 255, (result.stdout, result.stderr)
    assert "connected" not in result.stdout
    assert "Host key verification failed." in result.stderr
    for reason in reasons:
        assert reason in result.stderr, result.stderr


# -- OpenSSH ssh ------------------------------------------------------------------------------------------


def test_ssh_connects_to_a_certified_host_without_prompting(
    start_host: Callable[..., LocalSshd],
    host_ca: KeySigner,
    host_known_hosts: Path,
    ssh_client: Ssh,
    user_key: tuple[Path, PublicKey],
    user_cert: Path,
    login: str,
) -> None:
    server = start_host(host_ca=host_ca)
    before = host_known_hosts.read_bytes()
    result = _connect(ssh_client, server, user_key, user_cert, login, host_known_hosts)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "connected"
    # Verified by its certificate under the host CA line, and nothing learned on first use.
    assert f"Host '{HOST}' is known and matches the ED25519-CERT host certificate." in result.stderr
    assert f"Found CA key in {host_known_hosts}:1" in result.stderr
    assert host_known_hosts.read_bytes() == before
    # The certificate the host presents is the one our host CA minted for it.
    host_cert = Certificate.parse(server.host_key_path.with_name(server.host_key_path.name + "-cert.pub").read_text())
    host_cert.check(trusted_ca=host_ca.public_key, cert_type=CertType.HOST, principal=HOST)
    assert host_cert.subject == server.host_key


def test_ssh_refuses_a_host_key_without_certificate(
    start_host: Callable[..., LocalSshd],
    host_known_hosts: Path,
    ssh_client: Ssh,
    user_key: tuple[Path, PublicKey],
    user_cert: Path,
    login: str,
) -> None:
    server = start_host(host_ca=None)
    result = _connect(ssh_client, server, user_key, user_cert, login, host_known_hosts)
    _assert_host_refused(result, f"No ED25519 host key is known for {HOST} and you have requested strict checking.")
    assert "Server host certificate" not in result.stderr
    # Nothing was learned on first use.
    assert host_known_hosts.read_text().count("\n") == 1


def test_ssh_refuses_a_host_certificate_from_another_ca(
    start_host: Callable[..., LocalSshd],
    other_ca: KeySigner,
    host_known_hosts: Path,
    ssh_client: Ssh,
    user_key: tuple[Path, PublicKey],
    user_cert: Path,
    login: str,
) -> None:
    server = start_host(host_ca=other_ca)
    result = _connect(ssh_client, server, user_key, user_cert, login, host_known_hosts)
    _assert_host_refused(result, "Server host certificate", other_ca.public_key.fingerprint(), "No matching CA found")


def test_ssh_refuses_a_host_certificate_for_another_name(
    start_host: Callable[..., LocalSshd],
    host_ca: KeySigner,
    host_known_hosts: Path,
    ssh_client: Ssh,
    user_key: tuple[Path, PublicKey],
    user_cert: Path,
    login: str,
) -> None:
    server = start_host(name="prod-web-4", host_ca=host_ca)
    result = _connect(ssh_client, server, user_key, user_cert, login, host_known_hosts)
    _assert_host_refused(result, "Certificate invalid: name is not a listed principal")


def test_ssh_refuses_when_the_name_dialled_is_not_in_the_certificate(
    start_host: Callable[..., LocalSshd],
    host_ca: KeySigner,
    tmp_path: Path,
    ssh_client: Ssh,
    user_key: tuple[Path, PublicKey],
    user_cert: Path,
    login: str,
) -> None:
    server = start_host(host_ca=host_ca)
    # The CA is trusted for every name, but the certificate names prod-web-3, not the address dialled.
    known_hosts = tmp_path / "known_hosts_any"
    known_hosts.write_text(f"@cert-authority * {host_ca.public_key.to_openssh()}\n")
    result = _connect(ssh_client, server, user_key, user_cert, login, known_hosts, host_key_alias=None)
    _assert_host_refused(result, "Certificate invalid: name is not a listed principal")
    # Positive control: the same known_hosts with the host's name works.
    ok = _connect(ssh_client, server, user_key, user_cert, login, known_hosts)
    assert ok.returncode == 0, ok.stderr


def test_ssh_refuses_a_ca_line_for_other_hosts(
    start_host: Callable[..., LocalSshd],
    host_ca: KeySigner,
    tmp_path: Path,
    ssh_client: Ssh,
    user_key: tuple[Path, PublicKey],
    user_cert: Path,
    login: str,
) -> None:
    server = start_host(host_ca=host_ca)
    known_hosts = tmp_path / "known_hosts_staging"
    known_hosts.write_text(f"@cert-authority staging-* {host_ca.public_key.to_openssh()}\n")
    result = _connect(ssh_client, server, user_key, user_cert, login, known_hosts)
    _assert_host_refused(result, "No matching CA found")


# -- asyncssh as the client (as the broker is) ------------------------------------------------------------


def _asyncssh_run(
    port: int,
    *,
    host_ca: KeySigner,
    user_key: tuple[Path, PublicKey],
    user_cert: Path,
    login: str,
    **options: object,
) -> str:
    async def run() -> str:
        known_hosts = asyncssh.import_known_hosts(f"@cert-authority {HOST} {host_ca.public_key.to_openssh()}\n")
        key = asyncssh.import_private_key(user_key[0].read_bytes())
        cert = asyncssh.import_certificate(user_cert.read_text())
        async with asyncssh.connect(
            "127.0.0.1",
            port,
            known_hosts=known_hosts,
            host_key_alias=HOST,
            username=login,
            client_keys=[(key, cert)],
            agent_path=None,
            config=None,
            connect_timeout=30,
            **options,
        ) as conn:
            result = await conn.run("echo connected", check=True)
            return str(result.stdout)

    return asyncio.run(asyncio.wait_for(run(), timeout=60))


def test_asyncssh_connects_to_a_certified_host(
    start_host: Callable[..., LocalSshd],
    host_ca: KeySigner,
    user_key: tuple[Path, PublicKey],
    user_cert: Path,
    login: str,
) -> None:
    server = start_host(host_ca=host_ca)
    output = _asyncssh_run(server.port, host_ca=host_ca, user_key=user_key, user_cert=user_cert, login=login)
    assert output.strip() == "connected"
    assert 'Accepted certificate ID "host verification test"' in server.log()


def test_asyncssh_refuses_a_host_without_certificate(
    start_host: Callable[..., LocalSshd],
    host_ca: KeySigner,
    user_key: tuple[Path, PublicKey],
    user_cert: Path,
    login: str,
    sshd_log_waiter: Callable[..., str],
) -> None:
    server = start_host(host_ca=None)
    # Trusting only a CA, asyncssh offers only certificate host key types: no algorithm in common.
    with pytest.raises((asyncssh.Error, ConnectionError)):
        _asyncssh_run(server.port, host_ca=host_ca, user_key=user_key, user_cert=user_cert, login=login)
    assert "no matching host key type found" in sshd_log_waiter(server, "no matching host key type found")
    # Even when it offers the plain key type too, the bare key is not trusted.
    with pytest.raises(asyncssh.HostKeyNotVerifiable, match="Host key is not trusted"):
        _asyncssh_run(
            server.port,
            host_ca=host_ca,
            user_key=user_key,
            user_cert=user_cert,
            login=login,
            server_host_key_algs=["ssh-ed25519-cert-v01@openssh.com", "ssh-ed25519"],
        )
    assert "Accepted" not in server.log()


def test_asyncssh_refuses_a_host_certificate_from_another_ca(
    start_host: Callable[..., LocalSshd],
    host_ca: KeySigner,
    other_ca: KeySigner,
    user_key: tuple[Path, PublicKey],
    user_cert: Path,
    login: str,
) -> None:
    server = start_host(host_ca=other_ca)
    with pytest.raises(asyncssh.HostKeyNotVerifiable, match="Host CA key is not trusted"):
        _asyncssh_run(server.port, host_ca=host_ca, user_key=user_key, user_cert=user_cert, login=login)
    assert "Accepted" not in server.log()


def test_asyncssh_refuses_a_host_certificate_for_another_name(
    start_host: Callable[..., LocalSshd],
    host_ca: KeySigner,
    user_key: tuple[Path, PublicKey],
    user_cert: Path,
    login: str,
) -> None:
    server = start_host(name="prod-web-4", host_ca=host_ca)
    with pytest.raises(asyncssh.HostKeyNotVerifiable, match="principal mismatch"):
        _asyncssh_run(server.port, host_ca=host_ca, user_key=user_key, user_cert=user_cert, login=login)
