"""Key material: public keys as one checked value type, SSH signature verification, and the CA directory.

A CA key is written encrypted (OpenSSH's own format, which ``ssh-keygen`` reads back), 0600, and loading
it refuses a wrong passphrase, a file readable by group or others, a missing file and a damaged one, each
with a one-line :class:`CAKeyError`. Nothing is overwritten without ``force``.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jit_ssh.ca import (
    PASSPHRASE_ENV,
    PASSPHRASE_FILE_ENV,
    CADirectory,
    CAKeyError,
    CARole,
    InputError,
    JitSshError,
    KeySigner,
    KeyType,
    PublicKey,
    passphrase_from_env,
)
from jit_ssh.ca.keys import verify_ssh_signature
from jit_ssh.ca.signer import generate_private_key
from jit_ssh.ca.wire import Reader, mpint, string, uint32

PASSPHRASE = b"test passphrase 0123"

ROLES = list(CARole)


def _one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert message
    assert "\n" not in message
    assert "Traceback" not in message
    return message


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def encrypted_ca(tmp_path_factory: pytest.TempPathFactory) -> CADirectory:
    """A pristine encrypted CA; tests that damage files work on a copy (see ``ca_copy``)."""
    return CADirectory.create(tmp_path_factory.mktemp("enc") / "ca", passphrase=PASSPHRASE)


@pytest.fixture
def ca_copy(encrypted_ca: CADirectory, tmp_path: Path) -> CADirectory:
    target = tmp_path / "ca"
    target.mkdir(mode=0o700)
    for path in encrypted_ca.path.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
        (target / path.name).chmod(stat.S_IMODE(path.stat().st_mode))
    return CADirectory(target)


# -- creating a CA directory ------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", list(KeyType))
def test_create_writes_three_encrypted_keys_that_openssh_reads(key_type: KeyType, tmp_path: Path) -> None:
    ca = CADirectory.create(tmp_path / "ca", key_type=key_type, passphrase=PASSPHRASE)
    assert ca.key_type is key_type
    assert not ca.insecure
    assert stat.S_IMODE((tmp_path / "ca").stat().st_mode) == 0o700
    publics = set()
    for role in ROLES:
        private = tmp_path / "ca" / f"{role}_ca"
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        assert b"-----BEGIN OPENSSH PRIVATE KEY-----" in private.read_bytes()
        public = ca.public_key(role)
        publics.add(public)
        # ssh-keygen decrypts our file with the passphrase and derives the same public key ...
        derived = subprocess.run(
            ["ssh-keygen", "-y", "-P", PASSPHRASE.decode(), "-f", str(private)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert PublicKey.parse(derived.stdout) == public
        # ... and refuses it without the passphrase: the key is encrypted at rest.
        refused = subprocess.run(
            ["ssh-keygen", "-y", "-P", "", "-f", str(private)], capture_output=True, text=True, check=False
        )
        assert refused.returncode != 0
        assert PASSPHRASE not in private.read_bytes()
        signer = ca.signer(role, passphrase=PASSPHRASE)
        assert signer.public_key == public
        assert public.verify(signer.sign(b"data"), b"data")
    assert len(publics) == 3, "the user, access and host CA keys must differ"


def test_second_create_overwrites_nothing_without_force(encrypted_ca: CADirectory, ca_copy: CADirectory) -> None:
    before = _snapshot(ca_copy.path)
    with pytest.raises(CAKeyError, match="refusing to overwrite without --force") as info:
        CADirectory.create(ca_copy.path, passphrase=PASSPHRASE)
    _one_line(info)
    assert _snapshot(ca_copy.path) == before
    # Not even one stray file of the set (say, a lone ca.toml) lets a create through.
    for name in ("ca.toml", "host_ca.pub", "user_ca"):
        lone = ca_copy.path.parent / f"lone-{name}"
        lone.mkdir()
        (lone / name).write_bytes(b"keep me")
        with pytest.raises(CAKeyError, match=name):
            CADirectory.create(lone, passphrase=PASSPHRASE)
        assert _snapshot(lone) == {name: b"keep me"}
    # Positive control: --force replaces every key.
    replaced = CADirectory.create(ca_copy.path, passphrase=PASSPHRASE, force=True)
    for role in ROLES:
        assert replaced.public_key(role) != encrypted_ca.public_key(role)


@pytest.mark.parametrize(
    ("passphrase", "insecure", "match"),
    [
        (None, False, PASSPHRASE_ENV),
        (b"short", False, "at least 8"),
        (PASSPHRASE, True, "choose one"),
    ],
)
def test_create_refuses_without_a_sound_passphrase(
    passphrase: bytes | None, insecure: bool, match: str, tmp_path: Path
) -> None:
    with pytest.raises(CAKeyError, match=match) as info:
        CADirectory.create(tmp_path / "ca", passphrase=passphrase, insecure_no_passphrase=insecure)
    _one_line(info)
    assert not (tmp_path / "ca").exists()


def test_insecure_ca_is_unencrypted_and_says_so(tmp_path: Path) -> None:
    ca = CADirectory.create(tmp_path / "ca", passphrase=None, insecure_no_passphrase=True)
    assert ca.insecure
    assert "insecure_no_passphrase = true" in (tmp_path / "ca" / "ca.toml").read_text()
    signer = ca.signer(CARole.ACCESS, passphrase=None)
    assert signer.public_key == ca.public_key(CARole.ACCESS)
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-P", "", "-f", str(tmp_path / "ca" / "access_ca")], capture_output=True, check=False
    )
    assert derived.returncode == 0


# -- loading: each failure is one CAKeyError line ---------------------------------------------------------


def test_right_passphrase_loads_and_wrong_one_is_refused(ca_copy: CADirectory) -> None:
    assert ca_copy.signer(CARole.USER, passphrase=PASSPHRASE).public_key == ca_copy.public_key(CARole.USER)
    with pytest.raises(CAKeyError, match="wrong passphrase") as info:
        ca_copy.signer(CARole.USER, passphrase=PASSPHRASE + b"x")
    assert PASSPHRASE.decode() not in _one_line(info)
    with pytest.raises(CAKeyError, match=PASSPHRASE_ENV) as info:
        ca_copy.signer(CARole.USER, passphrase=None)
    _one_line(info)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o610, 0o601, 0o700 | 0o004])
def test_key_readable_by_group_or_others_is_refused(mode: int, ca_copy: CADirectory) -> None:
    path = ca_copy.path / "access_ca"
    path.chmod(mode)
    with pytest.raises(CAKeyError, match="group or others") as info:
        ca_copy.signer(CARole.ACCESS, passphrase=PASSPHRASE)
    message = _one_line(info)
    assert f"{mode:04o}" in message
    assert "chmod 600" in message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_modes_load(mode: int, ca_copy: CADirectory) -> None:
    (ca_copy.path / "access_ca").chmod(mode)
    ca_copy.signer(CARole.ACCESS, passphrase=PASSPHRASE)


def test_missing_key_file_and_missing_directory(ca_copy: CADirectory, tmp_path: Path) -> None:
    (ca_copy.path / "host_ca").unlink()
    with pytest.raises(CAKeyError, match="does not exist") as info:
        ca_copy.signer(CARole.HOST, passphrase=PASSPHRASE)
    _one_line(info)
    (ca_copy.path / "user_ca.pub").unlink()
    with pytest.raises(CAKeyError, match="cannot read") as info:
        ca_copy.public_key(CARole.USER)
    _one_line(info)
    with pytest.raises(CAKeyError, match="not a CA directory") as info:
        CADirectory(tmp_path / "nowhere")
    _one_line(info)


def _pem(raw: bytes) -> bytes:
    body = base64.b64encode(raw)
    lines = [body[i : i + 70] for i in range(0, len(body), 70)]
    return b"\n".join([b"-----BEGIN OPENSSH PRIVATE KEY-----", *lines, b"-----END OPENSSH PRIVATE KEY-----"]) + b"\n"


def _raw(pem: bytes) -> bytes:
    return base64.b64decode(b"".join(pem.strip().splitlines()[1:-1]))


def _offset_of_rounds(raw: bytes) -> int:
    reader = Reader(raw[len(b"openssh-key-v1\x00") :])
    reader.string()  # cipher
    reader.string()  # kdf
    return len(b"openssh-key-v1\x00") + reader.offset + 4 + 4 + 16  # options length, salt length, salt


def _flip(raw: bytes, needle: bytes, at: int = 1) -> bytes:
    index = raw.index(needle) + at
    return raw[:index] + bytes([raw[index] ^ 0x80]) + raw[index + 1 :]


CORRUPTIONS = {
    "empty": lambda pem: b"",
    "garbage": lambda pem: b"this is not a key\n",
    "truncated": lambda pem: pem[: len(pem) // 2],
    "other PEM": lambda pem: pem.replace(b"OPENSSH PRIVATE KEY", b"RSA PRIVATE KEY"),
    "bad base64": lambda pem: pem.replace(pem.splitlines()[1], b"!!!!" + pem.splitlines()[1][4:], 1),
    "no magic": lambda pem: _pem(b"openssh-key-v2\x00" + _raw(pem)[15:]),
    "cipher family": lambda pem: _pem(_flip(_raw(pem), b"aes256-ctr")),
    "cipher mode": lambda pem: _pem(_flip(_raw(pem), b"aes256-ctr", at=8)),
    "kdf name": lambda pem: _pem(_flip(_raw(pem), b"bcrypt")),
    "key type": lambda pem: _pem(_flip(_raw(pem), b"ssh-ed25519")),
    "encrypted body": lambda pem: _pem(_raw(pem)[:-40] + bytes(b ^ 0x55 for b in _raw(pem)[-40:-24]) + _raw(pem)[-24:]),
    "kdf rounds": lambda pem: _pem(
        _raw(pem)[: _offset_of_rounds(_raw(pem))] + uint32(0xFF000010) + _raw(pem)[_offset_of_rounds(_raw(pem)) + 4 :]
    ),
    "missing body": lambda pem: _pem(_raw(pem)[:120]),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupted_key_file_is_one_clear_error(corruption: str, ca_copy: CADirectory) -> None:
    """A damaged file is refused with a CAKeyError, never another exception, nor a KDF that runs for years."""
    path = ca_copy.path / "user_ca"
    path.write_bytes(CORRUPTIONS[corruption](path.read_bytes()))
    with pytest.raises(CAKeyError) as info:
        ca_copy.signer(CARole.USER, passphrase=PASSPHRASE)
    message = _one_line(info)
    assert str(path) in message


def test_key_that_does_not_match_its_public_half_is_refused(ca_copy: CADirectory) -> None:
    (ca_copy.path / "user_ca.pub").write_bytes((ca_copy.path / "access_ca.pub").read_bytes())
    with pytest.raises(CAKeyError, match="does not match") as info:
        ca_copy.signer(CARole.USER, passphrase=PASSPHRASE)
    _one_line(info)
    (ca_copy.path / "user_ca.pub").write_text("not a key\n")
    with pytest.raises(CAKeyError, match="not a public key") as info:
        ca_copy.public_key(CARole.USER)
    _one_line(info)


def test_unencrypted_key_in_an_encrypted_ca_is_refused(ca_copy: CADirectory) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    (ca_copy.path / "user_ca").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    (ca_copy.path / "user_ca").chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    (ca_copy.path / "user_ca.pub").write_bytes(public + b"\n")
    for passphrase in (PASSPHRASE, None):
        with pytest.raises(CAKeyError, match="not encrypted but") as info:
            ca_copy.signer(CARole.USER, passphrase=passphrase)
        _one_line(info)


def test_bad_ca_toml_is_refused(ca_copy: CADirectory) -> None:
    meta = ca_copy.path / "ca.toml"
    meta.write_text('key_type = "dsa"\n')
    with pytest.raises(CAKeyError, match="unknown key_type") as info:
        CADirectory(ca_copy.path)
    _one_line(info)
    meta.write_text("key_type = \n")
    with pytest.raises(CAKeyError, match="cannot read") as info:
        CADirectory(ca_copy.path)
    _one_line(info)


def test_oversized_key_file_is_refused(ca_copy: CADirectory) -> None:
    path = ca_copy.path / "user_ca"
    path.write_bytes(path.read_bytes() + b"\n" * 70_000)
    with pytest.raises(CAKeyError, match="not a key file") as info:
        ca_copy.signer(CARole.USER, passphrase=PASSPHRASE)
    _one_line(info)


@pytest.fixture(scope="module")
def insecure_ca(tmp_path_factory: pytest.TempPathFactory) -> CADirectory:
    return CADirectory.create(tmp_path_factory.mktemp("plain") / "ca", passphrase=None, insecure_no_passphrase=True)


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), xor=st.integers(min_value=1, max_value=255))
def test_any_damaged_byte_gives_a_cakeyerror_or_the_same_key(insecure_ca: CADirectory, position: int, xor: int) -> None:
    """Unencrypted (so each example is cheap): flip any byte of the key; loading either refuses with a
    CAKeyError or, where the byte did not matter (the comment), yields the very key of the .pub file."""
    pristine = (insecure_ca.path / "user_ca").read_bytes()
    raw = _raw(pristine)
    index = position % len(raw)
    damaged = raw[:index] + bytes([raw[index] ^ xor]) + raw[index + 1 :]
    with tempfile.TemporaryDirectory() as folder:
        _load_damaged(insecure_ca, Path(folder), damaged)


def _load_damaged(insecure_ca: CADirectory, target: Path, damaged: bytes) -> None:
    for name in ("ca.toml", "user_ca.pub"):
        (target / name).write_bytes((insecure_ca.path / name).read_bytes())
    key_file = target / "user_ca"
    key_file.write_bytes(_pem(damaged))
    key_file.chmod(0o600)
    try:
        signer = CADirectory(target).signer(CARole.USER, passphrase=None)
    except CAKeyError as exc:
        assert "\n" not in str(exc)  # noqa: PT017 - the property is about the error raised
        return
    assert signer.public_key == insecure_ca.public_key(CARole.USER)


# -- the passphrase comes from the environment, never the command line --------------------------------


def test_passphrase_from_variable(tmp_path: Path) -> None:
    assert passphrase_from_env({PASSPHRASE_ENV: "from the variable"}) == b"from the variable"
    assert passphrase_from_env({}) is None
    assert passphrase_from_env({PASSPHRASE_ENV: ""}) is None


def test_passphrase_from_file_strips_only_the_line_end(tmp_path: Path) -> None:
    path = tmp_path / "passphrase"
    path.write_text("  spaced passphrase \n")
    assert passphrase_from_env({PASSPHRASE_FILE_ENV: str(path)}) == b"  spaced passphrase "


def test_passphrase_both_set_missing_file_and_empty_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "passphrase"
    path.write_text("from the file\n")
    with pytest.raises(CAKeyError, match="only one") as info:
        passphrase_from_env({PASSPHRASE_ENV: "x" * 10, PASSPHRASE_FILE_ENV: str(path)})
    _one_line(info)
    with pytest.raises(CAKeyError, match="cannot read") as info:
        passphrase_from_env({PASSPHRASE_FILE_ENV: str(tmp_path / "missing")})
    _one_line(info)
    path.write_text("\n")
    with pytest.raises(CAKeyError, match="is empty") as info:
        passphrase_from_env({PASSPHRASE_FILE_ENV: str(path)})
    _one_line(info)


def test_passphrase_from_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSPHRASE_FILE_ENV, raising=False)
    monkeypatch.setenv(PASSPHRASE_ENV, "process environment")
    assert passphrase_from_env() == b"process environment"


# -- PublicKey ------------------------------------------------------------------------------------------


def test_public_keys_of_every_type_parse_and_fingerprint_as_openssh_does(
    subject_keys: dict[str, tuple[Path, PublicKey]],
) -> None:
    for path, key in subject_keys.values():
        line = Path(str(path) + ".pub").read_text()
        assert key.to_openssh() == line.strip()
        assert PublicKey.parse(key.to_openssh()) == key
        printed = subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", str(path) + ".pub"], capture_output=True, text=True, check=True
        )
        assert printed.stdout.split()[1] == key.fingerprint()
    # Equality is by key material only; the comment does not count.
    key = subject_keys["ed25519"][1]
    assert PublicKey.parse(key.to_openssh("another comment")) == key


def _key_line(key_type: str, *fields: bytes) -> str:
    blob = string(key_type.encode()) + b"".join(string(f) for f in fields)
    return f"{key_type} {base64.b64encode(blob).decode()}"


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("", "empty line"),
        ("ssh-ed25519", "one word"),
        ("ssh-ed25519 ***", "does not decode"),
        (_key_line("ssh-dss", b"p", b"q", b"g", b"y"), "unsupported public key type"),
        (_key_line("ssh-ed25519", b"\x01" * 31), "32 bytes"),
        (_key_line("ssh-ed25519", b"\x01" * 32, b"extra"), "trailing"),
        (_key_line("ssh-ed25519", b"\x01" * 32).replace("ssh-ed25519", "ssh-rsa", 1), "says 'ssh-rsa'"),
        (_key_line("ssh-rsa", b"\x01\x00\x01", b"\x00" + b"\xff" * 128), "too small"),
        (_key_line("ecdsa-sha2-nistp256", b"nistp384", b"\x04" + b"\x01" * 64), "names curve"),
        (_key_line("ecdsa-sha2-nistp256", b"nistp256", b"\x04" + b"\x01" * 64), "not on its curve"),
        ("ssh-ed25519 " + "A" * 20_000, "characters long"),
    ],
)
def test_public_key_parse_refusals(line: str, match: str) -> None:
    with pytest.raises(InputError, match=match) as info:
        PublicKey.parse(line)
    _one_line(info)


def test_small_rsa_key_made_by_ssh_keygen_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "small"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "1024", "-N", "", "-f", str(path)], check=True)
    with pytest.raises(InputError, match="too small"):
        PublicKey.parse(Path(str(path) + ".pub").read_text())


# -- signatures -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", list(KeyType))
def test_signer_signatures_verify_and_tampering_does_not(key_type: KeyType, ca_signers: dict) -> None:
    signer: KeySigner = ca_signers[key_type]
    signature = signer.sign(b"payload")
    assert verify_ssh_signature(signer.public_key, signature, b"payload")
    assert not verify_ssh_signature(signer.public_key, signature, b"payload!")
    assert not verify_ssh_signature(signer.public_key, signature[:-1] + bytes([signature[-1] ^ 1]), b"payload")
    assert not verify_ssh_signature(signer.public_key, signature + b"\x00", b"payload")
    assert not verify_ssh_signature(signer.public_key, b"", b"payload")
    other = next(s for t, s in ca_signers.items() if t is not key_type)
    assert not verify_ssh_signature(other.public_key, signature, b"payload")


def test_rsa_sha1_signatures_are_refused(ca_signers: dict) -> None:
    """ssh-rsa (SHA-1) is a valid RSA signature, but never one a CA of ours may make or we accept."""
    signer: KeySigner = ca_signers[KeyType.RSA]
    assert Reader(signer.sign(b"x")).text() == "rsa-sha2-512"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = PublicKey.parse(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    )
    sha1 = key.sign(b"data", padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 - the point of the test
    sha256 = key.sign(b"data", padding.PKCS1v15(), hashes.SHA256())
    assert verify_ssh_signature(public, string(b"rsa-sha2-256") + string(sha256), b"data")
    assert not verify_ssh_signature(public, string(b"ssh-rsa") + string(sha1), b"data")
    assert not verify_ssh_signature(public, string(b"rsa-sha2-512") + string(sha256), b"data")


def test_ecdsa_signature_with_the_wrong_curve_name_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = PublicKey.parse(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    )
    signer = KeySigner(key)
    good = signer.sign(b"m")
    assert verify_ssh_signature(public, good, b"m")
    inner = Reader(good)
    inner.text()
    assert not verify_ssh_signature(public, string(b"ecdsa-sha2-nistp384") + string(inner.string()), b"m")
    assert not verify_ssh_signature(public, string(b"ecdsa-sha2-nistp256") + string(mpint(1) + mpint(1)), b"m")


def test_keysigner_refuses_weak_keys() -> None:
    # PublicKey's own check refuses it first (an InputError), before KeySigner's CAKeyError could.
    with pytest.raises(JitSshError, match="too small"):
        KeySigner(rsa.generate_private_key(public_exponent=65537, key_size=1024))  # noqa: S505


def test_generated_ca_keys_are_the_documented_types() -> None:
    assert isinstance(generate_private_key(KeyType.ED25519), ed25519.Ed25519PrivateKey)
    ecdsa = generate_private_key(KeyType.ECDSA)
    assert isinstance(ecdsa, ec.EllipticCurvePrivateKey)
    assert ecdsa.curve.name == "secp384r1"


def test_passphrase_never_appears_in_messages(ca_copy: CADirectory) -> None:
    os.chmod(ca_copy.path / "user_ca", 0o644)
    with pytest.raises(CAKeyError) as info:
        ca_copy.signer(CARole.USER, passphrase=PASSPHRASE)
    assert PASSPHRASE.decode() not in _one_line(info)
