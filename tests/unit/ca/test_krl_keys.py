"""Revoked plain keys in KRLs: the explicit-key, SHA-1 and SHA-256 sections of PROTOCOL.krl.

A KRL told to revoke a key must revoke it. ``ssh-keygen -Q`` is the judge, for plain keys and for
certificates of every key type: OpenSSH refuses a certificate whose own key, or whose CA's key, is revoked
as a plain key, and :meth:`KRL.is_revoked` must say the same. KRLs that ``ssh-keygen -k`` wrote read back
and write out with every section kept (byte for byte when they hold only key sections), and whatever
jit-ssh cannot represent is refused with :class:`KRLError`, never dropped.
"""

from __future__ import annotations

import hashlib
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st
from jit_ssh.ca import KRL, KeySigner, KeyType, KRLError, PublicKey
from jit_ssh.ca.certs import Certificate
from jit_ssh.ca.signer import generate_private_key
from jit_ssh.ca.wire import string, uint64

from tests.unit.ca.test_krl import MAX, NOW, cert_for, cert_section, krl_header, ssh_keygen_query

#: ssh-keygen's arguments for each key type it can make without a security key.
SSH_KEYGEN_TYPES = {
    "ed25519": ["-t", "ed25519"],
    "ecdsa-256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa-384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa-521": ["-t", "ecdsa", "-b", "521"],
    "rsa": ["-t", "rsa", "-b", "2048"],
}
SK_TYPES = ("sk-ed25519", "sk-ecdsa")
#: One key per way of revoking it, and one left valid.
ROLES = ("key", "sha1", "sha256", "ok")

KeySets = dict[str, dict[str, PublicKey]]


def _sha1(key: PublicKey) -> bytes:
    return hashlib.sha1(key.blob, usedforsecurity=False).digest()


def _sha256(key: PublicKey) -> bytes:
    return hashlib.sha256(key.blob).digest()


def _sk_key(kind: str) -> PublicKey:
    # A security key's public half needs no token to be revoked, signed or checked, so it is made here.
    if kind == "sk-ed25519":
        raw = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        return PublicKey.from_fields("sk-ssh-ed25519@openssh.com", (raw, b"ssh:"))
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return PublicKey.from_fields("sk-ecdsa-sha2-nistp256@openssh.com", (b"nistp256", point, b"ssh:"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeySets:
    """Four keys of every type, by role; all but the security keys made by ssh-keygen itself."""
    folder = tmp_path_factory.mktemp("krl-keys")
    out: KeySets = {kind: {role: _sk_key(kind) for role in ROLES} for kind in SK_TYPES}
    for kind, args in SSH_KEYGEN_TYPES.items():
        out[kind] = {}
        for role in ROLES:
            path = folder / f"{kind}-{role}"
            subprocess.run(
                ["ssh-keygen", "-q", *args, "-N", "", "-C", f"{kind} {role}", "-f", str(path)],
                check=True,
                stdin=subprocess.DEVNULL,
            )
            out[kind][role] = PublicKey.parse(path.with_name(path.name + ".pub").read_text())
    return out


def _listing(path: Path) -> set[tuple[str, str]]:
    """What ``ssh-keygen -Q -l`` lists, as (CA block, line) pairs: the order of blocks carries no meaning."""
    result = subprocess.run(["ssh-keygen", "-Q", "-l", "-f", str(path)], capture_output=True, text=True, check=True)
    block = "plain keys"
    entries: set[tuple[str, str]] = set()
    for line in result.stdout.splitlines():
        if line.startswith("# CA key "):
            block = line
        elif line:
            entries.add((block, line))
    return entries


def _ssh_keygen_cert(ca: Path, key: PublicKey, folder: Path, *, key_id: str, serial: int) -> Certificate:
    """A certificate of ``key`` signed by ``ssh-keygen -s`` with the CA private key at ``ca``."""
    path = folder / f"signed-{serial}-{len(key_id)}.pub"
    path.write_text(key.to_openssh() + "\n", encoding="utf-8")
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca), "-I", key_id, "-z", str(serial), str(path)], check=True, capture_output=True
    )
    return Certificate.parse(path.with_name(path.name.removesuffix(".pub") + "-cert.pub").read_text())


def _ssh_keygen_krl(folder: Path, lines: list[str], *options: str) -> Path:
    spec = folder / "spec"
    spec.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = folder / "openssh.krl"
    subprocess.run(["ssh-keygen", "-q", "-k", "-f", str(out), *options, str(spec)], check=True, capture_output=True)
    return out


# -- what we write, ssh-keygen -Q judges ------------------------------------------------------------------


def test_ssh_keygen_refuses_revoked_keys_and_their_certificates_of_every_type(
    keys: KeySets, ca_signers: dict[KeyType, KeySigner], tmp_path: Path
) -> None:
    ed, ec_ca, rsa = (ca_signers[t] for t in (KeyType.ED25519, KeyType.ECDSA, KeyType.RSA))
    # CAs revoked as plain keys: OpenSSH then refuses every certificate they signed.
    ca_by_key, ca_by_hash = (
        KeySigner(generate_private_key(KeyType.ED25519)),
        KeySigner(generate_private_key(KeyType.ECDSA)),
    )
    krl = KRL.build(
        keys=[k["key"] for k in keys.values()] + [ca_by_key.public_key],
        sha1=[_sha1(k["sha1"]) for k in keys.values()],
        sha256=[_sha256(k["sha256"]) for k in keys.values()] + [_sha256(ca_by_hash.public_key)],
        serials={ed.public_key: [77]},
        version=4,
        now=NOW,
    )
    path = tmp_path / "ours.krl"
    path.write_bytes(krl.to_bytes())

    targets: list[Certificate | PublicKey] = []
    expected: list[bool] = []
    for index, kind in enumerate(sorted(keys)):
        signer = (ed, ec_ca, rsa)[index % 3]
        for role, key in keys[kind].items():
            # A certificate is revoked when its own key is, whatever its serial.
            targets += [key, cert_for(signer, key, serial=1000 + index)]
            expected += [role != "ok"] * 2
        valid = keys[kind]["ok"]
        targets += [cert_for(ed, valid, serial=77), cert_for(ec_ca, valid, serial=77)]
        targets += [cert_for(ca_by_key, valid, serial=5), cert_for(ca_by_hash, valid, serial=5)]
        expected += [True, False, True, True]
    targets += [ca_by_key.public_key, ca_by_hash.public_key, ed.public_key]
    expected += [True, True, False]

    assert ssh_keygen_query(path, targets, tmp_path) == expected
    assert [krl.is_revoked(t) for t in targets] == expected
    parsed = KRL.from_bytes(path.read_bytes())
    assert parsed == krl
    assert [parsed.is_revoked(t) for t in targets] == expected


def test_a_krl_constructed_with_keys_writes_them(keys: KeySets, tmp_path: Path) -> None:
    revoked = keys["ed25519"]["key"]
    krl = KRL(keys=frozenset({revoked}), sha256=frozenset({_sha256(keys["rsa"]["sha256"])}), version=1)
    path = tmp_path / "ours.krl"
    path.write_bytes(krl.to_bytes())
    verdicts = ssh_keygen_query(path, [revoked, keys["rsa"]["sha256"], keys["ed25519"]["ok"]], tmp_path)
    assert verdicts == [True, True, False]


# -- what ssh-keygen -k wrote, read and written again ------------------------------------------------------


def test_round_trip_of_an_ssh_keygen_krl_keeps_every_section(
    keys: KeySets, ca_signers: dict[KeyType, KeySigner], user_key: tuple[Path, PublicKey], tmp_path: Path
) -> None:
    ca_pub = Path(str(user_key[0]) + ".pub")
    other_ca = ca_signers[KeyType.RSA]
    by_serial = cert_for(other_ca, keys["ed25519"]["ok"], serial=31)  # a certificate line revokes its serial
    lines = ["serial: 5", "serial: 10-20", "id: stolen laptop", f"serial: {MAX}", by_serial.to_openssh()]
    for index, kind in enumerate(sorted(keys)):
        by_role = keys[kind]
        lines.append(("key: " if index % 2 else "") + by_role["key"].to_openssh())  # both spell an explicit key
        lines.append("sha1: " + by_role["sha1"].to_openssh())
        lines.append(
            f"hash: {by_role['sha256'].fingerprint()}" if index % 2 else "sha256: " + by_role["sha256"].to_openssh()
        )
    theirs = _ssh_keygen_krl(tmp_path, lines, "-s", str(ca_pub), "-z", "9")

    krl = KRL.from_bytes(theirs.read_bytes())
    assert krl.keys == {k["key"] for k in keys.values()}
    assert krl.sha1 == {_sha1(k["sha1"]) for k in keys.values()}
    assert krl.sha256 == {_sha256(k["sha256"]) for k in keys.values()}
    assert krl.serials == {user_key[1]: frozenset({5, *range(10, 21), MAX}), other_ca.public_key: frozenset({31})}
    assert krl.key_ids == {user_key[1]: frozenset({"stolen laptop"})}

    ours = tmp_path / "ours.krl"
    ours.write_bytes(krl.to_bytes())
    assert _listing(ours) == _listing(theirs)
    assert KRL.from_bytes(ours.read_bytes()) == krl
    valid = keys["ed25519"]["ok"]
    targets: list[Certificate | PublicKey] = [by_serial, cert_for(other_ca, valid, serial=32)]
    # Certificates that ssh-keygen signed with the -s CA: by key id (serial 0 as well), in a range, neither.
    for key_id, serial in (("stolen laptop", 0), ("stolen laptop", 4242), ("other", 15), ("other", 21)):
        targets.append(_ssh_keygen_cert(user_key[0], valid, tmp_path, key_id=key_id, serial=serial))
    for kind in sorted(keys):
        targets += [*keys[kind].values(), *(cert_for(other_ca, k, serial=99) for k in keys[kind].values())]
    verdicts = ssh_keygen_query(theirs, targets, tmp_path)
    assert ssh_keygen_query(ours, targets, tmp_path) == verdicts
    assert [krl.is_revoked(t) for t in targets] == verdicts
    assert verdicts[:6] == [True, False, True, True, True, False]
    assert verdicts.count(False) == 2 * len(keys) + 2  # and the "ok" keys and their certificates


def test_key_sections_are_written_byte_for_byte_as_ssh_keygen_writes_them(keys: KeySets, tmp_path: Path) -> None:
    # Same section order, one section per kind, entries sorted as OpenSSH sorts them (hashes as big-endian
    # numbers, as PROTOCOL.krl requires): nothing to tell our KRL from OpenSSH's.
    lines = [k["key"].to_openssh() for k in keys.values()]
    lines += ["sha1: " + k["sha1"].to_openssh() for k in keys.values()]
    lines += ["sha256: " + k["sha256"].to_openssh() for k in keys.values()]
    data = _ssh_keygen_krl(tmp_path, lines, "-z", "3").read_bytes()
    krl = KRL.from_bytes(data)
    assert krl.to_bytes() == data
    built = KRL.build(
        keys=[k["key"] for k in reversed(keys.values())],
        sha1=[_sha1(k["sha1"]) for k in keys.values()],
        sha256=[_sha256(k["sha256"]) for k in keys.values()],
        version=3,
        now=datetime.fromtimestamp(krl.generated, UTC),
    )
    assert built.to_bytes() == data


@pytest.mark.parametrize(
    ("args", "match"), [(["-t", "dsa"], "ssh-dss"), (["-t", "rsa", "-b", "1024"], "1024 bits is too small")]
)
def test_a_key_jit_ssh_cannot_represent_is_refused_not_dropped(args: list[str], match: str, tmp_path: Path) -> None:
    path = tmp_path / "id_old"
    subprocess.run(["ssh-keygen", "-q", *args, "-N", "", "-f", str(path)], check=True, stdin=subprocess.DEVNULL)
    theirs = _ssh_keygen_krl(tmp_path, [Path(f"{path}.pub").read_text().strip()])
    with pytest.raises(KRLError, match=match):
        KRL.from_bytes(theirs.read_bytes())


# -- refusals --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def a_key(keys: KeySets) -> PublicKey:
    return keys["ed25519"]["key"]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda k: KRL(keys=frozenset({bytes([2]) + k.blob})), "revoked key"),  # the old raw form
        (lambda k: KRL(keys=frozenset({k.to_openssh()})), "revoked key"),
        (lambda k: KRL.build(sha1=[b"\x01" * 19], version=1), "SHA-1"),
        (lambda k: KRL.build(sha1=[_sha256(k)], version=1), "SHA-1"),
        (lambda k: KRL.build(sha1=["ab" * 10], version=1), "SHA-1"),  # type: ignore[list-item]
        (lambda k: KRL.build(sha256=[_sha1(k)], version=1), "SHA-256"),
        (lambda k: KRL.build(sha256=[k.fingerprint()], version=1), "SHA-256"),
        (lambda k: KRL(comment="a\x00b"), "comment"),
        (lambda k: KRL(key_ids={k: frozenset({"a\x00b"})}), "key id"),
        (lambda k: KRL(key_ids={k: frozenset({b"id"})}), "key id"),  # type: ignore[arg-type]
        # A lone value where a collection belongs would revoke its characters, or nothing.
        (lambda k: KRL.build(key_ids={k: "stolen laptop"}, version=1), "collection"),
        (lambda k: KRL.build(keys=k, version=1), "collection"),
        (lambda k: KRL(serials={k: frozenset({0})}), "serial 0"),
        (lambda k: KRL(serials={k: frozenset({True})}), "serial True"),
        (lambda k: KRL(serials={k.blob: frozenset({1})}), "CA key"),
        (lambda k: KRL(generated=-1), "generated"),
        (lambda k: KRL(version=2**64), "version"),
    ],
)
def test_values_that_cannot_be_written_are_refused(make: object, match: str, a_key: PublicKey) -> None:
    with pytest.raises(KRLError, match=match) as info:
        make(a_key)  # type: ignore[operator]
    assert "\n" not in str(info.value)


def _sections(kind: int, *entries: bytes) -> bytes:
    return bytes([kind]) + string(b"".join(string(e) for e in entries))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda ca: krl_header() + cert_section(ca, bytes([0x20]) + string(uint64(0))), "serial 0"),
        (lambda ca: krl_header() + cert_section(ca, bytes([0x22]) + string(uint64(0) + string(b"\x01"))), "serial 0"),
        (
            lambda ca: krl_header() + cert_section(ca, bytes([0x22]) + string(uint64(MAX) + string(b"\x02"))),
            "2\\*\\*64",
        ),
        (lambda ca: krl_header() + cert_section(ca, bytes([0x23]) + string(string(b"a\x00b"))), "key id"),
        (lambda ca: krl_header(comment=b"a\x00b"), "comment"),
        (lambda ca: krl_header() + _sections(3, b"\x01" * 19), "SHA-1"),
        (lambda ca: krl_header() + _sections(5, b"\x01" * 31), "SHA-256"),
        (lambda ca: krl_header() + bytes([2]) + string(string(ca.blob) + b"\x00"), "truncated"),
    ],
)
def test_parse_refuses_what_openssh_refuses(build: object, match: str, a_key: PublicKey, tmp_path: Path) -> None:
    data: bytes = build(a_key)  # type: ignore[operator]
    with pytest.raises(KRLError, match=match) as info:
        KRL.from_bytes(data)
    assert "\n" not in str(info.value)
    # OpenSSH refuses to load the same bytes, so refusing them loses nothing it would have enforced.
    path = tmp_path / "bad.krl"
    path.write_bytes(data)
    assert subprocess.run(["ssh-keygen", "-Q", "-l", "-f", str(path)], capture_output=True, check=False).returncode


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda ca: krl_header() + _sections(2, b"junk"), "revoked key"),
        (lambda ca: krl_header() + _sections(2, string(b"ssh-ed25519-cert-v01@openssh.com")), "revoked key"),
        (lambda ca: krl_header() + bytes([255]) + string(string(b"x@example.com") + b"\x00" + string(b"")), "255"),
        (lambda ca: krl_header() + cert_section(ca, bytes([0x39]) + string(b"")), "0x39"),
    ],
)
def test_parse_refuses_what_it_cannot_represent(build: object, match: str, a_key: PublicKey) -> None:
    with pytest.raises(KRLError, match=match):
        KRL.from_bytes(build(a_key))  # type: ignore[operator]


# -- property tests -------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_build_then_parse_round_trips_keys_and_hashes(keys: KeySets, data: st.DataObject) -> None:
    pool = sorted((k for by_role in keys.values() for k in by_role.values()), key=lambda k: k.blob)
    chosen = data.draw(st.frozensets(st.sampled_from(pool), max_size=len(pool)))
    sha1s = data.draw(st.frozensets(st.binary(min_size=20, max_size=20), max_size=8))
    sha256s = data.draw(st.frozensets(st.binary(min_size=32, max_size=32), max_size=8))
    hashed = data.draw(st.frozensets(st.sampled_from(pool), max_size=6))
    sha256s |= {_sha256(k) for k in hashed}
    krl = KRL.build(keys=chosen, sha1=sha1s, sha256=sha256s, version=1, now=NOW)
    back = KRL.from_bytes(krl.to_bytes())
    assert back == krl
    assert (back.keys, back.sha1, back.sha256) == (chosen, sha1s, sha256s)
    assert back.to_bytes() == krl.to_bytes()
    for key in pool:
        assert back.is_revoked(key) is (key in chosen or key in hashed or _sha1(key) in sha1s)
