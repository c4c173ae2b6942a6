"""The access policy: who may request which hosts, as which login, for how long, and with whose approval.

A TOML file (``configs/policy.toml``): ``[groups]`` of members, ``[[rule]]`` entries read in order, and the
optional ``[review]`` and ``[limits]``. :meth:`Policy.loads` validates it all and names the line of any problem;
:meth:`Policy.evaluate` is pure and returns a :class:`Decision` with its reasons, for ``jit-ssh policy
explain``. Whatever the policy does not recognise denies.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from types import MappingProxyType
from typing import NoReturn, TypeVar

from .certs import ALL_USER_EXTENSIONS, DEFAULT_USER_EXTENSIONS, MAX_USER_VALIDITY
from .errors import AccessDenied, ConfigError, InputError
from .validate import check_login, format_duration, parse_duration

__all__ = [
    "ANY_USER",
    "DEFAULT_PENDING_PER_USER",
    "MAX_APPROVALS",
    "MAX_PENDING_PER_USER",
    "AccessQuery",
    "Decision",
    "HostInfo",
    "Policy",
    "Rule",
]

ANY_USER = "*"  # in requesters: any enrolled user
MAX_APPROVALS = 10
#: [limits] pending_per_user: requests one user may have waiting for approval at once.
DEFAULT_PENDING_PER_USER = 10
MAX_PENDING_PER_USER = 1000
_PENDING_CAP = f"a number from 1 to {MAX_PENDING_PER_USER}"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,63}")  # users and groups
_RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HOST_GLOB = re.compile(r"[A-Za-z0-9.*?!\[\]-]{1,253}")
_T = TypeVar("_T")
_APPROVALS = f"a number of approvals from 1 to {MAX_APPROVALS} (or auto_approve or break_glass = true)"
_EXTENSIONS = "extensions among " + ", ".join(sorted(ALL_USER_EXTENSIONS))
_GROUPS = "group names such as 'sre'"
_TOML_AT = re.compile(r"\s*\((?:at line (\d+), column \d+|at end of document)\)$")


@dataclass(frozen=True, slots=True)
class HostInfo:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AccessQuery:
    """One request as the policy sees it. ``extensions`` are those asked for beyond ``permit-pty``."""

    user: str
    groups: frozenset[str]
    hosts: tuple[HostInfo, ...]
    login: str
    duration: timedelta
    extensions: frozenset[str] = frozenset()
    break_glass: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer. When ``allowed`` is false only ``reasons`` and ``rules`` mean anything."""

    allowed: bool
    reasons: tuple[str, ...]
    rules: tuple[str, ...]
    max_duration: timedelta
    approvals_required: int
    approver_groups: frozenset[str]
    extensions: frozenset[str]
    auto_approve: bool
    break_glass: bool

    def __post_init__(self) -> None:
        # A grant that contradicts itself cannot exist, whoever builds it.
        if self.allowed and (
            (self.approvals_required == 0) != (self.auto_approve or self.break_glass)
            or (self.approvals_required > 0 and not self.approver_groups)
            or not self.extensions <= ALL_USER_EXTENSIONS
            or self.max_duration <= timedelta(0)
        ):
            raise ValueError(f"inconsistent allowed decision: {self!r}")


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[rule]]``; the constructor refuses combinations of fields that make no sense."""

    name: str
    hosts: tuple[str, ...]
    labels: Mapping[str, str]
    requesters: frozenset[str]
    logins: frozenset[str]
    max_duration: timedelta
    approvals: int
    approvers: frozenset[str]
    extensions: frozenset[str] = DEFAULT_USER_EXTENSIONS
    auto_approve: bool = False
    break_glass: bool = False
    line: int = 0

    def __post_init__(self) -> None:
        at_once = "auto_approve" if self.auto_approve else "break_glass" if self.break_glass else ""
        longest = format_duration(MAX_USER_VALIDITY)
        checks = (
            (not (self.hosts or self.labels), "hosts", "expected hosts = [...] and/or labels = {...}"),
            (self.auto_approve and self.break_glass, "break_glass", "expected it or auto_approve, not both"),
            (not (self.requesters and self.logins), "logins", "expected requesters and logins"),
            (self.max_duration > MAX_USER_VALIDITY, "max_duration", f"expected at most {longest}"),
            (not self.extensions <= ALL_USER_EXTENSIONS, "extensions", f"expected {_EXTENSIONS}"),
            (bool(at_once and self.approvals), "approvals", f"expected none, as {at_once} grants at once"),
            (bool(at_once and self.approvers), "approvers", f"expected none, as {at_once} grants at once"),
            (not at_once and not 1 <= self.approvals <= MAX_APPROVALS, "approvals", f"expected {_APPROVALS}"),
            (not at_once and not self.approvers, "approvers", "expected the groups that may approve"),
        )
        for broken, key, expected in checks:
            if broken:
                raise _FieldError(key, f"{expected}, found {_found(getattr(self, key))}")

    def selects(self, host: HostInfo) -> bool:
        """Whether the host matches: one of ``hosts`` (when given) and every label (when given)."""
        if self.hosts and not any(fnmatchcase(host.name, glob) for glob in self.hosts):
            return False
        return all(host.labels.get(key) == value for key, value in self.labels.items())

    def admits(self, groups: frozenset[str]) -> bool:
        return ANY_USER in self.requesters or not self.requesters.isdisjoint(groups)

    def summary(self) -> str:
        how = f"{self.approvals} approval(s) from {_listed(self.approvers, ' or ')}"
        how = "auto-approved" if self.auto_approve else how
        how = "break-glass: granted at once, flagged for review" if self.break_glass else how
        return f"rule {self.name!r} (up to {format_duration(self.max_duration)}, {how})"


_RULE_KEYS = frozenset(f.name for f in fields(Rule)) - {"line"}


class _FieldError(ValueError):
    def __str__(self) -> str:  # _FieldError(key, message): a problem with one key of a rule
        return f"{self.args[0]}: {self.args[1]}"


def _listed(items: Iterable[str], sep: str = ", ") -> str:
    return sep.join(sorted(items)) or "none"


def _found(value: object) -> str:
    if value is None:  # TOML has no null: None is a missing key
        return "nothing"
    if isinstance(value, timedelta):
        return format_duration(value)
    text = repr(sorted(value) if isinstance(value, frozenset | tuple) else value)
    return text if len(text) <= 64 else text[:61] + "..."


@dataclass(frozen=True, slots=True)
class Policy:
    """A validated policy; build it with :meth:`load` or :meth:`loads`."""

    rules: tuple[Rule, ...]
    members: Mapping[str, frozenset[str]] = field(default_factory=dict)  # [groups]: group -> users
    reviewer_groups: frozenset[str] = frozenset()  # [review]: who may list and replay sessions
    source: str = "policy.toml"
    #: [limits]: so that one user's flood of requests cannot bury everyone else's (create_request refuses more).
    pending_per_user: int = DEFAULT_PENDING_PER_USER

    def __post_init__(self) -> None:
        if not self.rules or len({rule.name for rule in self.rules}) != len(self.rules):
            raise ConfigError(
                f"{self.source}: expected rules with unique names, found {_found([r.name for r in self.rules])}"
            )
        if not _is_pending_cap(self.pending_per_user):
            found = _found(self.pending_per_user)
            raise ConfigError(f"{self.source}: limits.pending_per_user: expected {_PENDING_CAP}, found {found}")

    @classmethod
    def load(cls, path: Path) -> Policy:
        """Read and validate the policy file; :class:`ConfigError` names the file and line of a problem."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeError) as exc:
            raise ConfigError(f"{path}: expected a readable UTF-8 policy file, found an error: {exc}") from exc
        return cls.loads(text, source=str(path))

    @classmethod
    def loads(cls, text: str, *, source: str = "policy.toml") -> Policy:
        """Validate policy text; ``source`` names it in errors."""
        return _Parser(text, source).policy()

    def groups_of(self, user: str, store_groups: Iterable[str]) -> frozenset[str]:
        """The store's groups of ``user`` and those whose ``[groups]`` entry lists the user."""
        return frozenset(store_groups) | {g for g, members in self.members.items() if user in members}

    def evaluate(self, query: AccessQuery) -> Decision:
        """Decide a request; every host must be allowed, and several hosts combine strictly."""
        groups = self.groups_of(query.user, query.groups)
        extra = query.extensions - DEFAULT_USER_EXTENSIONS
        # Invalid logins and unknown extensions need no check of their own: no rule allows them.
        denied = [] if query.hosts else ["expected one or more hosts, found none"]
        if query.duration <= timedelta(0):
            denied.append(f"expected a positive duration, found {query.duration}")
        allowed, matched = [], []
        for host in query.hosts:
            rule = self._rule_for(host, groups, query)
            if isinstance(rule, str):
                denied.append(rule)
                continue
            matched.append(rule)
            where = f"{host.name}: rule {rule.name!r}"
            if query.login not in rule.logins:
                denied.append(f"{where} allows logins {_listed(rule.logins)}, not {query.login!r}")
            if query.duration > rule.max_duration:
                want, most = format_duration(query.duration), format_duration(rule.max_duration)
                denied.append(f"{where} allows at most {most}, asked for {want}")
            if not extra <= rule.extensions:
                denied.append(f"{where} does not allow {_listed(extra - rule.extensions)}")
            allowed.append(f"{host.name}: {rule.summary()} lets {query.user} in as {query.login}")
        names = tuple(dict.fromkeys(rule.name for rule in matched))
        approving = [rule for rule in matched if rule.approvals]
        approvers = frozenset.intersection(*(r.approvers for r in approving)) if approving else frozenset()
        if approving and not approvers and not denied:
            denied.append(f"rules {', '.join(names)} share no approver group; request the hosts separately")
        if denied:
            return Decision(False, tuple(denied), names, timedelta(0), 0, frozenset(), frozenset(), False, False)
        longest, approvals = min(r.max_duration for r in matched), max(r.approvals for r in matched)
        if len(matched) > 1:
            combined = f"{approvals} approval(s) from {_listed(approvers, ' or ')}" if approvals else "none"
            allowed.append(f"all hosts: up to {format_duration(longest)}, approvals: {combined}")
        return Decision(
            allowed=True,
            reasons=tuple(allowed),
            rules=names,
            max_duration=longest,
            approvals_required=approvals,
            approver_groups=approvers,
            extensions=(extra | DEFAULT_USER_EXTENSIONS) & frozenset.intersection(*(r.extensions for r in matched)),
            auto_approve=all(rule.auto_approve for rule in matched),
            break_glass=query.break_glass,
        )

    def _rule_for(self, host: HostInfo, groups: frozenset[str], query: AccessQuery) -> Rule | str:
        """The rule that decides ``host``, or why there is none."""
        selecting = [rule for rule in self.rules if rule.selects(host)]
        admitting = [rule for rule in selecting if rule.admits(groups)]
        for rule in admitting:
            if rule.break_glass == query.break_glass:
                return rule
        names, who = ", ".join(rule.name for rule in (admitting or selecting)), query.user
        if not selecting:
            return f"{host.name}: no rule matches this host"
        if not admitting:
            return f"{host.name}: rules {names} match but admit none of {who}'s groups ({_listed(groups)})"
        if query.break_glass:
            return f"{host.name}: no break-glass rule lets {who} in (only rules {names}, without break-glass)"
        return f"{host.name}: only break-glass rules ({names}) let {who} in; ask with break-glass"

    def check_approver(
        self, *, approver: str, approver_groups: frozenset[str], requester: str, decision: Decision
    ) -> None:
        """Raise :class:`AccessDenied` unless ``approver`` may approve a request so decided."""
        if not decision.allowed:
            raise AccessDenied("the policy denies this request, so it cannot be approved")
        if approver == requester:
            raise AccessDenied(f"{approver} cannot approve their own request")
        if decision.approvals_required == 0:
            raise AccessDenied("this request is granted without approval; there is nothing to approve")
        groups = self.groups_of(approver, approver_groups)
        if groups.isdisjoint(decision.approver_groups):
            raise AccessDenied(
                f"{approver} may not approve this request: expected a member of "
                f"{_listed(decision.approver_groups, ' or ')}, found groups {_listed(groups)}"
            )


def _names(
    raw: Mapping[str, object], key: str, valid: Callable[[str], object], what: str, default: object = None
) -> frozenset[str]:
    """A list of strings: required and non-empty unless there is a ``default``."""
    value = raw.get(key, default)
    if not isinstance(value, list) or not (value or default is not None) or not all(isinstance(v, str) for v in value):
        kind = "list" if default is not None else "non-empty list"
        raise _FieldError(key, f"expected a {kind} of {what}, found {_found(value)}")
    for item in value:
        try:
            ok = valid(item)
        except InputError:
            ok = False
        if not ok:
            raise _FieldError(key, f"expected {what}, found {_found(item)}")
    return frozenset(value)


def _is_pending_cap(value: object) -> bool:
    return type(value) is int and 1 <= value <= MAX_PENDING_PER_USER  # not bool: pending_per_user = true is a typo


def _typed(raw: Mapping[str, object], key: str, kind: type[_T], default: _T | None, what: str) -> _T:
    value = raw.get(key, default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):  # approvals = true: a typo
        raise _FieldError(key, f"expected {what}, found {_found(value)}")
    return value


def _rule(raw: object, line: int) -> Rule:
    if not isinstance(raw, dict):
        raise _FieldError("", f"expected a [[rule]] table, found {_found(raw)}")
    for key in raw:
        if key not in _RULE_KEYS:
            raise _FieldError(key, f"unknown key; expected one of {_listed(_RULE_KEYS)}")
    name = _typed(raw, "name", str, None, "a rule name such as 'prod'")
    if not _RULE_NAME.fullmatch(name):
        raise _FieldError("name", f"expected a rule name of [A-Za-z0-9_.-], found {_found(name)}")
    labels = _typed(raw, "labels", dict, {}, 'a table such as { env = "prod" }')
    if ("labels" in raw and not labels) or not all(isinstance(v, str) for v in labels.values()):
        raise _FieldError("labels", f'expected a table such as {{ env = "prod" }}, found {_found(labels)}')
    try:
        max_duration = parse_duration(_typed(raw, "max_duration", str, None, "a duration such as 4h"))
    except InputError as exc:
        raise _FieldError("max_duration", exc.message) from exc
    auto_approve = _typed(raw, "auto_approve", bool, False, "true or false")
    break_glass = _typed(raw, "break_glass", bool, False, "true or false")
    return Rule(
        name=name,
        hosts=tuple(sorted(_names(raw, "hosts", _HOST_GLOB.fullmatch, "host globs such as 'prod-*'", []))),
        labels=MappingProxyType(dict(labels)),
        requesters=_names(raw, "requesters", lambda g: g == ANY_USER or _NAME.fullmatch(g), f"{_GROUPS} or '*'"),
        logins=_names(raw, "logins", check_login, "logins such as 'ubuntu' ([a-z_][a-z0-9_.-]*)"),
        max_duration=max_duration,
        approvals=_typed(raw, "approvals", int, 0 if auto_approve or break_glass else None, _APPROVALS),
        approvers=_names(raw, "approvers", _NAME.fullmatch, _GROUPS, []),
        extensions=_names(raw, "extensions", ALL_USER_EXTENSIONS.__contains__, _EXTENSIONS, ["permit-pty"]),
        auto_approve=auto_approve,
        break_glass=break_glass,
        line=line,
    )


def _quoted(key: str) -> str:
    return rf"""(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')"""


class _Parser:
    """Turns TOML text into a :class:`Policy`, naming the file and the line in every error."""

    def __init__(self, text: str, source: str) -> None:
        self.text, self.source, self.lines = text, source, text.splitlines()
        self.rule_headers = [n for n, ln in enumerate(self.lines, 1) if re.match(r"\s*\[\[\s*rule\s*\]\]", ln)]

    def fail(self, line: int, message: str, where: str = "") -> NoReturn:
        raise ConfigError(f"{self.source} line {line}{where}: {message}")

    def key_line(self, key: str, start: int = 0, table: str = "") -> int:
        """The line of ``key`` in ``table`` whose header is line ``start`` (0, "": top level); ``start`` if none."""
        key, prefix, in_tables = _quoted(key), rf"{table}\." if table else "", False
        for number, line in enumerate(self.lines[start:], start + 1):
            if re.match(rf"\s*\[\[?\s*{prefix}{key}\s*[\].]", line):
                return number
            if not in_tables and re.match(rf"\s*{key}\s*[=.]", line):
                return number
            in_tables = in_tables or bool(re.match(rf"\s*\[(?!\s*{prefix})" if table else r"\s*\[", line))
            if in_tables and table:
                break
        return max(start, 1)

    def policy(self) -> Policy:
        try:
            data = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            at = _TOML_AT.search(str(exc))
            line = int(at.group(1)) if at and at.group(1) else max(len(self.lines), 1)
            self.fail(line, f"expected valid TOML, found an error: {_TOML_AT.sub('', str(exc))}")
        for key in data:
            if key not in ("groups", "limits", "review", "rule"):
                self.fail(self.key_line(key), f"{key}: unknown key; expected groups, limits, review or rule")
        members = self.names_table("groups", data)
        reviewers = self.names_table("review", data).get("groups", frozenset())
        pending_cap = self.limits(data)
        raw_rules = data.get("rule")
        if not isinstance(raw_rules, list) or not raw_rules:
            self.fail(self.key_line("rule"), f"expected at least one [[rule]] table, found {_found(raw_rules)}")
        rules: list[Rule] = []
        for index, raw in enumerate(raw_rules):
            header = self.rule_headers[index] if index < len(self.rule_headers) else self.key_line("rule")
            name = raw.get("name") if isinstance(raw, dict) else None
            where = f" (rule {_found(name)})" if isinstance(name, str) and name else f" (rule #{index + 1})"
            try:
                rules.append(_rule(raw, header))
                if any(rule.name == name for rule in rules[:-1]):
                    raise _FieldError("name", f"expected a unique rule name, found {name!r} again")
            except _FieldError as exc:
                key, message = exc.args
                line = self.key_line(key, header, "rule") if key else header
                self.fail(line, f"{key}: {message}" if key else message, where)
        return Policy(tuple(rules), MappingProxyType(members), reviewers, self.source, pending_cap)

    def limits(self, data: Mapping[str, object]) -> int:
        """``[limits]``: only ``pending_per_user = N`` so far."""
        value, start = data.get("limits", {}), self.key_line("limits")
        if not isinstance(value, dict):
            self.fail(start, f"limits: expected a table, found {_found(value)}")
        for key in value:
            if key != "pending_per_user":
                self.fail(
                    self.key_line(key, start, "limits"),
                    f"limits: expected only pending_per_user = N, found key {_found(key)}",
                )
        cap = value.get("pending_per_user", DEFAULT_PENDING_PER_USER)
        if not _is_pending_cap(cap):
            line = self.key_line("pending_per_user", start, "limits")
            self.fail(line, f"limits.pending_per_user: expected {_PENDING_CAP}, found {_found(cap)}")
        return int(cap)

    def names_table(self, table: str, data: Mapping[str, object]) -> dict[str, frozenset[str]]:
        """``[groups]`` (group = [members]) or ``[review]`` (groups = [...])."""
        value, start = data.get(table, {}), self.key_line(table)
        if not isinstance(value, dict):
            self.fail(start, f"{table}: expected a table, found {_found(value)}")
        out = {}
        for key in value:
            line = self.key_line(key, start, table)
            if not (_NAME.fullmatch(key) if table == "groups" else key == "groups"):
                want = "a group name such as 'sre'" if table == "groups" else "only groups = [...]"
                self.fail(line, f"{table}: expected {want}, found key {_found(key)}")
            try:
                out[key] = _names(value, key, _NAME.fullmatch, "names such as 'alice' or 'sre'", [])
            except _FieldError as exc:
                self.fail(line, f"{table}.{key}: {exc.args[1]}")
        return out
