"""``jit-ssh ca ...``, ``--version`` and ``--help``, run as a person runs them: the installed script.

The one-red-line error handling lives in ``jit_ssh.cli.main.run``, the console script's entry point, so
these tests run the real ``jit-ssh`` executable in a subprocess rather than the typer app in process.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import pytest
from jit_ssh.ca import KRL, CADirectory, CAKeyError, CARole, PublicKey
from jit_ssh.ca.certs import Certificate, mint_user_certificate

JIT_SSH = str(Path(sys.executable).with_name("jit-ssh"))
PASSPHRASE = "cli test passphrase"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_SSH_")}
    # A narrow terminal: an error must stay one line however little room there is.
    env.update(COLUMNS="40", TERM="dumb", NO_COLOR="1")
    env.update(extra)
    return env


def jit_ssh(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JIT_SSH, *args], capture_output=True, text=True, env=_env(**env), stdin=subprocess.DEVNULL, check=False
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], *fragments: str, code: int = 1) -> str:
    """The CLI's promise: a non-zero exit and exactly one line on stderr, ``error: ...``, no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    assert "internal error" not in lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def cli_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA made by ``jit-ssh ca init`` with the passphrase in the environment."""
    directory = tmp_path_factory.mktemp("cli") / "ca"
    result = jit_ssh("ca", "init", str(directory), JIT_SSH_CA_PASSPHRASE=PASSPHRASE)
    assert result.returncode == 0, result.stderr
    return directory


# -- --version and --help ---------------------------------------------------------------------------------


def test_version() -> None:
    result = jit_ssh("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"jit-ssh {version('jit-ssh')}"


@pytest.mark.parametrize(
    "command",
    [[], ["ca"], ["ca", "init"], ["ca", "pubkey"], ["ca", "krl"], ["demo"]],
    ids=lambda c: " ".join(c) or "jit-ssh",
)
def test_help_on_everything(command: list[str]) -> None:
    result = jit_ssh(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: jit-ssh" in result.stdout
    assert result.stderr == ""


def test_init_help_says_where_the_passphrase_comes_from_and_offers_no_option_for_it() -> None:
    text = " ".join(jit_ssh("ca", "init", "--help", COLUMNS="200").stdout.split())
    assert "JIT_SSH_CA_PASSPHRASE" in text
    assert "--insecure-no-passphrase" in text
    assert "local demos only" in text
    # Never from a command-line argument (it would show in ps and shell history).
    assert "--passphrase " not in text
    result = jit_ssh("ca", "init", "/nonexistent/x", "--passphrase", PASSPHRASE)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_no_arguments_shows_help_not_a_traceback() -> None:
    result = jit_ssh()
    assert "Usage: jit-ssh" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2_without_a_traceback(cli_ca: Path) -> None:
    result = jit_ssh("ca", "pubkey", "nobody", "--ca-dir", str(cli_ca))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# -- ca init ----------------------------------------------------------------------------------------------


def test_init_creates_three_encrypted_keys(cli_ca: Path) -> None:
    ca = CADirectory(cli_ca)
    assert not ca.insecure
    for role in CARole:
        assert stat.S_IMODE((cli_ca / f"{role}_ca").stat().st_mode) == 0o600
        assert ca.signer(role, passphrase=PASSPHRASE.encode()).public_key == ca.public_key(role)
    # Negative control: the keys really are encrypted with that passphrase.
    with pytest.raises(CAKeyError, match="wrong passphrase"):
        ca.signer(CARole.USER, passphrase=b"not the passphrase")


def test_second_init_without_force_changes_nothing(cli_ca: Path) -> None:
    before = _snapshot(cli_ca)
    result = jit_ssh("ca", "init", str(cli_ca), JIT_SSH_CA_PASSPHRASE=PASSPHRASE)
    assert_one_error_line(result, "refusing to overwrite without --force")
    assert _snapshot(cli_ca) == before
    # Nor with another key type, nor without a passphrase.
    result = jit_ssh("ca", "init", str(cli_ca), "--key-type", "ecdsa", "--insecure-no-passphrase")
    assert_one_error_line(result, "refusing to overwrite")
    assert _snapshot(cli_ca) == before


def test_init_force_replaces_the_keys(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    assert jit_ssh("ca", "init", str(directory), JIT_SSH_CA_PASSPHRASE=PASSPHRASE).returncode == 0
    before = _snapshot(directory)
    result = jit_ssh("ca", "init", str(directory), "--force", "--json", JIT_SSH_CA_PASSPHRASE=PASSPHRASE)
    assert result.returncode == 0, result.stderr
    after = _snapshot(directory)
    for role in CARole:
        assert after[f"{role}_ca"] != before[f"{role}_ca"]
    report = json.loads(result.stdout)
    assert report["encrypted"] is True
    assert report["key_type"] == "ed25519"
    assert report["keys"]["access"]["public_key"] == CADirectory(directory).public_key(CARole.ACCESS).to_openssh()


def test_init_passphrase_from_file(tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text("passphrase from a file\n")
    result = jit_ssh("ca", "init", str(tmp_path / "ca"), "--key-type", "ecdsa", JIT_SSH_CA_PASSPHRASE_FILE=str(secret))
    assert result.returncode == 0, result.stderr
    ca = CADirectory(tmp_path / "ca")
    assert ca.signer(CARole.HOST, passphrase=b"passphrase from a file").public_key.key_type == "ecdsa-sha2-nistp384"


def test_init_refuses_both_passphrase_sources(tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text("passphrase from a file\n")
    result = jit_ssh(
        "ca", "init", str(tmp_path / "ca"), JIT_SSH_CA_PASSPHRASE=PASSPHRASE, JIT_SSH_CA_PASSPHRASE_FILE=str(secret)
    )
    assert_one_error_line(result, "only one of JIT_SSH_CA_PASSPHRASE and JIT_SSH_CA_PASSPHRASE_FILE")
    assert not (tmp_path / "ca").exists()


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({}, ("no CA passphrase", "JIT_SSH_CA_PASSPHRASE")),
        ({"JIT_SSH_CA_PASSPHRASE": "short"}, ("at least 8",)),
        ({"JIT_SSH_CA_PASSPHRASE_FILE": "/nonexistent/passphrase"}, ("cannot read",)),
    ],
)
def test_init_refuses_without_a_usable_passphrase(
    env: dict[str, str], fragments: tuple[str, ...], tmp_path: Path
) -> None:
    result = jit_ssh("ca", "init", str(tmp_path / "ca"), **env)
    assert_one_error_line(result, *fragments)
    assert not (tmp_path / "ca").exists()


def test_insecure_init_says_so_and_writes_unencrypted_keys(tmp_path: Path) -> None:
    result = jit_ssh("ca", "init", str(tmp_path / "ca"), "--insecure-no-passphrase", COLUMNS="200")
    assert result.returncode == 0, result.stderr
    assert "NOT encrypted" in result.stdout
    assert "local demos only" in result.stdout
    ca = CADirectory(tmp_path / "ca")
    assert ca.insecure
    ca.signer(CARole.USER, passphrase=None)


def test_init_where_it_cannot_write_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = jit_ssh("ca", "init", str(blocker / "ca"), JIT_SSH_CA_PASSPHRASE=PASSPHRASE)
    assert_one_error_line(result, "cannot write CA keys")


# -- ca pubkey --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", list(CARole))
def test_pubkey_prints_the_authorized_keys_line(role: CARole, cli_ca: Path) -> None:
    result = jit_ssh("ca", "pubkey", role.value, "--ca-dir", str(cli_ca))
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    key = PublicKey.parse(line)
    assert key == CADirectory(cli_ca).public_key(role)
    assert line.endswith(f" jit-ssh-{role}-ca")
    assert len(result.stdout.splitlines()) == 1
    # The same through JIT_SSH_CA_DIR, and as JSON.
    by_env = jit_ssh("ca", "pubkey", role.value, JIT_SSH_CA_DIR=str(cli_ca))
    assert by_env.stdout == result.stdout
    as_json = json.loads(jit_ssh("ca", "pubkey", role.value, "--ca-dir", str(cli_ca), "--json").stdout)
    assert as_json == {"role": role.value, "public_key": key.to_openssh(), "fingerprint": key.fingerprint()}


def test_pubkeys_of_the_three_roles_differ(cli_ca: Path) -> None:
    lines = {jit_ssh("ca", "pubkey", role.value, "--ca-dir", str(cli_ca)).stdout.split()[1] for role in CARole}
    assert len(lines) == 3


def test_pubkey_errors_are_one_line(cli_ca: Path, tmp_path: Path) -> None:
    assert_one_error_line(jit_ssh("ca", "pubkey", "user", "--ca-dir", str(tmp_path / "none")), "not a CA directory")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ca.toml").write_text('key_type = "ed25519"\n')
    (broken / "user_ca.pub").write_text("garbage\n")
    assert_one_error_line(jit_ssh("ca", "pubkey", "user", "--ca-dir", str(broken)), "not a public key")
    assert_one_error_line(jit_ssh("ca", "pubkey", "host", "--ca-dir", str(broken)), "cannot read")
    (broken / "ca.toml").write_text("key_type = [\n")
    assert_one_error_line(jit_ssh("ca", "pubkey", "user", "--ca-dir", str(broken)), "cannot read")


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    result = jit_ssh("--verbose", "ca", "pubkey", "user", "--ca-dir", str(tmp_path / "none"))
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


# -- ca krl -----------------------------------------------------------------------------------------------


def _mint(ca: CADirectory, role: CARole, subject: PublicKey, serial: int, key_id: str = "cli test") -> Certificate:
    now = datetime.now(UTC)
    return mint_user_certificate(
        ca.signer(role, passphrase=PASSPHRASE.encode()),
        subject,
        principals=["ubuntu@prod-web-3"],
        key_id=key_id,
        serial=serial,
        valid_from=now,
        valid_until=now + timedelta(minutes=5),
        max_validity=timedelta(minutes=5),
    )


def test_krl_is_read_by_ssh_keygen_as_asked(cli_ca: Path, tmp_path: Path, user_key: tuple[Path, PublicKey]) -> None:
    out = tmp_path / "revoked.krl"
    result = jit_ssh(
        "ca", "krl", "-o", str(out), "--serial", "5", "--serial", "10-20", "--key-id", "stolen", "--ca-dir", str(cli_ca)
    )
    assert result.returncode == 0, result.stderr
    assert "12 serial(s), 1 key id(s) of the access CA" in " ".join(result.stdout.split())
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # sshd reads it as another user
    ca = CADirectory(cli_ca)
    cases = [
        (CARole.ACCESS, 5, "cli test", True),
        (CARole.ACCESS, 10, "cli test", True),
        (CARole.ACCESS, 20, "cli test", True),
        (CARole.ACCESS, 4, "cli test", False),
        (CARole.ACCESS, 9, "cli test", False),
        (CARole.ACCESS, 21, "cli test", False),
        (CARole.ACCESS, 99, "stolen", True),
        (CARole.USER, 5, "cli test", False),  # --ca access: the user CA's serial 5 is another certificate
        (CARole.USER, 99, "stolen", False),
    ]
    krl = KRL.from_bytes(out.read_bytes())
    for index, (role, serial, key_id, revoked) in enumerate(cases):
        cert = _mint(ca, role, user_key[1], serial, key_id)
        path = tmp_path / f"c{index}-cert.pub"
        path.write_text(cert.to_openssh() + "\n")
        query = subprocess.run(
            ["ssh-keygen", "-Q", "-f", str(out), str(path)], capture_output=True, text=True, check=False
        )
        assert query.returncode == (1 if revoked else 0), (role, serial, key_id, query.stdout, query.stderr)
        assert query.stdout.strip().endswith("REVOKED" if revoked else "ok")
        assert krl.is_revoked(cert) is revoked


def test_krl_for_another_ca_and_as_json(cli_ca: Path, tmp_path: Path) -> None:
    out = tmp_path / "user.krl"
    result = jit_ssh("ca", "krl", "-o", str(out), "--serial", "7", "--ca", "user", "--json", "--ca-dir", str(cli_ca))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"output": str(out), "ca": "user", "serials": 1, "key_ids": 0}
    krl = KRL.from_bytes(out.read_bytes())
    assert krl.serials == {CADirectory(cli_ca).public_key(CARole.USER): frozenset({7})}


def test_krl_replaces_the_previous_file(cli_ca: Path, tmp_path: Path) -> None:
    out = tmp_path / "revoked.krl"
    assert jit_ssh("ca", "krl", "-o", str(out), "--serial", "1", "--ca-dir", str(cli_ca)).returncode == 0
    assert jit_ssh("ca", "krl", "-o", str(out), "--serial", "2", "--ca-dir", str(cli_ca)).returncode == 0
    assert set(KRL.from_bytes(out.read_bytes()).serials.values()) == {frozenset({2})}
    assert [p.name for p in tmp_path.iterdir()] == ["revoked.krl"]  # no temporary file left behind


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["--serial", "abc"], "expected a serial N or a range N-M"),
        (["--serial", "0"], "out of 1..2**64-1"),
        (["--serial", "9-3"], "is empty"),
        (["--serial", str(2**64)], "out of 1..2**64-1"),
        (["--serial", "1-2000000"], "over a million"),
        (["--key-id", "caf\u00e9"], "key id"),
    ],
)
def test_krl_refuses_bad_arguments_in_one_line(
    arguments: list[str], fragment: str, cli_ca: Path, tmp_path: Path
) -> None:
    out = tmp_path / "revoked.krl"
    result = jit_ssh("ca", "krl", "-o", str(out), *arguments, "--ca-dir", str(cli_ca))
    code = 1 if "--key-id" in arguments else 2  # KRLError vs InputError
    assert_one_error_line(result, fragment, code=code)
    assert not out.exists()


def test_krl_unwritable_output_is_one_line(cli_ca: Path, tmp_path: Path) -> None:
    result = jit_ssh("ca", "krl", "-o", str(tmp_path / "missing" / "x.krl"), "--serial", "1", "--ca-dir", str(cli_ca))
    assert_one_error_line(result, "cannot write")


def test_krl_without_a_ca_is_one_line(tmp_path: Path) -> None:
    result = jit_ssh("ca", "krl", "-o", str(tmp_path / "x.krl"), "--ca-dir", str(tmp_path / "none"))
    assert_one_error_line(result, "not a CA directory")


# -- loading the CA keys through the CLI -------------------------------------------------------------------
# ``jit-ssh serve`` is the command that loads the CA private keys. Its config points at a policy file that
# does not exist, so a key that loads lets it get one step further and fail there, before any server
# starts: that error is the positive control, and every key problem must stop it earlier, in one line.


@pytest.fixture
def serve_site(cli_ca: Path, tmp_path: Path) -> Path:
    ca = tmp_path / "ca"
    ca.mkdir(mode=0o700)
    for path in cli_ca.iterdir():
        (ca / path.name).write_bytes(path.read_bytes())
        (ca / path.name).chmod(stat.S_IMODE(path.stat().st_mode))
    config = tmp_path / "broker.toml"
    config.write_text(
        '[broker]\nlisten = "127.0.0.1:0"\nca_dir = "ca"\ndata_dir = "data"\npolicy = "no-such-policy.toml"\n'
        'host_key = "data/host_key"\n'
    )
    return config


def serve(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JIT_SSH, "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        env=_env(**env),
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def test_serve_loads_the_keys_with_the_right_passphrase(serve_site: Path, tmp_path: Path) -> None:
    line = assert_one_error_line(serve(serve_site, JIT_SSH_CA_PASSPHRASE=PASSPHRASE), "no-such-policy.toml")
    assert "CA key" not in line
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    line = assert_one_error_line(serve(serve_site, JIT_SSH_CA_PASSPHRASE_FILE=str(secret)), "no-such-policy.toml")
    assert "CA key" not in line


def test_serve_wrong_or_missing_passphrase_is_one_line(serve_site: Path, tmp_path: Path) -> None:
    line = assert_one_error_line(serve(serve_site, JIT_SSH_CA_PASSPHRASE="not the passphrase"), "wrong passphrase")
    assert "not the passphrase" not in line
    assert_one_error_line(serve(serve_site), "is encrypted: set JIT_SSH_CA_PASSPHRASE")
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    assert_one_error_line(
        serve(serve_site, JIT_SSH_CA_PASSPHRASE=PASSPHRASE, JIT_SSH_CA_PASSPHRASE_FILE=str(secret)), "only one of"
    )


def test_serve_group_readable_key_is_one_line(serve_site: Path) -> None:
    key = serve_site.parent / "ca" / "host_ca"
    key.chmod(0o640)
    assert_one_error_line(serve(serve_site, JIT_SSH_CA_PASSPHRASE=PASSPHRASE), "group or others", "chmod 600")


def test_serve_missing_key_is_one_line(serve_site: Path) -> None:
    (serve_site.parent / "ca" / "host_ca").unlink()
    assert_one_error_line(serve(serve_site, JIT_SSH_CA_PASSPHRASE=PASSPHRASE), "does not exist")


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],
        lambda data: b"garbage\n",
        lambda data: data.replace(
            b"b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHI", b"b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHM"
        ),
    ],
    ids=["truncated", "garbage", "cipher-name"],
)
def test_serve_corrupted_key_is_one_line(damage: object, serve_site: Path) -> None:
    key = serve_site.parent / "ca" / "host_ca"
    damaged = damage(key.read_bytes())  # type: ignore[operator]
    assert damaged != key.read_bytes()
    key.write_bytes(damaged)
    assert_one_error_line(serve(serve_site, JIT_SSH_CA_PASSPHRASE=PASSPHRASE), str(key))


def test_serve_unencrypted_key_in_an_encrypted_ca_is_one_line(serve_site: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    assert jit_ssh("ca", "init", str(plain), "--insecure-no-passphrase").returncode == 0
    for name in ("host_ca", "host_ca.pub"):
        (serve_site.parent / "ca" / name).write_bytes((plain / name).read_bytes())
    assert_one_error_line(serve(serve_site, JIT_SSH_CA_PASSPHRASE=PASSPHRASE), "not encrypted but")
