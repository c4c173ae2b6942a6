"""Client settings: ``~/.config/jit-ssh/config.toml`` (``JIT_SSH_CONFIG`` overrides).

Flat keys, set with ``jit-ssh config set KEY VALUE``: bastion, port, user, identity, known_hosts,
login. Written by hand as TOML (flat strings and integers need no TOML writer dependency).
"""

from __future__ import annotations

import getpass
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from jit_ssh.ca import ConfigError, InputError
from jit_ssh.ca.validate import check_login, check_user_name

from .files import write_atomic

__all__ = ["CONFIG_ENV", "KEYS", "Settings", "config_path", "set_value"]

CONFIG_ENV = "JIT_SSH_CONFIG"
#: key -> (type, help)
KEYS: dict[str, tuple[type, str]] = {
    "bastion": (str, "bastion host name or address"),
    "port": (int, "broker port on the bastion (2222)"),
    "user": (str, "your jit-ssh user name (default: your local user name)"),
    "identity": (str, "private key enrolled with the broker (default: the ssh agent's keys)"),
    "known_hosts": (str, "file with the @cert-authority line of the bastion's host CA"),
    "login": (str, "default login on hosts (default: your local user name)"),
}


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "jit-ssh"


def config_path() -> Path:
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else _config_home() / "config.toml"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jit-ssh"


@dataclass(frozen=True, slots=True)
class Settings:
    bastion: str | None
    port: int
    user: str
    identity: Path | None
    known_hosts: Path
    login: str
    path: Path

    @classmethod
    def load(cls) -> Settings:
        path = config_path()
        data = _read(path)
        local = getpass.getuser()
        identity = data.get("identity")
        known = data.get("known_hosts")
        return cls(
            bastion=str(data["bastion"]) if "bastion" in data else None,
            port=int(str(data.get("port", 2222))),
            user=str(data.get("user", local)),
            identity=Path(str(identity)).expanduser() if identity else None,
            known_hosts=Path(str(known)).expanduser() if known else path.parent / "known_hosts",
            login=str(data.get("login", local)),
            path=path,
        )

    def require_bastion(self) -> str:
        if not self.bastion:
            raise ConfigError(f"no bastion configured: run 'jit-ssh config set bastion HOST' ({self.path})")
        return self.bastion


def _read(path: Path) -> dict[str, object]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    unknown = set(data) - set(KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown setting {sorted(unknown)[0]!r}; known: {', '.join(KEYS)}")
    for key, value in data.items():
        if type(value) is not KEYS[key][0]:
            raise ConfigError(f"{path}: {key} must be a {KEYS[key][0].__name__}")
    return data


def set_value(key: str, value: str) -> Path:
    """Validate and store one setting; returns the file written."""
    if key not in KEYS:
        raise InputError(f"unknown setting {key[:40]!r}; known: {', '.join(KEYS)}")
    typed: str | int = value
    if KEYS[key][0] is int:
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise InputError(f"{key} must be a port number from 1 to 65535, found {value[:40]!r}")
        typed = int(value)
    elif key == "user":
        check_user_name(value)
    elif key == "login":
        check_login(value)
    elif not value or not value.isprintable():
        raise InputError(f"{key} must be printable text")
    path = config_path()
    data = _read(path)
    data[key] = typed
    body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in sorted(data.items()))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, body.encode(), mode=0o600)
    return path
