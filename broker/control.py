"""The control plane's commands: strict JSON arguments in, JSON out.

A client runs ``ssh -p 2222 alice@bastion VERB`` and writes one JSON object of arguments on stdin;
the reply on stdout is ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {...}}`` and the exit
status is 0 or the error's exit code. Every argument is checked here, before the authority sees it:
unknown verbs and unknown or mistyped arguments are refused with a one-line reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jit_ssh.ca import AccessDenied, InputError, JitSshError, PublicKey
from jit_ssh.ca.audit import append_event
from jit_ssh.ca.rules import HOST_GROUP, HOST_IDENTITY_VERBS, check_host_identity, check_reviewer
from jit_ssh.ca.store import User
from jit_ssh.ca.validate import parse_duration
from jit_ssh.ca.workflow import Authority, RequestView

from .recording.store import RecordingStore
from .review import list_sessions, parse_since, session_detail, verify_sessions

__all__ = [
    "HOST_GROUP",
    "MAX_ARGUMENTS",
    "REVIEW_VERBS",
    "STREAM_VERBS",
    "VERBS",
    "ControlContext",
    "dispatch",
    "error_reply",
    "parse_arguments",
    "require_reviewer",
]

log = logging.getLogger("jit_ssh.broker.control")

MAX_ARGUMENTS = 64 * 1024


@dataclass(frozen=True, slots=True)
class ControlContext:
    """Who is asking (already authenticated by an enrolled key) and what answers."""

    authority: Authority
    user: str
    #: Where the recordings are (verify reads them; a search reads their index).
    recordings: RecordingStore
    on_revoke: Callable[[int, list[int]], None] | None = None
    #: Audits a refusal ``(action, subject, details)`` as this user, within the broker's refusal limit;
    #: without it, refusals are written straight to the audit log.
    on_refusal: Callable[[str, str, dict[str, Any]], None] | None = None


# name -> (type, required); bool/int are exact (JSON true is not 1).
_Spec = Mapping[str, tuple[type, bool]]

_SPECS: dict[str, _Spec] = {
    "whoami": {},
    "request": {
        "hosts": (list, False),
        "selector": (dict, False),
        "login": (str, True),
        "duration": (str, True),
        "reason": (str, True),
        "ticket": (str, False),
        "start": (str, False),
        "extensions": (list, False),
        "break_glass": (bool, False),
    },
    "status": {"id": (int, False)},
    "requests": {"pending": (bool, False), "mine": (bool, False), "all": (bool, False)},
    "approve": {"id": (int, True), "comment": (str, False)},
    "deny": {"id": (int, True), "reason": (str, True)},
    "cancel": {"id": (int, True)},
    "revoke": {"id": (int, True), "reason": (str, False)},
    "cert": {"id": (int, True), "public_key": (str, True)},
    "sessions": {
        "user": (str, False),
        "host": (str, False),
        "since": (str, False),
        "active": (bool, False),
        "request": (int, False),
        "grep": (str, False),
        "grep_output": (str, False),
        "flagged": (bool, False),
        "limit": (int, False),
    },
    "session": {"id": (str, True)},
    "verify": {"id": (str, False)},
    # Streaming verbs: asciicast text (v2; v3 for an export in that format) on stdout instead of a JSON reply
    # (see server.ControlSession).
    "export": {"id": (str, True), "follow": (bool, False), "purpose": (str, False), "format": (str, False)},
    "watch": {"id": (str, True)},
    # The current KRL, raw bytes (for hosts' RevokedKeys; any enrolled user or host may fetch it).
    "krl": {},
}
STREAM_VERBS = frozenset({"export", "watch", "krl"})
#: Verbs that read recordings' indexes or digests: run on the broker's review threads.
REVIEW_VERBS = frozenset({"sessions", "session", "verify"})
VERBS = frozenset(_SPECS)


def parse_arguments(verb: str, raw: bytes) -> dict[str, Any]:
    """Check ``verb`` and decode its JSON arguments against the verb's spec."""
    if verb not in _SPECS:
        raise InputError(f"unknown command {verb[:40]!r}; expected one of {', '.join(sorted(_SPECS))}")
    if len(raw) > MAX_ARGUMENTS:
        raise InputError(f"arguments are {len(raw)} bytes; at most {MAX_ARGUMENTS}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError("arguments are not UTF-8 text") from exc
    try:
        args = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise InputError(f"arguments are not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except (RecursionError, ValueError) as exc:  # nesting deeper than the parser's stack, a 5000-digit number
        raise InputError("arguments are not valid JSON: nested too deeply or a number too long") from exc
    if not isinstance(args, dict):
        raise InputError("arguments must be one JSON object")
    try:  # JSON's \ud800 is a string Python holds but no database, pattern or file name takes
        json.dumps(args, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError("arguments are not valid text: a string holds a lone surrogate (\\ud800 to \\udfff)") from exc
    spec = _SPECS[verb]
    for key, value in args.items():
        if key not in spec:
            raise InputError(f"{verb}: unknown argument {key[:40]!r}; expected {', '.join(spec) or 'none'}")
        kind = spec[key][0]
        if type(value) is not kind:
            raise InputError(f"{verb}: {key} must be a {kind.__name__}, found {type(value).__name__}")
    missing = [k for k, (_, required) in spec.items() if required and k not in args]
    if missing:
        raise InputError(f"{verb}: missing argument {missing[0]!r}")
    return args


def _strings(args: Mapping[str, Any], key: str, *, limit: int = 32) -> list[str]:
    values = args.get(key, [])
    if not all(isinstance(v, str) for v in values) or len(values) > limit:
        raise InputError(f"{key} must be a list of at most {limit} strings")
    return list(values)


def _start(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InputError(f"start: expected an ISO 8601 time with a zone, found {value[:40]!r}") from exc
    if moment.tzinfo is None:
        raise InputError("start: the time needs a zone, e.g. 2026-11-25T14:00:00+00:00")
    return moment


def run_command(ctx: ControlContext, verb: str, args: Mapping[str, Any]) -> Any:
    """Carry out one parsed command for ``ctx.user``; returns what goes under ``result``."""
    authority, user = ctx.authority, ctx.user
    if verb not in HOST_IDENTITY_VERBS:  # those need no look-up
        with authority.store.transaction() as session:
            row = session.get(User, user)
            groups = row.groups if row is not None else []
        check_host_identity(user, groups, verb)
    if verb == "whoami":
        return {"user": user}
    if verb == "request":
        selector = args.get("selector") or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in selector.items()):
            raise InputError("selector must map label names to string values")
        view = authority.create_request(
            requester=user,
            hosts=_strings(args, "hosts"),
            selector=selector or None,
            login=args["login"],
            duration=parse_duration(args["duration"]),
            reason=args["reason"],
            ticket=args.get("ticket"),
            start=_start(args.get("start")),
            extensions=_strings(args, "extensions", limit=8),
            break_glass=args.get("break_glass", False),
        )
        return view.as_dict()
    if verb == "status":
        if "id" in args:
            return authority.get(args["id"], viewer=user).as_dict()
        return [v.as_dict() for v in authority.list_requests(viewer=user, mine=True, include_final=True)]
    if verb == "requests":
        views = authority.list_requests(
            viewer=user, mine=args.get("mine", False), pending=args.get("pending", False),
            include_final=args.get("all", False),
        )  # fmt: skip
        return [v.as_dict() for v in views]
    if verb == "approve":
        return authority.approve(args["id"], approver=user, comment=args.get("comment")).as_dict()
    if verb == "deny":
        return authority.deny(args["id"], approver=user, reason=args["reason"]).as_dict()
    if verb == "cancel":
        return authority.cancel(args["id"], actor=user).as_dict()
    if verb == "revoke":
        view, serials = authority.revoke(args["id"], actor=user, reason=args.get("reason"))
        if ctx.on_revoke is not None:
            ctx.on_revoke(view.id, serials)
        return {**view.as_dict(), "revoked_serials": serials}
    if verb == "cert":
        key = PublicKey.parse(args["public_key"])
        cert, view = authority.issue_certificate(args["id"], user=user, public_key=key)
        return _cert_reply(
            cert.to_openssh(f"jit-ssh request {view.id}"),
            cert.serial,
            cert.valid_after,
            cert.valid_before,
            view,
        )
    if verb in ("sessions", "session", "verify"):
        require_reviewer(ctx, verb, args.get("id"))
        store = authority.store
        if verb == "sessions":
            found, more = list_sessions(
                store, recordings=ctx.recordings, user=args.get("user"), host=args.get("host"),
                since=parse_since(args["since"]) if "since" in args else None, active=args.get("active", False),
                request=args.get("request"), grep=args.get("grep"), grep_output=args.get("grep_output"),
                flagged=args.get("flagged", False), limit=args.get("limit", 200),
            )  # fmt: skip
            return {"sessions": found, "more": more}
        if verb == "session":
            return session_detail(store, args["id"])
        return verify_sessions(store, args.get("id"), recordings=ctx.recordings)
    raise InputError(f"unknown command {verb!r}")  # unreachable: parse_arguments checked the verb


def require_reviewer(ctx: ControlContext, verb: str, session_id: str | None = None) -> None:
    """Listing, replaying and watching sessions is for the policy's reviewer groups, never a host identity
    (whatever groups it was also given); a refusal is audited."""
    store = ctx.authority.store
    with store.transaction() as session:
        row = session.get(User, ctx.user)
        groups = row.groups if row is not None else []
    try:
        check_host_identity(ctx.user, groups, verb)
        check_reviewer(ctx.authority.policy, ctx.user, groups)
    except AccessDenied as exc:
        subject = "sessions" if session_id is None else f"session:{session_id[:128]}"
        details: dict[str, Any] = {"verb": verb, "reason": exc.message}
        if ctx.on_refusal is not None:
            ctx.on_refusal("review.refused", subject, details)
        else:
            with store.transaction() as session:
                append_event(store, session, actor=ctx.user, action="review.refused", subject=subject, details=details)
        raise


def _cert_reply(line: str, serial: int, after: int, before: int, view: RequestView) -> dict[str, Any]:
    return {
        "certificate": line,
        "serial": serial,
        "valid_after": after,
        "valid_before": before,
        "principals": list(view.principals),
        "request": view.as_dict(),
    }


def error_reply(exc: JitSshError) -> dict[str, Any]:
    return {
        "ok": False,
        "error": {"kind": type(exc).__name__, "message": exc.message, "exit_code": exc.exit_code},
    }


def dispatch(ctx: ControlContext, verb: str, raw: bytes) -> tuple[dict[str, Any], int]:
    """Parse, run, and shape the reply; never raises for a user's mistake."""
    try:
        args = parse_arguments(verb, raw)
        return {"ok": True, "result": run_command(ctx, verb, args)}, 0
    except JitSshError as exc:
        return error_reply(exc), exc.exit_code
    except Exception:  # a bug must cost one failed command, not a channel the client waits on forever
        log.exception("control command %r of %s failed", verb[:32], ctx.user)
        return error_reply(JitSshError(f"internal error in {verb[:32]!r}; the broker's log has the details")), 1
