"""Certificate signing: user certificates minted per second in process, against ``ssh-keygen -s``.

Every path signs the same certificate: an Ed25519 subject key, one ``LOGIN@HOST`` principal, a
``source-address`` critical option, ``permit-pty`` only, a one-hour window backdated 60 s, a fresh
serial and key id each time. Ours (``mint_user_certificate``) includes every check it makes; asyncssh's
``generate_user_certificate`` and a bare Ed25519 signature are the floors it is measured against, and
``ssh-keygen -s`` in a loop is what an operator would otherwise script. The process is pinned to one
core. The target (issue 2) is 20,000 Ed25519 user certificates per second.

Usage: .venv/bin/python bench/bench_sign.py   (or bench/run, which runs every benchmark)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncssh
from _report import command, machine, pin_to_one_core, rate, table, write_section
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jit_ssh.ca import Certificate, KeySigner, KeyType, PublicKey
from jit_ssh.ca.certs import mint_user_certificate
from jit_ssh.ca.signer import PrivateKey, generate_private_key

TARGET = 20_000
PRINCIPAL = "ubuntu@prod-web-3"
SOURCE = "10.0.0.5/32"
WINDOW = timedelta(hours=1)
MAX_VALIDITY = timedelta(hours=8)
ROUNDS = 7
ROUND_SECONDS = 0.25
KEYGEN_ROUNDS = 4
KEYGEN_PER_ROUND = 40
_ASYNCSSH_SIG_ALG = {KeyType.ED25519: "ssh-ed25519", KeyType.RSA: "rsa-sha2-512"}


def _openssh_private(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )


def _openssh_public(key: PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


class Counter:
    """A monotonic serial, as the CA's store hands out."""

    def __init__(self) -> None:
        self.value = 0

    def take(self, n: int) -> range:
        first = self.value + 1
        self.value += n
        return range(first, first + n)


def ours(signer: KeySigner, subject: PublicKey, serials: Counter) -> Callable[[int], None]:
    def run(n: int) -> None:
        valid_from = datetime.now(UTC)
        valid_until = valid_from + WINDOW
        for serial in serials.take(n):
            mint_user_certificate(
                signer,
                subject,
                principals=[PRINCIPAL],
                key_id=f"request=r{serial} user=alice",
                serial=serial,
                valid_from=valid_from,
                valid_until=valid_until,
                max_validity=MAX_VALIDITY,
                source_address=[SOURCE],
            )

    return run


def bare_asyncssh(
    ca: asyncssh.SSHKey, subject: asyncssh.SSHKey, sig_alg: str, serials: Counter
) -> Callable[[int], None]:
    def run(n: int) -> None:
        valid_after = int(time.time()) - 60
        valid_before = valid_after + 60 + int(WINDOW.total_seconds())
        for serial in serials.take(n):
            ca.generate_user_certificate(
                subject,
                f"request=r{serial} user=alice",
                serial=serial,
                principals=[PRINCIPAL],
                valid_after=valid_after,
                valid_before=valid_before,
                source_address=[SOURCE],
                permit_x11_forwarding=False,
                permit_agent_forwarding=False,
                permit_port_forwarding=False,
                permit_user_rc=False,
                sig_alg=sig_alg,
            )

    return run


def raw_ed25519(key: ed25519.Ed25519PrivateKey, size: int) -> Callable[[int], None]:
    data = os.urandom(size)

    def run(n: int) -> None:
        sign = key.sign
        for _ in range(n):
            sign(data)

    return run


def ssh_keygen(
    ca_key: PrivateKey, subject_line: str, serials: Counter, workdir: Path
) -> tuple[Callable[[int], None], Callable[[], Certificate]]:
    ca_path = workdir / "ca"
    ca_path.write_bytes(_openssh_private(ca_key))
    ca_path.chmod(0o600)
    subject_path = workdir / "subject.pub"
    subject_path.write_text(subject_line + "\n")

    def argv(serial: int) -> list[str]:
        # -V -1m:+1h: the same 60 s backdating and one-hour window as ours.
        return [
            "ssh-keygen", "-q", "-s", str(ca_path), "-I", f"request=r{serial} user=alice",
            "-n", PRINCIPAL, "-z", str(serial), "-V", "-1m:+1h",
            "-O", "clear", "-O", "permit-pty", "-O", f"source-address={SOURCE}",
            str(subject_path),
        ]  # fmt: skip

    def run(n: int) -> None:
        for serial in serials.take(n):
            subprocess.run(argv(serial), check=True, stdin=subprocess.DEVNULL)

    def once() -> Certificate:
        run(1)
        return Certificate.parse((workdir / "subject-cert.pub").read_text())

    return run, once


def _same_certificate(a: Certificate, b: Certificate) -> None:
    """The paths compared must sign the same thing, or the comparison means nothing."""
    for name in ("cert_key_type", "cert_type", "principals", "critical_options", "extensions"):
        if getattr(a, name) != getattr(b, name):
            sys.exit(f"bench_sign: {name} differs: {getattr(a, name)!r} vs {getattr(b, name)!r}")
    if b.valid_before - b.valid_after != a.valid_before - a.valid_after:
        sys.exit("bench_sign: the validity windows differ in length")


def main() -> None:
    pinned = pin_to_one_core()
    started = time.perf_counter()
    serials = Counter()
    subject_key = ed25519.Ed25519PrivateKey.generate()
    subject_line = _openssh_public(subject_key)
    subject = PublicKey.parse(subject_line)
    subject_asyncssh = asyncssh.import_public_key(subject_line)
    cas = {kind: generate_private_key(kind) for kind in KeyType}
    rows: list[tuple[str, ...]] = []
    figures: dict[str, float] = {}

    def record(key: str, label: str, ca: str, result: tuple[float, list[float]]) -> None:
        median, rates = result
        figures[key] = median
        spread = f"{min(rates):,.0f} to {max(rates):,.0f}"
        rows.append((label, ca, f"{median:,.0f}", spread, f"{1e6 / median:,.1f} µs"))
        print(f"  {label:<48} {ca:<22} {median:>10,.0f}/s  ({spread})", flush=True)

    print(f"bench_sign ({pinned}): certificates per second, median of rounds", flush=True)
    for kind, private in cas.items():
        signer = KeySigner(private)
        name = signer.public_key.key_type
        if isinstance(private, rsa.RSAPrivateKey):
            name += f" {private.key_size}"
        reference = mint_user_certificate(
            signer,
            subject,
            principals=[PRINCIPAL],
            key_id="check",
            serial=serials.take(1)[0],
            valid_from=datetime.now(UTC),
            valid_until=datetime.now(UTC) + WINDOW,
            max_validity=MAX_VALIDITY,
            source_address=[SOURCE],
        )
        if not Certificate.from_blob(reference.blob).signature_valid():
            sys.exit("bench_sign: our certificate does not verify")
        fast = kind is KeyType.ED25519
        rounds = ROUNDS if fast else 3
        record(
            f"ours-{kind}",
            "jit-ssh `mint_user_certificate` (all checks)",
            name,
            rate(ours(signer, subject, serials), rounds=rounds, seconds=ROUND_SECONDS),
        )
        ca_asyncssh = asyncssh.import_private_key(_openssh_private(private))
        sig_alg = _ASYNCSSH_SIG_ALG.get(kind, ca_asyncssh.algorithm.decode())
        theirs = Certificate.from_blob(
            ca_asyncssh.generate_user_certificate(
                subject_asyncssh,
                "check",
                serial=1,
                principals=[PRINCIPAL],
                valid_after=reference.valid_after,
                valid_before=reference.valid_before,
                source_address=[SOURCE],
                permit_x11_forwarding=False,
                permit_agent_forwarding=False,
                permit_port_forwarding=False,
                permit_user_rc=False,
                sig_alg=sig_alg,
            ).public_data
        )
        _same_certificate(reference, theirs)
        record(
            f"asyncssh-{kind}",
            "bare asyncssh `generate_user_certificate`",
            name,
            rate(bare_asyncssh(ca_asyncssh, subject_asyncssh, sig_alg, serials), rounds=rounds, seconds=0.2),
        )
        if fast:
            assert isinstance(private, ed25519.Ed25519PrivateKey)
            record(
                "raw-ed25519",
                f"bare Ed25519 signature ({len(reference.blob) - len(reference.signature) - 4}-byte body)",
                name,
                rate(raw_ed25519(private, reference.signed_length), rounds=ROUNDS, seconds=0.1),
            )
            with tempfile.TemporaryDirectory(prefix="jit-ssh-bench-") as tmp:
                run, once = ssh_keygen(private, subject_line, serials, Path(tmp))
                _same_certificate(reference, once())
                keygen: list[float] = []
                for _ in range(KEYGEN_ROUNDS):
                    start = time.perf_counter()
                    run(KEYGEN_PER_ROUND)
                    keygen.append(KEYGEN_PER_ROUND / (time.perf_counter() - start))
                keygen.sort()
                median = (keygen[len(keygen) // 2 - 1] + keygen[len(keygen) // 2]) / 2
                record(
                    "ssh-keygen",
                    f"`ssh-keygen -s` in a loop ({KEYGEN_ROUNDS}x{KEYGEN_PER_ROUND} runs)",
                    name,
                    (median, keygen),
                )

    ed = figures[f"ours-{KeyType.ED25519}"]
    verdict = "meets" if ed >= TARGET else "MISSES"
    summary = (
        f"Ed25519, in process, one core: **{ed:,.0f} certificates/s**, which {verdict} the target of "
        f"{TARGET:,}/s; {ed / figures['ssh-keygen']:,.0f}x `ssh-keygen -s` in a loop, "
        f"{ed / figures[f'asyncssh-{KeyType.ED25519}']:.2f}x bare asyncssh, "
        f"{ed / figures['raw-ed25519']:.2f}x a bare Ed25519 signature."
    )
    elapsed = time.perf_counter() - started
    print(summary.replace("**", ""))
    write_section(
        "sign",
        f"""
## Certificate signing

{summary}

{table(("path", "CA key", "certificates/s", "range of rounds", "per certificate"), rows)}

Each certificate: an Ed25519 subject key, one principal `{PRINCIPAL}`, `source-address={SOURCE}`,
`permit-pty` only, a one-hour window backdated 60 s, a new serial and key id each time. "all checks":
principal, key id, serial, extension, source-address and window validation, as in production. The
process runs on one core ({pinned}); in-process figures are medians of {ROUNDS} rounds
(3 for ECDSA and RSA) of about {ROUND_SECONDS} s. The asyncssh and ssh-keygen paths were checked to
produce the same principals, options, extensions and window length as ours.

- Machine: {machine()}
- Measured: {datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}, in {elapsed:.0f} s
- Command: `{command()}`
""",
    )


if __name__ == "__main__":
    main()
