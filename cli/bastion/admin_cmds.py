"""Admins' commands, run on the bastion against the broker's own config, store and policy."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from jit_ssh.broker.config import BrokerConfig
from jit_ssh.broker.control import HOST_GROUP
from jit_ssh.ca import CADirectory, CARole, InputError, JitSshError, PublicKey
from jit_ssh.ca.audit import iter_events, verify_chain
from jit_ssh.ca.inventory import (
    HostEntry,
    UserEntry,
    add_host,
    add_user,
    list_hosts,
    list_users,
    parse_labels,
)
from jit_ssh.ca.policy import AccessQuery, HostInfo, Policy
from jit_ssh.ca.store import AccessRequest, Host, Store, User
from jit_ssh.ca.validate import parse_duration
from jit_ssh.ca.workflow import Authority, RequestState
from rich.table import Table
from rich.text import Text
from sqlmodel import func, select

from ..files import write_atomic
from ..output import console, emit_json, plain
from .enroll import build_bundle

__all__ = [
    "audit_app",
    "host_app",
    "local_authority",
    "policy_app",
    "publish_krl",
    "revoke_as_admin",
    "user_app",
]

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="Broker config [env JIT_SSH_BROKER_CONFIG; default /etc/jit-ssh/broker.toml]"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

user_app = typer.Typer(help="Enrolled users (on the bastion).", no_args_is_help=True)
host_app = typer.Typer(help="The host inventory (on the bastion).", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log (on the bastion).", no_args_is_help=True)
policy_app = typer.Typer(help="Check and explain the access policy.", no_args_is_help=True)


def _config(option: Path | None) -> BrokerConfig:
    return BrokerConfig.load(BrokerConfig.locate(option))


def _open_store(config: BrokerConfig) -> Store:
    if not config.database_url:
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Store(config.store_url)


def _store(option: Path | None) -> Store:
    return _open_store(_config(option))


def local_authority(config: BrokerConfig) -> Authority:
    """The bastion's admin acting on the store directly (no CA key loaded): revocations and disabling.

    Brokers poll the store every second and close the sessions this ends; :func:`publish_krl` updates the KRL.
    """
    return Authority(_open_store(config), Policy.load(config.policy), pending_timeout=config.pending_timeout)


def publish_krl(config: BrokerConfig, authority: Authority) -> Path:
    """Rewrite ``DATA_DIR/revoked.krl`` as a broker does after a revocation over the control plane, so that
    a local admin's revocation reaches that file at once rather than at the broker's next start."""
    ca = CADirectory(config.ca_dir)
    krl = authority.krl(access_ca=ca.public_key(CARole.ACCESS), user_ca=ca.public_key(CARole.USER))
    target = config.data_dir / "revoked.krl"
    write_atomic(target, krl.to_bytes(), mode=0o644)
    return target


def revoke_as_admin(config: Path, request_id: int, *, reason: str | None, as_json: bool) -> None:
    """``jit-ssh revoke --config``: the bastion's admin revokes through the store, and rewrites the KRL."""
    # Brokers poll the store every second and close the grant's sessions; the KRL they serve is
    # computed from the store on each fetch, so it changes at once too, and so does DATA_DIR/revoked.krl.
    cfg = BrokerConfig.load(config)
    authority = local_authority(cfg)
    view, serials = authority.revoke(request_id, actor="admin", reason=reason)
    publish_krl(cfg, authority)
    if as_json:
        emit_json({**view.as_dict(), "revoked_serials": serials})
    else:
        console.print(plain(f"Request {view.id} is now {view.state.value} ({len(serials)} certificate(s) revoked)"))


def _read_key(path: Path) -> PublicKey:
    try:
        return PublicKey.parse(path.read_text(encoding="utf-8").strip().splitlines()[0] if path.stat().st_size else "")
    except OSError as exc:
        raise JitSshError(f"cannot read key file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not a text public key file") from exc


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="User name.")],
    key: Annotated[list[Path], typer.Option("--key", help="Public key file; repeatable.")],
    group: Annotated[list[str] | None, typer.Option("--group", "-g", help="Group; repeatable.")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Enroll a user with their SSH public key(s) and groups."""
    entry = add_user(_store(config), name, keys=[_read_key(k) for k in key], groups=group or [])
    if as_json:
        emit_json({"name": entry.name, "groups": list(entry.groups), "keys": list(entry.keys)})
    else:
        console.print(plain(f"User {entry.name}: groups {', '.join(entry.groups) or '-'}; {len(entry.keys)} key(s)"))


@user_app.command("disable")
def user_disable(
    name: Annotated[str, typer.Argument()], config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """Disable a user and end their access.

    Their grants and pending requests are revoked, with their certificates (DATA_DIR/revoked.krl is
    rewritten); brokers close their live sessions within a second and refuse their keys and certificates.
    """
    cfg = _config(config)
    authority = local_authority(cfg)
    revoked = authority.disable_user(name)
    publish_krl(cfg, authority)
    ids = [view.id for view, _ in revoked]
    serials = sorted(serial for _, some in revoked for serial in some)
    if as_json:
        emit_json({"user": name, "disabled": True, "revoked_requests": ids, "revoked_serials": serials})
    elif ids:
        listed = f"request {ids[0]}" if len(ids) == 1 else f"requests {', '.join(map(str, ids))}"
        console.print(plain(f"User {name} disabled; {listed} revoked, {len(serials)} certificate(s) in the KRL"))
    else:
        console.print(plain(f"User {name} disabled; no grant or pending request to revoke"))


@user_app.command("list")
def user_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List enrolled users."""
    users = list_users(_store(config))
    if as_json:
        emit_json(
            [{"name": u.name, "groups": list(u.groups), "disabled": u.disabled, "keys": list(u.keys)} for u in users]
        )
        return
    console.print(_users_table(users))


def _users_table(users: list[UserEntry]) -> Table:
    table = Table("user", "groups", "state", "keys")
    for u in users:
        keys = Text("\n").join(plain(key) for key in u.keys)
        table.add_row(plain(u.name), plain(", ".join(u.groups)), "disabled" if u.disabled else "active", keys)
    return table


def _split_address(address: str) -> tuple[str, int]:
    """``HOST[:PORT]`` (an IPv6 address without a port stays whole) into host and port (default 22)."""
    host, sep, port_text = address.rpartition(":") if address.count(":") == 1 else (address, "", "")
    if sep and not port_text.isdigit():
        raise InputError(f"--address expects HOST[:PORT], found {address[:60]!r}")
    return (host, int(port_text)) if sep else (address, 22)


@host_app.command("add")
def host_add(
    name: Annotated[str, typer.Argument(help="Host name, as engineers will type it.")],
    address: Annotated[str, typer.Option("--address", help="HOST[:PORT] the broker connects to.")],
    labels: Annotated[str, typer.Option("--labels", help="k=v,k2=v2")] = "",
    host_key: Annotated[Path | None, typer.Option("--host-key", help="Pin this host public key file.")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add or update a host in the inventory."""
    host_address, port = _split_address(address)
    entry = add_host(
        _store(config), name, address=host_address, port=port, labels=parse_labels(labels),
        host_key=_read_key(host_key) if host_key else None,
    )  # fmt: skip
    if as_json:
        emit_json({"name": entry.name, "address": entry.address, "port": entry.port, "labels": dict(entry.labels)})
    else:
        console.print(plain(f"Host {entry.name} at {entry.address}:{entry.port}"))


@host_app.command("enroll")
def host_enroll(
    name: Annotated[str, typer.Argument(help="Host name, as engineers will type it.")],
    address: Annotated[str, typer.Option("--address", help="HOST[:PORT] the broker connects to.")],
    labels: Annotated[str, typer.Option("--labels", help="k=v,k2=v2")] = "",
    host_key: Annotated[
        Path | None, typer.Option("--host-key", help="The host's public key file, to certify with the host CA.")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Write the bundle here (for enroll-host).")] = None,
    validity: Annotated[str, typer.Option("--validity", help="Host certificate lifetime.")] = "365d",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register a host and print (or write) what its sshd needs: CA key, principals, KRL, host cert."""
    host_address, port = _split_address(address)
    label_map = parse_labels(labels)
    cfg = _config(config)
    store = _store(config)
    key = _read_key(host_key) if host_key else None
    add_host(store, name, address=host_address, port=port, labels=label_map)
    if key is not None:
        # The host fetches the KRL with its own key (scripts/fetch-krl); this identity can do nothing else.
        add_user(store, f"host-{name}", keys=[key], groups=[HOST_GROUP])
    bundle = build_bundle(
        name=name, address=host_address, store=store, policy=Policy.load(cfg.policy), ca_dir=cfg.ca_dir,
        labels=label_map, host_key=key, validity=parse_duration(validity), bastion_addresses=cfg.source_addresses,
        host_key_name=host_key.name.removesuffix(".pub") if host_key else "ssh_host_ed25519_key",
    )  # fmt: skip
    if output is not None:
        written = bundle.write(output)
        if as_json:
            emit_json({"host": name, "files": [str(p) for p in written]})
        else:
            console.print(plain(f"Enrolled {name}; wrote {len(written)} files to {output}. On the host: "
                                f"scripts/enroll-host {output}"))  # fmt: skip
        return
    if as_json:
        emit_json({k: v.decode() for k, v in bundle.files.items() if k != "revoked.krl"})
        return
    for file_name, data in bundle.files.items():
        if file_name == "revoked.krl":
            console.print(f"# {file_name}: binary; fetch it with 'jit-ssh ca krl --fetch -o ...'", markup=False)
            continue
        console.print(f"# {file_name}", markup=False)
        console.print(data.decode().rstrip(), markup=False)


@host_app.command("list")
def host_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List the host inventory."""
    hosts = list_hosts(_store(config))
    if as_json:
        emit_json(
            [
                {"name": h.name, "address": h.address, "port": h.port, "labels": dict(h.labels),
                 "pinned": bool(h.host_key)}
                for h in hosts
            ]
        )  # fmt: skip
        return
    console.print(_hosts_table(hosts))


def _hosts_table(hosts: list[HostEntry]) -> Table:
    table = Table("host", "address", "labels", "trust")
    for h in hosts:
        labels = ",".join(f"{k}={v}" for k, v in sorted(h.labels.items()))
        trust = "pinned key" if h.host_key else "host certificate"
        table.add_row(plain(h.name), plain(f"{h.address}:{h.port}"), plain(labels), trust)
    return table


@audit_app.command("verify")
def audit_verify(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Check the audit chain; name the first modified, deleted or reordered event."""
    count, problem = verify_chain(_store(config))
    if as_json:
        emit_json({"events": count, "ok": problem is None, "problem": problem.message if problem else None,
                   "seq": problem.seq if problem else None})  # fmt: skip
    if problem is not None:
        raise JitSshError(f"audit chain broken at event {problem.seq}: {problem.message}")
    if not as_json:
        console.print(f"Audit chain intact: {count} events")


@audit_app.command("export")
def audit_export(
    since: Annotated[str | None, typer.Option("--since", help="ISO date/time, or a duration like 2h.")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="File (default: stdout).")] = None,
    config: ConfigOption = None,
) -> None:
    """Write audit events as JSON lines (for a SIEM)."""
    start = None
    if since:
        try:
            start = datetime.fromisoformat(since).replace(tzinfo=UTC).timestamp()
        except ValueError:
            start = datetime.now(UTC).timestamp() - parse_duration(since).total_seconds()
    lines = (json.dumps(e, sort_keys=True) + "\n" for e in iter_events(_store(config), since=start))
    if output is None:
        sys.stdout.writelines(lines)
    else:
        with output.open("w", encoding="utf-8") as handle:
            handle.writelines(lines)


@policy_app.command("check")
def policy_check(
    file: Annotated[Path | None, typer.Argument(help="Policy file (default: the broker's).")] = None,
    config: ConfigOption = None,
) -> None:
    """Validate a policy file; errors name the line."""
    path = file or _config(config).policy
    policy = Policy.load(path)
    console.print(plain(f"{path}: OK ({len(policy.rules)} rules)"))


@policy_app.command("explain")
def policy_explain(
    user: Annotated[str, typer.Argument()],
    host: Annotated[str, typer.Argument()],
    login: Annotated[str, typer.Option("--login", "-l")] = "ubuntu",
    duration: Annotated[str, typer.Option("--for")] = "30m",
    break_glass: Annotated[bool, typer.Option("--break-glass")] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show what the policy decides for USER on HOST, and why."""
    cfg = _config(config)
    policy = Policy.load(cfg.policy)
    store = _store(config)
    with store.transaction() as session:
        user_row = session.get(User, user)
        host_row = session.get(Host, host)
        groups = policy.groups_of(user, user_row.groups if user_row else [])
        labels = host_row.labels if host_row else {}
        pending = session.exec(
            select(func.count())
            .select_from(AccessRequest)
            .where(AccessRequest.requester == user, AccessRequest.state == RequestState.PENDING.value)
        ).one()
    decision = policy.evaluate(
        AccessQuery(user=user, groups=groups, hosts=(HostInfo(host, labels),), login=login,
                    duration=parse_duration(duration), break_glass=break_glass)
    )  # fmt: skip
    if as_json:
        emit_json({"allowed": decision.allowed, "reasons": list(decision.reasons), "rules": list(decision.rules),
                   "approvals_required": decision.approvals_required,
                   "approver_groups": sorted(decision.approver_groups),
                   "pending_per_user": policy.pending_per_user, "pending": pending})  # fmt: skip
        return
    verdict = ("allowed", "green") if decision.allowed else ("denied", "red")
    console.print(Text.assemble(plain(f"{user} -> {login}@{host} for {duration}: "), verdict))
    for reason in decision.reasons:
        console.print(plain(f"  - {reason}"))
    console.print(
        plain(
            f"  - pending requests: at most {policy.pending_per_user} a user (limits.pending_per_user); "
            f"{user} has {pending}"
        )
    )
