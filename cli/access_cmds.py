"""Engineers' and approvers' commands, over the broker's control plane."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from jit_ssh.ca import AccessDenied, Certificate, JitSshError, PublicKey
from jit_ssh.ca.validate import parse_duration
from rich.status import Status
from rich.text import Text

from .client import ControlClient, call, run_async
from .files import write_atomic
from .output import console, emit_json, error_console, plain
from .settings import Settings, cache_dir
from .views import print_request, print_requests, when

__all__ = ["register"]

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
_POLL = 1.0
EXIT_GAVE_UP = 4


class GaveUp(JitSshError):
    exit_code = EXIT_GAVE_UP


def _request_args(
    hosts: list[str], *, reason: str, duration: str, login: str | None, ticket: str | None,
    labels: list[str] | None, start: str | None, settings: Settings,
) -> dict[str, Any]:  # fmt: skip
    parse_duration(duration)  # a clear error here rather than after a round trip
    args: dict[str, Any] = {
        "hosts": hosts,
        "reason": reason,
        "duration": duration,
        "login": login or settings.login,
    }
    if ticket:
        args["ticket"] = ticket
    if start:
        args["start"] = start
    if labels:
        selector = {}
        for label in labels:
            key, sep, value = label.partition("=")
            if not sep:
                raise JitSshError(f"--label expects k=v, found {label[:40]!r}")
            selector[key] = value
        args["selector"] = selector
    return args


def _waiting_line(request: dict[str, Any], seconds: int) -> Text:
    """The live status line while a request waits; the broker's values in it are shown inert."""
    return plain(
        f"request {request['id']}: waiting for approval ({len(request['approvals'])}/"
        f"{request['approvals_required']} from {', '.join(request['approver_groups'])}), {seconds}s; "
        "Ctrl-C to stop waiting"
    )


async def wait_for_approval(client: ControlClient, request: dict[str, Any], *, quiet: bool) -> dict[str, Any]:
    """Poll until the request leaves 'pending'; a live status line shows progress."""
    started = time.monotonic()
    status = None if quiet else Status("", console=error_console)
    if status is not None:
        status.start()
    try:
        while request["state"] == "pending":
            if status is not None:
                status.update(_waiting_line(request, int(time.monotonic() - started)))
            await asyncio.sleep(_POLL)
            request = await client.call("status", {"id": request["id"]})
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise GaveUp(
            f"stopped waiting; request {request['id']} stays pending (jit-ssh cancel {request['id']} withdraws it)"
        ) from None
    finally:
        if status is not None:
            status.stop()
    if request["state"] != "approved":
        note = f": {request['decision_note']}" if request.get("decision_note") else ""
        by = f" by {request['decided_by']}" if request.get("decided_by") else ""
        raise AccessDenied(f"request {request['id']} was {request['state']}{by}{note}")
    return request


def register(app: typer.Typer) -> None:
    @app.command("request")
    def request_cmd(
        hosts: Annotated[list[str] | None, typer.Argument(help="Hosts to reach.", show_default=False)] = None,
        reason: Annotated[str, typer.Option("--reason", "-r", help="Why you need access (required).")] = "",
        duration: Annotated[str, typer.Option("--for", help="How long: 30m, 2h, 1h30m.")] = "30m",
        login: Annotated[str | None, typer.Option("--login", "-l", help="Login on the hosts.")] = None,
        ticket: Annotated[str | None, typer.Option("--ticket", help="Ticket or incident id.")] = None,
        label: Annotated[list[str] | None, typer.Option("--label", help="Select hosts by label k=v.")] = None,
        start: Annotated[str | None, typer.Option("--start", help="Start later (ISO 8601 with zone).")] = None,
        break_glass: Annotated[bool, typer.Option("--break-glass", help="Use a break-glass rule.")] = False,
        no_wait: Annotated[bool, typer.Option("--no-wait", help="File the request and return.")] = False,
        as_json: JsonOption = False,
    ) -> None:
        """Request access to hosts and wait for approval."""
        settings = Settings.load()
        args = _request_args(
            hosts or [], reason=reason, duration=duration, login=login, ticket=ticket, labels=label,
            start=start, settings=settings,
        )  # fmt: skip
        if break_glass:
            args["break_glass"] = True

        async def go() -> dict[str, Any]:
            async with ControlClient(settings) as client:
                request: dict[str, Any] = await client.call("request", args)
                if not as_json:
                    console.print(plain(f"Filed request {request['id']} ({request['state']})"))
                if no_wait or request["state"] != "pending":
                    return request
                return await wait_for_approval(client, request, quiet=as_json)

        result = run_async(go())
        if as_json:
            emit_json(result)
        else:
            print_request(result)

    @app.command("requests")
    def requests_cmd(
        pending: Annotated[bool, typer.Option("--pending", help="Only those waiting for my approval.")] = False,
        mine: Annotated[bool, typer.Option("--mine", help="Only my own.")] = False,
        show_all: Annotated[bool, typer.Option("--all", help="Include finished ones.")] = False,
        as_json: JsonOption = False,
    ) -> None:
        """What waits for my approval, and what I asked for."""
        result = call(Settings.load(), "requests", {"pending": pending, "mine": mine, "all": show_all})
        if as_json:
            emit_json(result)
        else:
            print_requests(result, title="Requests")

    @app.command("status")
    def status_cmd(
        request_id: Annotated[int | None, typer.Argument(help="One request; all of mine without it.")] = None,
        as_json: JsonOption = False,
    ) -> None:
        """My requests and grants, or one of them."""
        result = call(Settings.load(), "status", {} if request_id is None else {"id": request_id})
        if as_json:
            emit_json(result)
        elif request_id is None:
            print_requests(result, title="My requests")
        else:
            print_request(result)

    def decision(verb: str, args: dict[str, Any], as_json: bool) -> None:
        result = call(Settings.load(), verb, args)
        if as_json:
            emit_json(result)
        else:
            console.print(plain(f"Request {result['id']} is now {result['state']}"))

    @app.command("approve")
    def approve_cmd(
        request_id: Annotated[int, typer.Argument(help="Request id.")],
        comment: Annotated[str | None, typer.Option("--comment", "-c", help="A note for the record.")] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Approve someone else's request."""
        decision("approve", {"id": request_id, **({"comment": comment} if comment else {})}, as_json)

    @app.command("deny")
    def deny_cmd(
        request_id: Annotated[int, typer.Argument(help="Request id.")],
        reason: Annotated[str, typer.Option("--reason", "-r", help="Why (required).")] = "",
        as_json: JsonOption = False,
    ) -> None:
        """Deny a pending request."""
        decision("deny", {"id": request_id, "reason": reason}, as_json)

    @app.command("cancel")
    def cancel_cmd(request_id: Annotated[int, typer.Argument(help="Request id.")], as_json: JsonOption = False) -> None:
        """Withdraw my pending request."""
        decision("cancel", {"id": request_id}, as_json)

    @app.command("revoke")
    def revoke_cmd(
        request_id: Annotated[int, typer.Argument(help="Request id.")],
        reason: Annotated[str | None, typer.Option("--reason", "-r", help="Why.")] = None,
        config: Annotated[
            Path | None, typer.Option("--config", help="On the bastion: revoke as the admin, through the store.")
        ] = None,
        as_json: JsonOption = False,
    ) -> None:
        """End a grant: its certificates are revoked and its live sessions closed."""
        if config is None:
            decision("revoke", {"id": request_id, **({"reason": reason} if reason else {})}, as_json)
            return
        # On the bastion, as its admin: the one engineer's command with a mode that needs the store.
        from .bastion.admin_cmds import revoke_as_admin  # noqa: PLC0415 - loads the store only for --config

        revoke_as_admin(config, request_id, reason=reason, as_json=as_json)

    @app.command("cert")
    def cert_cmd(
        request_id: Annotated[int, typer.Argument(help="An approved request of mine.")],
        key: Annotated[
            Path | None, typer.Option("--key", help="Public key to certify (default: identity.pub).")
        ] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Fetch the certificate of an approved request into the cache (0600)."""
        settings = Settings.load()
        path = fetch_certificate(settings, request_id, key)
        cert = Certificate.parse(path.read_text(encoding="utf-8"))
        if as_json:
            emit_json(
                {"path": str(path), "serial": cert.serial, "principals": list(cert.principals),
                 "valid_after": cert.valid_after, "valid_before": cert.valid_before, "key_id": cert.key_id}
            )  # fmt: skip
            return
        console.print(plain(f"Certificate for request {request_id} in {path}"))
        console.print(plain(f"  principals {', '.join(cert.principals)}"))
        console.print(f"  valid      {when(cert.valid_after)} to {when(cert.valid_before)}")
        console.print(f"  serial     {cert.serial}")


def public_key_of(settings: Settings, key: Path | None) -> PublicKey:
    path = key or (Path(f"{settings.identity}.pub") if settings.identity else None)
    if path is None:
        raise JitSshError("no key to certify: pass --key FILE.pub or set 'identity' with jit-ssh config set")
    try:
        return PublicKey.parse(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise JitSshError(f"cannot read public key {path}: {exc.strerror}") from exc


def fetch_certificate(settings: Settings, request_id: int, key: Path | None) -> Path:
    public = public_key_of(settings, key)
    result = call(settings, "cert", {"id": request_id, "public_key": public.to_openssh("")})
    target = cache_dir() / f"request-{request_id}-cert.pub"
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(target, (result["certificate"] + "\n").encode(), mode=0o600)
    return target
