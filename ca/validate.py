"""Validation of the small strings that cross trust boundaries: host names, logins, principals,
durations, key ids. Each check returns the value or raises :class:`InputError` saying what it expected."""

from __future__ import annotations

import re
from datetime import timedelta

from .errors import InputError

__all__ = [
    "ADMIN",
    "MAX_PRINCIPALS",
    "RESERVED_USERS",
    "check_hostname",
    "check_key_id",
    "check_login",
    "check_principal",
    "check_user_name",
    "format_duration",
    "parse_duration",
    "target_principal",
]

MAX_PRINCIPALS = 256
ADMIN = "admin"
RESERVED_USERS = frozenset({ADMIN, "jit-ssh", "policy"})
_USER = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*")
# POSIX portable user names as useradd accepts them, without the trailing '$' of machine accounts.
_LOGIN = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
# What OpenSSH itself treats as one principal token: no separators (',' or white space) and no
# control characters; we keep to a conservative ASCII set so a principal cannot smuggle syntax into
# an AuthorizedPrincipalsFile or a log line.
_PRINCIPAL = re.compile(r"[A-Za-z0-9._@:+=-]{1,255}")
# ASCII digits only: \d and str.isdigit() also match other scripts' digits and superscripts.
# At most six digits a part: more would overflow timedelta (OverflowError, not a clear InputError).
_DURATION = re.compile(r"(?:(\d{1,6})d)?(?:(\d{1,6})h)?(?:(\d{1,6})m)?(?:(\d{1,6})s)?", re.ASCII)


def _shown(value: str) -> str:
    return repr(value[:64] + ("..." if len(value) > 64 else ""))


def check_hostname(value: str) -> str:
    """A DNS-style host name as used in the inventory: letters, digits, '-' and '.', at most 253."""
    if len(value) > 253 or not _HOSTNAME.fullmatch(value):
        raise InputError(f"expected a host name (letters, digits, '-', '.'), found {_shown(value)}")
    return value


def check_user_name(name: str) -> str:
    # No '@': the broker reads a user name with '@' as LOGIN@HOST, a session target.
    if not _USER.fullmatch(name):
        raise InputError(f"expected a user name ([a-z][a-z0-9_.-]*, at most 32), found {name[:40]!r}")
    # The audit log's own actors: an enrolled "admin" would pass as the bastion's operator (who may
    # revoke any grant), and "policy" or "jit-ssh" would blur who decided what.
    if name in RESERVED_USERS:
        raise InputError(f"user name {name!r} is reserved for jit-ssh's own audit entries; choose another")
    return name


def check_login(value: str) -> str:
    """A Unix login name: lower case letter or '_' first, then [a-z0-9_.-], at most 32 characters."""
    if not _LOGIN.fullmatch(value):
        raise InputError(f"expected a login name such as 'ubuntu' ([a-z_][a-z0-9_.-]*), found {_shown(value)}")
    return value


def check_principal(value: str) -> str:
    if not _PRINCIPAL.fullmatch(value):
        raise InputError(
            f"expected a certificate principal (1-255 of A-Z a-z 0-9 . _ @ : + = -), found {_shown(value)}"
        )
    return value


def target_principal(login: str, host: str) -> str:
    """The principal naming one login on one host, ``LOGIN@HOST`` (DESIGN.md, "Hosts")."""
    return f"{check_login(login)}@{check_hostname(host)}"


def check_key_id(value: str) -> str:
    if not 0 < len(value) <= 256 or not value.isascii() or not value.isprintable():
        raise InputError(f"expected a key id of 1-256 printable ASCII characters, found {_shown(value)}")
    return value


def parse_duration(text: str) -> timedelta:
    """Parse ``90s``, ``30m``, ``4h``, ``1h30m``, ``2d``; a bare number means minutes."""
    value = text.strip().lower()
    if value.isascii() and value.isdigit() and len(value) <= 6:
        result = timedelta(minutes=int(value))
    else:
        match = _DURATION.fullmatch(value)
        if not value or match is None or len(value) > 24:
            raise InputError(f"expected a duration such as 30m, 4h or 1h30m, found {_shown(text)}")
        days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
        result = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if result <= timedelta(0):
        raise InputError(f"expected a positive duration, found {_shown(text)}")
    if result > timedelta(days=366):
        raise InputError(f"duration {_shown(text)} is longer than a year")
    return result


def format_duration(delta: timedelta) -> str:
    total = int(delta.total_seconds())
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    out = "".join(f"{n}{u}" for n, u in ((days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")) if n)
    return out or "0s"
