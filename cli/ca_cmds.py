"""``jit-ssh ca ...``: create the CA keys, print their public halves, write KRLs."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from jit_ssh.ca import KRL, CADirectory, CARole, InputError, KeyType, passphrase_from_env

from .client import ControlClient, run_async
from .files import write_atomic
from .output import console, emit_json
from .settings import Settings

__all__ = ["app", "resolve_ca_dir"]

app = typer.Typer(help="Certificate authority: keys, public keys, revocation lists.", no_args_is_help=True)

CA_DIR_ENV = "JIT_SSH_CA_DIR"
DEFAULT_CA_DIR = Path("/etc/jit-ssh/ca")

CaDirOption = Annotated[
    Path | None,
    typer.Option("--ca-dir", help=f"CA directory [env {CA_DIR_ENV}; default {DEFAULT_CA_DIR}]", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def resolve_ca_dir(option: Path | None) -> Path:
    if option is not None:
        return option
    env = os.environ.get(CA_DIR_ENV)
    return Path(env) if env else DEFAULT_CA_DIR


@app.command("init")
def init(
    directory: Annotated[Path, typer.Argument(help="Directory to create the three CA keys in.")],
    key_type: Annotated[KeyType, typer.Option("--key-type", help="Key type of the CA keys.")] = KeyType.ED25519,
    insecure_no_passphrase: Annotated[
        bool,
        typer.Option(
            "--insecure-no-passphrase",
            help="Write the keys unencrypted. For local demos only: anyone who reads the files can sign.",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace existing CA keys (old certificates stop working).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Create the user, access and host CA keys, encrypted with JIT_SSH_CA_PASSPHRASE(_FILE)."""
    passphrase = None if insecure_no_passphrase else passphrase_from_env()
    ca = CADirectory.create(
        directory,
        key_type=key_type,
        passphrase=passphrase,
        insecure_no_passphrase=insecure_no_passphrase,
        force=force,
    )
    keys = {role.value: ca.public_key(role) for role in CARole}
    if as_json:
        emit_json(
            {
                "directory": str(directory),
                "key_type": key_type.value,
                "encrypted": not insecure_no_passphrase,
                "keys": {
                    role: {"public_key": k.to_openssh(), "fingerprint": k.fingerprint()} for role, k in keys.items()
                },
            }
        )
        return
    if insecure_no_passphrase:
        console.print("[bold yellow]warning:[/] CA keys are NOT encrypted: use this CA for local demos only")
    console.print(f"Created {key_type.value} CA keys in {directory}:")
    for role, key in keys.items():
        console.print(f"  {role:<7} {key.fingerprint()}")


@app.command("pubkey")
def pubkey(
    role: Annotated[CARole, typer.Argument(help="Which CA: user (engineers' certs), access (hosts trust it), host.")],
    ca_dir: CaDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a CA public key, ready for TrustedUserCAKeys or a @cert-authority known_hosts line."""
    key = CADirectory(resolve_ca_dir(ca_dir)).public_key(role)
    if as_json:
        emit_json({"role": role.value, "public_key": key.to_openssh(), "fingerprint": key.fingerprint()})
    else:
        typer.echo(key.to_openssh(f"jit-ssh-{role.value}-ca"))


def _parse_serials(values: list[str]) -> list[int]:
    serials: list[int] = []
    for value in values:
        low, sep, high = value.partition("-")
        try:
            first = int(low)
            last = int(high) if sep else first
        except ValueError as exc:
            raise InputError(f"expected a serial N or a range N-M, found {value[:40]!r}") from exc
        if not 0 < first <= last < 2**64 or last - first >= 1_000_000:
            raise InputError(f"serial range {value[:40]!r} is empty, out of 1..2**64-1, or over a million serials")
        serials.extend(range(first, last + 1))
    return serials


@app.command("krl")
def krl(
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the KRL (replaced atomically).")],
    fetch: Annotated[
        bool, typer.Option("--fetch", help="Fetch the broker's current KRL over the control plane instead.")
    ] = False,
    serial: Annotated[
        list[str] | None, typer.Option("--serial", help="Revoked serial N or range N-M; repeatable.")
    ] = None,
    key_id: Annotated[list[str] | None, typer.Option("--key-id", help="Revoked key id; repeatable.")] = None,
    role: Annotated[CARole, typer.Option("--ca", help="CA whose certificates are revoked.")] = CARole.ACCESS,
    ca_dir: CaDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write an OpenSSH KRL (for sshd's RevokedKeys): the broker's current one with --fetch, or one
    revoking the given serials and key ids."""
    if fetch:
        data = _fetch_krl()
        parsed = KRL.from_bytes(data)  # never install a KRL sshd cannot read: it would lock everyone out
        write_atomic(output, data, mode=0o644)
        count = sum(len(s) for s in parsed.serials.values())
        if as_json:
            emit_json({"output": str(output), "serials": count, "version": parsed.version})
        else:
            console.print(f"Wrote {output}: KRL version {parsed.version}, {count} revoked serial(s)")
        return
    ca_key = CADirectory(resolve_ca_dir(ca_dir)).public_key(role)
    now = datetime.now(UTC)
    revoked = _parse_serials(serial or [])
    result = KRL.build(
        serials={ca_key: revoked},
        key_ids={ca_key: key_id or []},
        version=int(now.timestamp()),
        comment=f"jit-ssh {role.value} CA",
        now=now,
    )
    data = result.to_bytes()
    write_atomic(output, data, mode=0o644)
    if as_json:
        emit_json({"output": str(output), "ca": role.value, "serials": len(revoked), "key_ids": len(key_id or [])})
    else:
        console.print(f"Wrote {output}: {len(revoked)} serial(s), {len(key_id or [])} key id(s) of the {role.value} CA")


def _fetch_krl() -> bytes:
    async def go() -> bytes:
        async with ControlClient(Settings.load()) as client:
            return b"".join([line async for line in client.stream("krl", {})])

    return run_async(go())


@app.command("known-hosts")
def known_hosts(ca_dir: CaDirOption = None, as_json: JsonOption = False) -> None:
    """Print the known_hosts line that trusts hosts (and the bastion) certified by the host CA."""
    key = CADirectory(resolve_ca_dir(ca_dir)).public_key(CARole.HOST)
    line = f"@cert-authority * {key.to_openssh('jit-ssh-host-ca')}"
    if as_json:
        emit_json({"known_hosts": line, "fingerprint": key.fingerprint()})
    else:
        typer.echo(line)
