"""``jit-ssh host enroll``: everything a host's stock sshd needs to trust jit-ssh, and nothing else.

The bundle (printed, or written to ``--output DIR`` for ``scripts/enroll-host``)::

    trusted_user_ca_keys.pub     the access CA: the only key sshd trusts for users
    auth_principals/LOGIN        one file per login the policy allows here, listing LOGIN@HOST
    revoked.krl                  the current KRL (kept fresh by the jit-ssh-krl timer)
    known_hosts                  the host CA's @cert-authority line: fetch-krl verifies the bastion with it
    jit-ssh.conf                 the sshd_config.d drop-in naming the three, and the host certificate
    HOSTKEY-cert.pub             the host's own key certified by the host CA (with --host-key)
    bastion_addresses            the addresses hosts see the broker connect from ([broker] source_addresses):
                                 the only ones 'enroll-host --firewall' lets open new connections to the host
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from jit_ssh.ca import CADirectory, CARole, PublicKey, passphrase_from_env
from jit_ssh.ca.issuer import Issuer
from jit_ssh.ca.policy import HostInfo, Policy
from jit_ssh.ca.rules import host_principals
from jit_ssh.ca.store import Store
from jit_ssh.ca.workflow import Authority

__all__ = ["EnrollBundle", "build_bundle"]

DEFAULT_PREFIX = "/etc/ssh"


@dataclass
class EnrollBundle:
    host: str
    files: dict[str, bytes] = field(default_factory=dict)

    def write(self, directory: Path) -> list[Path]:
        written = []
        for name, data in self.files.items():
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(0o644)
            written.append(target)
        return written


def drop_in(*, prefix: str, host_cert: str | None) -> str:
    lines = [
        "# jit-ssh: users log in with short-lived certificates from the access CA, and nothing else.",
        "# Written by 'jit-ssh host enroll'; installed by scripts/enroll-host.",
        f"TrustedUserCAKeys {prefix}/jit-ssh/trusted_user_ca_keys.pub",
        f"AuthorizedPrincipalsFile {prefix}/jit-ssh/auth_principals/%u",
        f"RevokedKeys {prefix}/jit-ssh/revoked.krl",
    ]
    if host_cert:
        lines.append(f"HostCertificate {prefix}/{host_cert}")
    return "\n".join(lines) + "\n"


def build_bundle(
    *,
    name: str,
    address: str,
    store: Store,
    policy: Policy,
    ca_dir: Path,
    labels: dict[str, str],
    host_key: PublicKey | None,
    bastion_addresses: Sequence[str] = (),
    host_key_name: str = "ssh_host_ed25519_key",
    validity: timedelta = timedelta(days=365),
    prefix: str = DEFAULT_PREFIX,
) -> EnrollBundle:
    ca = CADirectory(ca_dir)
    access, user = ca.public_key(CARole.ACCESS), ca.public_key(CARole.USER)
    bundle = EnrollBundle(name)
    bundle.files["trusted_user_ca_keys.pub"] = (access.to_openssh("jit-ssh-access-ca") + "\n").encode()
    for login, principals in host_principals(policy, HostInfo(name, labels)).items():
        bundle.files[f"auth_principals/{login}"] = "".join(f"{principal}\n" for principal in principals).encode()
    bundle.files["revoked.krl"] = Authority(store, policy).krl(access_ca=access, user_ca=user).to_bytes()
    # What 'jit-ssh ca known-hosts' prints; enroll-host replaces the whole jit-ssh folder, so it must be here.
    host_ca = ca.public_key(CARole.HOST).to_openssh("jit-ssh-host-ca")
    bundle.files["known_hosts"] = f"@cert-authority * {host_ca}\n".encode()
    cert_name = None
    if host_key is not None:
        issuer = Issuer(store, host_ca=ca.signer(CARole.HOST, passphrase=passphrase_from_env()))
        hostnames = list(dict.fromkeys([name, address]))
        cert = issuer.issue_host(host_key, name=name, hostnames=hostnames, validity=validity)
        cert_name = f"{host_key_name}-cert.pub"
        bundle.files[cert_name] = (cert.to_openssh(f"jit-ssh host {name}") + "\n").encode()
    bundle.files["jit-ssh.conf"] = drop_in(prefix=prefix, host_cert=cert_name).encode()
    if bastion_addresses:
        # So that the operator need not type them for 'enroll-host --firewall', and cannot mistype them.
        bundle.files["bastion_addresses"] = (
            "# [broker] source_addresses: what this host sees the broker connect from.\n"
            + "".join(f"{address}\n" for address in bastion_addresses)
        ).encode()
    return bundle
