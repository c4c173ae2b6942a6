"""Public keys as one value type, and SSH signature verification.

:class:`PublicKey` is the only form in which key material travels through jit-ssh: parsed and checked
once, in its constructor, so that an invalid one cannot exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .errors import InputError
from .wire import Reader, string

__all__ = ["KEY_FIELD_COUNTS", "MAX_KEY_LINE", "PublicKey", "verify_ssh_signature"]

#: How many length-prefixed fields follow the type name in a public key blob, per key type. The same
#: fields, in the same order, sit in a certificate after its nonce.
KEY_FIELD_COUNTS: dict[str, int] = {
    "ssh-ed25519": 1,
    "ssh-rsa": 2,
    "ecdsa-sha2-nistp256": 2,
    "ecdsa-sha2-nistp384": 2,
    "ecdsa-sha2-nistp521": 2,
    "sk-ssh-ed25519@openssh.com": 2,
    "sk-ecdsa-sha2-nistp256@openssh.com": 3,
}

_CURVES: dict[str, tuple[bytes, ec.EllipticCurve, hashes.HashAlgorithm]] = {
    "ecdsa-sha2-nistp256": (b"nistp256", ec.SECP256R1(), hashes.SHA256()),
    "ecdsa-sha2-nistp384": (b"nistp384", ec.SECP384R1(), hashes.SHA384()),
    "ecdsa-sha2-nistp521": (b"nistp521", ec.SECP521R1(), hashes.SHA512()),
}

#: Longest authorized_keys-style line we read (a 16384-bit RSA key is about 2.8 KB).
MAX_KEY_LINE = 16 * 1024
_MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An SSH public key: its wire blob, checked on construction."""

    blob: bytes
    comment: str = field(default="", compare=False)
    key_type: str = field(init=False, compare=False)
    fields: tuple[bytes, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        reader = Reader(self.blob, "public key")
        key_type = reader.text()
        count = KEY_FIELD_COUNTS.get(key_type)
        if count is None:
            raise InputError(f"unsupported public key type {key_type[:64]!r}")
        parts = tuple(reader.string() for _ in range(count))
        reader.expect_end()
        object.__setattr__(self, "key_type", key_type)
        object.__setattr__(self, "fields", parts)
        _check_key_fields(key_type, parts)

    @classmethod
    def from_fields(cls, key_type: str, fields: tuple[bytes, ...], comment: str = "") -> PublicKey:
        return cls(string(key_type.encode()) + b"".join(string(f) for f in fields), comment)

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """Parse one OpenSSH public key line (``TYPE BASE64 [COMMENT]``), as in authorized_keys."""
        line = text.strip()
        if not line:
            raise InputError("expected an OpenSSH public key (TYPE BASE64 [COMMENT]), found an empty line")
        if len(line) > MAX_KEY_LINE:
            raise InputError(f"public key line is {len(line)} characters long; at most {MAX_KEY_LINE}")
        parts = line.split(None, 2)
        if len(parts) < 2:
            raise InputError("expected an OpenSSH public key (TYPE BASE64 [COMMENT]), found one word")
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputError("public key's base64 part does not decode") from exc
        key = cls(blob, parts[2] if len(parts) > 2 else "")
        if key.key_type != parts[0]:
            raise InputError(f"public key line says {parts[0][:64]!r} but its blob is {key.key_type!r}")
        return key

    def to_openssh(self, comment: str | None = None) -> str:
        text = f"{self.key_type} {base64.b64encode(self.blob).decode()}"
        note = self.comment if comment is None else comment
        return f"{text} {note}" if note else text

    def fingerprint(self) -> str:
        """The SHA256 fingerprint as OpenSSH prints it (``SHA256:...``)."""
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` (an SSH signature blob) is this key's signature over ``data``."""
        return verify_ssh_signature(self, signature, data)


def _check_key_fields(key_type: str, parts: tuple[bytes, ...]) -> None:
    if key_type in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com"):
        if len(parts[0]) != 32:
            raise InputError("Ed25519 public key must be 32 bytes")
    elif key_type == "ssh-rsa":
        n = int.from_bytes(parts[1], "big")
        if n.bit_length() < _MIN_RSA_BITS:
            raise InputError(f"RSA key of {n.bit_length()} bits is too small; at least {_MIN_RSA_BITS}")
    elif key_type in _CURVES:
        curve_name, curve, _ = _CURVES[key_type]
        if parts[0] != curve_name:
            raise InputError(f"ECDSA key names curve {parts[0][:16]!r}, expected {curve_name.decode()}")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(curve, parts[1])
        except ValueError as exc:
            raise InputError("ECDSA public key point is not on its curve") from exc


def verify_ssh_signature(key: PublicKey, signature: bytes, data: bytes) -> bool:
    """Verify an SSH signature blob (``string alg, string sig``); False for any mismatch or malformation.

    Only the algorithms a CA of ours may use are accepted: Ed25519, ECDSA and RSA with SHA-2 (never the
    SHA-1 ``ssh-rsa`` signature).
    """
    try:
        reader = Reader(signature, "signature")
        alg = reader.text()
        sig = reader.string()
        reader.expect_end()
    except InputError:
        return False
    try:
        if key.key_type == "ssh-ed25519" and alg == "ssh-ed25519":
            ed25519.Ed25519PublicKey.from_public_bytes(key.fields[0]).verify(sig, data)
            return True
        if key.key_type in _CURVES and alg == key.key_type:
            _, curve, digest = _CURVES[key.key_type]
            inner = Reader(sig, "ECDSA signature")
            r, s = inner.mpint(), inner.mpint()
            inner.expect_end()
            point = ec.EllipticCurvePublicKey.from_encoded_point(curve, key.fields[1])
            point.verify(encode_dss_signature(r, s), data, ec.ECDSA(digest))
            return True
        if key.key_type == "ssh-rsa" and alg in ("rsa-sha2-256", "rsa-sha2-512"):
            e = int.from_bytes(key.fields[0], "big")
            n = int.from_bytes(key.fields[1], "big")
            rsa_digest: hashes.HashAlgorithm = hashes.SHA256() if alg == "rsa-sha2-256" else hashes.SHA512()
            rsa.RSAPublicNumbers(e, n).public_key().verify(sig, data, padding.PKCS1v15(), rsa_digest)
            return True
    except (InvalidSignature, InputError, ValueError):
        return False
    return False
