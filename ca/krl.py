"""OpenSSH key revocation lists (PROTOCOL.krl), written and read.

Hosts name the KRL in ``RevokedKeys``. asyncssh neither reads nor writes KRLs, so this module does both;
tests check it against ``ssh-keygen -Q``. No signature section is written: OpenSSH refuses to load a
KRL that carries one, so a published KRL is signed beside it if at all (DESIGN.md, "Hosts").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

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
_MAX_SERIAL = 2**64 - 1
# A run of at least this many consecutive serials is cheaper as one range section (21 bytes)
# than as list entries (8 bytes each).
_MIN_RANGE_RUN = 3
#: Bitmaps wider than this are refused when reading, so a hostile KRL cannot make us allocate wildly.
_MAX_BITMAP_BITS = 1 << 24


@dataclass(frozen=True, slots=True)
class KRL:
    """Revoked certificate serials and key ids, per CA key, and revoked plain keys."""

    serials: Mapping[PublicKey, frozenset[int]] = field(default_factory=dict)
    key_ids: Mapping[PublicKey, frozenset[str]] = field(default_factory=dict)
    keys: frozenset[bytes] = frozenset()
    version: int = 0
    generated: int = 0
    comment: str = ""

    @classmethod
    def build(
        cls,
        *,
        serials: Mapping[PublicKey, Iterable[int]] | None = None,
        key_ids: Mapping[PublicKey, Iterable[str]] | None = None,
        version: int,
        comment: str = "",
        now: datetime | None = None,
    ) -> KRL:
        """A KRL from revoked serials and key ids per CA key; every value is checked."""
        serial_sets: dict[PublicKey, frozenset[int]] = {}
        for ca, values in (serials or {}).items():
            checked = frozenset(values)
            bad = [s for s in checked if not isinstance(s, int) or not 0 < s <= _MAX_SERIAL]
            if bad:
                raise KRLError(f"revoked serial {bad[0]!r} is not an integer from 1 to 2**64-1")
            if checked:
                serial_sets[ca] = checked
        id_sets: dict[PublicKey, frozenset[str]] = {}
        for ca, names in (key_ids or {}).items():
            try:
                checked_ids = frozenset(check_key_id(n) for n in names)
            except InputError as exc:
                raise KRLError(f"revoked key id: {exc}") from exc
            if checked_ids:
                id_sets[ca] = checked_ids
        if not 0 <= version <= _MAX_SERIAL:
            raise KRLError(f"KRL version must be a 64-bit unsigned integer, got {version}")
        moment = int((now or datetime.now(UTC)).timestamp())
        return cls(serials=serial_sets, key_ids=id_sets, version=version, generated=moment, comment=comment)

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
        keys: set[bytes] = set()
        while not reader.at_end():
            kind = reader.byte()
            body = reader.string()
            if kind == _SECTION_CERTIFICATES:
                _parse_cert_section(body, serials, key_ids)
            elif kind in (_SECTION_EXPLICIT_KEY, _SECTION_FINGERPRINT_SHA1, _SECTION_FINGERPRINT_SHA256):
                section = Reader(body, "KRL key section")
                while not section.at_end():
                    keys.add(bytes([kind]) + section.string())
            elif kind == _SECTION_SIGNATURE:
                raise KRLError("KRL carries an embedded signature, which OpenSSH refuses to load")
            else:
                raise KRLError(f"KRL has an unknown section type {kind}")
        return cls(
            # Only non-empty sets, as build() keeps them, so that a KRL reads back equal to what was built.
            serials={k: frozenset(v) for k, v in serials.items() if v},
            key_ids={k: frozenset(v) for k, v in key_ids.items() if v},
            keys=frozenset(keys),
            version=version,
            generated=generated,
            comment=comment,
        )

    def is_revoked(self, cert: Certificate) -> bool:
        """Whether ``cert`` is revoked here by its serial or key id under its signing CA."""
        ca = cert.signature_key
        return cert.serial in self.serials.get(ca, frozenset()) or cert.key_id in self.key_ids.get(ca, frozenset())


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
