"""OpenSSH key revocation lists (PROTOCOL.krl), written and read.

Hosts name the KRL in ``RevokedKeys``. asyncssh neither reads nor writes KRLs, so this module does both;
tests check it against ``ssh-keygen -k`` and ``ssh-keygen -Q``. A KRL revokes certificates (by serial or
key id, per CA key) and plain keys (by the key itself or its SHA-1 or SHA-256 hash); everything it holds is
written, and whatever it cannot hold is refused with :class:`KRLError`, never dropped, because a revocation
lost on the way is a key that still opens hosts. No signature section is written: OpenSSH refuses to load a
KRL that carries one, so a published KRL is signed beside it if at all (DESIGN.md, "Hosts").
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from .certs import Certificate
from .errors import InputError, KRLError
from .keys import PublicKey
from .validate import check_key_id
from .wire import Reader, string, uint32, uint64

__all__ = ["KRL", "KRL_MAGIC"]

KRL_MAGIC = 0x5353484B524C0A00  # "SSHKRL\n\0"
_FORMAT_VERSION = 1
_SECTION_CERTIFICATES = 1
_SECTION_EXPLICIT_KEY = 2
_SECTION_FINGERPRINT_SHA1 = 3
_SECTION_SIGNATURE = 4
_SECTION_FINGERPRINT_SHA256 = 5
_CERT_SERIAL_LIST = 0x20
_CERT_SERIAL_RANGE = 0x21
_CERT_SERIAL_BITMAP = 0x22
_CERT_KEY_ID = 0x23
_MAX_U64 = 2**64 - 1
#: The hash fields, with the name and digest size of each.
_HASHES = {"sha1": ("SHA-1", 20), "sha256": ("SHA-256", 32)}
# A run of at least this many consecutive serials is cheaper as one range section (21 bytes)
# than as list entries (8 bytes each).
_MIN_RANGE_RUN = 3
#: Bitmaps wider than this are refused when reading, so a hostile KRL cannot make us allocate wildly.
_MAX_BITMAP_BITS = 1 << 24

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class KRL:
    """Revoked certificate serials and key ids per CA key, and revoked plain keys and key hashes.

    Every value is checked on construction against what OpenSSH reads (serials 1 to 2**64-1, text without
    NUL, 20-byte SHA-1 and 32-byte SHA-256 hashes of key blobs), so an invalid KRL cannot exist and
    :meth:`to_bytes` writes all that it holds. Empty per-CA sets are dropped: they revoke nothing.
    """

    serials: Mapping[PublicKey, frozenset[int]] = field(default_factory=dict)
    key_ids: Mapping[PublicKey, frozenset[str]] = field(default_factory=dict)
    #: Plain keys revoked by their blob (PROTOCOL.krl's explicit key section).
    keys: frozenset[PublicKey] = frozenset()
    #: SHA-1 and SHA-256 hashes of revoked plain keys' blobs (the fingerprint sections).
    sha1: frozenset[bytes] = frozenset()
    sha256: frozenset[bytes] = frozenset()
    version: int = 0
    generated: int = 0
    comment: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "serials", _per_ca(self.serials, "serials", _checked_serial))
        object.__setattr__(self, "key_ids", _per_ca(self.key_ids, "key ids", _checked_key_id))
        object.__setattr__(self, "keys", frozenset(_checked_key(k) for k in _frozen(self.keys, "keys")))
        for name, (label, size) in _HASHES.items():
            hashes: frozenset[bytes] = _frozen(getattr(self, name), f"{label} hashes")
            bad = [h for h in hashes if not isinstance(h, bytes) or len(h) != size]
            if bad:
                raise KRLError(f"revoked {label} hash must be {size} bytes, found {_described(bad[0])}")
            object.__setattr__(self, name, hashes)
        for name in ("version", "generated"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= _MAX_U64:
                raise KRLError(f"KRL {name} must be a 64-bit unsigned integer, got {_described(value)}")
        if not isinstance(self.comment, str) or not _is_c_text(self.comment):
            raise KRLError(f"KRL comment must be UTF-8 text without NUL, got {_described(self.comment)}")

    @classmethod
    def build(
        cls,
        *,
        serials: Mapping[PublicKey, Iterable[int]] | None = None,
        key_ids: Mapping[PublicKey, Iterable[str]] | None = None,
        keys: Iterable[PublicKey] = (),
        sha1: Iterable[bytes] = (),
        sha256: Iterable[bytes] = (),
        version: int,
        comment: str = "",
        now: datetime | None = None,
    ) -> KRL:
        """A KRL from revoked serials and key ids per CA key, and revoked plain keys or their hashes.

        ``sha1`` and ``sha256`` are raw digests of key blobs (as ``ssh-keygen -k`` makes from ``sha1:``,
        ``sha256:`` and ``hash:`` lines). Key ids must also be ones jit-ssh could have minted.
        """
        id_sets = {ca: _frozen(names, "key ids") for ca, names in (key_ids or {}).items()}
        for names in id_sets.values():
            for name in names:
                try:
                    check_key_id(name)
                except InputError as exc:
                    raise KRLError(f"revoked key id: {exc}") from exc
        moment = int((now or datetime.now(UTC)).timestamp())
        # The constructor checks every other value.
        return cls(
            serials={ca: _frozen(values, "serials") for ca, values in (serials or {}).items()},
            key_ids=id_sets,
            keys=_frozen(keys, "keys"),
            sha1=_frozen(sha1, "SHA-1 hashes"),
            sha256=_frozen(sha256, "SHA-256 hashes"),
            version=version,
            generated=moment,
            comment=comment,
        )

    # -- writing ---------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        out = [
            uint64(KRL_MAGIC),
            uint32(_FORMAT_VERSION),
            uint64(self.version),
            uint64(self.generated),
            uint64(0),  # flags
            string(b""),  # reserved
            string(self.comment.encode()),
        ]
        for ca in sorted(set(self.serials) | set(self.key_ids), key=lambda k: k.blob):
            body = [string(ca.blob), string(b"")]
            body.extend(_serial_sections(self.serials.get(ca, frozenset())))
            names = sorted(self.key_ids.get(ca, frozenset()))
            if names:
                body.append(bytes([_CERT_KEY_ID]) + string(b"".join(string(n.encode()) for n in names)))
            out.append(bytes([_SECTION_CERTIFICATES]) + string(b"".join(body)))
        # As ssh-keygen writes them: after the certificates, one section per kind, entries in ascending
        # byte order (for hashes that is the numeric order PROTOCOL.krl asks for).
        for kind, blobs in (
            (_SECTION_EXPLICIT_KEY, {k.blob for k in self.keys}),
            (_SECTION_FINGERPRINT_SHA1, self.sha1),
            (_SECTION_FINGERPRINT_SHA256, self.sha256),
        ):
            if blobs:
                out.append(bytes([kind]) + string(b"".join(string(b) for b in sorted(blobs))))
        return b"".join(out)

    # -- reading ---------------------------------------------------------------------------------
    @classmethod
    def from_bytes(cls, data: bytes) -> KRL:
        try:
            return cls._parse(data)
        except InputError as exc:
            raise KRLError(f"not a valid KRL: {exc}") from exc

    @classmethod
    def _parse(cls, data: bytes) -> KRL:
        reader = Reader(data, "KRL")
        if reader.uint64() != KRL_MAGIC:
            raise KRLError("not a KRL: the file does not start with SSHKRL")
        if reader.uint32() != _FORMAT_VERSION:
            raise KRLError("KRL format version is not 1")
        version, generated = reader.uint64(), reader.uint64()
        reader.uint64()  # flags
        reader.string()  # reserved
        comment = reader.text()
        serials: dict[PublicKey, set[int]] = {}
        key_ids: dict[PublicKey, set[str]] = {}
        keys: set[PublicKey] = set()
        hashes: dict[int, set[bytes]] = {_SECTION_FINGERPRINT_SHA1: set(), _SECTION_FINGERPRINT_SHA256: set()}
        while not reader.at_end():
            kind = reader.byte()
            body = reader.string()
            if kind == _SECTION_CERTIFICATES:
                _parse_cert_section(body, serials, key_ids)
            elif kind == _SECTION_EXPLICIT_KEY:
                keys.update(_parse_key(blob) for blob in _strings(body, "KRL explicit key section"))
            elif kind in hashes:
                hashes[kind].update(_strings(body, "KRL fingerprint section"))
            elif kind == _SECTION_SIGNATURE:
                raise KRLError("KRL carries an embedded signature, which OpenSSH refuses to load")
            else:
                raise KRLError(f"KRL has an unknown section type {kind}")
        # The constructor checks every value read, as it checks those built: serial 0, a bitmap running
        # past 2**64-1, a hash of the wrong size or NUL in a string are refused, as OpenSSH refuses them.
        return cls(
            serials={k: frozenset(v) for k, v in serials.items()},
            key_ids={k: frozenset(v) for k, v in key_ids.items()},
            keys=frozenset(keys),
            sha1=frozenset(hashes[_SECTION_FINGERPRINT_SHA1]),
            sha256=frozenset(hashes[_SECTION_FINGERPRINT_SHA256]),
            version=version,
            generated=generated,
            comment=comment,
        )

    # -- checking --------------------------------------------------------------------------------
    def is_revoked(self, key: Certificate | PublicKey) -> bool:
        """Whether OpenSSH refuses ``key`` under this KRL (``ssh_krl_check_key`` in its krl.c).

        A plain key is revoked by its blob or by either hash of it. A certificate is revoked by its key id
        or its serial (never serial 0) under its signing CA, and also when its own key or its CA's key is
        revoked as a plain key.
        """
        if isinstance(key, PublicKey):
            return self._revokes_key(key)
        ca = key.signature_key
        return (
            self._revokes_key(key.subject)
            or self._revokes_key(ca)
            or key.key_id in self.key_ids.get(ca, frozenset())
            or (key.serial != 0 and key.serial in self.serials.get(ca, frozenset()))
        )

    def _revokes_key(self, key: PublicKey) -> bool:
        return (
            key in self.keys
            or hashlib.sha1(key.blob, usedforsecurity=False).digest() in self.sha1
            or hashlib.sha256(key.blob).digest() in self.sha256
        )


# -- checking values -----------------------------------------------------------------------------------


def _frozen(values: Iterable[_T], what: str) -> frozenset[_T]:
    # A lone string would revoke its characters (key id "stolen" as "s", "t", ...); a lone key would fail late.
    if isinstance(values, str | bytes | PublicKey) or not isinstance(values, Iterable):
        raise KRLError(f"revoked {what} must be a collection, found {_described(values)}")
    return frozenset(values)


def _per_ca(
    value: Mapping[PublicKey, frozenset[_T]], what: str, check: Callable[[object], _T]
) -> dict[PublicKey, frozenset[_T]]:
    if not isinstance(value, Mapping):
        raise KRLError(f"revoked {what} must map CA keys to collections, found {_described(value)}")
    out: dict[PublicKey, frozenset[_T]] = {}
    for ca, values in value.items():
        if not isinstance(ca, PublicKey):
            raise KRLError(f"revoked {what} must be listed under a CA key (a PublicKey), found {_described(ca)}")
        checked = frozenset(check(v) for v in _frozen(values, what))
        if checked:
            out[ca] = checked
    return out


def _checked_serial(value: object) -> int:
    if type(value) is not int or not 0 < value <= _MAX_U64:  # not bool: True is no serial
        raise KRLError(f"revoked serial {_described(value)} is not an integer from 1 to 2**64-1")
    return value


def _checked_key_id(value: object) -> str:
    if not isinstance(value, str) or not _is_c_text(value):
        raise KRLError(f"revoked key id must be UTF-8 text without NUL, found {_described(value)}")
    return value


def _checked_key(value: object) -> PublicKey:
    if not isinstance(value, PublicKey):
        raise KRLError(f"revoked key must be a PublicKey, found {_described(value)}")
    return value


def _is_c_text(value: str) -> bool:
    # OpenSSH reads comments and key ids as C strings: one NUL and it refuses the whole KRL.
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def _described(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- encoding ------------------------------------------------------------------------------------------


def _strings(body: bytes, what: str) -> list[bytes]:
    reader = Reader(body, what)
    out = []
    while not reader.at_end():
        out.append(reader.string())
    return out


def _parse_key(blob: bytes) -> PublicKey:
    try:
        return PublicKey(blob)
    except InputError as exc:
        # Refused, not skipped: a KRL read back without this key would let it in again.
        raise KRLError(f"a revoked key in the KRL is one jit-ssh cannot represent: {exc}") from exc


def _serial_sections(serials: frozenset[int]) -> list[bytes]:
    ordered = sorted(serials)
    singles: list[int] = []
    sections: list[bytes] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        if j - i + 1 >= _MIN_RANGE_RUN:
            sections.append(bytes([_CERT_SERIAL_RANGE]) + string(uint64(ordered[i]) + uint64(ordered[j])))
        else:
            singles.extend(ordered[i : j + 1])
        i = j + 1
    if singles:
        sections.insert(0, bytes([_CERT_SERIAL_LIST]) + string(b"".join(uint64(s) for s in singles)))
    return sections


def _parse_cert_section(body: bytes, serials: dict[PublicKey, set[int]], key_ids: dict[PublicKey, set[str]]) -> None:
    reader = Reader(body, "KRL certificate section")
    ca_blob = reader.string()
    if not ca_blob:
        raise KRLError("KRL revokes certificates of any CA (empty CA key); jit-ssh does not read that form")
    ca = PublicKey(ca_blob)
    reader.string()  # reserved
    revoked = serials.setdefault(ca, set())
    names = key_ids.setdefault(ca, set())
    while not reader.at_end():
        kind = reader.byte()
        sub = Reader(reader.string(), "KRL certificate subsection")
        if kind == _CERT_SERIAL_LIST:
            while not sub.at_end():
                revoked.add(sub.uint64())
        elif kind == _CERT_SERIAL_RANGE:
            low, high = sub.uint64(), sub.uint64()
            sub.expect_end()
            if low == 0 or low > high or high - low >= _MAX_BITMAP_BITS:
                raise KRLError(f"KRL serial range {low}-{high} is invalid or too wide to read")
            revoked.update(range(low, high + 1))
        elif kind == _CERT_SERIAL_BITMAP:
            offset = sub.uint64()
            bits = sub.mpint()
            sub.expect_end()
            if bits.bit_length() > _MAX_BITMAP_BITS:
                raise KRLError("KRL serial bitmap is too wide to read")
            revoked.update(offset + i for i in range(bits.bit_length()) if bits >> i & 1)
        elif kind == _CERT_KEY_ID:
            while not sub.at_end():
                names.add(sub.text())
        else:
            raise KRLError(f"KRL has an unknown certificate subsection type {kind:#x}")
