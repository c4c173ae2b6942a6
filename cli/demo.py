"""``jit-ssh demo``: the whole product on loopback, in a temporary folder, on embedded defaults.

So far: a CA, a real sshd host trusting the access CA, a certificate for ``LOGIN@HOST``, a login with
the stock ``ssh`` client, and a revocation that the host enforces through the KRL.
"""

from __future__ import annotations

import getpass
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from jit_ssh.ca import KRL, CADirectory, CARole, JitSshError, mint_user_certificate
from jit_ssh.ca.validate import target_principal

from .openssh import LocalSshd, generate_ssh_key, ssh_base_options
from .output import console, step

__all__ = ["demo"]

HOST = "prod-web-3"


def demo(
    keep: Annotated[bool, typer.Option("--keep", help="Leave the demo host running and print how to use it.")] = False,
) -> None:
    """Run jit-ssh end to end on this machine, in a temporary folder, and clean up."""
    workdir = Path(tempfile.mkdtemp(prefix="jit-ssh-demo-"))
    sshd: LocalSshd | None = None
    try:
        step(f"Creating the user, access and host CA keys in {workdir / 'ca'} (unencrypted: demo only)")
        ca = CADirectory.create(workdir / "ca", passphrase=None, insecure_no_passphrase=True)
        access = ca.signer(CARole.ACCESS, passphrase=None)
        host_ca = ca.signer(CARole.HOST, passphrase=None)
        login = getpass.getuser()
        principal = target_principal(login, HOST)

        step(f"Starting a real OpenSSH sshd as host {HOST}, trusting only the access CA")
        sshd = LocalSshd(
            workdir / HOST,
            name=HOST,
            trusted_user_ca=access.public_key,
            principals={login: [principal]},
            host_ca=host_ca,
        ).start()
        console.print(f"    sshd on 127.0.0.1:{sshd.port}; principals file for {login!r} lists {principal!r}")

        step("Generating an engineer's key and signing a 5-minute certificate for " + principal)
        key = generate_ssh_key(workdir / "id_ed25519", comment="engineer")
        now = datetime.now(UTC)
        cert = mint_user_certificate(
            access,
            key,
            principals=[principal],
            key_id=f"demo session for {login}",
            serial=1,
            valid_from=now,
            valid_until=now + timedelta(minutes=5),
            max_validity=timedelta(minutes=5),
            source_address=["127.0.0.1"],
        )
        cert_path = workdir / "id_ed25519-cert.pub"
        cert_path.write_text(cert.to_openssh() + "\n", encoding="utf-8")
        console.print(
            subprocess.run(
                ["ssh-keygen", "-L", "-f", str(cert_path)], capture_output=True, text=True, check=True
            ).stdout.rstrip()
        )

        known_hosts = workdir / "known_hosts"
        known_hosts.write_text(f"@cert-authority {HOST} {host_ca.public_key.to_openssh()}\n", encoding="utf-8")
        argv = [
            "ssh", *ssh_base_options(known_hosts=known_hosts, host_key_alias=HOST),
            "-i", str(workdir / "id_ed25519"), "-o", f"CertificateFile={cert_path}",
            "-p", str(sshd.port), "-l", login, "127.0.0.1",
        ]  # fmt: skip
        step("Logging in with the stock ssh client (host verified by its host certificate, no prompt)")
        result = subprocess.run(
            [*argv, "echo hello from $(hostname) as $(id -un)"], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise JitSshError(f"demo login failed: {result.stderr.strip()}")
        console.print(f"    [green]{result.stdout.strip()}[/]")

        step(f"Revoking serial {cert.serial} in the host's KRL: the same certificate is now refused")
        sshd.write_krl(KRL.build(serials={access.public_key: [cert.serial]}, version=1))
        refused = subprocess.run([*argv, "true"], capture_output=True, text=True, check=False)
        if refused.returncode == 0:
            raise JitSshError("demo: the host accepted a revoked certificate")
        console.print(f"    [green]refused as expected[/] (ssh exit {refused.returncode})")
        if keep:
            pid = sshd.process.pid if sshd.process else "?"
            console.print(f"Left running in {workdir}. Log in with:\n  {' '.join(argv)}\nStop sshd with: kill {pid}")
            sshd = None
            return
        step("Done")
    finally:
        if sshd is not None:
            sshd.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
