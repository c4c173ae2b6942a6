"""The signer interface: the only way CA private keys are used.

Certificate and KRL code see a :class:`Signer`, never a private key, so that a PKCS#11 or KMS signer can
replace :class:`KeySigner` (a key held in process memory) without touching what is signed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .errors import CAKeyError
from .keys import PublicKey
from .wire import mpint, string

__all__ = ["KeySigner", "KeyType", "PrivateKey", "Signer", "generate_private_key"]

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class KeyType(enum.StrEnum):
    """Key types a CA may use. RSA signs with SHA-512 (``rsa-sha2-512``), never SHA-1."""

    ED25519 = "ed25519"
    ECDSA = "ecdsa"
    RSA = "rsa"


@runtime_checkable
class Signer(Protocol):
    """Signs data with a CA key and returns an SSH signature blob (``string alg, string sig``)."""

    @property
    def public_key(self) -> PublicKey: ...

    def sign(self, data: bytes) -> bytes: ...


def generate_private_key(key_type: KeyType) -> PrivateKey:
    if key_type is KeyType.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    if key_type is KeyType.ECDSA:
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


_EC_ALGS: dict[str, tuple[str, hashes.HashAlgorithm]] = {
    "secp256r1": ("ecdsa-sha2-nistp256", hashes.SHA256()),
    "secp384r1": ("ecdsa-sha2-nistp384", hashes.SHA384()),
    "secp521r1": ("ecdsa-sha2-nistp521", hashes.SHA512()),
}


class KeySigner:
    """A :class:`Signer` over a private key held in this process."""

    __slots__ = ("_key", "_prefix", "_public", "_raw_sign")

    def __init__(self, key: PrivateKey) -> None:
        self._key = key
        blob = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        self._public = PublicKey.parse(blob.decode())
        # The algorithm is chosen here, once, rather than by type tests on every signature.
        self._raw_sign: Callable[[bytes], bytes]
        if isinstance(key, ed25519.Ed25519PrivateKey):
            self._prefix = string(b"ssh-ed25519")
            self._raw_sign = key.sign
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            if key.curve.name not in _EC_ALGS:
                raise CAKeyError(f"ECDSA curve {key.curve.name} is not one OpenSSH accepts")
            name, digest = _EC_ALGS[key.curve.name]
            self._prefix = string(name.encode())
            self._raw_sign = _ecdsa_signer(key, ec.ECDSA(digest))
        else:
            if key.key_size < 2048:
                raise CAKeyError(f"RSA CA key of {key.key_size} bits is too small; at least 2048")
            self._prefix = string(b"rsa-sha2-512")
            self._raw_sign = _rsa_signer(key)

    @property
    def public_key(self) -> PublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        return self._prefix + string(self._raw_sign(data))


def _ecdsa_signer(key: ec.EllipticCurvePrivateKey, algorithm: ec.ECDSA) -> Callable[[bytes], bytes]:
    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, algorithm))
        return mpint(r) + mpint(s)

    return sign


def _rsa_signer(key: rsa.RSAPrivateKey) -> Callable[[bytes], bytes]:
    pkcs1, sha512 = padding.PKCS1v15(), hashes.SHA512()

    def sign(data: bytes) -> bytes:
        return key.sign(data, pkcs1, sha512)

    return sign
