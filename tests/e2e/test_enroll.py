"""Host enrollment, end to end (issue 6): ``jit-ssh host enroll --output`` on the bastion, ``scripts/enroll-host``
into a real sshd's configuration in a temporary root, that sshd serving sessions through ``jit-ssh serve``, and
``scripts/fetch-krl`` keeping its KRL fresh with the host's own key.

The host's sshd starts from a stock-looking ``sshd_config`` (its own port, host key and pid file) and gets
everything else from the bundle: the access CA, the principals files, the KRL and its host certificate.
Negative controls beside each success: a certificate of the wrong CA or for another host, a revoked
serial once the KRL is fetched, a host identity that tries anything but the KRL, a bundle sshd rejects.
"""

from __future__ import annotations

import ast
import dataclasses
import fcntl
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from jit_ssh.ca import KRL, CADirectory, CARole
from jit_ssh.cli.bastion.stack import LocalStack
from jit_ssh.cli.connect_cmd import build_ssh_argv
from jit_ssh.cli.openssh import find_sshd, free_port, ssh_base_options
from jit_ssh.cli.settings import Settings

from tests.e2e.stack_fixture import (
    ended_session,
    forge_certificate,
    granted,
    run_ssh,
    ssh_argv,
    started_stack,
    wait_for,
)

pytestmark = pytest.mark.e2e

NAME = "prod-app-7"
REPO = Path(__file__).resolve().parents[2]
ENROLL_HOST = REPO / "scripts" / "enroll-host"
FETCH_KRL = REPO / "scripts" / "fetch-krl"


@dataclass
class HostRoot:
    """A host's file system root as far as OpenSSH is concerned: ``ROOT/etc/ssh``."""

    root: Path
    port: int

    @property
    def etc(self) -> Path:
        return self.root / "etc" / "ssh"

    @property
    def config(self) -> Path:
        return self.etc / "sshd_config"

    @property
    def host_key(self) -> Path:
        return self.etc / "ssh_host_ed25519_key"

    @property
    def log(self) -> Path:
        return self.root / "sshd.log"

    def snapshot(self) -> dict[str, tuple[bytes, int]]:
        """Every file under etc/ssh but the backups: contents and modification time."""
        return {
            str(path.relative_to(self.etc)): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(self.etc.rglob("*"))
            if path.is_file() and not path.relative_to(self.etc).parts[0].startswith("jit-ssh.backup.")
        }


def make_root(base: Path) -> HostRoot:
    """A stock sshd_config (no jit-ssh yet) and a host key made by ssh-keygen, as on a fresh host."""
    host = HostRoot(base, free_port())
    host.etc.mkdir(parents=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{NAME}", "-f", str(host.host_key)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    host.config.write_text(
        f"# A host's own settings, kept by enroll-host.\n"
        f"Port {host.port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {host.host_key}\n"
        f"PidFile {base / 'sshd.pid'}\n"
        "UsePAM no\n"
        # The root lies below the world-writable /tmp, which StrictModes rejects; a real host keeps it on.
        "StrictModes no\n"
        "AuthorizedKeysFile none\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "LogLevel VERBOSE\n",
        encoding="utf-8",
    )
    return host


def enroll_host(bundle: Path, host: HostRoot) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENROLL_HOST), str(bundle), "--root", str(host.root)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False,
    )  # fmt: skip


def sshd_check(host: HostRoot) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_sshd(), "-t", "-f", str(host.config)], capture_output=True, text=True, timeout=30, check=False
    )


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jit_ssh.cli", *args],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False, env=env,
    )  # fmt: skip


@dataclass
class EnrolledHost:
    host: HostRoot
    bundle: Path
    installed: subprocess.CompletedProcess[str]
    sshd: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with started_stack(tmp_path_factory.mktemp("enroll") / "site") as st:
        yield st


@pytest.fixture(scope="module")
def enrolled(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnrolledHost]:
    """prod-app-7 enrolled on the bastion, its bundle installed by enroll-host, its sshd running."""
    host = make_root(tmp_path_factory.mktemp("host"))
    bundle = host.root.parent / "bundle"
    stack.admin(
        "host", "enroll", NAME, "--address", f"127.0.0.1:{host.port}", "--labels", "env=prod",
        "--host-key", str(host.host_key.with_suffix(".pub")), "--output", str(bundle),
    )  # fmt: skip
    installed = enroll_host(bundle, host)
    assert installed.returncode == 0, installed.stderr
    assert sshd_check(host).returncode == 0
    with host.log.open("ab") as log:
        sshd = subprocess.Popen(
            [find_sshd(), "-D", "-e", "-f", str(host.config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    try:
        wait_for(lambda: _listening(host.port, sshd), what=f"sshd on port {host.port}")
        yield EnrolledHost(host, bundle, installed, sshd)
    finally:
        sshd.send_signal(signal.SIGTERM)
        try:
            sshd.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sshd.kill()
            sshd.wait()


def _listening(port: int, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, "sshd exited at start"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def direct_ssh(
    stack: LocalStack, host: HostRoot, cert: Path, command: str = "echo direct-ok"
) -> subprocess.CompletedProcess[str]:
    """Straight to the host's sshd with alice's key and ``cert``, verifying the host by its certificate."""
    argv = [
        "ssh", *ssh_base_options(known_hosts=stack.known_hosts, host_key_alias=NAME),
        "-i", str(stack.identity("alice")), "-o", f"CertificateFile={cert}",
        "-p", str(host.port), "-l", stack.login, "127.0.0.1", command,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False)


def access_certificate(
    stack: LocalStack, out: Path, *, serial: int, host: str = NAME, role: CARole = CARole.ACCESS
) -> Path:
    """A certificate as the broker mints onward, for alice's key: ``LOGIN@host``, ``serial``, by ``role``."""
    signer = CADirectory(stack.ca_dir).signer(role, passphrase=None)
    return forge_certificate(
        stack, "alice", signer, out, principals=[f"{stack.login}@{host}"], serial=serial, key_id=f"test {serial}"
    )


def fetch_krl(stack: LocalStack, host: HostRoot) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JIT_SSH_HOST_DIR": str(host.etc / "jit-ssh"), "JIT_SSH_HOST_KEY": str(host.host_key)}
    return subprocess.run(
        [str(FETCH_KRL), f"127.0.0.1:{stack.port}", NAME],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False, env=env,
    )  # fmt: skip


# -- install ---------------------------------------------------------------------------------------
def test_enroll_host_installs_what_sshd_needs(stack: LocalStack, enrolled: EnrolledHost, tmp_path: Path) -> None:
    host, login = enrolled.host, stack.login
    assert "installed into" in enrolled.installed.stdout
    jit = host.etc / "jit-ssh"
    access = CADirectory(stack.ca_dir).public_key(CARole.ACCESS)
    assert (jit / "trusted_user_ca_keys.pub").read_text().split()[:2] == access.to_openssh().split()[:2]
    assert (jit / "auth_principals" / login).read_text() == f"{login}@{NAME}\n"
    KRL.from_bytes((jit / "revoked.krl").read_bytes())
    # fetch-krl's trust in the bastion: the host CA, exactly as 'jit-ssh ca known-hosts' prints it.
    assert (jit / "known_hosts").read_text() == cli("ca", "known-hosts", "--ca-dir", str(stack.ca_dir)).stdout
    drop_in = (host.etc / "sshd_config.d" / "jit-ssh.conf").read_text()
    assert f"TrustedUserCAKeys {jit}/trusted_user_ca_keys.pub" in drop_in
    assert f"RevokedKeys {jit}/revoked.krl" in drop_in
    assert f"HostCertificate {host.etc}/ssh_host_ed25519_key-cert.pub" in drop_in
    assert host.config.read_text().splitlines()[0] == f"Include {host.etc}/sshd_config.d/*.conf"
    assert sshd_check(host).returncode == 0

    # An onward certificate is what the host accepts: from the access CA, for LOGIN@prod-app-7 only.
    ok = direct_ssh(stack, host, access_certificate(stack, tmp_path / "ok-cert.pub", serial=10**9 + 1))
    assert (ok.returncode, ok.stdout) == (0, "direct-ok\n"), ok.stderr
    other_host = access_certificate(stack, tmp_path / "other-cert.pub", serial=10**9 + 2, host="prod-web-3")
    assert direct_ssh(stack, host, other_host).returncode == 255
    user_ca = access_certificate(stack, tmp_path / "user-ca-cert.pub", serial=10**9 + 3, role=CARole.USER)
    assert direct_ssh(stack, host, user_ca).returncode == 255


def test_the_enrolled_host_serves_a_session_through_the_broker(stack: LocalStack, enrolled: EnrolledHost) -> None:
    request_id = stack.grant("alice", "bob", NAME)
    since = time.time() - 0.01
    done = stack.jit("alice", NAME, "--", "echo", "through-the-broker")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "through-the-broker\n"
    row = ended_session(stack, since=since)
    assert (row["host"], row["request_id"], row["exit_status"]) == (NAME, request_id, 0)
    # The host's own log names the request and user: the onward certificate's key id carries them.
    accepted = f'request={request_id} user=alice" (serial {row["onward_serial"]}) signed by'
    wait_for(lambda: accepted in enrolled.host.log.read_text(errors="replace"), what="the session in sshd's log")


def test_a_second_run_changes_nothing(stack: LocalStack, enrolled: EnrolledHost) -> None:
    host = enrolled.host
    # The README's step, saving 'jit-ssh ca known-hosts' where fetch-krl reads it, is no change either.
    (host.etc / "jit-ssh" / "known_hosts").write_text(cli("ca", "known-hosts", "--ca-dir", str(stack.ca_dir)).stdout)
    before = host.snapshot()
    backups = sorted(host.etc.glob("jit-ssh.backup.*"))
    again = enroll_host(enrolled.bundle, host)
    assert again.returncode == 0, again.stderr
    assert "nothing changed" in again.stdout
    assert host.snapshot() == before
    assert sorted(host.etc.glob("jit-ssh.backup.*")) == backups


# -- the KRL ---------------------------------------------------------------------------------------
def _host_identity_env(stack: LocalStack, host: HostRoot, tmp_path: Path) -> dict[str, str]:
    """The jit-ssh CLI configured as the host's fetch-only identity (host-NAME, the host's own key)."""
    settings = tmp_path / "host-config.toml"
    settings.write_text(
        f'bastion = "127.0.0.1"\nport = {stack.port}\nuser = "host-{NAME}"\nidentity = "{host.host_key}"\n'
        f'known_hosts = "{stack.known_hosts}"\nlogin = "{stack.login}"\n',
        encoding="utf-8",
    )
    return {**os.environ, "JIT_SSH_CONFIG": str(settings), "XDG_CACHE_HOME": str(tmp_path / "cache")}


def test_the_host_identity_may_only_fetch_the_krl(stack: LocalStack, enrolled: EnrolledHost, tmp_path: Path) -> None:
    env = _host_identity_env(stack, enrolled.host, tmp_path)
    fetched = cli("ca", "krl", "--fetch", "-o", str(tmp_path / "revoked.krl"), env=env)
    assert fetched.returncode == 0, fetched.stderr
    KRL.from_bytes((tmp_path / "revoked.krl").read_bytes())
    for args in (
        ("status",),
        ("request", "prod-web-3", "--reason", "host asking", "--for", "10m", "--no-wait"),
        ("requests", "--pending"),
        ("sessions",),
    ):
        refused = cli(*args, env=env)
        assert refused.returncode == 3, (args, refused.stdout, refused.stderr)
    assert "may only fetch the KRL" in cli("status", env=env).stderr


def test_the_host_refuses_a_revoked_onward_serial_once_the_krl_is_fetched(
    stack: LocalStack, enrolled: EnrolledHost, tmp_path: Path
) -> None:
    host = enrolled.host
    request_id = stack.grant("alice", "bob", NAME)
    since = time.time() - 0.01
    done = stack.jit("alice", NAME, "--", "true")
    assert done.returncode == 0, done.stderr
    onward = ended_session(stack, since=since)["onward_serial"]
    assert onward
    # The broker's onward key never leaves it: the same serial from the same CA stands in for its certificate.
    revoked = access_certificate(stack, tmp_path / "onward-cert.pub", serial=onward)
    control = access_certificate(stack, tmp_path / "control-cert.pub", serial=10**9 + 11)
    assert direct_ssh(stack, host, revoked).returncode == 0

    assert stack.jit("bob", "revoke", str(request_id), "--reason", "test").returncode == 0
    assert direct_ssh(stack, host, revoked).returncode == 0  # the host has not fetched the KRL yet

    log_at = len(host.log.read_bytes())
    fetched = fetch_krl(stack, host)
    assert fetched.returncode == 0, fetched.stderr
    krl = host.etc / "jit-ssh" / "revoked.krl"
    query = subprocess.run(
        ["ssh-keygen", "-Q", "-f", str(krl), str(revoked)], capture_output=True, text=True, check=False
    )
    assert query.returncode == 1, query.stdout + query.stderr  # 1: a key is revoked
    refused = direct_ssh(stack, host, revoked)
    assert refused.returncode == 255, refused.stdout
    assert "direct-ok" not in refused.stdout
    wait_for(lambda: "revoked" in host.log.read_bytes()[log_at:].decode(errors="replace"), what="sshd's refusal")
    assert direct_ssh(stack, host, control).returncode == 0  # negative control: only that serial is refused
    through_broker = run_ssh([*ssh_argv(stack, "alice", request_id, host=NAME), "true"])
    assert through_broker.returncode == 255  # and the broker refuses the revoked grant's certificate
    assert b"revoked" in through_broker.stderr

    # Installing the bundle again must not bring back its older KRL and with it the revoked serial.
    again = enroll_host(enrolled.bundle, host)
    assert again.returncode == 0, again.stderr
    assert direct_ssh(stack, host, revoked).returncode == 255


# -- roll back ---------------------------------------------------------------------------------------
def test_a_bundle_sshd_rejects_is_rolled_back(stack: LocalStack, tmp_path: Path) -> None:
    host = make_root(tmp_path / "host")
    good = tmp_path / "good"
    stack.admin(
        "host", "enroll", "prod-app-8", "--address", f"127.0.0.1:{host.port}", "--labels", "env=prod",
        "--host-key", str(host.host_key.with_suffix(".pub")), "--output", str(good),
    )  # fmt: skip
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    with (bad / "jit-ssh.conf").open("a", encoding="utf-8") as drop_in:
        drop_in.write("PermitRootLogin sometimes\n")  # not a value sshd knows: sshd -t fails
    (bad / "auth_principals" / "extra").write_text("extra@prod-app-8\n", encoding="utf-8")

    # On a fresh host: everything as it was, sshd_config included.
    pristine = host.snapshot()
    failed = enroll_host(bad, host)
    assert failed.returncode != 0
    assert "restoring" in failed.stderr
    assert host.snapshot() == pristine
    assert sshd_check(host).returncode == 0

    # Over a good installation: the good one is back, byte for byte.
    assert enroll_host(good, host).returncode == 0
    installed = host.snapshot()
    failed = enroll_host(bad, host)
    assert failed.returncode != 0
    after = host.snapshot()
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in installed.items()}
    assert not (host.etc / "jit-ssh" / "auth_principals" / "extra").exists()
    assert sshd_check(host).returncode == 0
    assert re.search(r"PermitRootLogin sometimes", (host.etc / "sshd_config.d" / "jit-ssh.conf").read_text()) is None


# -- never a prompt about an unknown host key --------------------------------------------------------
SOURCES = [*sorted((REPO / "cli").rglob("*.py")), *sorted((REPO / "tests").rglob("*.py"))]
CLIENTS = frozenset({"ssh", "scp", "sftp"})


def _strict(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Constant) and n.value == "StrictHostKeyChecking=yes" for n in ast.walk(node))


def _called(node: ast.AST) -> str | None:
    """The name of what ``node`` calls (``f(...)``, ``x.f(...)``), if it is a call."""
    if isinstance(node, ast.Call):
        func = node.func
        return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    return None


def _option_helpers(trees: dict[Path, ast.Module]) -> set[str]:
    """Functions whose result carries StrictHostKeyChecking=yes: they spell it, or return a helper's result."""
    functions = [f for tree in trees.values() for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)]
    safe = {f.name for f in functions if any(isinstance(n, ast.List) and _strict(n) for n in ast.walk(f))}
    while True:
        more = {
            f.name for f in functions
            if any(isinstance(r, ast.Return) and _called(r.value) in safe for r in ast.walk(f) if r is not f)
        } - safe  # fmt: skip
        if not more:
            return safe
        safe |= more


def _client_argvs(tree: ast.Module) -> Iterator[tuple[ast.List, ast.AST]]:
    """Every list display starting with ssh, scp or sftp (a constant, or a variable named ssh), and the
    function it is in (or the module)."""

    def visit(node: ast.AST, scope: ast.AST) -> Iterator[tuple[ast.List, ast.AST]]:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            scope = node
        if isinstance(node, ast.List) and node.elts:
            first = node.elts[0]
            if (isinstance(first, ast.Constant) and first.value in CLIENTS) or (
                isinstance(first, ast.Name) and first.id == "ssh"
            ):
                yield node, scope
        for child in ast.iter_child_nodes(node):
            yield from visit(child, scope)

    yield from visit(tree, tree)


def _argv_is_strict(argv: ast.List, scope: ast.AST, helpers: set[str]) -> bool:
    if _strict(argv):
        return True
    for element in argv.elts:
        if not isinstance(element, ast.Starred):
            continue
        if _called(element.value) in helpers:
            return True
        if isinstance(element.value, ast.Name):  # *options, bound in the same function to a helper's result
            name = element.value.id
            for node in ast.walk(scope):
                if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                    value = node.value
                    if _called(value) in helpers:
                        return True
    return False


def test_every_ssh_scp_sftp_invocation_checks_host_keys_strictly() -> None:
    trees = {path: ast.parse(path.read_text(encoding="utf-8"), str(path)) for path in SOURCES}
    helpers = _option_helpers(trees)
    assert {"ssh_base_options", "ssh_options"} <= helpers
    found, lax = 0, []
    for path, tree in trees.items():
        for argv, scope in _client_argvs(tree):
            if len(argv.elts) == 2 and isinstance(argv.elts[1], ast.Constant) and argv.elts[1].value == "-V":
                continue  # ssh -V connects nowhere
            found += 1
            if not _argv_is_strict(argv, scope, helpers):
                lax.append(f"{path.relative_to(REPO)}:{argv.lineno}")
    assert found >= 10  # the scan does see the invocations (cli/stack.py, cli/connect_cmd.py, the e2e tests)
    assert lax == [], f"ssh/scp/sftp without StrictHostKeyChecking=yes: {lax}"

    # No source turns host key checking off or to trust on first use, for OpenSSH or for asyncssh.
    for path in [*SOURCES, *sorted((REPO / "scripts").iterdir())]:
        if path == Path(__file__):
            continue  # it names them, to look for them
        text = path.read_text(encoding="utf-8")
        for lax_option in ("StrictHostKeyChecking=no", "StrictHostKeyChecking=accept-new", "known_hosts=None"):
            assert lax_option not in text, f"{lax_option} in {path}"
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if _called(node) == "connect" and "asyncssh" in ast.unparse(node.func):  # type: ignore[attr-defined]
                keywords = {k.arg for k in node.keywords}  # type: ignore[attr-defined]
                assert "known_hosts" in keywords, f"asyncssh.connect without known_hosts in {path}:{node.lineno}"
    for line in (REPO / "scripts" / "fetch-krl").read_text().replace("\\\n", " ").splitlines():
        if line.strip().startswith("ssh "):
            assert "StrictHostKeyChecking=yes" in line
            assert "BatchMode=yes" in line


def test_known_hosts_files_hold_only_cert_authority_lines(stack: LocalStack, enrolled: EnrolledHost) -> None:
    # The clients' (every e2e test's, through LocalStack) and the enrolled host's, for fetch-krl.
    for path in (stack.known_hosts, enrolled.host.etc / "jit-ssh" / "known_hosts"):
        lines = path.read_text().splitlines()
        assert len(lines) == 1, path
        assert lines[0].startswith("@cert-authority * "), lines
    # Sessions and fetches have run by now (in this module at least): nobody added a host key to them.
    assert stack.known_hosts.read_text() == cli("ca", "known-hosts", "--ca-dir", str(stack.ca_dir)).stdout


def _on_a_terminal(argv: list[str], *, answer: bytes | None = None, timeout: float = 30) -> tuple[int, str]:
    """Run ``argv`` with a pty as its controlling terminal, where ssh would ask its questions."""
    master, slave = os.openpty()

    def take_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            preexec_fn=take_terminal,  # noqa: PLW1509 - no threads here; setsid, then this terminal
        )  # fmt: skip
    finally:
        os.close(slave)
    output = bytearray()
    try:
        deadline = time.monotonic() + timeout
        while process.poll() is None or select.select([master], [], [], 0)[0]:
            assert time.monotonic() < deadline, f"{argv[0]} hangs: {output.decode(errors='replace')}"
            if select.select([master], [], [], 0.1)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the terminal's other side closed
                    break
                if not chunk:
                    break
                output += chunk
                if answer is not None and b"continue connecting" in output:
                    os.write(master, answer)
                    answer = None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        os.close(master)
    return process.returncode, output.decode(errors="replace")


def test_a_client_without_the_host_ca_fails_fast_and_never_asks(stack: LocalStack, tmp_path: Path) -> None:
    other_ca = CADirectory.create(tmp_path / "other-ca", passphrase=None, insecure_no_passphrase=True)
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"@cert-authority * {other_ca.public_key(CARole.HOST).to_openssh('not-our-host-ca')}\n")
    settings = tmp_path / "config.toml"
    settings.write_text(
        Path(stack.user_env("alice")["JIT_SSH_CONFIG"]).read_text().replace(str(stack.known_hosts), str(wrong)),
        encoding="utf-8",
    )
    env = {**stack.user_env("alice"), "JIT_SSH_CONFIG": str(settings)}

    # The control plane (asyncssh): one clear line and a non-zero exit, with stdin closed.
    for args in (("status",), ("prod-web-3", "--", "true")):
        refused = cli(*args, env=env)
        assert refused.returncode != 0, refused.stdout
        assert refused.stdout == ""
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr
        assert "host certificate from the trusted host CA" in lines[0]
    assert wrong.read_text().count("\n") == 1  # nothing was added to it
    # Positive control: the user's own known_hosts (the host CA) gets through.
    assert cli("status", env=stack.user_env("alice")).returncode == 0

    # The OpenSSH command line jit-ssh HOST execs: refused at once on a terminal, no question asked ...
    request_id = granted(stack)
    cert = stack.root / "users" / "alice" / "cache" / "jit-ssh" / f"request-{request_id}-cert.pub"
    user_settings = Settings(
        bastion="127.0.0.1", port=stack.port, user="alice", identity=stack.identity("alice"), known_hosts=wrong,
        login=stack.login, path=settings,
    )  # fmt: skip
    argv = build_ssh_argv(
        user_settings, identity=stack.identity("alice"), cert=cert, login=stack.login, host="prod-web-3",
        command=["echo", "reached"],
    )  # fmt: skip
    code, output = _on_a_terminal(argv)
    assert code == 255, output
    assert "Host key verification failed" in output
    assert "continue connecting" not in output
    assert "reached" not in output
    # ... where ssh asking is possible at all: without StrictHostKeyChecking=yes, this very terminal is asked.
    lax = [a.replace("StrictHostKeyChecking=yes", "StrictHostKeyChecking=ask") for a in argv]
    code, output = _on_a_terminal(lax, answer=b"no\n")
    assert "Are you sure you want to continue connecting" in output
    assert code == 255
    assert wrong.read_text().count("\n") == 1
    # And with the right known_hosts the same command line gets in.
    good = build_ssh_argv(
        dataclasses.replace(user_settings, known_hosts=stack.known_hosts), identity=stack.identity("alice"),
        cert=cert, login=stack.login, host="prod-web-3", command=["echo", "reached"],
    )  # fmt: skip
    code, output = _on_a_terminal(good)
    assert code == 0, output
    assert "reached" in output
