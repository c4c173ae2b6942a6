"""Stock OpenSSH, driven from Python: a local ``sshd`` configured as a jit-ssh host would be, and the
``ssh`` client options that trust hosts by certificate only.

The demo, the tests and the benchmarks all use these, so what they exercise is what a host runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from jit_ssh.ca import KRL, Certificate, JitSshError, PublicKey

__all__ = ["LocalSshd", "find_sshd", "free_port", "generate_ssh_key", "ssh_base_options"]

_START_TIMEOUT = 10.0


def find_sshd() -> str:
    for candidate in (shutil.which("sshd"), "/usr/sbin/sshd"):
        if candidate and Path(candidate).exists():
            return str(Path(candidate).resolve())  # sshd re-executes itself and needs an absolute path
    raise JitSshError("OpenSSH sshd is not installed: run 'apt-get install -y openssh-server'")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def generate_ssh_key(path: Path, *, comment: str = "") -> PublicKey:
    """An unencrypted Ed25519 key pair made by ``ssh-keygen``, as an engineer would have."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return PublicKey.parse(path.with_name(path.name + ".pub").read_text(encoding="utf-8"))


def ssh_base_options(*, known_hosts: Path, host_key_alias: str | None = None) -> list[str]:
    """Options for ``ssh`` that never ask about a host key: only hosts certified by our host CA pass."""
    options = [
        "-F", "none",
        "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
        "-o", "LogLevel=ERROR",
    ]  # fmt: skip
    if host_key_alias:
        options += ["-o", f"HostKeyAlias={host_key_alias}"]
    return options


class LocalSshd:
    """A real OpenSSH ``sshd`` on a free loopback port, set up as ``jit-ssh host enroll`` would set up a
    host: trusting only the access CA, one principals file per login, a KRL, and a host certificate.

    ``certify_host`` signs the host's key when it is made (the CA's issuer, which keeps a row and an audit
    event of it, as for an enrolled host); without it the host has no certificate."""

    def __init__(
        self,
        root: Path,
        *,
        name: str,
        trusted_user_ca: PublicKey,
        principals: Mapping[str, Sequence[str]],
        certify_host: Callable[[PublicKey], Certificate] | None = None,
        extra_config: Sequence[str] = (),
    ) -> None:
        self.root = root
        self.name = name
        self.trusted_user_ca = trusted_user_ca
        self.principals = dict(principals)
        self.certify_host = certify_host
        self.extra_config = list(extra_config)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.host_key_path = root / "ssh_host_ed25519_key"
        self.krl_path = root / "revoked.krl"
        self.log_path = root / "sshd.log"
        self.host_key: PublicKey | None = None

    # -- set-up ----------------------------------------------------------------------------------
    def _prepare(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "home").mkdir(exist_ok=True)
        principals_dir = self.root / "principals"
        principals_dir.mkdir(exist_ok=True)
        for login, names in self.principals.items():
            (principals_dir / login).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
        if not self.host_key_path.exists():
            self.host_key = generate_ssh_key(self.host_key_path, comment=f"host key of {self.name}")
        else:
            self.host_key = PublicKey.parse(self.host_key_path.with_suffix(".pub").read_text(encoding="utf-8"))
        lines = [
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key_path}",
            f"PidFile {self.root / 'sshd.pid'}",
            "AuthorizedKeysFile none",
            f"TrustedUserCAKeys {self.root / 'trusted_user_ca_keys.pub'}",
            f"AuthorizedPrincipalsFile {principals_dir}/%u",
            f"RevokedKeys {self.krl_path}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            f"SetEnv HOME={self.root / 'home'}",
            "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE",
            "MaxStartups 200:30:400",
            # The principals files live under a temporary folder, below the world-writable /tmp, which
            # StrictModes rejects; an enrolled host keeps them in /etc/ssh and keeps StrictModes on.
            "StrictModes no",
            *self.extra_config,
        ]
        if self.certify_host is not None:
            cert = self.certify_host(self.host_key)
            cert_path = self.host_key_path.with_name(self.host_key_path.name + "-cert.pub")
            cert_path.write_text(cert.to_openssh() + "\n", encoding="utf-8")
            lines.append(f"HostCertificate {cert_path}")
        (self.root / "trusted_user_ca_keys.pub").write_text(self.trusted_user_ca.to_openssh() + "\n", encoding="utf-8")
        if not self.krl_path.exists():
            self.write_krl(KRL.build(version=0))
        config = self.root / "sshd_config"
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return config

    def write_krl(self, krl: KRL) -> None:
        tmp = self.krl_path.with_suffix(".tmp")
        tmp.write_bytes(krl.to_bytes())
        tmp.replace(self.krl_path)

    # -- life ------------------------------------------------------------------------------------
    def start(self) -> LocalSshd:
        sshd = find_sshd()
        config = self._prepare()
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        check = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise JitSshError(f"sshd refused its configuration: {check.stderr.strip()}")
        for _ in range(5):  # the free port may be taken between asking and binding
            self.port = free_port()
            log = self.log_path.open("ab")
            self.process = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(config), "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
            log.close()
            if self._wait_ready():
                return self
            self.stop()
        raise JitSshError(f"sshd did not start; see {self.log_path}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(4).startswith(b"SSH-"):
                        return True
            except OSError:
                time.sleep(0.02)
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> LocalSshd:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
