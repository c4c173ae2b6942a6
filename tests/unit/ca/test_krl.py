"""Key revocation lists (PROTOCOL.krl): what we write, OpenSSH reads the same way, and back.

``ssh-keygen -Q`` is the judge: for serial lists, ranges and key ids under several CAs, it must call
revoked exactly the certificates our :meth:`KRL.is_revoked` calls revoked, and nothing else. We also read
KRLs that ``ssh-keygen -k`` wrote (with its bitmaps), and property tests cover build and parse.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jit_ssh.ca import KRL, KeySigner, KeyType, KRLError, PublicKey
from jit_ssh.ca.certs import Certificate, mint_user_certificate
from jit_ssh.ca.krl import KRL_MAGIC
from jit_ssh.ca.wire import string, uint32, uint64

MAX = 2**64 - 1
NOW = datetime(2030, 6, 1, tzinfo=UTC)


def cert_for(signer: KeySigner, subject: PublicKey, *, serial: int, key_id: str = "ok id") -> Certificate:
    """A ten-minute user certificate of ``subject``, signed by ``signer``."""
    now = datetime.now(UTC)
    return mint_user_certificate(
        signer,
        subject,
        principals=["ubuntu@prod-web-3"],
        key_id=key_id,
        serial=serial,
        valid_from=now,
        valid_until=now + timedelta(minutes=10),
        max_validity=timedelta(minutes=10),
    )


def ssh_keygen_query(krl_path: Path, items: Sequence[Certificate | PublicKey], folder: Path) -> list[bool]:
    """Ask the real ``ssh-keygen -Q`` which of ``items`` the KRL revokes (one call for all of them)."""
    paths = []
    for index, item in enumerate(items):
        suffix = "-cert.pub" if isinstance(item, Certificate) else ".pub"
        path = folder / f"q{index:04d}{suffix}"
        path.write_text(item.to_openssh() + "\n", encoding="utf-8")
        paths.append(path)
    result = subprocess.run(
        ["ssh-keygen", "-Q", "-f", str(krl_path), *map(str, paths)], capture_output=True, text=True, check=False
    )
    assert result.returncode in (0, 1), result.stderr
    verdicts = {}
    for line in result.stdout.splitlines():
        match = re.fullmatch(r"(\S+) \(.*\): (REVOKED|ok)", line)
        assert match, f"unexpected ssh-keygen -Q output {line!r}"
        verdicts[match.group(1)] = match.group(2) == "REVOKED"
    assert result.returncode == (1 if any(verdicts.values()) else 0)
    return [verdicts[str(path)] for path in paths]


# -- ssh-keygen -Q agrees with KRL.is_revoked ------------------------------------------------------------


def test_ssh_keygen_agrees_on_lists_ranges_key_ids_and_several_cas(
    ca_signers: dict[KeyType, KeySigner], user_key: tuple[Path, PublicKey], tmp_path: Path
) -> None:
    ed, ec, rsa = (ca_signers[t] for t in (KeyType.ED25519, KeyType.ECDSA, KeyType.RSA))
    revoked_serials = {
        ed.public_key: {5, 7, *range(100, 111), MAX},  # a list and a range, and the largest serial
        ec.public_key: {1, 2, 3, 50},  # a run of three becomes a range
    }
    revoked_ids = {ed.public_key: {"stolen laptop"}, rsa.public_key: {"request 9 user mallory"}}
    krl = KRL.build(serials=revoked_serials, key_ids=revoked_ids, version=3, comment="test", now=NOW)
    krl_path = tmp_path / "revoked.krl"
    krl_path.write_bytes(krl.to_bytes())
    parsed = KRL.from_bytes(krl_path.read_bytes())

    certs: list[Certificate] = []
    expected: list[bool] = []
    probe_serials = [1, 2, 3, 4, 5, 6, 7, 8, 50, 99, 100, 101, 105, 110, 111, 2**63, MAX - 1, MAX]
    for signer in (ed, ec, rsa):
        for serial in probe_serials:
            certs.append(cert_for(signer, user_key[1], serial=serial))
            expected.append(serial in revoked_serials.get(signer.public_key, set()))
        for key_id in ("stolen laptop", "request 9 user mallory", "stolen laptop 2", "Stolen laptop"):
            certs.append(cert_for(signer, user_key[1], serial=4242, key_id=key_id))
            expected.append(key_id in revoked_ids.get(signer.public_key, set()))

    openssh = ssh_keygen_query(krl_path, certs, tmp_path)
    ours = [krl.is_revoked(c) for c in certs]
    ours_parsed = [parsed.is_revoked(c) for c in certs]
    assert ours == expected
    assert ours_parsed == expected
    assert openssh == expected
    # Both verdicts occur, so agreement is not trivially "all ok" or "all revoked".
    assert any(expected)
    assert not all(expected)


def test_empty_krl_revokes_nothing_for_openssh_either(
    ca_signers: dict[KeyType, KeySigner], user_key: tuple[Path, PublicKey], tmp_path: Path
) -> None:
    krl = KRL.build(version=0)
    path = tmp_path / "empty.krl"
    path.write_bytes(krl.to_bytes())
    cert = cert_for(ca_signers[KeyType.ED25519], user_key[1], serial=1)
    assert ssh_keygen_query(path, [cert], tmp_path) == [False]
    assert not krl.is_revoked(cert)


def test_ssh_keygen_lists_our_krl_as_we_wrote_it(ca_signers: dict[KeyType, KeySigner], tmp_path: Path) -> None:
    ca = ca_signers[KeyType.ED25519].public_key
    krl = KRL.build(serials={ca: [9, 1, 2, 3, 4, 20, 22]}, key_ids={ca: ["b id", "a id"]}, version=12, now=NOW)
    path = tmp_path / "revoked.krl"
    path.write_bytes(krl.to_bytes())
    result = subprocess.run(["ssh-keygen", "-Q", "-l", "-f", str(path)], capture_output=True, text=True, check=True)
    lines = [line for line in result.stdout.splitlines() if line and not line.startswith("#")]
    assert "# KRL version 12" in result.stdout
    assert ca.fingerprint() in result.stdout
    assert sorted(lines) == ["id: a id", "id: b id", "serial: 1-4", "serial: 20", "serial: 22", "serial: 9"]


# -- reading what OpenSSH wrote ----------------------------------------------------------------------------


def test_reads_krls_written_by_ssh_keygen_including_bitmaps(user_key: tuple[Path, PublicKey], tmp_path: Path) -> None:
    ca_pub = Path(str(user_key[0]) + ".pub")
    sparse = list(range(1000, 1400, 2))  # every other serial: ssh-keygen encodes this as a bitmap
    spec = tmp_path / "spec"
    spec.write_text(
        "\n".join(
            ["serial: 1", "serial: 10-400", "id: bad key", "serial: 5000-5003", f"serial: {MAX}"]
            + [f"serial: {n}" for n in sparse]
        )
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "openssh.krl"
    subprocess.run(
        ["ssh-keygen", "-q", "-k", "-f", str(out), "-s", str(ca_pub), "-z", "7", str(spec)],
        check=True,
        capture_output=True,
    )
    krl = KRL.from_bytes(out.read_bytes())
    assert krl.version == 7
    assert krl.serials == {user_key[1]: frozenset({1, *range(10, 401), *range(5000, 5004), MAX, *sparse})}
    assert krl.key_ids == {user_key[1]: frozenset({"bad key"})}
    # Negative control: the serials between the bitmap's bits are not revoked.
    assert 1001 not in krl.serials[user_key[1]]
    assert 401 not in krl.serials[user_key[1]]


def test_reads_plain_key_sections_without_confusing_them_with_certificates(
    user_key: tuple[Path, PublicKey], tmp_path: Path
) -> None:
    spec = tmp_path / "spec"
    spec.write_text(user_key[1].to_openssh() + "\n", encoding="utf-8")
    out = tmp_path / "keys.krl"
    subprocess.run(["ssh-keygen", "-q", "-k", "-f", str(out), str(spec)], check=True, capture_output=True)
    krl = KRL.from_bytes(out.read_bytes())
    assert krl.serials == {}
    assert krl.key_ids == {}
    assert krl.keys == frozenset({user_key[1]})


# -- build and round trip ---------------------------------------------------------------------------------


def test_round_trip_keeps_everything(ca_signers: dict[KeyType, KeySigner]) -> None:
    ed, ec = ca_signers[KeyType.ED25519].public_key, ca_signers[KeyType.ECDSA].public_key
    krl = KRL.build(
        serials={ed: [1, 2, 3, 10, MAX], ec: range(500, 600)},
        key_ids={ec: ["x y z"]},
        version=2**64 - 1,
        comment="jit-ssh access CA",
        now=NOW,
    )
    back = KRL.from_bytes(krl.to_bytes())
    assert back.serials == {ed: frozenset({1, 2, 3, 10, MAX}), ec: frozenset(range(500, 600))}
    assert back.key_ids == {ec: frozenset({"x y z"})}
    assert (back.version, back.generated, back.comment) == (2**64 - 1, int(NOW.timestamp()), "jit-ssh access CA")
    assert back.to_bytes() == krl.to_bytes()


def test_runs_are_written_as_ranges_and_the_rest_as_a_list(ca_signers: dict[KeyType, KeySigner]) -> None:
    ca = ca_signers[KeyType.ED25519].public_key
    # 100,000 consecutive serials cost one 21-byte range section, not 800 kB of list.
    data = KRL.build(serials={ca: range(1, 100_001)}, version=1, now=NOW).to_bytes()
    assert len(data) < 200
    assert bytes([0x21]) + string(uint64(1) + uint64(100_000)) in data
    pairs = KRL.build(serials={ca: [1, 2, 4, 5]}, version=1, now=NOW).to_bytes()
    assert bytes([0x20]) + string(uint64(1) + uint64(2) + uint64(4) + uint64(5)) in pairs


def test_empty_sets_write_no_section(ca_signers: dict[KeyType, KeySigner]) -> None:
    ca = ca_signers[KeyType.ED25519].public_key
    krl = KRL.build(serials={ca: []}, key_ids={ca: []}, version=1, now=NOW)
    assert krl.serials == {}
    assert krl.key_ids == {}
    assert krl.to_bytes() == KRL.build(version=1, now=NOW).to_bytes()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"serials": [0]}, "revoked serial 0"),
        ({"serials": [-1]}, "revoked serial -1"),
        ({"serials": [2**64]}, "revoked serial"),
        ({"key_ids": [""]}, "key id"),
        ({"key_ids": ["new\nline"]}, "key id"),
        ({"key_ids": ["\u00e9"]}, "key id"),
        ({"version": -1}, "version"),
        ({"version": 2**64}, "version"),
    ],
)
def test_build_refuses_bad_values(kwargs: dict[str, object], match: str, ca_signers: dict[KeyType, KeySigner]) -> None:
    ca = ca_signers[KeyType.ED25519].public_key
    arguments: dict[str, object] = {"version": 1}
    if "serials" in kwargs:
        arguments["serials"] = {ca: kwargs.pop("serials")}
    if "key_ids" in kwargs:
        arguments["key_ids"] = {ca: kwargs.pop("key_ids")}
    arguments.update(kwargs)
    with pytest.raises(KRLError, match=match) as info:
        KRL.build(**arguments)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


# -- parse refusals ---------------------------------------------------------------------------------------


def krl_header(*, magic: int = KRL_MAGIC, format_version: int = 1, comment: bytes = b"") -> bytes:
    return uint64(magic) + uint32(format_version) + uint64(1) + uint64(0) + uint64(0) + string(b"") + string(comment)


def cert_section(ca: PublicKey, *subsections: bytes) -> bytes:
    return bytes([1]) + string(string(ca.blob) + string(b"") + b"".join(subsections))


@pytest.fixture(scope="module")
def ca_key(ca_signers: dict[KeyType, KeySigner]) -> PublicKey:
    return ca_signers[KeyType.ED25519].public_key


def test_parse_reads_a_hand_made_bitmap(ca_key: PublicKey) -> None:
    bitmap = bytes([0x22]) + string(uint64(100) + string(bytes([0, 0b1010_0101])))
    krl = KRL.from_bytes(krl_header() + cert_section(ca_key, bitmap))
    assert krl.serials[ca_key] == {100, 102, 105, 107}


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda ca: b"", "truncated"),
        (lambda ca: krl_header(magic=KRL_MAGIC + 1), "SSHKRL"),
        (lambda ca: krl_header(format_version=2), "format version"),
        (lambda ca: krl_header() + bytes([4]) + string(b"sig"), "signature"),
        (lambda ca: krl_header() + bytes([9]) + string(b""), "unknown section"),
        (lambda ca: krl_header() + bytes([1]) + string(string(b"") + string(b"")), "any CA"),
        (lambda ca: krl_header() + cert_section(ca, bytes([0x24]) + string(b"")), "unknown certificate subsection"),
        (lambda ca: krl_header() + cert_section(ca, bytes([0x21]) + string(uint64(0) + uint64(5))), "range"),
        (lambda ca: krl_header() + cert_section(ca, bytes([0x21]) + string(uint64(9) + uint64(5))), "range"),
        (lambda ca: krl_header() + cert_section(ca, bytes([0x21]) + string(uint64(1) + uint64(MAX))), "too wide"),
        (lambda ca: krl_header() + cert_section(ca, bytes([0x21]) + string(uint64(1))), "truncated"),
        (lambda ca: krl_header() + cert_section(ca, bytes([0x20]) + string(b"\x00" * 7)), "truncated"),
        (lambda ca: krl_header() + cert_section(ca, bytes([0x22]) + string(uint64(1) + string(b"\x80"))), "negative"),
        (lambda ca: krl_header() + cert_section(ca, bytes([0x23]) + string(string(b"\xff"))), "UTF-8"),
        (lambda ca: krl_header() + bytes([1]) + string(string(b"junk")), "public key"),
        (lambda ca: krl_header() + bytes([1]), "truncated"),
    ],
)
def test_parse_refuses_malformed_krls(build: object, match: str, ca_key: PublicKey) -> None:
    with pytest.raises(KRLError, match=match) as info:
        KRL.from_bytes(build(ca_key))  # type: ignore[operator]
    assert "\n" not in str(info.value)


def test_parse_refuses_a_bitmap_too_wide_to_read(ca_key: PublicKey) -> None:
    huge = bytes([0x01]) + bytes((1 << 21) + 1)  # 2**24 + 1 bits
    with pytest.raises(KRLError, match="too wide"):
        KRL.from_bytes(krl_header() + cert_section(ca_key, bytes([0x22]) + string(uint64(1) + string(huge))))


# -- property tests -------------------------------------------------------------------------------------

serial_values = st.one_of(
    st.integers(min_value=1, max_value=2**64 - 1),
    st.integers(min_value=1, max_value=300),  # clustered, so runs and ranges occur
    st.integers(min_value=2**64 - 300, max_value=2**64 - 1),
)
key_id_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    version=st.integers(min_value=0, max_value=2**64 - 1),
    # NUL cannot be in a comment: OpenSSH reads it as a C string and refuses the whole KRL.
    comment=st.text(alphabet=st.characters(exclude_characters="\x00"), max_size=40),
)
def test_build_then_parse_round_trips(
    ca_signers: dict[KeyType, KeySigner], data: st.DataObject, version: int, comment: str
) -> None:
    cas = [signer.public_key for signer in ca_signers.values()]
    serials = {ca: data.draw(st.frozensets(serial_values, max_size=40)) for ca in cas}
    key_ids = {ca: data.draw(st.frozensets(key_id_values, max_size=4)) for ca in cas}
    krl = KRL.build(serials=serials, key_ids=key_ids, version=version, comment=comment, now=NOW)
    back = KRL.from_bytes(krl.to_bytes())
    assert back.serials == {ca: s for ca, s in serials.items() if s}
    assert back.key_ids == {ca: k for ca, k in key_ids.items() if k}
    assert (back.version, back.comment, back.generated) == (version, comment, int(NOW.timestamp()))
    assert back.to_bytes() == krl.to_bytes()


@settings(max_examples=200, deadline=None)
@given(
    serials=st.lists(st.integers(min_value=-(2**65), max_value=2**65), max_size=8),
    key_ids=st.lists(st.text(max_size=300), max_size=4),
    version=st.integers(min_value=-(2**65), max_value=2**65),
)
def test_build_accepts_valid_values_and_refuses_others_with_krl_error(
    ca_signers: dict[KeyType, KeySigner], serials: list[int], key_ids: list[str], version: int
) -> None:
    ca = ca_signers[KeyType.ED25519].public_key
    valid = (
        all(0 < s < 2**64 for s in serials)
        and all(0 < len(k) <= 256 and k.isascii() and k.isprintable() for k in key_ids)
        and 0 <= version < 2**64
    )
    try:
        krl = KRL.build(serials={ca: serials}, key_ids={ca: key_ids}, version=version, now=NOW)
    except KRLError:
        assert not valid
        return
    assert valid
    back = KRL.from_bytes(krl.to_bytes())
    assert back.serials.get(ca, frozenset()) == frozenset(serials)
    assert back.key_ids.get(ca, frozenset()) == frozenset(key_ids)


@pytest.fixture(scope="module")
def sample_krl(ca_signers: dict[KeyType, KeySigner]) -> bytes:
    # Serials far apart, so that no mutation can turn the list into a range millions wide.
    ca = ca_signers[KeyType.ED25519].public_key
    return KRL.build(
        serials={ca: [2**40, 2**50, 2**60]}, key_ids={ca: ["some id", "other"]}, version=5, now=NOW
    ).to_bytes()


@settings(max_examples=200, deadline=None)
@given(junk=st.binary(max_size=200), position=st.integers(min_value=0), value=st.integers(0, 255))
def test_parse_raises_only_krl_errors(sample_krl: bytes, junk: bytes, position: int, value: int) -> None:
    index = position % len(sample_krl)
    mutated = sample_krl[:index] + bytes([value]) + sample_krl[index + 1 :]
    for data in (junk, mutated, sample_krl[:index], sample_krl + junk, krl_header() + junk):
        with contextlib.suppress(KRLError):
            KRL.from_bytes(data)
