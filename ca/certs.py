"""OpenSSH certificates (PROTOCOL.certkeys): minting under jit-ssh's invariants, parsing and checking.

Unlike ``asyncssh``'s ``generate_user_certificate``, which turns every ``permit-*`` extension on and
never expires by default, minting here grants ``permit-pty`` only unless more is asked for by name,
always sets a bounded window, and refuses anything that would break an invariant (DESIGN.md 2 and 3).
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import math
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum

from .errors import CertificateError, InputError
from .keys import KEY_FIELD_COUNTS, MAX_KEY_LINE, PublicKey
from .signer import Signer
from .validate import MAX_PRINCIPALS, check_hostname, check_key_id, check_principal
from .wire import Reader, string

__all__ = [
    "ALL_USER_EXTENSIONS",
    "DEFAULT_USER_EXTENSIONS",
    "MAX_BACKDATE",
    "MAX_HOST_VALIDITY",
    "MAX_USER_VALIDITY",
    "CertType",
    "Certificate",
    "mint_host_certificate",
    "mint_user_certificate",
]

#: Every user-certificate extension OpenSSH knows; anything else is refused at minting.
ALL_USER_EXTENSIONS = frozenset(
    {
        "permit-pty",
        "permit-agent-forwarding",
        "permit-port-forwarding",
        "permit-X11-forwarding",
        "permit-user-rc",
        "no-touch-required",
    }
)
DEFAULT_USER_EXTENSIONS = frozenset({"permit-pty"})
#: Clock-skew allowance: ``valid_after`` lies at most this far before the start of the window.
MAX_BACKDATE = timedelta(seconds=60)
#: Hard ceilings whatever a caller's ``max_validity`` says.
MAX_USER_VALIDITY = timedelta(days=7)
MAX_HOST_VALIDITY = timedelta(days=5 * 366)
_MAX_SERIAL = 2**64 - 1
_MAX_FORCE_COMMAND = 4096
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_ZERO = timedelta(0)
_NONCE_HEADER = _U32.pack(32)


class CertType(IntEnum):
    USER = 1
    HOST = 2


@dataclass(frozen=True, slots=True)
class Certificate:
    """A parsed OpenSSH certificate. ``blob`` is the full wire form; the other fields are read from it."""

    blob: bytes
    cert_key_type: str
    nonce: bytes
    subject: PublicKey
    serial: int
    cert_type: CertType
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: dict[str, str]
    extensions: dict[str, str]
    signature_key: PublicKey
    signature: bytes
    signed_length: int

    # -- reading ---------------------------------------------------------------------------------
    @classmethod
    def from_blob(cls, blob: bytes) -> Certificate:
        reader = Reader(blob, "certificate")
        cert_key_type = reader.text()
        if not cert_key_type.endswith("-cert-v01@openssh.com"):
            raise CertificateError(f"expected an OpenSSH certificate, found key type {cert_key_type[:64]!r}")
        base_type = cert_key_type.replace("-cert-v01@openssh.com", "")
        if base_type.startswith("sk-"):
            base_type += "@openssh.com"
        if base_type not in KEY_FIELD_COUNTS:
            raise CertificateError(f"unsupported certificate type {cert_key_type[:64]!r}")
        nonce = reader.string()
        fields = tuple(reader.string() for _ in range(KEY_FIELD_COUNTS[base_type]))
        subject = PublicKey.from_fields(base_type, fields)
        serial = reader.uint64()
        raw_type = reader.uint32()
        if raw_type not in (CertType.USER, CertType.HOST):
            raise CertificateError(f"certificate type {raw_type} is neither user (1) nor host (2)")
        key_id = reader.text()
        principals_reader = Reader(reader.string(), "certificate principals")
        principals: list[str] = []
        while not principals_reader.at_end():
            principals.append(principals_reader.text())
        valid_after = reader.uint64()
        valid_before = reader.uint64()
        critical = _read_options(reader.string(), "critical options")
        extensions = _read_options(reader.string(), "extensions")
        reader.string()  # reserved
        signature_key = PublicKey(reader.string())
        signed_length = reader.offset
        signature = reader.string()
        reader.expect_end()
        return cls(
            blob=blob,
            cert_key_type=cert_key_type,
            nonce=nonce,
            subject=subject,
            serial=serial,
            cert_type=CertType(raw_type),
            key_id=key_id,
            principals=tuple(principals),
            valid_after=valid_after,
            valid_before=valid_before,
            critical_options=critical,
            extensions=extensions,
            signature_key=signature_key,
            signature=signature,
            signed_length=signed_length,
        )

    @classmethod
    def parse(cls, text: str) -> Certificate:
        """Parse a certificate in OpenSSH's one-line form (the content of an ``id_*-cert.pub`` file)."""
        line = text.strip()
        if len(line) > MAX_KEY_LINE:
            raise InputError(f"certificate line is {len(line)} characters long; at most {MAX_KEY_LINE}")
        parts = line.split(None, 2)
        if len(parts) < 2:
            raise CertificateError("expected an OpenSSH certificate line (TYPE BASE64 [COMMENT])")
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CertificateError("certificate's base64 part does not decode") from exc
        try:
            cert = cls.from_blob(blob)
        except InputError as exc:
            raise CertificateError(f"certificate is malformed: {exc}") from exc
        if cert.cert_key_type != parts[0]:
            raise CertificateError(f"certificate line says {parts[0][:64]!r}, its blob {cert.cert_key_type!r}")
        return cert

    def to_openssh(self, comment: str = "") -> str:
        text = f"{self.cert_key_type} {base64.b64encode(self.blob).decode()}"
        return f"{text} {comment}" if comment else text

    # -- checking --------------------------------------------------------------------------------
    def signature_valid(self) -> bool:
        """Whether the signature verifies under the certificate's own ``signature_key``."""
        return self.signature_key.verify(self.signature, self.blob[: self.signed_length])

    def check(
        self,
        *,
        trusted_ca: PublicKey,
        cert_type: CertType,
        principal: str | None = None,
        now: datetime | None = None,
    ) -> None:
        """Raise :class:`CertificateError` unless this certificate is signed by ``trusted_ca``, of
        ``cert_type``, valid at ``now`` and (when given) lists ``principal``."""
        if self.signature_key != trusted_ca:
            raise CertificateError(
                f"certificate {self.key_id!r} is signed by {self.signature_key.fingerprint()}, "
                f"not by the trusted CA {trusted_ca.fingerprint()}"
            )
        if not self.signature_valid():
            raise CertificateError(f"certificate {self.key_id!r} has an invalid signature")
        if self.cert_type is not cert_type:
            raise CertificateError(f"certificate {self.key_id!r} is a {self.cert_type.name.lower()} certificate")
        moment = int((now or datetime.now(UTC)).timestamp())
        if moment < self.valid_after:
            raise CertificateError(f"certificate {self.key_id!r} is not valid yet")
        if moment >= self.valid_before:
            raise CertificateError(f"certificate {self.key_id!r} has expired")
        if principal is not None and principal not in self.principals:
            raise CertificateError(f"certificate {self.key_id!r} is not valid for {principal!r}")


def _read_options(data: bytes, what: str) -> dict[str, str]:
    reader = Reader(data, f"certificate {what}")
    out: dict[str, str] = {}
    previous = ""
    while not reader.at_end():
        name = reader.text()
        raw = reader.string()
        if name in out or (previous and name < previous):
            raise CertificateError(f"certificate {what} are not sorted and unique at {name[:64]!r}")
        previous = name
        out[name] = Reader(raw, f"certificate {what} value").text() if raw else ""
    return out


def _encode_options(options: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(
        string(name.encode()) + (string(string(value.encode())) if value else b"\x00\x00\x00\x00")
        for name, value in sorted(options)
    )


# Minting repeats the same few values for every certificate of a grant (its principals, the bastion's
# source-address, the policy's extensions): the wire form of each is built once. Caches are bounded,
# keyed by immutable values, and hold only what has already been checked.
@functools.lru_cache(maxsize=256)
def _encoded_critical(options: tuple[tuple[str, str], ...]) -> bytes:
    return string(_encode_options(options))


@functools.lru_cache(maxsize=64)
def _encoded_extensions(names: frozenset[str]) -> bytes:
    return string(_encode_options((name, "") for name in names))


@functools.lru_cache(maxsize=256)
def _encoded_principals(principals: tuple[str, ...]) -> bytes:
    return string(b"".join(string(p.encode()) for p in principals))


@functools.lru_cache(maxsize=16)
def _cert_key_type(key_type: str) -> tuple[str, bytes]:
    """The certificate type for a key type, and its encoded form."""
    cert_key_type = key_type.removesuffix("@openssh.com") + "-cert-v01@openssh.com"
    return cert_key_type, string(cert_key_type.encode())


def _aware(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None:
        raise CertificateError(f"{name} must carry a time zone (got a naive datetime)")
    return moment


def _window(
    valid_from: datetime,
    valid_until: datetime,
    *,
    max_validity: timedelta,
    ceiling: timedelta,
    backdate: timedelta,
    now: datetime | None,
) -> tuple[int, int]:
    """The (valid_after, valid_before) pair for a requested window, or an error.

    A window that began before ``now`` starts at ``now``: a certificate never covers time before it
    was minted beyond the clock-skew allowance ``backdate``.
    """
    current = _aware(now, "now") if now is not None else datetime.now(UTC)
    start = max(_aware(valid_from, "valid_from"), current)
    end = _aware(valid_until, "valid_until")
    if not _ZERO <= backdate <= MAX_BACKDATE:
        raise CertificateError(f"backdate must be between 0 and {MAX_BACKDATE.seconds} s, got {backdate}")
    if max_validity <= _ZERO or max_validity > ceiling:
        raise CertificateError(f"maximum validity must be positive and at most {ceiling}, got {max_validity}")
    if end <= current:
        raise CertificateError(f"validity window ends in the past ({end.isoformat()})")
    if end <= start:
        raise CertificateError("validity window is empty: it ends before it starts")
    length = end - start
    if length > max_validity:
        raise CertificateError(f"validity window of {length} is longer than the maximum {max_validity}")
    # The wire holds whole seconds: round inwards, so that the certificate neither starts more than
    # ``backdate`` early nor ends after ``valid_until``, and refuse a window that rounds to nothing.
    after, before = math.ceil((start - backdate).timestamp()), math.floor(end.timestamp())
    if before <= after or before <= current.timestamp():
        raise CertificateError("validity window is shorter than one whole second")
    return after, before


def _check_serial(serial: int) -> None:
    if not isinstance(serial, int) or not 0 < serial <= _MAX_SERIAL:
        raise CertificateError(f"serial must be an integer from 1 to 2**64-1, got {serial!r}")


def _sign(
    signer: Signer,
    subject: PublicKey,
    *,
    cert_type: CertType,
    serial: int,
    key_id: str,
    principals: tuple[str, ...],
    window: tuple[int, int],
    critical_options: list[tuple[str, str]],
    extension_names: frozenset[str],
) -> Certificate:
    ca_key = signer.public_key
    if subject == ca_key:
        raise CertificateError("refusing to certify the CA's own key")
    cert_key_type, encoded_type = _cert_key_type(subject.key_type)
    nonce = os.urandom(32)
    raw_key_id = key_id.encode()
    signed = b"".join(
        (
            encoded_type,
            _NONCE_HEADER,
            nonce,
            # A key's blob is its encoded type name followed by exactly its fields (PublicKey checks
            # that on construction), and the fields are what a certificate carries after the nonce.
            subject.blob[4 + len(subject.key_type.encode()) :],
            _U64.pack(serial),
            _U32.pack(cert_type),
            _U32.pack(len(raw_key_id)),
            raw_key_id,
            _encoded_principals(principals),
            _U64.pack(window[0]),
            _U64.pack(window[1]),
            _encoded_critical(tuple(critical_options)),
            _encoded_extensions(extension_names),
            b"\x00\x00\x00\x00",
            string(ca_key.blob),
        )
    )
    signature = signer.sign(signed)
    # Built from the values just encoded rather than parsed back: minting is on the hot path of
    # every session (one onward certificate each), and the tests parse every kind with ssh-keygen -L.
    return Certificate(
        blob=signed + string(signature),
        cert_key_type=cert_key_type,
        nonce=nonce,
        subject=subject,
        serial=serial,
        cert_type=cert_type,
        key_id=key_id,
        principals=principals,
        valid_after=window[0],
        valid_before=window[1],
        critical_options=dict(critical_options),
        extensions=dict.fromkeys(extension_names, ""),
        signature_key=ca_key,
        signature=signature,
        signed_length=len(signed),
    )


def _principal_list(values: Sequence[str], check: object) -> tuple[str, ...]:
    if isinstance(values, str):
        raise CertificateError("principals must be a list of names, not one string")
    unique = tuple(dict.fromkeys(values))
    if not unique:
        raise CertificateError("refusing to mint a certificate with no principals (OpenSSH reads that as 'any')")
    if len(unique) > MAX_PRINCIPALS:
        raise CertificateError(f"{len(unique)} principals; at most {MAX_PRINCIPALS}")
    for value in unique:
        check(value)  # type: ignore[operator]
    return unique


@functools.lru_cache(maxsize=256)
def _checked_user_principals(values: tuple[str, ...]) -> tuple[str, ...]:
    return _principal_list(values, check_principal)


def _user_principals(values: Sequence[str]) -> tuple[str, ...]:
    # A grant's principals repeat in every certificate minted under it, so each distinct list is
    # checked once. The cache returns the tuple it checked, so what is signed is what was checked.
    if isinstance(values, str):
        return _principal_list(values, check_principal)  # refuses it
    return _checked_user_principals(tuple(values))


def mint_user_certificate(
    signer: Signer,
    subject: PublicKey,
    *,
    principals: Sequence[str],
    key_id: str,
    serial: int,
    valid_from: datetime,
    valid_until: datetime,
    max_validity: timedelta,
    extensions: Iterable[str] = DEFAULT_USER_EXTENSIONS,
    source_address: Sequence[str] | None = None,
    force_command: str | None = None,
    backdate: timedelta = MAX_BACKDATE,
    now: datetime | None = None,
) -> Certificate:
    """Sign ``subject`` as a user certificate for exactly ``principals`` within the window.

    ``extensions`` defaults to ``permit-pty`` alone; every other extension must be named.
    ``source_address`` restricts use to the given addresses or CIDR networks.
    """
    try:
        names = _user_principals(principals)
        check_key_id(key_id)
    except InputError as exc:
        raise CertificateError(str(exc)) from exc
    _check_serial(serial)
    wanted = frozenset(extensions) if not isinstance(extensions, str) else frozenset((extensions,))
    if not wanted <= ALL_USER_EXTENSIONS:
        unknown = wanted - ALL_USER_EXTENSIONS
        raise CertificateError(f"unknown certificate extension(s): {', '.join(sorted(unknown))[:200]}")
    critical: list[tuple[str, str]] = []
    if source_address is not None:
        critical.append(("source-address", _source_address(source_address)))
    if force_command is not None:
        if not 0 < len(force_command) <= _MAX_FORCE_COMMAND or "\x00" in force_command or not _is_utf8(force_command):
            raise CertificateError("force-command must be 1-4096 characters of UTF-8 text without NUL")
        critical.append(("force-command", force_command))
    window = _window(
        valid_from,
        valid_until,
        max_validity=max_validity,
        ceiling=MAX_USER_VALIDITY,
        backdate=backdate,
        now=now,
    )
    return _sign(
        signer,
        subject,
        cert_type=CertType.USER,
        serial=serial,
        key_id=key_id,
        principals=names,
        window=window,
        critical_options=critical,
        extension_names=wanted,
    )


def _is_utf8(text: str) -> bool:
    # A str can hold lone surrogates, which have no UTF-8 form and would fail at encoding time.
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _source_address(values: Sequence[str]) -> str:
    if isinstance(values, str) or not values:
        raise CertificateError("source-address needs a list of one or more addresses or CIDR networks")
    # The bastion's address is the same in every onward certificate: parse each distinct list once.
    return _source_networks(tuple(values))


@functools.lru_cache(maxsize=256)
def _source_networks(values: tuple[str, ...]) -> str:
    networks = []
    for value in values:
        try:
            networks.append(str(ipaddress.ip_network(value.strip(), strict=True)))
        except ValueError as exc:
            raise CertificateError(f"source-address {value[:64]!r} is not an address or CIDR network") from exc
    return ",".join(dict.fromkeys(networks))


def mint_host_certificate(
    signer: Signer,
    subject: PublicKey,
    *,
    hostnames: Sequence[str],
    key_id: str,
    serial: int,
    valid_from: datetime,
    valid_until: datetime,
    max_validity: timedelta,
    now: datetime | None = None,
) -> Certificate:
    """Sign a host's own key as a host certificate for exactly ``hostnames``."""

    def check_host_principal(value: str) -> str:
        # known_hosts matches by name or address; both are allowed, nothing else.
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return check_hostname(value)
        return value

    try:
        names = _principal_list(hostnames, check_host_principal)
        check_key_id(key_id)
    except InputError as exc:
        raise CertificateError(str(exc)) from exc
    _check_serial(serial)
    window = _window(
        valid_from,
        valid_until,
        max_validity=max_validity,
        ceiling=MAX_HOST_VALIDITY,
        backdate=MAX_BACKDATE,
        now=now,
    )
    return _sign(
        signer,
        subject,
        cert_type=CertType.HOST,
        serial=serial,
        key_id=key_id,
        principals=names,
        window=window,
        critical_options=[],
        extension_names=frozenset(),
    )
