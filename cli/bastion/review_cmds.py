"""Reviewers' commands: list, search, show, verify, replay, watch, export, prune.

Remotely over the control plane (reviewers, by the policy's ``[review]`` groups), or on the bastion
with ``--config`` (admins, reading the store and the recordings directly). Every replay, watch and
export is audited either way.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from jit_ssh.broker.config import BrokerConfig
from jit_ssh.broker.recording.asciicast import AsciicastWriter, CastFormat
from jit_ssh.broker.recording.format import follow_frames
from jit_ssh.broker.recording.store import LocalRecordingStore, RecordingStore, StoredRecording
from jit_ssh.broker.recording.transfers import describe as describe_transfer
from jit_ssh.broker.review import (
    list_sessions,
    parse_since,
    prune_sessions,
    record_review,
    recording_of,
    session_detail,
    set_hold,
    verify_sessions,
)
from jit_ssh.ca import InputError, JitSshError
from jit_ssh.ca.store import Store
from jit_ssh.ca.validate import parse_duration
from rich.table import Table
from rich.text import Text

from ..client import ControlClient, call, run_async
from ..files import write_stream_atomic
from ..output import console, emit_json, error_console, plain, printable
from ..player import TtyKeys, play, sanitize, schedule
from ..settings import Settings
from ..views import when

__all__ = ["export", "replay", "sessions_app", "watch"]

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="On the bastion: read the broker's store directly (admins).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
sessions_app = typer.Typer(help="Recorded sessions: list, search, show, verify, prune.")


def _local(config: Path | None) -> tuple[Store, LocalRecordingStore] | None:
    """On the bastion (``--config``): the broker's store and its recordings, read directly."""
    if config is None:
        return None
    cfg = BrokerConfig.load(config)
    return Store(cfg.store_url), LocalRecordingStore(cfg.recordings_dir)


def _local_store(config: Path | None) -> Store | None:
    local = _local(config)
    return local[0] if local is not None else None


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value = value / 1024  # type: ignore[assignment]
    return "-"


def _print_sessions(rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print("No sessions match.")
        return
    table = Table("session", "user", "target", "request", "started", "duration", "bytes", "exit", "cmds", "review")
    for r in rows:
        exit_text = plain(r["exit_signal"] or (r["exit_status"] if r["exit_status"] is not None else "-"))
        state = r.get("state", "active" if r["active"] else "ended")
        if state == "active":
            exit_text = Text("active", style="green")
        elif state == "cut":
            exit_text = Text("cut off", style="red")
        table.add_row(
            plain(r["id"]), plain(r["user"]), plain(f"{r['login']}@{r['host']} ({r['kind']})"),
            plain(f"{r['request_id']}: {printable(r.get('reason') or '', limit=30)}"), when(r["started_at"]),
            f"{r['duration']:.0f}s", _size((r["bytes_in"] or 0) + (r["bytes_out"] or 0)), exit_text,
            plain(r["commands"]), _review_cell(r),
        )  # fmt: skip
        for match in r.get("matched_commands", [])[:5]:
            table.add_row("", "", plain(f"  {printable(match['command'], limit=80)}", style="dim"), *[""] * 7)
    console.print(table)


def _review_cell(row: dict[str, Any]) -> Text:
    """What a reviewer must look at: flags, and an index that failed or is incomplete (never silent)."""
    if row.get("index") == "failed":
        return Text("UNREADABLE", style="bold red")
    flags = row.get("flags") or []
    if flags:
        return plain(f"{len(flags)} flag{'s' if len(flags) > 1 else ''}: {printable(flags[0], limit=40)}", style="red")
    if row.get("index") == "partial":
        return Text("index partial", style="yellow")
    return Text("")


@sessions_app.callback(invoke_without_command=True)
def sessions(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option("--user", help="Only this user's sessions.")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Only sessions to this host.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="2h, 7d, or a date/time.")] = None,
    active: Annotated[bool, typer.Option("--active", help="Only sessions still running.")] = False,
    request: Annotated[int | None, typer.Option("--request", help="Only sessions of this request.")] = None,
    grep: Annotated[str | None, typer.Option("--grep", help="Regex over the commands run.")] = None,
    grep_output: Annotated[str | None, typer.Option("--grep-output", help="Regex over what was printed.")] = None,
    flagged: Annotated[
        bool, typer.Option("--flagged", help="Only sessions flagged for review (out-of-band servers, ...).")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", help="At most this many.")] = 200,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List and search recorded sessions (patterns are RE2 regular expressions).

    --grep searches the commands: run, typed at a terminal, fed to a shell on its input, and environment
    values; --grep-output what was printed.
    """
    if ctx.invoked_subcommand is not None:
        return
    local = _local(config)
    if local is not None:
        store, recordings = local
        rows, more = list_sessions(
            store, recordings=recordings, user=user, host=host, since=parse_since(since) if since else None,
            active=active,
            request=request, grep=grep, grep_output=grep_output, flagged=flagged, limit=limit,
        )  # fmt: skip
    else:
        args: dict[str, Any] = {"active": active, "limit": limit, "flagged": flagged}
        for key, value in (("user", user), ("host", host), ("since", since), ("request", request),
                           ("grep", grep), ("grep_output", grep_output)):  # fmt: skip
            if value is not None:
                args[key] = value
        reply = call(Settings.load(), "sessions", args)
        rows, more = reply["sessions"], bool(reply["more"])
    if as_json:
        emit_json(rows)
    else:
        _print_sessions(rows)
    if more:
        # Said on stdout for a person, on stderr beside JSON: a listing cut short must never look whole.
        note = f"More sessions match than the {limit} shown (newest first): raise --limit or narrow with --since."
        if as_json:
            error_console.print(plain(note))
        else:
            console.print(plain(note), style="yellow")


@sessions_app.command("show")
def show(
    session_id: Annotated[str, typer.Argument()], config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """One session: metadata, request and approvals, certificates, commands, file transfers."""
    store = _local_store(config)
    detail = session_detail(store, session_id) if store else call(Settings.load(), "session", {"id": session_id})
    if as_json:
        emit_json(detail)
        return
    _print_detail(detail)


def _print_detail(detail: dict[str, Any]) -> None:
    """``sessions show`` for a person: every value is the session's or the requester's, shown inert."""
    console.print(
        Text.assemble("Session ", plain(detail["id"], style="bold"), ": ",
                      plain(f"{detail['user']} as {detail['login']}@{detail['host']}"))
    )  # fmt: skip
    request = detail.get("request") or {}
    lines = [
        ("kind", f"{detail['kind']}{' with a terminal' if detail['pty'] else ''}"),
        ("command", detail.get("command") or "-"),
        ("started", when(detail["started_at"])),
        ("ended", f"{when(detail['ended_at'])} ({detail.get('end_reason') or 'running'})"),
        ("exit", detail.get("exit_signal") or str(detail.get("exit_status"))),
        ("from", detail.get("peer") or "-"),
        ("request", f"{request.get('id')} by {request.get('requester')}: {request.get('reason')}"),
        ("recording", f"{detail['recording_path']} ({_size(detail['recording_size'])}, sha256 "
                      f"{(detail.get('recording_sha256') or '-')[:16]}...)"),
    ]  # fmt: skip
    lines += [("approved by", f"{a['approver']} at {when(a['at'])}") for a in request.get("approvals", [])]
    lines += [
        ("certificate", f"{c['ca']} serial {c['serial']}: {c['key_id']}{' (revoked)' if c['revoked'] else ''}")
        for c in detail["certificates"]
    ]
    if detail.get("index_error"):
        lines.append(("UNREADABLE", detail["index_error"]))
    lines += [("flag", flag) for flag in detail.get("flags", [])]
    lines += [("index", f"incomplete: {problem}") for problem in detail.get("index_problems", [])]
    lines += [("environment", f"{name}={value}") for name, value in (detail.get("environment") or {}).items()]
    for name, value in lines:
        console.print(plain(f"  {name:<12} {value}"))
    if detail["commands_run"]:
        console.print("  commands:")
        for c in detail["commands_run"]:
            how = "" if c.get("source") in (None, "exec", "screen") else f"  ({c['source']})"
            console.print(plain(f"    {c['time']:>9.2f}s  {c['command']}{how}"))
    if detail["transfers"]:
        console.print("  file transfers:")
        for t in detail["transfers"]:
            console.print(plain(f"    {describe_transfer(t)}"))
        if detail.get("transfers_dropped"):
            console.print(f"    ... {detail['transfers_dropped']} more (lookups first) are in the recording only")


@sessions_app.command("verify")
def verify(
    session_id: Annotated[str | None, typer.Argument(help="One session; all without it.")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recompute recordings' digests against the store and the audit log; name what was altered."""
    local = _local(config)
    args = {"id": session_id} if session_id else {}
    results = (
        verify_sessions(local[0], session_id, recordings=local[1]) if local else call(Settings.load(), "verify", args)
    )
    bad = [r for r in results if not r["ok"]]
    if as_json:
        emit_json(results)
    else:
        for r in bad:
            console.print(Text.assemble(("FAILED", "red"), " ", plain(f"{r['id']}: {r['status']}")))
        console.print(f"{len(results) - len(bad)} of {len(results)} recordings verified")
    if bad:
        raise JitSshError(f"{len(bad)} recording(s) failed verification: {', '.join(r['id'] for r in bad[:5])}")


@sessions_app.command("prune")
def prune(
    older_than: Annotated[str, typer.Option("--older-than", help="e.g. 90d")],
    yes: Annotated[bool, typer.Option("--yes", help="Delete; without it, only list (dry run).")] = False,
    config: Annotated[Path, typer.Option("--config", help="Broker config (prune runs on the bastion).")] = Path(
        "/etc/jit-ssh/broker.toml"
    ),
    as_json: JsonOption = False,
) -> None:
    """Delete recordings of sessions that ended long ago (dry run unless --yes); holds are kept."""
    cfg = BrokerConfig.load(config)
    chosen, refused = prune_sessions(
        Store(cfg.store_url), recordings=LocalRecordingStore(cfg.recordings_dir),
        older_than=parse_duration(older_than), apply=yes,
    )  # fmt: skip
    if as_json:
        emit_json({"pruned" if yes else "would_prune": chosen, "kept": [{"id": i, "why": w} for i, w in refused]})
        return
    verb = "Pruned" if yes else "Would prune (dry run; --yes to delete)"
    console.print(f"{verb}: {len(chosen)} recording(s)")
    for session_id, why in refused:
        console.print(plain(f"  kept {session_id}: {why}"))


@sessions_app.command("hold")
def hold(
    session_id: Annotated[str, typer.Argument()],
    release: Annotated[bool, typer.Option("--release", help="Lift the hold.")] = False,
    config: Annotated[Path, typer.Option("--config")] = Path("/etc/jit-ssh/broker.toml"),
) -> None:
    """Put a session under legal hold (prune keeps it), or release it."""
    set_hold(Store(BrokerConfig.load(config).store_url), session_id, hold=not release, actor="admin")
    console.print(plain(f"Session {session_id} {'released' if release else 'on hold'}"))


# -- streams -----------------------------------------------------------------------------------------
async def _local_lines(
    store: Store,
    recordings: RecordingStore,
    session_id: str,
    *,
    follow: bool,
    action: str,
    cast_format: CastFormat,
) -> AsyncIterator[bytes]:
    reference, running = recording_of(store, session_id)
    # Following a live session is watching it (the user cannot be told from here: no broker is involved).
    record_review(store, actor="admin", action="session.watch" if follow and running else action, session_id=session_id)
    writer = AsciicastWriter(cast_format)

    def live() -> bool:
        return follow and recording_of(store, session_id)[1]

    source = StoredRecording(recordings, reference)
    async for header, frame in follow_frames(source, live=live if follow and running else lambda: False):
        text = writer.header(header) if frame is None else writer.frame(frame)
        for line in text.splitlines(keepends=True):
            yield line.encode()
    for line in writer.finish().splitlines(keepends=True):
        yield line.encode()


async def _remote_lines(verb: str, args: dict[str, Any]) -> AsyncIterator[bytes]:
    async with ControlClient(Settings.load()) as client:
        async for line in client.stream(verb, args):
            yield line


def _lines(
    config: Path | None, session_id: str, *, verb: str, follow: bool, purpose: str,
    cast_format: CastFormat = CastFormat.V2,
) -> AsyncIterator[bytes]:  # fmt: skip
    """asciicast lines of a session; replay and watch read v2 (times since the start) back."""
    local = _local(config)
    if local is not None:
        store, recordings = local
        return _local_lines(
            store, recordings, session_id, follow=follow, action=f"session.{purpose}", cast_format=cast_format
        )
    args: dict[str, Any] = {"id": session_id}
    if verb == "export":
        args.update(follow=follow, purpose=purpose)
        if cast_format is not CastFormat.V2:  # v2 is the default, which a broker without --format also writes
            args["format"] = cast_format.value
    return _remote_lines(verb, args)


def export(
    session_id: Annotated[str, typer.Argument()],
    output: Annotated[Path, typer.Option("-o", "--output", help="FILE.cast")],
    cast_format: Annotated[
        CastFormat, typer.Option("--format", help="asciicast v2 (asciinema 2 and 3 read it) or v3 (asciinema 3).")
    ] = CastFormat.V2,
    config: ConfigOption = None,
) -> None:
    """Write a session as a standard asciicast file (asciinema play/cat and asciinema-player read it).

    Terminal output and input are events; the exec command, environment, file operations, signals,
    jit-ssh's notices, the end and the exit status are markers (v3: the exit status is also its exit
    event). Text that is not UTF-8 is shown as U+FFFD: the recording on the bastion keeps the exact
    bytes, and `jit-ssh sessions verify` checks it against its digest.
    """

    lines = _lines(config, session_id, verb="export", follow=False, purpose="export", cast_format=cast_format)
    size = run_async(write_stream_atomic(output, lines, mode=0o600))
    console.print(plain(f"Wrote {output} ({_size(size)})"))


def replay(
    session_id: Annotated[str, typer.Argument()],
    speed: Annotated[float, typer.Option("--speed", help="Playback speed factor.")] = 1.0,
    idle_limit: Annotated[str | None, typer.Option("--idle-limit", help="Cap pauses, e.g. 2s.")] = None,
    start: Annotated[str | None, typer.Option("--from", help="Start at, e.g. 1m30s.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Play the bytes as recorded (unsafe for your terminal).")] = False,
    config: ConfigOption = None,
) -> None:
    """Play a recording in this terminal with its timing (space pauses, q quits); follows a live one."""
    if not 0.01 <= speed <= 1000:
        raise InputError("--speed must be between 0.01 and 1000")
    limit = parse_duration(idle_limit).total_seconds() if idle_limit else None
    offset = parse_duration(start).total_seconds() if start else 0.0
    lines = _lines(config, session_id, verb="export", follow=True, purpose="replay")
    _play_stream(lines, speed=speed, idle_limit=limit, start=offset, raw=raw)


def watch(session_id: Annotated[str, typer.Argument()], config: ConfigOption = None) -> None:
    """A live, read-only view of an active session (the user is told they are watched)."""
    lines = _lines(config, session_id, verb="watch", follow=True, purpose="watch")
    # Everything so far at once (no pauses), then live as it comes.
    _play_stream(lines, speed=1.0, idle_limit=0.0, start=0.0, raw=False)


def _play_stream(
    lines: AsyncIterator[bytes], *, speed: float, idle_limit: float | None, start: float, raw: bool
) -> None:
    """Feed a (possibly live) asciicast line stream through the sanitiser and the player."""
    events: queue.Queue[tuple[float, str] | BaseException | None] = queue.Queue(maxsize=10_000)

    def pump() -> None:
        async def go() -> None:
            first = True
            async for line in lines:
                if first:
                    first = False
                    continue
                event = json.loads(line)
                if isinstance(event, list) and len(event) == 3 and event[1] == "o":
                    events.put((float(event[0]), str(event[2])))

        try:
            asyncio.run(go())
            events.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
            events.put(exc)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()

    def source() -> Iterator[tuple[float, str]]:
        state = None
        while True:
            item = events.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            moment, text = item
            if not raw:
                text, state = sanitize(text, state)
            yield moment, text

    steps = schedule(source(), speed=speed, idle_limit=idle_limit, start=start)
    if sys.stdin.isatty():
        with TtyKeys(sys.stdin.fileno()) as keys:
            play(steps, sys.stdout, keys=keys)
    else:
        play(steps, sys.stdout)
    sys.stdout.flush()
