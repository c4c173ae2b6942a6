"""Real brokers for tests: a CA, a policy, enrolled users and hosts, ``jit-ssh serve`` processes on free
loopback ports, and ways to talk to them as each user (the CLI, asyncssh with raw bytes, OpenSSH ``ssh``).

Everything here starts real processes and opens real files; every helper that starts something is a
context manager that stops it, so a failing test leaves nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import asyncssh
from jit_ssh.broker.config import BrokerConfig
from jit_ssh.broker.server import Broker
from jit_ssh.ca import CADirectory, CARole, PublicKey
from jit_ssh.ca.inventory import add_host, add_user
from jit_ssh.ca.store import Store
from jit_ssh.cli.bastion.stack import DEFAULT_POLICY
from jit_ssh.cli.openssh import generate_ssh_key, ssh_base_options

__all__ = [
    "HOSTS",
    "JIT_SSH",
    "POLICY",
    "USERS",
    "BrokerProcess",
    "BrokerSite",
    "SshReply",
    "add_key",
    "create_site",
    "in_process_broker",
    "openssh_call",
    "running_brokers",
    "ssh_call",
    "ssh_calls",
]

JIT_SSH = str(Path(sys.executable).with_name("jit-ssh"))

#: The policy of every test site. Groups come from here and, for erin, from ``user add --group``.
#: alice and bob approve prod (sre); bob, dave and erin approve db (dba: 2 of 3); carol approves nothing.
POLICY = """\
[groups]
sre = ["alice", "bob"]
dev = ["carol"]
dba = ["bob", "dave"]
oncall = ["dave"]

[[rule]]
name = "prod"
hosts = ["prod-*"]
labels = { env = "prod" }
requesters = ["sre", "dev"]
logins = ["ubuntu", "deploy"]
max_duration = "4h"
approvals = 1
approvers = ["sre"]

[[rule]]
name = "db"
hosts = ["db-*"]
requesters = ["sre", "dev"]
logins = ["postgres", "ubuntu"]
max_duration = "2h"
approvals = 2
approvers = ["dba"]
extensions = ["permit-pty", "permit-port-forwarding"]

[[rule]]
name = "staging"
hosts = ["staging-*"]
requesters = ["*"]
logins = ["ubuntu"]
max_duration = "8h"
auto_approve = true

[[rule]]
name = "prod-break-glass"
hosts = ["prod-*"]
labels = { env = "prod" }
requesters = ["oncall"]
logins = ["ubuntu"]
max_duration = "1h"
break_glass = true
"""

#: user -> groups given with ``jit-ssh user add --group`` (on top of the policy's [groups]).
USERS: dict[str, tuple[str, ...]] = {
    "alice": (),
    "bob": (),
    "carol": (),
    "dave": (),
    "erin": ("dba",),
}
#: host -> labels. prod-odd is named like production but not labelled so: no rule matches it.
HOSTS: dict[str, dict[str, str]] = {
    "prod-web-3": {"env": "prod"},
    "prod-web-4": {"env": "prod"},
    "prod-odd": {"env": "dev"},
    "db-1": {},
    "staging-1": {},
}
#: A hung broker fails the test instead of hanging it (the broker's own stdin timeout is 30 s).
CALL_TIMEOUT = 60.0
_LISTENING = re.compile(r"broker listening on \S+:(\d+)")
_TABLES = ("users", "user_keys", "hosts", "requests", "approvals", "certificates", "audit_events")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JIT_SSH_", "SSH_AUTH_SOCK", "XDG_"))}
    env.update(extra)
    return env


@dataclass
class BrokerSite:
    """A bastion's files (CA, policy, broker.toml, database) and each user's key and client settings."""

    root: Path
    ca_dir: Path
    config: Path
    db_path: Path
    known_hosts: Path
    keys: dict[str, Path] = field(default_factory=dict)

    # -- running jit-ssh ---------------------------------------------------------------------------
    def run(
        self, *args: str, env: Mapping[str, str] | None = None, stdin: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``jit-ssh ARGS`` as a subprocess, never raising on a non-zero exit."""
        return subprocess.run(
            [JIT_SSH, *args],
            capture_output=True,
            text=True,
            input=stdin,
            env=_clean_env(**(env or {})),
            cwd=self.root,
            timeout=timeout,
            check=False,
        )

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        """An admin command on the bastion, against this site's broker.toml."""
        return self.run(*args, "--config", str(self.config))

    def user_env(self, user: str) -> dict[str, str]:
        return {
            "JIT_SSH_CONFIG": str(self.root / f"cfg-{user}" / "config.toml"),
            "XDG_CACHE_HOME": str(self.root / f"cache-{user}"),
            "XDG_CONFIG_HOME": str(self.root / f"cfg-{user}"),
        }

    def as_user(self, user: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``jit-ssh ARGS`` as ``user``, with that user's client settings and certificate cache."""
        return self.run(*args, env=self.user_env(user))

    def configure_client(self, user: str, port: int, *, via_cli: bool = True) -> None:
        """``jit-ssh config set ...`` for ``user``, as the engineer would type it (or the file it writes)."""
        settings: dict[str, str | int] = {
            "bastion": "127.0.0.1",
            "port": port,
            "user": user,
            "identity": str(self.keys[user]),
            "known_hosts": str(self.known_hosts),
        }
        if not via_cli:
            path = Path(self.user_env(user)["JIT_SSH_CONFIG"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
            return
        for key, value in settings.items():
            done = self.as_user(user, "config", "set", key, str(value))
            assert done.returncode == 0, done.stderr
        shown = self.as_user(user, "config", "show", "--json")
        assert shown.returncode == 0, shown.stderr
        assert {k: v for k, v in json.loads(shown.stdout).items() if k in settings} == settings

    def cached_certificate(self, user: str, request_id: int) -> Path:
        return self.root / f"cache-{user}" / "jit-ssh" / f"request-{request_id}-cert.pub"

    # -- reading the database directly -------------------------------------------------------------
    @contextlib.contextmanager
    def db(self) -> Iterator[sqlite3.Connection]:
        """A plain sqlite3 connection to the broker's database (closed afterwards; commits on success)."""
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.db() as conn:
            return list(conn.execute(sql, params).fetchall())

    def counts(self) -> dict[str, int]:
        """Rows per table: what 'changes nothing' is checked against."""
        return {table: int(self.query(f"SELECT count(*) FROM {table}")[0][0]) for table in _TABLES}  # noqa: S608

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of the tables a control command may change, except the audit log (which records refusals)."""
        tables = ("users", "user_keys", "hosts", "requests", "approvals", "certificates", "counters")
        with self.db() as conn:
            out = {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}  # noqa: S608
        # The audit head moves with refused events; the serial counter must not.
        out["counters"] = [row for row in out["counters"] if row[0] != "audit"]
        return out

    def audit_actions(self, since_seq: int = 0) -> list[tuple[int, str, str, str]]:
        """(seq, actor, action, subject) of every audit event after ``since_seq``."""
        rows = self.query(
            "SELECT seq, actor, action, subject FROM audit_events WHERE seq > ? ORDER BY seq", (since_seq,)
        )
        return [(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]

    def last_seq(self) -> int:
        return int(self.query("SELECT coalesce(max(seq), 0) FROM audit_events")[0][0])

    def broker_config(self, name: str, *, port: int = 0) -> Path:
        """Another broker.toml on the same data directory and database (several bastions, one store)."""
        path = self.root / f"{name}.toml"
        path.write_text(self.config.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"'))
        return path


def create_site(root: Path, *, via_cli: bool = False) -> BrokerSite:
    """A bastion in ``root``: CA, policy, broker.toml, the users of :data:`USERS` and hosts of :data:`HOSTS`.

    ``via_cli`` sets it up with ``jit-ssh ca init``, ``user add`` and ``host add`` as an admin would
    (slower); otherwise with the same library calls, in process.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "policy.toml").write_text(POLICY)
    config = root / "broker.toml"
    config.write_text(
        '[broker]\nlisten = "127.0.0.1:0"\ndata_dir = "data"\nca_dir = "ca"\npolicy = "policy.toml"\n'
        'log_level = "INFO"\n'
    )
    site = BrokerSite(
        root=root,
        ca_dir=root / "ca",
        config=config,
        db_path=root / "data" / "jit-ssh.db",
        known_hosts=root / "known_hosts",
    )
    keys = {name: generate_ssh_key(root / f"id_{name}", comment=name) for name in USERS}
    site.keys = {name: root / f"id_{name}" for name in USERS}
    if via_cli:
        on_site = ["--config", str(config)]
        commands = [["ca", "init", str(site.ca_dir), "--insecure-no-passphrase"]]
        for name, groups in USERS.items():
            groups_args = [f"--group={g}" for g in groups]
            commands.append(["user", "add", name, "--key", f"{site.keys[name]}.pub", *groups_args, *on_site])
        for name, labels in HOSTS.items():
            label_text = ",".join(f"{k}={v}" for k, v in labels.items())
            commands.append(["host", "add", name, "--address", "127.0.0.1:22", "--labels", label_text, *on_site])
        for args in commands:
            done = site.run(*args)
            assert done.returncode == 0, f"jit-ssh {' '.join(args)}: {done.stderr}"
        known = site.run("ca", "known-hosts", "--ca-dir", str(site.ca_dir))
        assert known.returncode == 0, known.stderr
        site.known_hosts.write_text(known.stdout)
    else:
        ca = CADirectory.create(site.ca_dir, passphrase=None, insecure_no_passphrase=True)
        site.db_path.parent.mkdir(mode=0o700)
        store = Store(site.db_path)
        try:
            for name, groups in USERS.items():
                add_user(store, name, keys=[keys[name]], groups=groups)
            for name, labels in HOSTS.items():
                add_host(store, name, address="127.0.0.1", port=22, labels=labels)
        finally:
            store.dispose()
        site.known_hosts.write_text(f"@cert-authority * {ca.public_key(CARole.HOST).to_openssh('jit-ssh-host-ca')}\n")
    return site


def in_process_broker(root: Path) -> Broker:
    """A :class:`Broker` object in this process (not started) over a new CA, the demo policy and ``root/data``."""
    CADirectory.create(root / "ca", passphrase=None, insecure_no_passphrase=True)
    (root / "policy.toml").write_text(DEFAULT_POLICY.replace("{login}", "ubuntu"), encoding="utf-8")
    config = BrokerConfig.from_mapping(
        {"broker": {"data_dir": "data", "ca_dir": "ca", "policy": "policy.toml", "listen": "127.0.0.1:0"}},
        path=root / "broker.toml",
    )
    return Broker(config, passphrase=None)


def add_key(site: BrokerSite, name: str) -> tuple[Path, PublicKey]:
    """A new key pair for a user who is not (yet) enrolled."""
    path = site.root / f"id_{name}"
    return path, generate_ssh_key(path, comment=name)


class BrokerProcess:
    """One ``jit-ssh serve --config CONFIG`` process; :meth:`start` waits until it listens."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log_path = log
        self.port = 0
        self._log: TextIO | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> BrokerProcess:
        self._log = self.log_path.open("w", encoding="utf-8")
        self._process = subprocess.Popen(
            # The CLI's own entry point, but not spelled `jit-ssh serve`: a developer's
            # `pkill -f "jit-ssh serve"` on the same machine must not take a test's brokers down.
            [sys.executable, "-m", "jit_ssh.cli.main", "serve", "--config", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=_clean_env(),
            cwd=self.config.parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _LISTENING.search(self.log())
            if found:
                self.port = int(found.group(1))
                return self
            if self._process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"broker did not start; its log:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM (the broker's clean shutdown), then SIGKILL if it lingers; returns the exit status."""
        status = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.send_signal(signal.SIGTERM)
                try:
                    self._process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            status = self._process.returncode
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return status


@contextlib.contextmanager
def running_brokers(site: BrokerSite, count: int = 1) -> Iterator[list[BrokerProcess]]:
    """``count`` broker processes on one database, each on its own free port; all stopped afterwards.

    They start one after another: each writes its host key and certificate at start-up.
    """
    brokers: list[BrokerProcess] = []
    try:
        for index in range(count):
            config = site.config if index == 0 else site.broker_config(f"broker-{index}")
            brokers.append(BrokerProcess(config, site.root / f"broker-{index}.log"))
            brokers[-1].start()
        yield brokers
    finally:
        statuses = [broker.stop() for broker in brokers]
    # A broker that crashed during the test is a failure even when the test's own checks passed.
    for broker, status in zip(brokers, statuses, strict=True):
        assert status == 0, f"broker exited with {status}; its log:\n{broker.log()}"
        assert "Traceback" not in broker.log(), broker.log()


@dataclass(frozen=True, slots=True)
class SshReply:
    exit_status: int | None
    stdout: bytes
    stderr: bytes

    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def error(self) -> str:
        """The error message of an ``{"ok": false}`` reply."""
        reply = self.json()
        assert reply["ok"] is False, reply
        return str(reply["error"]["message"])


async def _connect(site: BrokerSite, port: int, user: str, key: Path | None = None) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1",
        port,
        username=user,
        client_keys=[str(key or site.keys[user])],
        agent_path=None,
        known_hosts=str(site.known_hosts),
        config=None,
        encoding=None,
        connect_timeout=30,
    )


async def _run(conn: asyncssh.SSHClientConnection, command: str, stdin: bytes | None) -> SshReply:
    # Not conn.run(input=...): asyncssh sends no EOF for empty input, and the broker would wait for one.
    async with conn.create_process(command, encoding=None) as process:
        if stdin:
            process.stdin.write(stdin)
        process.stdin.write_eof()
        out, err = await process.communicate()
    return SshReply(process.exit_status, out or b"", err or b"")


def ssh_call(
    site: BrokerSite, port: int, user: str, command: str, stdin: bytes | None = None, *, key: Path | None = None
) -> SshReply:
    """One control command over a fresh asyncssh connection, with ``stdin`` sent as raw bytes."""

    async def once() -> SshReply:
        async with asyncio.timeout(CALL_TIMEOUT), await _connect(site, port, user, key) as conn:
            return await _run(conn, command, stdin)

    return asyncio.run(once())


def ssh_calls(site: BrokerSite, calls: Sequence[tuple[int, str, str, bytes | None]]) -> list[SshReply | BaseException]:
    """Many calls ``(port, user, command, stdin)`` at once, each on its own connection."""

    async def one(port: int, user: str, command: str, stdin: bytes | None) -> SshReply:
        async with asyncio.timeout(CALL_TIMEOUT), await _connect(site, port, user) as conn:
            return await _run(conn, command, stdin)

    async def every() -> list[SshReply | BaseException]:
        return await asyncio.gather(*(one(*call) for call in calls), return_exceptions=True)

    return asyncio.run(every())


def openssh_call(
    site: BrokerSite, port: int, user: str, command: bytes, stdin: bytes, *, key: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The same through OpenSSH's ``ssh`` client: what a user without jit-ssh installed could send."""
    argv: list[str | bytes] = [
        "ssh",
        *ssh_base_options(known_hosts=site.known_hosts),
        "-i", str(key or site.keys[user]),
        "-p", str(port),
        "-l", user,
        "127.0.0.1",
        command,
    ]  # fmt: skip
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=60, check=False, env=_clean_env())
