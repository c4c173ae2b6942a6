"""Shared fixtures: CA directories, user keys, and real OpenSSH sshd hosts on free loopback ports."""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jit_ssh.ca import CADirectory, CARole, KeySigner, PublicKey
from jit_ssh.cli.openssh import LocalSshd, generate_ssh_key

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
        server = LocalSshd(tmp_path / f"sshd-{name}-{len(started)}", name=name, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
