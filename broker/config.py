"""The bastion's settings, from ``broker.toml`` (``--config`` or ``JIT_SSH_BROKER_CONFIG``).

Relative paths are read relative to the config file's folder, so a config and its data travel
together. Every key is checked; an unknown key is an error, since a typo must not silently fall back
to a default.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from jit_ssh.ca import ConfigError, InputError
from jit_ssh.ca.validate import parse_duration

from .notify import Webhook

__all__ = ["CONFIG_ENV", "DEFAULT_CONFIG", "BrokerConfig"]

CONFIG_ENV = "JIT_SSH_BROKER_CONFIG"
DEFAULT_CONFIG = Path("/etc/jit-ssh/broker.toml")
_BROKER_KEYS = frozenset(
    {
        "listen",
        "host_names",
        "data_dir",
        "recordings_dir",
        "database_url",
        "ca_dir",
        "policy",
        "pending_timeout",
        "host_key",
        "log_level",
        "capture_limit",
        "source_addresses",
        "warn_before",
        "notify_watched",
        "idle_timeout",
        "onward_idle",
        "log_format",
        "env_allow",
        "index_workers",
        "index_cpu_budget",
        "index_memory",
        "sessions_per_user",
    }
)


_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
#: Variables that change how the host's shell or loader starts: never passed on, whatever the config says.
_NEVER_ENV = frozenset({"BASH_ENV", "ENV", "LD_PRELOAD", "LD_LIBRARY_PATH", "PATH", "SHELLOPTS", "PS4", "IFS"})


def _split_listen(value: str, where: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{where}: listen: expected ADDRESS:PORT such as 0.0.0.0:2222, found {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - a bastion listens on all interfaces


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Validated broker settings."""

    path: Path | None
    listen_host: str = "127.0.0.1"
    listen_port: int = 2222
    host_names: tuple[str, ...] = ("localhost", "127.0.0.1")
    data_dir: Path = Path("/var/lib/jit-ssh")
    recordings_dir: Path = Path("/var/lib/jit-ssh/recordings")
    database_url: str = ""
    ca_dir: Path = Path("/etc/jit-ssh/ca")
    policy: Path = Path("/etc/jit-ssh/policy.toml")
    pending_timeout: timedelta = timedelta(hours=1)
    host_key: Path = Path("/var/lib/jit-ssh/ssh_host_ed25519_key")
    log_level: str = "INFO"
    webhooks: tuple[Webhook, ...] = field(default=())
    #: Bytes of bulk content (exec without a terminal, per direction) kept in a recording.
    capture_limit: int = 1024 * 1024
    #: The addresses hosts see the broker connect from: the onward certificates' source-address.
    source_addresses: tuple[str, ...] = ("127.0.0.1", "::1")
    #: How long before a grant ends the user is warned in their terminal.
    warn_before: timedelta = timedelta(seconds=60)
    #: Tell the user in their terminal when a reviewer starts watching their session.
    notify_watched: bool = True
    #: A session with no byte either way for this long is closed; 0 turns it off.
    idle_timeout: timedelta = timedelta(0)
    #: The broker's connection to a host is closed after this long without a session on it.
    onward_idle: timedelta = timedelta(seconds=15)
    #: "text", or "json" (one JSON object a line, for log shippers).
    log_format: str = "text"
    #: Environment variables passed on to hosts besides the locale's (recorded with their values).
    env_allow: frozenset[str] = frozenset()
    #: Recordings indexed at once, each in a process of its own (broker/isolate.py).
    index_workers: int = 1
    #: CPU seconds one recording's index may take; past it, what was indexed is kept and the session marked.
    index_cpu_budget: int = 120
    #: Bytes of memory one index process may use.
    index_memory: int = 1024 * 1024 * 1024
    #: Session channels one user may have live or starting at once, over all their connections and grants
    #: (so that one user's flood of channels cannot crowd out everyone else's work).
    sessions_per_user: int = 32

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'jit-ssh.db'}"

    @classmethod
    def locate(cls, option: Path | None) -> Path:
        if option is not None:
            return option
        env = os.environ.get(CONFIG_ENV)
        return Path(env) if env else DEFAULT_CONFIG

    @classmethod
    def load(cls, path: Path) -> BrokerConfig:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(f"broker config {path} does not exist (use --config or {CONFIG_ENV})") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read broker config {path}: {exc}") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        return cls.from_mapping(data, path=path)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, path: Path | None) -> BrokerConfig:
        where = str(path) if path else "broker config"
        base = path.parent.resolve() if path else Path.cwd()
        unknown = set(data) - {"broker", "webhook"}
        if unknown:
            raise ConfigError(f"{where}: unknown table or key {sorted(unknown)[0]!r} (expected [broker], [[webhook]])")
        table = data.get("broker", {})
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [broker] must be a table")
        bad = set(table) - _BROKER_KEYS
        if bad:
            raise ConfigError(f"{where}: [broker] has unknown key {sorted(bad)[0]!r}")

        def text(key: str, default: str) -> str:
            value = table.get(key, default)
            if not isinstance(value, str):
                raise ConfigError(f"{where}: [broker] {key}: expected a string, found {type(value).__name__}")
            return value

        def path_of(key: str, default: Path) -> Path:
            value = Path(text(key, str(default))).expanduser()
            return value if value.is_absolute() else base / value

        host, port = _split_listen(text("listen", "127.0.0.1:2222"), where)
        data_dir = path_of("data_dir", Path("/var/lib/jit-ssh"))
        names = table.get("host_names", [host, "localhost", "127.0.0.1"])
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"{where}: [broker] host_names: expected a list of names")
        try:
            pending = parse_duration(text("pending_timeout", "1h"))
        except InputError as exc:
            raise ConfigError(f"{where}: [broker] pending_timeout: {exc}") from exc
        hooks_raw = data.get("webhook", [])
        if not isinstance(hooks_raw, list):
            raise ConfigError(f"{where}: webhook must be an array of tables ([[webhook]])")
        hooks = tuple(Webhook.from_config(h, where=f"{where} [[webhook]] #{i + 1}") for i, h in enumerate(hooks_raw))
        capture = table.get("capture_limit", 1024 * 1024)
        if type(capture) is not int or not 0 <= capture <= 1 << 34:
            raise ConfigError(f"{where}: [broker] capture_limit: expected a byte count from 0 to 16 GiB")
        sources = table.get("source_addresses", ["127.0.0.1", "::1"])
        if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
            raise ConfigError(f"{where}: [broker] source_addresses: expected a list of addresses or networks")
        for source in sources:
            try:
                ipaddress.ip_network(source, strict=True)
            except ValueError as exc:
                raise ConfigError(f"{where}: [broker] source_addresses: {source!r} is not an address") from exc
        try:
            warn = parse_duration(text("warn_before", "60s"))
        except InputError as exc:
            raise ConfigError(f"{where}: [broker] warn_before: {exc}") from exc
        idle_text = text("idle_timeout", "0")
        try:
            idle = timedelta(0) if idle_text.strip() in ("0", "") else parse_duration(idle_text)
        except InputError as exc:
            raise ConfigError(f"{where}: [broker] idle_timeout: {exc}") from exc
        try:
            onward_idle = parse_duration(text("onward_idle", "15s"))
        except InputError as exc:
            raise ConfigError(f"{where}: [broker] onward_idle: {exc}") from exc
        log_format = text("log_format", "text")
        if log_format not in ("text", "json"):
            raise ConfigError(f"{where}: [broker] log_format: expected text or json, found {log_format!r}")
        notify = table.get("notify_watched", True)
        if not isinstance(notify, bool):
            raise ConfigError(f"{where}: [broker] notify_watched: expected true or false")
        env_allow = table.get("env_allow", [])
        if not isinstance(env_allow, list) or not all(
            isinstance(n, str) and _ENV_NAME.fullmatch(n) and n not in _NEVER_ENV for n in env_allow
        ):
            raise ConfigError(
                f'{where}: [broker] env_allow: expected a list of variable names such as "GIT_PROTOCOL" '
                f"(not {', '.join(sorted(_NEVER_ENV))})"
            )
        workers = table.get("index_workers", 1)
        if type(workers) is not int or not 1 <= workers <= 16:
            raise ConfigError(f"{where}: [broker] index_workers: expected a number from 1 to 16")
        try:
            cpu_budget = parse_duration(text("index_cpu_budget", "2m"))
        except InputError as exc:
            raise ConfigError(f"{where}: [broker] index_cpu_budget: {exc}") from exc
        if not 1 <= cpu_budget.total_seconds() <= 86400:
            raise ConfigError(f"{where}: [broker] index_cpu_budget: expected from 1s to 24h")
        memory = table.get("index_memory", 1024)
        if type(memory) is not int or not 256 <= memory <= 1024 * 1024:
            raise ConfigError(f"{where}: [broker] index_memory: expected MiB, from 256 to 1048576")
        per_user = table.get("sessions_per_user", 32)
        if type(per_user) is not int or not 1 <= per_user <= 100_000:
            raise ConfigError(f"{where}: [broker] sessions_per_user: expected a number from 1 to 100000")
        level = text("log_level", "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"{where}: [broker] log_level: expected DEBUG, INFO, WARNING or ERROR, found {level!r}")
        return cls(
            path=path,
            listen_host=host,
            listen_port=port,
            host_names=tuple(dict.fromkeys(n for n in names if n not in ("0.0.0.0", "::"))),  # noqa: S104
            data_dir=data_dir,
            recordings_dir=path_of("recordings_dir", data_dir / "recordings"),
            database_url=text("database_url", ""),
            ca_dir=path_of("ca_dir", Path("/etc/jit-ssh/ca")),
            policy=path_of("policy", Path("/etc/jit-ssh/policy.toml")),
            pending_timeout=pending,
            host_key=path_of("host_key", data_dir / "ssh_host_ed25519_key"),
            log_level=level,
            webhooks=hooks,
            capture_limit=capture,
            source_addresses=tuple(sources),
            warn_before=warn,
            notify_watched=notify,
            idle_timeout=idle,
            onward_idle=onward_idle,
            log_format=log_format,
            env_allow=frozenset(env_allow),
            index_workers=workers,
            index_cpu_budget=int(cpu_budget.total_seconds()),
            index_memory=memory * 1024 * 1024,
            sessions_per_user=per_user,
        )
