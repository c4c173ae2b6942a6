"""Shared fixtures: CA directories, user keys, and real OpenSSH sshd hosts on free loopback ports."""

from __future__ import annotations

import functools
import getpass
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from jit_ssh.ca import CADirectory, CARole, Certificate, KeySigner, KeyType, PublicKey
from jit_ssh.ca.certs import mint_host_certificate
from jit_ssh.ca.signer import generate_private_key
from jit_ssh.cli.openssh import LocalSshd, generate_ssh_key, ssh_base_options

PASSPHRASE = b"test passphrase 0123"


@pytest.fixture(scope="session")
def session_ca(tmp_path_factory: pytest.TempPathFactory) -> CADirectory:
    """One unencrypted CA for the whole run (key loading has its own tests)."""
    return CADirectory.create(tmp_path_factory.mktemp("ca") / "ca", passphrase=None, insecure_no_passphrase=True)


@pytest.fixture(scope="session")
def user_ca(session_ca: CADirectory) -> KeySigner:
    return session_ca.signer(CARole.USER, passphrase=None)


@pytest.fixture(scope="session")
def access_ca(session_ca: CADirectory) -> KeySigner:
    return session_ca.signer(CARole.ACCESS, passphrase=None)


@pytest.fixture(scope="session")
def host_ca(session_ca: CADirectory) -> KeySigner:
    return session_ca.signer(CARole.HOST, passphrase=None)


@pytest.fixture(scope="session")
def login() -> str:
    """The local account the test sshd logs in as (sshd can only switch to others as root)."""
    return getpass.getuser()


@pytest.fixture
def user_key(tmp_path: Path) -> tuple[Path, PublicKey]:
    path = tmp_path / "id_ed25519"
    return path, generate_ssh_key(path, comment="engineer")


@pytest.fixture
def sshd_factory(tmp_path: Path) -> Iterator[Callable[..., LocalSshd]]:
    """Start real sshd hosts; every one is stopped at the end of the test."""
    started: list[LocalSshd] = []

    def start(name: str = "prod-web-3", **kwargs: object) -> LocalSshd:
        host_ca = kwargs.pop("host_ca", None)
        if host_ca is not None:  # a test's own CA signs the host key directly, bypassing the issuer
            kwargs["certify_host"] = functools.partial(_certify_host, host_ca, name)
        server = LocalSshd(tmp_path / f"sshd-{name}-{len(started)}", name=name, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def _certify_host(host_ca: KeySigner, name: str, key: PublicKey) -> Certificate:
    now = datetime.now(UTC)
    return mint_host_certificate(
        host_ca, key, hostnames=[name], key_id=f"host {name}", serial=1, valid_from=now,
        valid_until=now + timedelta(days=1), max_validity=timedelta(days=1),
    )  # fmt: skip


# -- shared by the CA unit tests and the OpenSSH end-to-end tests -------------------------------------

HOST = "prod-web-3"


@pytest.fixture(scope="session")
def ca_signers() -> dict[KeyType, KeySigner]:
    """One in-memory CA key of every type a CA may use (Ed25519, ECDSA P-384, RSA 4096)."""
    return {key_type: KeySigner(generate_private_key(key_type)) for key_type in KeyType}


@pytest.fixture(scope="session")
def subject_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, PublicKey]]:
    """Engineers' key pairs made by ssh-keygen itself: ed25519, ecdsa (P-256) and rsa (3072)."""
    folder = tmp_path_factory.mktemp("subject-keys")
    keys: dict[str, tuple[Path, PublicKey]] = {}
    for key_type in ("ed25519", "ecdsa", "rsa"):
        path = folder / f"id_{key_type}"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", key_type, "-f", str(path)],
            check=True,
            stdin=subprocess.DEVNULL,
        )
        keys[key_type] = (path, PublicKey.parse(path.with_name(path.name + ".pub").read_text()))
    return keys


@dataclass(frozen=True)
class CertListing:
    """What ``ssh-keygen -L`` printed about one certificate, field by field."""

    type_line: str
    signing_ca: str
    key_id: str
    serial: int
    valid_from: datetime
    valid_to: datetime
    principals: list[str]
    critical_options: dict[str, str]
    extensions: dict[str, str]


def _listing_items(lines: list[str], start: int) -> tuple[list[str], int]:
    """The indented items under a ``Name:`` heading of ``ssh-keygen -L``, and the next line index."""
    head = lines[start].split(":", 1)[1].strip()
    if head == "(none)":
        return [], start + 1
    assert head == "", f"unexpected heading {lines[start]!r}"
    items = []
    index = start + 1
    while index < len(lines) and lines[index].startswith(" " * 16):
        items.append(lines[index].strip())
        index += 1
    return items, index


def keygen_list(cert_path: Path) -> CertListing:
    """Run the real ``ssh-keygen -L -f`` (in UTC, so its dates compare with ours) and parse it.

    ssh-keygen verifies the certificate's signature while loading it, so a listing is also proof that
    OpenSSH accepts the signature.
    """
    result = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(cert_path)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TZ": "UTC"},
    )
    assert result.returncode == 0, f"ssh-keygen -L refused {cert_path}: {result.stderr.strip()}"
    lines = result.stdout.splitlines()[1:]  # the first line repeats the file name
    fields: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    index = 0
    while index < len(lines):
        name = lines[index].strip().split(":", 1)[0]
        if name in ("Principals", "Critical Options", "Extensions"):
            lists[name], index = _listing_items(lines, index)
            continue
        fields[name] = lines[index].split(":", 1)[1].strip()
        index += 1
    match = re.fullmatch(r"from (\S+) to (\S+)", fields["Valid"])
    assert match, f"unexpected validity {fields['Valid']!r}"

    def utc(text: str) -> datetime:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)

    def options(items: list[str]) -> dict[str, str]:
        pairs = (item.partition(" ") for item in items)
        return {name: value for name, _, value in pairs}

    assert fields["Key ID"][0] == fields["Key ID"][-1] == '"'
    return CertListing(
        type_line=fields["Type"],
        signing_ca=fields["Signing CA"],
        key_id=fields["Key ID"][1:-1],
        serial=int(fields["Serial"]),
        valid_from=utc(match.group(1)),
        valid_to=utc(match.group(2)),
        principals=lists["Principals"],
        critical_options=options(lists["Critical Options"]),
        extensions=options(lists["Extensions"]),
    )


@pytest.fixture(scope="session")
def list_certificate() -> Callable[[Path], CertListing]:
    return keygen_list


def wait_for_log(server: LocalSshd, needle: str, *, after: int = 0, timeout: float = 10.0) -> str:
    """sshd's log from offset ``after`` once it contains ``needle`` (or as it is after ``timeout``).

    The privilege-separated child logs through its monitor, so a line may land just after the client
    has seen the refusal; this waits for it rather than racing it. Never a timing assertion.
    """
    deadline = time.monotonic() + timeout
    while True:
        text = server.log()[after:]
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


@pytest.fixture(scope="session")
def sshd_log_waiter() -> Callable[..., str]:
    return wait_for_log


@pytest.fixture
def host_known_hosts(tmp_path: Path, host_ca: KeySigner) -> Path:
    """A known_hosts file that trusts the host CA for HOST, and nothing else (no TOFU)."""
    path = tmp_path / "known_hosts"
    path.write_text(f"@cert-authority {HOST} {host_ca.public_key.to_openssh()}\n", encoding="utf-8")
    return path


def run_ssh(
    server: LocalSshd,
    *,
    identity: Path,
    certificate: Path | None,
    login: str,
    known_hosts: Path,
    command: str = "true",
    host_key_alias: str | None = HOST,
    debug: bool = False,
) -> subprocess.CompletedProcess[str]:
    """The real OpenSSH ``ssh`` client, non-interactive, trusting hosts only through ``known_hosts``."""
    options = ssh_base_options(known_hosts=known_hosts, host_key_alias=host_key_alias)
    if debug:  # ssh's first value of an option wins, so replace LogLevel rather than add another
        options = [o.replace("LogLevel=ERROR", "LogLevel=DEBUG1") for o in options]
    argv = ["ssh", *options, "-i", str(identity)]
    if certificate is not None:
        argv += ["-o", f"CertificateFile={certificate}"]
    argv += ["-p", str(server.port), "-l", login, "127.0.0.1", command]
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False)


@pytest.fixture(scope="session")
def ssh_client() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_ssh
