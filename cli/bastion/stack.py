"""A whole jit-ssh installation on loopback, in one folder: CA, policy, broker, real sshd hosts, users.

The demo, the end-to-end tests and the benchmarks stand on it, so each of them exercises what an
installation runs: the ``jit-ssh serve`` process, stock ``sshd`` hosts that trust only the access CA,
and the ``jit-ssh`` CLI and OpenSSH ``ssh`` of each user, with their own keys and settings.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType

from jit_ssh.ca import CADirectory, CARole, Certificate, JitSshError, PublicKey
from jit_ssh.ca.inventory import add_host, add_user
from jit_ssh.ca.issuer import Issuer
from jit_ssh.ca.store import Store

from ..openssh import LocalSshd, free_port, generate_ssh_key

__all__ = ["DEFAULT_POLICY", "LocalStack"]

_HOST_CERT_VALIDITY = timedelta(days=1)

DEFAULT_POLICY = """\
# Demo policy: sre members ask, another sre member approves; up to 4 hours.
[groups]
sre = ["alice", "bob", "dave"]
dev = ["carol"]
security = ["erin"]

[review]
groups = ["sre", "security"]

[[rule]]
name = "prod"
hosts = ["prod-*"]
requesters = ["sre"]
logins = ["{login}", "ubuntu"]
max_duration = "4h"
approvals = 1
approvers = ["sre"]
"""


def _certify_host(issuer: Issuer, name: str, key: PublicKey) -> Certificate:
    return issuer.issue_host(key, name=name, hostnames=[name], validity=_HOST_CERT_VALIDITY)


class LocalStack:
    """Build with :meth:`setup`, then :meth:`start_broker`; :meth:`stop` (or ``with``) ends everything."""

    def __init__(
        self,
        root: Path,
        *,
        hosts: Sequence[str] = ("prod-web-3",),
        users: Sequence[str] = ("alice", "bob", "carol"),
        policy: str | None = None,
        broker_settings: Mapping[str, str] | None = None,
        sshd_config: Sequence[str] = (),
        config_tail: str = "",
    ) -> None:
        self.root = root
        self.host_names = list(hosts)
        self.user_names = list(users)
        self.login = getpass.getuser()
        self.policy_text = (policy or DEFAULT_POLICY).replace("{login}", self.login)
        self.broker_settings = dict(broker_settings or {})
        self.sshd_config = list(sshd_config)
        self.config_tail = config_tail  # more of broker.toml after [broker], e.g. [[webhook]] tables
        self.hosts: dict[str, LocalSshd] = {}
        self.broker: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.config = root / "broker.toml"
        self.ca_dir = root / "ca"
        self.data_dir = root / "data"
        self.recordings_dir = self.data_dir / "recordings"
        self.known_hosts = root / "known_hosts"
        self.broker_log = root / "broker.log"

    # -- set-up ----------------------------------------------------------------------------------
    def setup(self) -> LocalStack:
        self.root.mkdir(parents=True, exist_ok=True)
        ca = CADirectory.create(self.ca_dir, passphrase=None, insecure_no_passphrase=True)
        access, host_ca = ca.public_key(CARole.ACCESS), ca.signer(CARole.HOST, passphrase=None)
        (self.root / "policy.toml").write_text(self.policy_text, encoding="utf-8")
        self.port = free_port()
        settings = {
            "listen": f'"127.0.0.1:{self.port}"',
            "data_dir": '"data"',
            "ca_dir": '"ca"',
            "policy": '"policy.toml"',
            **self.broker_settings,
        }
        body = "[broker]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()) + self.config_tail
        self.config.write_text(body, encoding="utf-8")
        self.data_dir.mkdir(exist_ok=True)
        store = Store(f"sqlite:///{self.data_dir / 'jit-ssh.db'}")
        try:
            # The hosts' certificates are issued as enrolment issues them: each with its row and audit event.
            issuer = Issuer(store, host_ca=host_ca)
            for name in self.host_names:
                self.hosts[name] = LocalSshd(
                    self.root / "hosts" / name,
                    name=name,
                    trusted_user_ca=access,
                    principals={self.login: [f"{self.login}@{name}"], "ubuntu": [f"ubuntu@{name}"]},
                    certify_host=functools.partial(_certify_host, issuer, name),
                    extra_config=self.sshd_config,
                ).start()
            for name, sshd in self.hosts.items():
                add_host(store, name, address="127.0.0.1", port=sshd.port, labels={"env": "prod"})
            for user in self.user_names:
                key = generate_ssh_key(self.root / "users" / user / "id_ed25519", comment=user)
                add_user(store, user, keys=[key], groups=[])
        finally:
            store.dispose()
        self.known_hosts.write_text(f"@cert-authority * {host_ca.public_key.to_openssh('jit-ssh-host-ca')}\n")
        for user in self.user_names:
            settings_file = self.root / "users" / user / "config.toml"
            values = {
                "bastion": "127.0.0.1", "port": self.port, "user": user, "identity": str(self.identity(user)),
                "known_hosts": str(self.known_hosts), "login": self.login,
            }  # fmt: skip
            settings_file.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()), encoding="utf-8")
        return self

    def identity(self, user: str) -> Path:
        return self.root / "users" / user / "id_ed25519"

    def public_key(self, user: str) -> PublicKey:
        return PublicKey.parse(self.identity(user).with_suffix(".pub").read_text(encoding="utf-8"))

    # -- processes -------------------------------------------------------------------------------
    def start_broker(self, *, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = self.broker_log.open("ab")
        self.broker = subprocess.Popen(
            [sys.executable, "-m", "jit_ssh.cli", "serve", "--config", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**os.environ, **(env or {})},
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.broker.poll() is not None:
                raise JitSshError(f"the broker exited at start: {self.broker_log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(4).startswith(b"SSH-"):
                        return self.broker
            except OSError:
                time.sleep(0.05)
        raise JitSshError(f"the broker did not start listening; see {self.broker_log}")

    def stop_broker(self, sig: int = signal.SIGTERM) -> int | None:
        if self.broker is None:
            return None
        if self.broker.poll() is None:
            self.broker.send_signal(sig)
            try:
                self.broker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.broker.kill()
                self.broker.wait()
        code = self.broker.returncode
        self.broker = None
        return code

    def stop(self) -> None:
        self.stop_broker()
        for sshd in self.hosts.values():
            sshd.stop()

    def __enter__(self) -> LocalStack:
        try:
            return self.setup()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- users -----------------------------------------------------------------------------------
    def user_env(self, user: str) -> dict[str, str]:
        home = self.root / "users" / user
        return {
            **os.environ,
            "JIT_SSH_CONFIG": str(home / "config.toml"),
            "XDG_CACHE_HOME": str(home / "cache"),
            "COLUMNS": "200",
        }

    @staticmethod
    def jit_argv() -> list[str]:
        """The ``jit-ssh`` CLI as a command line (run it with :meth:`user_env`)."""
        return [sys.executable, "-m", "jit_ssh.cli"]

    def jit(
        self, user: str, *args: str, check: bool = False, stdin: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the ``jit-ssh`` CLI as ``user``."""
        result = subprocess.run(
            [sys.executable, "-m", "jit_ssh.cli", *args],
            env=self.user_env(user),
            capture_output=True,
            text=True,
            input=stdin,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise JitSshError(f"jit-ssh {' '.join(args)} as {user} failed: {result.stderr.strip()}")
        return result

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run an admin command on the bastion (``--config`` added)."""
        result = subprocess.run(
            [sys.executable, "-m", "jit_ssh.cli", *args, "--config", str(self.config)],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise JitSshError(f"jit-ssh {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def grant(self, requester: str, approver: str, host: str | None = None, *, login: str | None = None,
              duration: str = "30m") -> int:  # fmt: skip
        """File a request as ``requester``, approve it as ``approver``; returns the request id."""
        target = host or self.host_names[0]
        filed = self.jit(
            requester, "request", target, "--reason", "test access", "--for", duration,
            "--login", login or self.login, "--no-wait", "--json", check=True,
        )  # fmt: skip
        request_id = int(json.loads(filed.stdout)["id"])
        self.jit(approver, "approve", str(request_id), check=True)
        return request_id

    def ssh_argv(self, user: str, request_id: int, host: str | None = None, *, login: str | None = None) -> list[str]:
        """The plain OpenSSH command line through the broker, with the user's cached certificate."""
        cert = self.root / "users" / user / "cache" / "jit-ssh" / f"request-{request_id}-cert.pub"
        return [
            "ssh", "-F", "none",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
            "-i", str(self.identity(user)), "-o", f"CertificateFile={cert}",
            "-p", str(self.port), "-l", f"{login or self.login}@{host or self.host_names[0]}", "127.0.0.1",
        ]  # fmt: skip
