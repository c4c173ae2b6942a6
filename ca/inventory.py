"""Users and hosts: who may authenticate to the broker, and which hosts exist (admin operations).

Disabling a user is not here but in :meth:`jit_ssh.ca.workflow.Authority.disable_user`: it revokes the
user's grants in the same transaction, and request states belong to the workflow.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlmodel import col, select

from .audit import append_event
from .errors import AccessDenied, InputError
from .keys import PublicKey
from .store import Host, Store, User, UserKey, dumps
from .validate import ADMIN, check_hostname, check_user_name

__all__ = [
    "HostEntry",
    "UserEntry",
    "add_host",
    "add_user",
    "check_user_name",
    "list_hosts",
    "list_users",
    "user_for_key",
]

_GROUP = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_LABEL = re.compile(r"[A-Za-z0-9_.-]{1,63}")


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` into a dict, each part checked."""
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not _LABEL.fullmatch(key) or not _LABEL.fullmatch(value):
            raise InputError(f"expected labels as k=v[,k=v...] of [A-Za-z0-9_.-], found {part[:40]!r}")
        labels[key] = value
    return labels


@dataclass(frozen=True, slots=True)
class UserEntry:
    name: str
    groups: tuple[str, ...]
    disabled: bool
    keys: tuple[str, ...]  # fingerprints


@dataclass(frozen=True, slots=True)
class HostEntry:
    name: str
    address: str
    port: int
    labels: Mapping[str, str]
    host_key: str | None


def add_user(
    store: Store, name: str, *, keys: Iterable[PublicKey], groups: Iterable[str], actor: str = ADMIN
) -> UserEntry:
    """Enroll a user with public keys and groups; adding to an existing user adds keys and groups."""
    check_user_name(name)
    group_list = sorted(set(groups))
    for group in group_list:
        if not _GROUP.fullmatch(group):
            raise InputError(f"expected a group name ([a-z][a-z0-9_-]*), found {group[:40]!r}")
    key_list = list(keys)
    now = time.time()
    with store.transaction() as session:
        user = session.get(User, name)
        if user is None:
            user = User(name=name, groups_json=dumps(group_list), created_at=now)
        else:
            user.groups_json = dumps(sorted(set(user.groups) | set(group_list)))
        session.add(user)
        for key in key_list:
            existing = session.get(UserKey, key.fingerprint())
            if existing is not None and existing.user != name:
                raise InputError(f"key {key.fingerprint()} is already enrolled for user {existing.user!r}")
            if existing is None:
                session.add(
                    UserKey(fingerprint=key.fingerprint(), user=name, public_key=key.to_openssh(""), added_at=now)
                )
        append_event(
            store, session, actor=actor, action="user.added", subject=f"user:{name}",
            details={"groups": group_list, "keys": [k.fingerprint() for k in key_list]}, moment=now,
        )  # fmt: skip
        session.flush()
        fingerprints = session.exec(select(UserKey.fingerprint).where(UserKey.user == name)).all()
        return UserEntry(name, tuple(user.groups), user.disabled, tuple(fingerprints))


def list_users(store: Store) -> list[UserEntry]:
    with store.transaction() as session:
        users = session.exec(select(User).order_by(col(User.name))).all()
        keys: dict[str, list[str]] = {}
        for key in session.exec(select(UserKey)):
            keys.setdefault(key.user, []).append(key.fingerprint)
        return [UserEntry(u.name, tuple(u.groups), u.disabled, tuple(keys.get(u.name, []))) for u in users]


def user_for_key(store: Store, key: PublicKey) -> str:
    """The enabled user whose enrolled key this is; AccessDenied otherwise."""
    with store.transaction() as session:
        row = session.get(UserKey, key.fingerprint())
        if row is None or row.public_key.split()[:2] != key.to_openssh("").split()[:2]:
            raise AccessDenied(f"key {key.fingerprint()} is not enrolled")
        user = session.get(User, row.user)
        if user is None or user.disabled:
            raise AccessDenied(f"user {row.user!r} is disabled")
        return user.name


def add_host(
    store: Store,
    name: str,
    *,
    address: str,
    port: int = 22,
    labels: Mapping[str, str] | None = None,
    host_key: PublicKey | None = None,
    actor: str = ADMIN,
) -> HostEntry:
    """Register (or update) a host in the inventory."""
    check_hostname(name)
    if not address or len(address) > 253 or not address.isprintable() or " " in address:
        raise InputError(f"expected a host address, found {address[:40]!r}")
    if not 0 < port < 65536:
        raise InputError(f"expected a port from 1 to 65535, found {port}")
    label_map = dict(labels or {})
    parse_labels(",".join(f"{k}={v}" for k, v in label_map.items()))  # validates
    pinned = host_key.to_openssh("") if host_key else None
    with store.transaction() as session:
        row = session.get(Host, name) or Host(name=name, address=address, created_at=time.time())
        row.address, row.port, row.labels_json, row.host_key = address, port, dumps(label_map), pinned
        session.add(row)
        append_event(
            store, session, actor=actor, action="host.added", subject=f"host:{name}",
            details={"address": address, "port": port, "labels": label_map, "pinned_key": bool(pinned)},
        )  # fmt: skip
    return HostEntry(name, address, port, label_map, pinned)


def list_hosts(store: Store) -> list[HostEntry]:
    with store.transaction() as session:
        return [
            HostEntry(h.name, h.address, h.port, h.labels, h.host_key)
            for h in session.exec(select(Host).order_by(col(Host.name)))
        ]
