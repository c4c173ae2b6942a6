"""``jit-ssh HOST [-- COMMAND]``: the everyday command.

Reuse an active grant and a valid cached certificate; otherwise request access, wait for approval
with a live status line, and fetch a certificate. Then exec the stock OpenSSH client through the
broker, so the exit status is the remote command's. Failures before the session starts exit 255, as
``ssh`` does.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from jit_ssh.ca import Certificate, CertificateError, JitSshError, PublicKey
from jit_ssh.ca.validate import check_hostname, check_login, parse_duration, target_principal

from .access_cmds import public_key_of, wait_for_approval
from .client import ControlClient, run_async
from .files import write_atomic
from .output import error_console, plain
from .settings import Settings, cache_dir

__all__ = ["build_ssh_argv", "connect", "find_grant"]

EXIT_SSH_FAILURE = 255
_MIN_LEFT = 15  # seconds: a certificate closer to its end than this is fetched anew


class ConnectError(JitSshError):
    exit_code = EXIT_SSH_FAILURE


def find_grant(requests: list[dict[str, Any]], host: str, login: str, now: float) -> dict[str, Any] | None:
    """My approved, running request covering ``login@host`` that lasts longest, if any."""
    best = None
    for request in requests:
        if request.get("state") != "approved" or host not in request.get("hosts", []) or request.get("login") != login:
            continue
        starts, expires = request.get("starts_at"), request.get("expires_at")
        if starts is None or expires is None or not starts <= now < expires - _MIN_LEFT:
            continue
        if best is None or expires > best["expires_at"]:
            best = request
    return best


def _cached_certificate(path: Path, key: PublicKey, principal: str, now: float) -> bool:
    try:
        cert = Certificate.parse(path.read_text(encoding="utf-8"))
    except (OSError, CertificateError):
        return False
    return cert.subject == key and principal in cert.principals and cert.valid_before > now + _MIN_LEFT


_CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com"


def build_ssh_argv(
    settings: Settings, *, identity: Path, cert: Path, login: str, host: str, command: list[str]
) -> list[str]:
    """The OpenSSH command line through the broker; the bastion is trusted by host certificate only."""
    ssh = shutil.which("ssh") or "ssh"
    argv = [
        ssh,
        "-o", f"UserKnownHostsFile={settings.known_hosts}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", "ForwardAgent=no",
        "-o", "ForwardX11=no",
        "-o", "ServerAliveInterval=30",
        # AES-GCM first (the rest of OpenSSH's defaults after it): the broker relays it fastest.
        "-o", f"Ciphers=^{_CIPHERS}",
        "-i", str(identity),
        "-o", f"CertificateFile={cert}",
        "-p", str(settings.port),
        "-l", target_principal(login, host),
        settings.require_bastion(),
    ]  # fmt: skip
    if command:
        argv += ["--", *command]
    return argv


def connect(
    host: Annotated[str, typer.Argument(help="Host to reach.")],
    command: Annotated[list[str] | None, typer.Argument(help="Remote command (after --).")] = None,
    reason: Annotated[str | None, typer.Option("--reason", "-r", help="Why, if a request is needed.")] = None,
    duration: Annotated[str, typer.Option("--for", help="How long to ask for: 30m, 2h.")] = "30m",
    login: Annotated[str | None, typer.Option("--login", "-l", help="Login on the host.")] = None,
    ticket: Annotated[str | None, typer.Option("--ticket", help="Ticket or incident id.")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="File the request and return.")] = False,
) -> None:
    """Connect to HOST: reuse an active grant, or request one and wait; then run ssh through the broker."""
    try:
        argv = _prepare(
            host, command or [], reason=reason, duration=duration, login=login, ticket=ticket, no_wait=no_wait
        )
    except ConnectError:
        raise
    except JitSshError as exc:
        raise ConnectError(exc.message) from exc
    if argv is None:
        return
    try:
        os.execv(argv[0], argv)  # noqa: S606 - replace this process with ssh, argv built above
    except OSError as exc:
        raise ConnectError(f"cannot run {argv[0]}: {exc.strerror}") from exc


def _prepare(
    host: str, command: list[str], *, reason: str | None, duration: str, login: str | None, ticket: str | None,
    no_wait: bool,
) -> list[str] | None:  # fmt: skip
    settings = Settings.load()
    check_hostname(host)
    who = check_login(login or settings.login)
    parse_duration(duration)
    if settings.identity is None:
        raise ConnectError("no SSH key configured: jit-ssh config set identity ~/.ssh/id_ed25519")
    key = public_key_of(settings, None)
    principal = target_principal(who, host)

    async def go() -> tuple[dict[str, Any], str | None] | None:
        async with ControlClient(settings) as client:
            mine = await client.call("status", {})
            grant = find_grant(mine, host, who, time.time())
            if grant is None:
                if not reason:
                    raise ConnectError(f'no active grant for {principal}: add --reason "..." to request one')
                args: dict[str, Any] = {"hosts": [host], "login": who, "duration": duration, "reason": reason}
                if ticket:
                    args["ticket"] = ticket
                grant = await client.call("request", args)
                error_console.print(plain(f"jit-ssh: filed request {grant['id']} for {principal} ({grant['state']})"))
                if no_wait:
                    return None
                if grant["state"] == "pending":
                    grant = await wait_for_approval(client, grant, quiet=False)
            path = cache_dir() / f"request-{grant['id']}-cert.pub"
            if _cached_certificate(path, key, principal, time.time()):
                return grant, None
            reply = await client.call("cert", {"id": grant["id"], "public_key": key.to_openssh("")})
            return grant, str(reply["certificate"])

    result = run_async(go())
    if result is None:
        return None
    grant, fresh = result
    path = cache_dir() / f"request-{grant['id']}-cert.pub"
    if fresh is not None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, (fresh + "\n").encode(), mode=0o600)
    return build_ssh_argv(settings, identity=settings.identity, cert=path, login=who, host=host, command=command)
