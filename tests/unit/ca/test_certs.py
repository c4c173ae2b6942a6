"""Certificates as we mint them, read back by the real ``ssh-keygen -L`` and by our own parser.

Every kind we mint (user certificates under Ed25519, ECDSA and RSA CAs, for ed25519, ecdsa and rsa
subject keys; host certificates) is listed by OpenSSH and must show exactly what was asked: principals,
window, serial, key id, critical options and extensions. Each happy path is followed by its negative
controls, and property tests check that no input yields more than was asked or an error of another type.
"""

from __future__ import annotations

import base64
import ipaddress
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from jit_ssh.ca import (
    ALL_USER_EXTENSIONS,
    DEFAULT_USER_EXTENSIONS,
    MAX_BACKDATE,
    CADirectory,
    CertificateError,
    CertType,
    JitSshError,
    KeySigner,
    KeyType,
    PublicKey,
)
from jit_ssh.ca.certs import (
    MAX_HOST_VALIDITY,
    MAX_USER_VALIDITY,
    Certificate,
    mint_host_certificate,
    mint_user_certificate,
)
from jit_ssh.ca.wire import string

if TYPE_CHECKING:
    from tests.conftest import CertListing

HOST = "prod-web-3"
PRINCIPALS = ["ubuntu@prod-web-3", "deploy@prod-web-4"]
KEY_ID = "request 42 user alice session s-0001"
BIG_SERIAL = 2**63 + 12345  # above 2**63, so a signed 64-bit print would show it negative
SIGNATURE_ALGORITHM = {
    KeyType.ED25519: "ssh-ed25519",
    KeyType.ECDSA: "ecdsa-sha2-nistp384",
    KeyType.RSA: "rsa-sha2-512",
}
SUBJECT_TYPES = ("ed25519", "ecdsa", "rsa")


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _write(cert: Certificate, folder: Path, name: str = "id-cert.pub") -> Path:
    path = folder / name
    path.write_text(cert.to_openssh("comment") + "\n", encoding="utf-8")
    return path


def _mint(signer: KeySigner, subject: PublicKey, **overrides: object) -> Certificate:
    now = datetime.now(UTC)
    arguments: dict[str, object] = {
        "principals": PRINCIPALS,
        "key_id": KEY_ID,
        "serial": 7,
        "valid_from": now,
        "valid_until": now + timedelta(hours=1),
        "max_validity": timedelta(hours=1),
    }
    arguments.update(overrides)
    return mint_user_certificate(signer, subject, **arguments)  # type: ignore[arg-type]


def _assert_listing_matches(listing: CertListing, cert: Certificate, signer: KeySigner, kind: str) -> None:
    assert listing.type_line == f"{cert.cert_key_type} {kind} certificate"
    assert signer.public_key.fingerprint() in listing.signing_ca
    assert listing.key_id == cert.key_id
    assert listing.serial == cert.serial
    assert listing.valid_from == _utc(cert.valid_after)
    assert listing.valid_to == _utc(cert.valid_before)
    assert listing.principals == list(cert.principals)
    assert listing.critical_options == cert.critical_options
    assert listing.extensions == cert.extensions


# -- user certificates: every CA type and subject type, checked by ssh-keygen -L ----------------------


@pytest.mark.parametrize("subject_type", SUBJECT_TYPES)
@pytest.mark.parametrize("ca_type", list(KeyType))
def test_user_certificate_listed_exactly_by_ssh_keygen(
    ca_type: KeyType,
    subject_type: str,
    ca_signers: dict[KeyType, KeySigner],
    subject_keys: dict[str, tuple[Path, PublicKey]],
    list_certificate: Callable[[Path], CertListing],
    tmp_path: Path,
) -> None:
    signer = ca_signers[ca_type]
    subject = subject_keys[subject_type][1]
    now = datetime.now(UTC)
    until = now + timedelta(minutes=30)
    cert = _mint(
        signer,
        subject,
        serial=BIG_SERIAL,
        valid_from=now,
        valid_until=until,
        source_address=["10.0.0.0/8", "192.0.2.7"],
        force_command="uptime",
    )
    listing = list_certificate(_write(cert, tmp_path))

    assert listing.type_line == f"{subject.key_type}-cert-v01@openssh.com user certificate"
    assert f"(using {SIGNATURE_ALGORITHM[ca_type]})" in listing.signing_ca
    assert listing.principals == PRINCIPALS
    assert listing.key_id == KEY_ID
    assert listing.serial == BIG_SERIAL
    # The window starts at most 60 s before now (clock skew) and ends at the requested end.
    assert now - MAX_BACKDATE - timedelta(seconds=1) <= listing.valid_from <= now
    assert listing.valid_to == until.replace(microsecond=0)
    assert listing.critical_options == {"source-address": "10.0.0.0/8,192.0.2.7/32", "force-command": "uptime"}
    assert listing.extensions == {"permit-pty": ""}
    _assert_listing_matches(listing, cert, signer, "user")

    # Our own parser reads back exactly what was minted, and the certificate checks out.
    assert Certificate.parse(cert.to_openssh("comment")) == cert
    assert Certificate.from_blob(cert.blob) == cert
    assert cert.signature_valid()
    cert.check(trusted_ca=signer.public_key, cert_type=CertType.USER, principal=PRINCIPALS[0])
    cert.check(trusted_ca=signer.public_key, cert_type=CertType.USER, principal=PRINCIPALS[1])


def test_user_certificate_defaults_are_permit_pty_and_no_critical_options(
    ca_signers: dict[KeyType, KeySigner],
    subject_keys: dict[str, tuple[Path, PublicKey]],
    list_certificate: Callable[[Path], CertListing],
    tmp_path: Path,
) -> None:
    signer = ca_signers[KeyType.ED25519]
    cert = _mint(signer, subject_keys["ed25519"][1])
    listing = list_certificate(_write(cert, tmp_path))
    assert frozenset({"permit-pty"}) == DEFAULT_USER_EXTENSIONS
    assert listing.extensions == {"permit-pty": ""}
    assert listing.critical_options == {}
    _assert_listing_matches(listing, cert, signer, "user")
    # Negative control: none of the forwarding extensions asyncssh would turn on by default.
    for name in ("permit-agent-forwarding", "permit-port-forwarding", "permit-X11-forwarding", "permit-user-rc"):
        assert name not in listing.extensions


@pytest.mark.parametrize(
    "extensions",
    [
        frozenset(),
        frozenset({"permit-agent-forwarding"}),
        frozenset({"permit-port-forwarding", "permit-pty"}),
        frozenset({"permit-X11-forwarding"}),
        frozenset({"permit-user-rc", "no-touch-required"}),
        ALL_USER_EXTENSIONS,
    ],
    ids=lambda e: ",".join(sorted(e)) or "none",
)
def test_opt_in_extensions_are_exactly_those_asked(
    extensions: frozenset[str],
    ca_signers: dict[KeyType, KeySigner],
    subject_keys: dict[str, tuple[Path, PublicKey]],
    list_certificate: Callable[[Path], CertListing],
    tmp_path: Path,
) -> None:
    cert = _mint(ca_signers[KeyType.ED25519], subject_keys["ed25519"][1], extensions=extensions)
    listing = list_certificate(_write(cert, tmp_path))
    assert set(listing.extensions) == set(extensions)
    assert set(cert.extensions) == set(extensions)
    assert all(value == "" for value in listing.extensions.values())


def test_one_extension_given_as_a_string_is_one_name(ca_signers: dict[KeyType, KeySigner], user_key: tuple) -> None:
    cert = _mint(ca_signers[KeyType.ED25519], user_key[1], extensions="permit-pty")
    assert set(cert.extensions) == {"permit-pty"}


# -- host certificates ---------------------------------------------------------------------------------


@pytest.mark.parametrize("subject_type", SUBJECT_TYPES)
@pytest.mark.parametrize("ca_type", list(KeyType))
def test_host_certificate_listed_exactly_by_ssh_keygen(
    ca_type: KeyType,
    subject_type: str,
    ca_signers: dict[KeyType, KeySigner],
    subject_keys: dict[str, tuple[Path, PublicKey]],
    list_certificate: Callable[[Path], CertListing],
    tmp_path: Path,
) -> None:
    signer = ca_signers[ca_type]
    subject = subject_keys[subject_type][1]
    now = datetime.now(UTC)
    until = now + timedelta(days=90)
    cert = mint_host_certificate(
        signer,
        subject,
        hostnames=[HOST, "prod-web-3.example.net", "192.0.2.10"],
        key_id=f"host {HOST}",
        serial=99,
        valid_from=now,
        valid_until=until,
        max_validity=timedelta(days=365),
    )
    listing = list_certificate(_write(cert, tmp_path))
    assert listing.type_line == f"{subject.key_type}-cert-v01@openssh.com host certificate"
    assert f"(using {SIGNATURE_ALGORITHM[ca_type]})" in listing.signing_ca
    assert listing.principals == [HOST, "prod-web-3.example.net", "192.0.2.10"]
    assert listing.key_id == f"host {HOST}"
    assert listing.serial == 99
    assert now - MAX_BACKDATE - timedelta(seconds=1) <= listing.valid_from <= now
    assert listing.valid_to == until.replace(microsecond=0)
    assert listing.critical_options == {}
    assert listing.extensions == {}
    _assert_listing_matches(listing, cert, signer, "host")

    assert Certificate.parse(cert.to_openssh()) == cert
    cert.check(trusted_ca=signer.public_key, cert_type=CertType.HOST, principal=HOST)
    # Negative controls: a host certificate is no user certificate, and names only its hosts.
    with pytest.raises(CertificateError, match="host certificate"):
        cert.check(trusted_ca=signer.public_key, cert_type=CertType.USER)
    with pytest.raises(CertificateError, match="not valid for"):
        cert.check(trusted_ca=signer.public_key, cert_type=CertType.HOST, principal="prod-web-4")


# -- our parser against certificates OpenSSH itself signed ---------------------------------------------


def test_parser_reads_certificates_signed_by_ssh_keygen(
    session_ca: CADirectory,
    user_ca: KeySigner,
    user_key: tuple[Path, PublicKey],
    list_certificate: Callable[[Path], CertListing],
    tmp_path: Path,
) -> None:
    ca_key = tmp_path / "ca_key"
    shutil.copy(session_ca.path / "user_ca", ca_key)
    ca_key.chmod(0o600)
    subprocess.run(
        [
            "ssh-keygen", "-q", "-s", str(ca_key), "-I", "signed by openssh", "-n", "alice@h1,bob@h2",
            "-V", "-5m:+1h", "-z", "4242", "-O", "clear", "-O", "permit-pty", "-O", "permit-port-forwarding",
            "-O", "source-address=10.1.2.0/24", "-O", "force-command=/bin/true",
            str(user_key[0]) + ".pub",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    path = Path(str(user_key[0]) + "-cert.pub")
    cert = Certificate.parse(path.read_text(encoding="utf-8"))
    listing = list_certificate(path)
    _assert_listing_matches(listing, cert, user_ca, "user")
    assert cert.principals == ("alice@h1", "bob@h2")
    assert cert.serial == 4242
    assert cert.subject == user_key[1]
    assert cert.extensions == {"permit-port-forwarding": "", "permit-pty": ""}
    assert cert.critical_options == {"force-command": "/bin/true", "source-address": "10.1.2.0/24"}
    cert.check(trusted_ca=user_ca.public_key, cert_type=CertType.USER, principal="bob@h2")


# -- Certificate.check and the parser: negative controls ---------------------------------------------------


@pytest.fixture(scope="module")
def minted(ca_signers: dict[KeyType, KeySigner], subject_keys: dict[str, tuple[Path, PublicKey]]) -> Certificate:
    return _mint(ca_signers[KeyType.ED25519], subject_keys["ed25519"][1])


def test_check_accepts_inside_window_and_refuses_at_its_edges(
    minted: Certificate, ca_signers: dict[KeyType, KeySigner]
) -> None:
    ca = ca_signers[KeyType.ED25519].public_key
    first, last = _utc(minted.valid_after), _utc(minted.valid_before - 1)
    minted.check(trusted_ca=ca, cert_type=CertType.USER, now=first)
    minted.check(trusted_ca=ca, cert_type=CertType.USER, now=last)
    with pytest.raises(CertificateError, match="not valid yet"):
        minted.check(trusted_ca=ca, cert_type=CertType.USER, now=first - timedelta(seconds=1))
    with pytest.raises(CertificateError, match="expired"):
        minted.check(trusted_ca=ca, cert_type=CertType.USER, now=_utc(minted.valid_before))


def test_check_refuses_another_ca_another_type_and_another_principal(
    minted: Certificate, ca_signers: dict[KeyType, KeySigner]
) -> None:
    ca = ca_signers[KeyType.ED25519].public_key
    minted.check(trusted_ca=ca, cert_type=CertType.USER, principal=PRINCIPALS[0])
    with pytest.raises(CertificateError, match="not by the trusted CA"):
        minted.check(trusted_ca=ca_signers[KeyType.ECDSA].public_key, cert_type=CertType.USER)
    with pytest.raises(CertificateError, match="user certificate"):
        minted.check(trusted_ca=ca, cert_type=CertType.HOST)
    with pytest.raises(CertificateError, match="not valid for 'root@prod-web-3'"):
        minted.check(trusted_ca=ca, cert_type=CertType.USER, principal="root@prod-web-3")


def test_tampered_certificate_fails_our_check_and_ssh_keygen(
    minted: Certificate, ca_signers: dict[KeyType, KeySigner], tmp_path: Path
) -> None:
    ca = ca_signers[KeyType.ED25519].public_key
    # Change one character of a principal in the signed part: same length, so it still parses.
    index = minted.blob.index(b"ubuntu@prod-web-3") + 5
    forged_blob = minted.blob[:index] + b"U" + minted.blob[index + 1 :]
    forged = Certificate.from_blob(forged_blob)
    assert forged.principals[0] == "ubuntU@prod-web-3"
    assert not forged.signature_valid()
    with pytest.raises(CertificateError, match="invalid signature"):
        forged.check(trusted_ca=ca, cert_type=CertType.USER)
    # Our CA's name on a signature made by another CA's key fails as well.
    signed = minted.blob[: minted.signed_length]
    impostor = Certificate.from_blob(signed + string(ca_signers[KeyType.RSA].sign(signed)))
    assert impostor.signature_key == ca
    with pytest.raises(CertificateError, match="invalid signature"):
        impostor.check(trusted_ca=ca, cert_type=CertType.USER)
    # OpenSSH verifies the signature while loading: it refuses to list the forged certificate.
    path = tmp_path / "forged-cert.pub"
    path.write_text(forged.to_openssh() + "\n", encoding="utf-8")
    result = subprocess.run(["ssh-keygen", "-L", "-f", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode != 0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "expected an OpenSSH certificate line"),
        ("ssh-ed25519-cert-v01@openssh.com", "expected an OpenSSH certificate line"),
        ("ssh-ed25519-cert-v01@openssh.com !!!notbase64", "does not decode"),
        ("ssh-ed25519-cert-v01@openssh.com AAAA", "malformed"),
    ],
)
def test_parse_refuses_malformed_lines(line: str, message: str) -> None:
    with pytest.raises(CertificateError, match=message):
        Certificate.parse(line)


def test_parse_refuses_plain_keys_mismatched_names_and_trailing_bytes(minted: Certificate, user_key: tuple) -> None:
    with pytest.raises(CertificateError, match="expected an OpenSSH certificate"):
        Certificate.parse(user_key[1].to_openssh())
    text = minted.to_openssh()
    with pytest.raises(CertificateError, match="line says"):
        Certificate.parse(text.replace("ssh-ed25519-cert", "ecdsa-sha2-nistp256-cert", 1))
    # from_blob reports a malformed field as the InputError of the wire reader (parse() wraps it).
    with pytest.raises(JitSshError, match="trailing bytes"):
        Certificate.from_blob(minted.blob + b"\x00")
    with pytest.raises(JitSshError, match="truncated"):
        Certificate.from_blob(minted.blob[:-1])
    with pytest.raises(CertificateError, match="malformed"):
        Certificate.parse(f"{minted.cert_key_type} {base64.b64encode(minted.blob[:-1]).decode()}")


def test_parse_refuses_a_line_longer_than_any_key(minted: Certificate) -> None:
    with pytest.raises(JitSshError, match="characters long"):
        Certificate.parse(minted.to_openssh() + " " + "x" * 20_000)


# -- refusals at minting -------------------------------------------------------------------------------


def _refused(signer: KeySigner, subject: PublicKey, match: str, **overrides: object) -> None:
    with pytest.raises(CertificateError, match=match) as info:
        _mint(signer, subject, **overrides)
    assert "\n" not in str(info.value)


NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"principals": []}, "no principals"),
        ({"principals": "ubuntu@prod-web-3"}, "not one string"),
        ({"principals": ["ubuntu@prod-web-3", "a b"]}, "principal"),
        ({"principals": ["a,b"]}, "principal"),
        ({"principals": ["ubuntu\n@h"]}, "principal"),
        ({"principals": [""]}, "principal"),
        ({"principals": ["x" * 256]}, "principal"),
        ({"principals": [f"p{i}" for i in range(257)]}, "at most 256"),
        ({"key_id": ""}, "key id"),
        ({"key_id": "line\nbreak"}, "key id"),
        ({"key_id": "caf\u00e9"}, "key id"),
        ({"key_id": "k" * 257}, "key id"),
        ({"serial": 0}, "serial"),
        ({"serial": -1}, "serial"),
        ({"serial": 2**64}, "serial"),
        ({"extensions": ["permit-everything"]}, "unknown certificate extension"),
        ({"extensions": ["permit-pty", "PERMIT-PTY"]}, "unknown certificate extension"),
        ({"source_address": []}, "source-address"),
        ({"source_address": "10.0.0.1"}, "source-address"),
        ({"source_address": ["10.0.0.1/8"]}, "source-address"),
        ({"source_address": ["bastion.example.net"]}, "source-address"),
        ({"force_command": ""}, "force-command"),
        ({"force_command": "a\x00b"}, "force-command"),
        ({"force_command": "x" * 4097}, "force-command"),
        ({"force_command": "echo \ud800"}, "force-command"),
        ({"valid_until": NOW + timedelta(microseconds=999_999), "backdate": timedelta(0)}, "one whole second"),
        (  # would end (at NOW, whole seconds) before the moment it is minted
            {"now": NOW + timedelta(milliseconds=500), "valid_until": NOW + timedelta(milliseconds=900)},
            "one whole second",
        ),
        ({"valid_from": NOW - timedelta(hours=2), "valid_until": NOW - timedelta(hours=1)}, "ends in the past"),
        ({"valid_from": NOW + timedelta(hours=2), "valid_until": NOW + timedelta(hours=1)}, "empty"),
        ({"valid_until": NOW + timedelta(hours=2)}, "longer than the maximum"),
        ({"max_validity": timedelta(0)}, "maximum validity"),
        ({"max_validity": MAX_USER_VALIDITY + timedelta(seconds=1)}, "maximum validity"),
        ({"valid_from": NOW.replace(tzinfo=None)}, "time zone"),
        ({"valid_until": (NOW + timedelta(hours=1)).replace(tzinfo=None)}, "time zone"),
        ({"backdate": timedelta(seconds=61)}, "backdate"),
        ({"backdate": timedelta(seconds=-1)}, "backdate"),
    ],
)
def test_minting_refuses_what_breaks_an_invariant(
    overrides: dict[str, object], match: str, ca_signers: dict[KeyType, KeySigner], user_key: tuple
) -> None:
    arguments: dict[str, object] = {"now": NOW, "valid_from": NOW, "valid_until": NOW + timedelta(hours=1)}
    arguments.update(overrides)
    _refused(ca_signers[KeyType.ED25519], user_key[1], match, **arguments)


def test_minting_accepts_the_boundaries_it_refuses_beyond(
    ca_signers: dict[KeyType, KeySigner], user_key: tuple
) -> None:
    signer, subject = ca_signers[KeyType.ED25519], user_key[1]
    cert = _mint(
        signer,
        subject,
        now=NOW,
        valid_from=NOW,
        valid_until=NOW + MAX_USER_VALIDITY,
        max_validity=MAX_USER_VALIDITY,
        principals=[f"p{i}" for i in range(256)],
        key_id="k" * 256,
        serial=2**64 - 1,
        force_command="x" * 4096,
        backdate=timedelta(0),
    )
    assert len(cert.principals) == 256
    assert (cert.valid_after, cert.valid_before) == (int(NOW.timestamp()), int((NOW + MAX_USER_VALIDITY).timestamp()))
    assert Certificate.from_blob(cert.blob) == cert


def test_minting_refuses_to_certify_the_ca_itself(ca_signers: dict[KeyType, KeySigner]) -> None:
    signer = ca_signers[KeyType.ED25519]
    _refused(signer, signer.public_key, "CA's own key")


def test_duplicate_principals_are_signed_once_in_order(ca_signers: dict[KeyType, KeySigner], user_key: tuple) -> None:
    cert = _mint(ca_signers[KeyType.ED25519], user_key[1], principals=["b@h", "a@h", "b@h"])
    assert cert.principals == ("b@h", "a@h")


@pytest.mark.parametrize(
    ("valid_from", "backdate", "expected_after"),
    [
        (NOW - timedelta(hours=3), MAX_BACKDATE, NOW - MAX_BACKDATE),  # a window begun earlier starts now
        (NOW + timedelta(minutes=10), MAX_BACKDATE, NOW + timedelta(minutes=10) - MAX_BACKDATE),
        (NOW, timedelta(0), NOW),
        (NOW, timedelta(seconds=15), NOW - timedelta(seconds=15)),
    ],
)
def test_window_starts_no_earlier_than_now_minus_backdate(
    valid_from: datetime,
    backdate: timedelta,
    expected_after: datetime,
    ca_signers: dict[KeyType, KeySigner],
    user_key: tuple,
) -> None:
    until = NOW + timedelta(minutes=30)
    cert = _mint(
        ca_signers[KeyType.ED25519],
        user_key[1],
        now=NOW,
        valid_from=valid_from,
        valid_until=until,
        max_validity=timedelta(hours=1),
        backdate=backdate,
    )
    assert cert.valid_after == int(expected_after.timestamp())
    assert cert.valid_before == int(until.timestamp())


def test_fractions_of_a_second_round_inwards(ca_signers: dict[KeyType, KeySigner], user_key: tuple) -> None:
    # The wire holds whole seconds: the start rounds up and the end down, so that the backdating never
    # exceeds what was asked and the certificate never outlives its window.
    now = NOW + timedelta(microseconds=250_000)
    until = NOW + timedelta(minutes=5, microseconds=750_000)
    cert = _mint(ca_signers[KeyType.ED25519], user_key[1], now=now, valid_from=now, valid_until=until)
    assert cert.valid_after == int((NOW - MAX_BACKDATE).timestamp()) + 1
    assert cert.valid_before == int((NOW + timedelta(minutes=5)).timestamp())


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"hostnames": []}, "no principals"),
        ({"hostnames": "prod-web-3"}, "not one string"),
        ({"hostnames": ["ubuntu@prod-web-3"]}, "host name"),
        ({"hostnames": ["-bad"]}, "host name"),
        ({"hostnames": ["*.example.net"]}, "host name"),
        ({"key_id": ""}, "key id"),
        ({"serial": 0}, "serial"),
        ({"max_validity": MAX_HOST_VALIDITY + timedelta(days=1)}, "maximum validity"),
        ({"valid_until": NOW - timedelta(seconds=1)}, "ends in the past"),
    ],
)
def test_host_minting_refusals(
    overrides: dict[str, object], match: str, ca_signers: dict[KeyType, KeySigner], user_key: tuple
) -> None:
    arguments: dict[str, object] = {
        "hostnames": [HOST],
        "key_id": "host",
        "serial": 1,
        "valid_from": NOW,
        "valid_until": NOW + timedelta(days=1),
        "max_validity": timedelta(days=1),
        "now": NOW,
    }
    arguments.update(overrides)
    with pytest.raises(CertificateError, match=match):
        mint_host_certificate(ca_signers[KeyType.ED25519], user_key[1], **arguments)  # type: ignore[arg-type]


# -- property tests ------------------------------------------------------------------------------------

_PRINCIPAL_CHARS = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789._@:+=-"
valid_principals = st.text(alphabet=_PRINCIPAL_CHARS, min_size=1, max_size=40)
any_text = st.text(alphabet=st.characters(codec=None), max_size=40)
principal_lists = st.one_of(
    st.lists(valid_principals, min_size=1, max_size=6),
    st.lists(st.one_of(valid_principals, any_text), max_size=6),
    st.integers(min_value=250, max_value=260).map(lambda n: [f"p{i}@h" for i in range(n)]),
)
key_ids = st.one_of(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1), any_text)
serials = st.one_of(st.integers(min_value=1, max_value=2**64 - 1), st.integers(min_value=-3, max_value=2**64 + 3))
offsets = st.one_of(
    st.integers(min_value=-3 * 86400, max_value=10 * 86400),
    st.integers(min_value=-120, max_value=120),
).map(lambda s: timedelta(seconds=s))
micros = st.integers(min_value=0, max_value=999_999).map(lambda us: timedelta(microseconds=us))
max_validities = st.one_of(
    st.integers(min_value=-5, max_value=8 * 86400).map(lambda s: timedelta(seconds=s)),
    st.sampled_from([timedelta(minutes=5), timedelta(hours=1), MAX_USER_VALIDITY]),
)
extension_sets = st.frozensets(
    st.sampled_from([*sorted(ALL_USER_EXTENSIONS), "permit-everything", "", "PERMIT-PTY", "permit-pty "]),
    max_size=8,
)
addresses = st.one_of(
    st.ip_addresses().map(str),
    st.builds(lambda a, n: f"{a}/{n}", st.ip_addresses(v=4).map(str), st.integers(min_value=0, max_value=33)),
    st.sampled_from(["127.0.0.1", "10.0.0.0/8", "::1", "2001:db8::/32", " 10.1.1.1 ", "10.0.0.1/8", "host"]),
    any_text,
)
source_addresses = st.one_of(st.none(), st.lists(addresses, max_size=4))
force_commands = st.one_of(
    st.none(),
    st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=60),
    st.just("x" * 4097),
)
backdates = st.one_of(
    st.just(MAX_BACKDATE), st.integers(min_value=-2, max_value=62).map(lambda s: timedelta(seconds=s))
)


def _assert_one_line(error: JitSshError) -> None:
    message = str(error)
    assert message
    assert "\n" not in message


BASE = datetime(2031, 5, 17, 9, 30, tzinfo=UTC)


# Mostly valid requests, so that most examples mint and the bounds are checked on real certificates.
good_principal_lists = st.lists(valid_principals, min_size=1, max_size=6)
good_key_ids = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=80)
good_serials = st.integers(min_value=1, max_value=2**64 - 1)
good_starts = st.integers(min_value=-3600, max_value=3600).map(lambda s: timedelta(seconds=s))
good_lengths = st.integers(min_value=1, max_value=2 * 86400).map(lambda s: timedelta(seconds=s))
good_max_validities = st.integers(min_value=60, max_value=7 * 86400).map(lambda s: timedelta(seconds=s))
good_extensions = st.frozensets(st.sampled_from(sorted(ALL_USER_EXTENSIONS)))
good_networks = st.builds(
    lambda address, prefix: str(ipaddress.ip_network(f"{address}/{prefix}", strict=False)),
    st.ip_addresses(v=4).map(str),
    st.integers(min_value=8, max_value=32),
)
good_source_addresses = st.one_of(st.none(), st.lists(st.one_of(good_networks, st.ip_addresses().map(str)), min_size=1))
good_force_commands = st.one_of(
    st.none(), st.text(alphabet=st.characters(exclude_characters="\x00"), min_size=1, max_size=60)
)
good_backdates = st.integers(min_value=0, max_value=60).map(lambda s: timedelta(seconds=s))


@settings(max_examples=200, deadline=None)
@given(
    principals=good_principal_lists,
    key_id=good_key_ids,
    serial=good_serials,
    start=good_starts,
    length=good_lengths,
    now_fraction=micros,
    from_fraction=micros,
    until_fraction=micros,
    max_validity=good_max_validities,
    extensions=good_extensions,
    source_address=good_source_addresses,
    force_command=good_force_commands,
    backdate=good_backdates,
)
def test_minted_user_certificate_never_exceeds_the_request(
    ca_signers: dict[KeyType, KeySigner],
    subject_keys: dict[str, tuple[Path, PublicKey]],
    principals: list[str],
    key_id: str,
    serial: int,
    start: timedelta,
    length: timedelta,
    now_fraction: timedelta,
    from_fraction: timedelta,
    until_fraction: timedelta,
    max_validity: timedelta,
    extensions: frozenset[str],
    source_address: list[str] | None,
    force_command: str | None,
    backdate: timedelta,
) -> None:
    _mint_within_request(
        ca_signers[KeyType.ED25519], subject_keys["ed25519"][1], principals=principals, key_id=key_id,
        serial=serial, start=start, length=length, now_fraction=now_fraction, from_fraction=from_fraction,
        until_fraction=until_fraction, max_validity=max_validity, extensions=extensions,
        source_address=source_address, force_command=force_command, backdate=backdate,
    )  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    principals=principal_lists,
    key_id=key_ids,
    serial=serials,
    start=offsets,
    length=offsets,
    now_fraction=micros,
    from_fraction=micros,
    until_fraction=micros,
    max_validity=max_validities,
    extensions=extension_sets,
    source_address=source_addresses,
    force_command=force_commands,
    backdate=backdates,
)
def test_any_input_mints_within_the_request_or_raises_certificate_error(
    ca_signers: dict[KeyType, KeySigner],
    subject_keys: dict[str, tuple[Path, PublicKey]],
    principals: list[str],
    key_id: str,
    serial: int,
    start: timedelta,
    length: timedelta,
    now_fraction: timedelta,
    from_fraction: timedelta,
    until_fraction: timedelta,
    max_validity: timedelta,
    extensions: frozenset[str],
    source_address: list[str] | None,
    force_command: str | None,
    backdate: timedelta,
) -> None:
    """Wild inputs: a CertificateError (one line) or a certificate within the request, nothing else."""
    _mint_within_request(
        ca_signers[KeyType.ED25519], subject_keys["ed25519"][1], principals=principals, key_id=key_id,
        serial=serial, start=start, length=length, now_fraction=now_fraction, from_fraction=from_fraction,
        until_fraction=until_fraction, max_validity=max_validity, extensions=extensions,
        source_address=source_address, force_command=force_command, backdate=backdate,
    )  # fmt: skip


def _mint_within_request(
    signer: KeySigner,
    subject: PublicKey,
    *,
    principals: list[str],
    key_id: str,
    serial: int,
    start: timedelta,
    length: timedelta,
    now_fraction: timedelta,
    from_fraction: timedelta,
    until_fraction: timedelta,
    max_validity: timedelta,
    extensions: frozenset[str],
    source_address: list[str] | None,
    force_command: str | None,
    backdate: timedelta,
) -> None:
    now = BASE + now_fraction
    valid_from = BASE + start + from_fraction
    valid_until = valid_from + length + until_fraction
    try:
        cert = mint_user_certificate(
            signer,
            subject,
            principals=principals,
            key_id=key_id,
            serial=serial,
            valid_from=valid_from,
            valid_until=valid_until,
            max_validity=max_validity,
            extensions=extensions,
            source_address=source_address,
            force_command=force_command,
            backdate=backdate,
            now=now,
        )
    except CertificateError as exc:
        _assert_one_line(exc)
        event("refused")
        return
    event("minted")
    _assert_within_request(
        cert, signer, principals, key_id, serial, valid_from, valid_until, now, max_validity, extensions,
        source_address, force_command, backdate,
    )  # fmt: skip


def _assert_within_request(
    cert: Certificate,
    signer: KeySigner,
    principals: list[str],
    key_id: str,
    serial: int,
    valid_from: datetime,
    valid_until: datetime,
    now: datetime,
    max_validity: timedelta,
    extensions: frozenset[str],
    source_address: list[str] | None,
    force_command: str | None,
    backdate: timedelta,
) -> None:

    # Principals: exactly those asked (duplicates once), nothing else, none of them able to carry syntax.
    assert cert.principals == tuple(dict.fromkeys(principals))
    assert 1 <= len(cert.principals) <= 256
    for name in cert.principals:
        assert name
        assert not any(c.isspace() or c in ",\x00" or not c.isprintable() for c in name)
    # Window: inside [max(from, now) - backdate, until], never longer than asked plus the backdate.
    begin = max(valid_from, now)
    assert timedelta(0) <= backdate <= MAX_BACKDATE
    assert cert.valid_after >= (begin - backdate).timestamp()
    assert cert.valid_after >= (begin - MAX_BACKDATE).timestamp()
    assert cert.valid_before <= valid_until.timestamp()
    assert cert.valid_after < cert.valid_before
    assert cert.valid_before > now.timestamp()
    assert valid_until - begin <= max_validity <= MAX_USER_VALIDITY
    assert cert.valid_before - cert.valid_after <= (max_validity + backdate).total_seconds()
    # Extensions: exactly those asked, each one OpenSSH knows.
    assert set(cert.extensions) == set(extensions) <= ALL_USER_EXTENSIONS
    # Critical options: only those asked, and each restricts to what was given.
    expected_options = {"source-address"} if source_address is not None else set()
    if force_command is not None:
        expected_options.add("force-command")
        assert cert.critical_options["force-command"] == force_command
    assert set(cert.critical_options) == expected_options
    if source_address is not None:
        asked = {ipaddress.ip_network(a.strip()) for a in source_address}
        signed = [ipaddress.ip_network(n) for n in cert.critical_options["source-address"].split(",")]
        assert set(signed) == asked
    assert cert.serial == serial
    assert 0 < serial < 2**64
    assert cert.key_id == key_id
    assert cert.cert_type is CertType.USER
    # What we signed is what we report: the wire form parses back to the same certificate.
    assert Certificate.from_blob(cert.blob) == cert
    cert.check(trusted_ca=signer.public_key, cert_type=CertType.USER, now=_utc(cert.valid_after))


@settings(max_examples=200, deadline=None)
@given(force_command=force_commands, source_address=source_addresses)
def test_free_text_options_are_signed_verbatim_or_refused(
    ca_signers: dict[KeyType, KeySigner],
    subject_keys: dict[str, tuple[Path, PublicKey]],
    force_command: str | None,
    source_address: list[str] | None,
) -> None:
    """The two options that take free text, with every other input valid: signed as given, or refused."""
    try:
        cert = mint_user_certificate(
            ca_signers[KeyType.ED25519],
            subject_keys["ed25519"][1],
            principals=["ubuntu@prod-web-3"],
            key_id="k",
            serial=1,
            valid_from=BASE,
            valid_until=BASE + timedelta(minutes=5),
            max_validity=timedelta(minutes=5),
            source_address=source_address,
            force_command=force_command,
            now=BASE,
        )
    except CertificateError as exc:
        _assert_one_line(exc)
        event("refused")
        return
    event("minted")
    parsed = Certificate.from_blob(cert.blob)
    assert parsed.critical_options.get("force-command") == force_command
    if source_address is None:
        assert "source-address" not in parsed.critical_options
    else:
        signed = {ipaddress.ip_network(n) for n in parsed.critical_options["source-address"].split(",")}
        assert signed == {ipaddress.ip_network(a.strip()) for a in source_address}


good_hostnames = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True),
    st.ip_addresses().map(str),
)
hostname_lists = st.one_of(
    st.lists(good_hostnames, min_size=1, max_size=5), st.lists(st.one_of(good_hostnames, any_text), max_size=5)
)


@settings(max_examples=200, deadline=None)
@given(
    names=hostname_lists,
    key_id=st.one_of(good_key_ids, key_ids),
    serial=st.one_of(good_serials, serials),
    start=offsets,
    length=st.one_of(good_lengths, offsets),
    max_days=st.integers(min_value=-1, max_value=5 * 366 + 2),
)
def test_minted_host_certificate_never_exceeds_the_request(
    ca_signers: dict[KeyType, KeySigner],
    subject_keys: dict[str, tuple[Path, PublicKey]],
    names: list[str],
    key_id: str,
    serial: int,
    start: timedelta,
    length: timedelta,
    max_days: int,
) -> None:
    signer = ca_signers[KeyType.ED25519]
    valid_from = BASE + start
    valid_until = valid_from + length * 30
    max_validity = timedelta(days=max_days)
    try:
        cert = mint_host_certificate(
            signer,
            subject_keys["ecdsa"][1],
            hostnames=names,
            key_id=key_id,
            serial=serial,
            valid_from=valid_from,
            valid_until=valid_until,
            max_validity=max_validity,
            now=BASE,
        )
    except CertificateError as exc:
        _assert_one_line(exc)
        event("refused")
        return
    event("minted")
    assert cert.principals == tuple(dict.fromkeys(names))
    assert cert.cert_type is CertType.HOST
    assert cert.critical_options == {}
    assert cert.extensions == {}
    begin = max(valid_from, BASE)
    assert cert.valid_after >= (begin - MAX_BACKDATE).timestamp()
    assert cert.valid_before <= valid_until.timestamp()
    assert cert.valid_after < cert.valid_before
    assert valid_until - begin <= max_validity <= MAX_HOST_VALIDITY
    assert Certificate.from_blob(cert.blob) == cert


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600), cut=st.integers(min_value=0, max_value=2000), flip=st.integers(0, 255))
def test_parser_raises_only_certificate_errors(minted: Certificate, data: bytes, cut: int, flip: int) -> None:
    """Whatever the bytes, parsing raises CertificateError (or the InputError of a malformed field)."""
    index = cut % len(minted.blob)
    mutated = minted.blob[:index] + bytes([minted.blob[index] ^ flip]) + minted.blob[index + 1 :]
    for blob in (data, mutated, minted.blob[:cut], minted.blob[:index] + data):
        try:
            cert = Certificate.from_blob(blob)
        except JitSshError:
            continue
        if blob != minted.blob:
            # Whatever still parses after a change fails verification.
            assert not cert.signature_valid()
