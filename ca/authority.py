"""The CA directory: three CA keys (user, access, host), encrypted at rest, used only through a signer.

Layout of ``DIR``::

    user_ca, user_ca.pub        signs engineers' certificates; only the broker accepts them
    access_ca, access_ca.pub    signs the broker's onward certificates; hosts trust it
    host_ca, host_ca.pub        signs host keys, so nobody trusts a host on first use
    ca.toml                     key type, and whether the keys were written without a passphrase

Private keys are in OpenSSH's own format (bcrypt KDF, AES-256), so ``ssh-keygen`` can read them too.
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .errors import CAKeyError, InputError
from .files import private_dir, write_private
from .keys import PublicKey
from .signer import KeySigner, KeyType, PrivateKey, generate_private_key
from .wire import Reader

__all__ = [
    "PASSPHRASE_ENV",
    "PASSPHRASE_FILE_ENV",
    "CADirectory",
    "CARole",
    "passphrase_from_env",
]

PASSPHRASE_ENV = "JIT_SSH_CA_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
PASSPHRASE_FILE_ENV = "JIT_SSH_CA_PASSPHRASE_FILE"  # noqa: S105
_MIN_PASSPHRASE = 8
_MAX_KEY_FILE = 64 * 1024
_MAX_KDF_ROUNDS = 1024  # ssh-keygen and cryptography write 16
_META = "ca.toml"


class CARole(enum.StrEnum):
    """The three CA keys and what each may sign (DESIGN.md, invariant 3)."""

    USER = "user"
    ACCESS = "access"
    HOST = "host"


def passphrase_from_env(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The CA passphrase from ``JIT_SSH_CA_PASSPHRASE`` or the file ``JIT_SSH_CA_PASSPHRASE_FILE``.

    Never from a command-line argument: those show in ``ps`` and shell history.
    """
    env = os.environ if environ is None else environ
    value = env.get(PASSPHRASE_ENV)
    file_name = env.get(PASSPHRASE_FILE_ENV)
    if value and file_name:
        raise CAKeyError(f"set only one of {PASSPHRASE_ENV} and {PASSPHRASE_FILE_ENV}, not both")
    if file_name:
        try:
            text = Path(file_name).read_text(encoding="utf-8")
        except OSError as exc:
            raise CAKeyError(f"cannot read {PASSPHRASE_FILE_ENV} file {file_name}: {exc.strerror}") from exc
        value = text.rstrip("\r\n")
        if not value:
            raise CAKeyError(f"{PASSPHRASE_FILE_ENV} file {file_name} is empty")
    return value.encode() if value else None


class CADirectory:
    """A directory holding the three CA keys. Construct with :meth:`create` or open an existing one."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        meta_path = self.path / _META
        try:
            meta = tomllib.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CAKeyError(
                f"{self.path} is not a CA directory (no {_META}); create one with 'jit-ssh ca init'"
            ) from exc
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise CAKeyError(f"cannot read {meta_path}: {exc}") from exc
        try:
            self.key_type = KeyType(meta.get("key_type", ""))
        except ValueError as exc:
            raise CAKeyError(f"{meta_path} names an unknown key_type {meta.get('key_type')!r}") from exc
        self.insecure = bool(meta.get("insecure_no_passphrase", False))

    @classmethod
    def create(
        cls,
        path: Path | str,
        *,
        key_type: KeyType = KeyType.ED25519,
        passphrase: bytes | None,
        insecure_no_passphrase: bool = False,
        force: bool = False,
    ) -> CADirectory:
        """Create the three CA keys in ``path``; refuses to overwrite existing keys unless ``force``."""
        directory = Path(path)
        if passphrase is None and not insecure_no_passphrase:
            raise CAKeyError(
                f"no CA passphrase: set {PASSPHRASE_ENV} or {PASSPHRASE_FILE_ENV} "
                "(or pass --insecure-no-passphrase for a local demo)"
            )
        if passphrase is not None and insecure_no_passphrase:
            raise CAKeyError("a passphrase is set and --insecure-no-passphrase was given: choose one")
        if passphrase is not None and len(passphrase) < _MIN_PASSPHRASE:
            raise CAKeyError(f"CA passphrase is {len(passphrase)} characters; at least {_MIN_PASSPHRASE}")
        existing = [p.name for p in _all_files(directory) if p.exists()]
        if existing and not force:
            raise CAKeyError(f"{directory} already holds {', '.join(existing)}; refusing to overwrite without --force")
        try:
            private_dir(directory, 0o700)
            encryption: serialization.KeySerializationEncryption = (
                serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
            )
            for role in CARole:
                key = generate_private_key(key_type)
                private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption)
                public = key.public_key().public_bytes(
                    serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
                )
                write_private(directory / f"{role}_ca", private)  # 0600 from the first byte
                line = f"{public.decode()} jit-ssh-{role}-ca\n"
                write_private(directory / f"{role}_ca.pub", line.encode(), mode=0o644)
            meta = f'key_type = "{key_type}"\ninsecure_no_passphrase = {str(insecure_no_passphrase).lower()}\n'
            write_private(directory / _META, meta.encode(), mode=0o644)
        except OSError as exc:
            raise CAKeyError(f"cannot write CA keys to {directory}: {exc.strerror}") from exc
        return cls(directory)

    def public_key(self, role: CARole) -> PublicKey:
        path = self.path / f"{role}_ca.pub"
        try:
            return PublicKey.parse(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise CAKeyError(f"cannot read {path}: {exc.strerror}") from exc
        except (InputError, UnicodeDecodeError) as exc:
            raise CAKeyError(f"{path} is not a public key: {exc}") from exc

    def signer(self, role: CARole, *, passphrase: bytes | None) -> KeySigner:
        """Load the private key of ``role`` and return its signer, with every check on the way."""
        path = self.path / f"{role}_ca"
        try:
            info = path.stat()
        except FileNotFoundError as exc:
            raise CAKeyError(f"CA key {path} does not exist") from exc
        except OSError as exc:
            raise CAKeyError(f"cannot read CA key {path}: {exc.strerror}") from exc
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise CAKeyError(
                f"CA key {path} is accessible by group or others (mode {mode:04o}); expected 0600: chmod 600 {path}"
            )
        if info.st_size > _MAX_KEY_FILE:
            raise CAKeyError(f"CA key {path} is {info.st_size} bytes; not a key file")
        data = path.read_bytes()
        encrypted = b"aes256" in _openssh_header(data, path)
        if not encrypted and not self.insecure:
            raise CAKeyError(f"CA key {path} is not encrypted but {self.path / _META} says it should be; refusing it")
        if encrypted and passphrase is None:
            raise CAKeyError(f"CA key {path} is encrypted: set {PASSPHRASE_ENV} or {PASSPHRASE_FILE_ENV}")
        try:
            key = serialization.load_ssh_private_key(data, passphrase if encrypted else None)
        except (ValueError, UnsupportedAlgorithm) as exc:  # a damaged cipher, KDF or key type name
            if encrypted:
                raise CAKeyError(f"cannot decrypt CA key {path}: wrong passphrase, or the file is damaged") from exc
            raise CAKeyError(f"CA key {path} is damaged: {exc}") from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise CAKeyError(f"CA key {path} is of an unsupported type")
        private: PrivateKey = key
        signer = KeySigner(private)
        if signer.public_key != self.public_key(role):
            raise CAKeyError(f"CA key {path} does not match {path}.pub")
        return signer


def _openssh_header(data: bytes, path: Path) -> bytes:
    """The cipher name of an OpenSSH private key file, or an error for anything else."""
    lines = data.strip().splitlines()
    if len(lines) < 3 or lines[0] != b"-----BEGIN OPENSSH PRIVATE KEY-----":
        raise CAKeyError(f"CA key {path} is not an OpenSSH private key (damaged or wrong file)")
    try:
        raw = base64.b64decode(b"".join(lines[1:-1]))
    except (binascii.Error, ValueError) as exc:
        raise CAKeyError(f"CA key {path} is damaged: its base64 does not decode") from exc
    magic = b"openssh-key-v1\x00"
    if not raw.startswith(magic):
        raise CAKeyError(f"CA key {path} is damaged: no openssh-key-v1 header")
    reader = Reader(raw[len(magic) :], "CA key header")
    try:
        cipher, kdf, options = reader.string(), reader.string(), Reader(reader.string(), "CA key KDF options")
        if kdf == b"bcrypt":
            options.string()  # salt
            rounds = options.uint32()
            # A damaged rounds field would otherwise keep the KDF busy for hours or years.
            if rounds > _MAX_KDF_ROUNDS:
                raise CAKeyError(f"CA key {path} is damaged: bcrypt KDF rounds {rounds} exceed {_MAX_KDF_ROUNDS}")
    except InputError as exc:
        raise CAKeyError(f"CA key {path} is damaged: {exc}") from exc
    return cipher


def _all_files(directory: Path) -> list[Path]:
    return [directory / _META] + [directory / f"{r}_ca{s}" for r in CARole for s in ("", ".pub")]
