"""Reviewing recorded sessions, end to end (issue 5): the real OpenSSH client through ``jit-ssh serve`` to a
real sshd, then the reviewer's CLI over the control plane (bob, a reviewer) or on the bastion (``--config``).

Search by the command as finally run after line editing; an export that ``asciinema cat`` reads back byte
for byte; a replay that strips what could make the reviewer's terminal act; the replay schedule of a real
recording; a live watch from a second client, and a replay of a live session, which is a watch; verification
that names an altered, truncated or deleted recording; a 500 MB session listed, searched and replayed from the
index; prune's dry run and refusals. Every success has its negative control: carol (not a reviewer) is refused
and the refusal audited, the typo is not found, the untouched recording still verifies.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jit_ssh.broker.recording.format import read_recording
from jit_ssh.cli.bastion.stack import DEFAULT_POLICY, LocalStack
from jit_ssh.cli.player import sanitize, schedule

from tests.e2e.stack_fixture import (
    PtyClient,
    asciicast,
    audit_events,
    ended_session,
    granted,
    last_audit_seq,
    run_ssh,
    session_rows,
    ssh_argv,
    started_stack,
    wait_for,
)

pytestmark = pytest.mark.e2e

HOST = "prod-web-3"
ASCIINEMA = Path(sys.executable).with_name("asciinema")
BASH = "env TERM=xterm HISTFILE={histfile} PS1='$ ' bash --norc --noprofile -i"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with started_stack(tmp_path_factory.mktemp("review") / "site") as st:
        yield st


@pytest.fixture(scope="module")
def grant(stack: LocalStack) -> int:
    return granted(stack)


def _now() -> float:
    return time.time() - 0.01


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _grep_ids(stack: LocalStack, pattern: str) -> set[str]:
    return {row["id"] for row in _json(stack.jit("bob", "sessions", "--grep", pattern, "--json"))}


def _exec_session(stack: LocalStack, grant: int, command: str) -> tuple[subprocess.CompletedProcess[bytes], str]:
    """Run ``command`` without a terminal through the broker; the client's result and the session id."""
    since = _now()
    done = run_ssh([*ssh_argv(stack, "alice", grant), command])
    assert done.returncode == 0, done.stderr
    return done, ended_session(stack, since=since)["id"]


def _indexed(stack: LocalStack, session_id: str, *, timeout: float = 30.0) -> None:
    """The index is written just after the session row's end; wait for it (not a timing assertion)."""

    def done() -> bool:
        rows = [r for r in session_rows(stack) if r["id"] == session_id]
        return bool(rows and rows[0]["index_json"])

    wait_for(done, timeout=timeout, what=f"the index of session {session_id}")


# -- search: the command as finally run --------------------------------------------------------------
def test_grep_finds_edited_command_lines_as_finally_run(stack: LocalStack, grant: int) -> None:
    history = stack.root / "bash_history"
    history.write_text("echo seeded-old-entry\necho recalled-$((6*7))\n", encoding="utf-8")
    folder = stack.root / "completion"
    folder.mkdir()
    (folder / "tabdone-file.txt").write_text("tab-content-ok\n", encoding="utf-8")

    since = _now()
    argv = [*ssh_argv(stack, "alice", grant, extra=["-tt"]), BASH.format(histfile=history)]
    with PtyClient(argv) as client:
        at = client.expect("$ ")
        # The up arrow recalls the last line of the seeded history: the keys alone do not show it.
        client.send("\x1b[A")
        at = client.expect("echo recalled-$((6*7))", start=at)
        client.send("\r")
        at = client.expect("$ ", start=client.expect("recalled-42", start=at))
        # Typos fixed with Backspace.
        client.send("echo fxied")
        at = client.expect("fxied", start=at)
        client.send("\x7f" * 5)
        client.send("fixed-$((2+3))\r")
        at = client.expect("$ ", start=client.expect("fixed-5", start=at))
        # A line cleared with Ctrl-U, then another typed.
        client.send("echo discarded-line")
        at = client.expect("discarded-line", start=at)
        client.send("\x15")
        client.send("echo kept-$((3+4))\r")
        at = client.expect("$ ", start=client.expect("kept-7", start=at))
        # A word rubbed out with Ctrl-W.
        client.send("echo wordgone-x")
        at = client.expect("wordgone-x", start=at)
        client.send("\x17ctrlw-$((1+1))\r")
        at = client.expect("$ ", start=client.expect("ctrlw-2", start=at))
        # A path completed with Tab.
        client.send(f"cat {folder}/tabd")
        at = client.expect("tabd", start=at)
        client.send("\t")
        at = client.expect("one-file.txt", start=at)  # completed by bash, after the "tabd" typed
        client.send("\r")
        at = client.expect("$ ", start=client.expect("tab-content-ok", start=at))
        client.send("exit\r")
        assert client.wait() == 0, client.text()
    session_id = ended_session(stack, since=since)["id"]
    _indexed(stack, session_id)

    expected = [
        "echo recalled-$((6*7))",
        "echo fixed-$((2+3))",
        "echo kept-$((3+4))",
        "echo ctrlw-$((1+1))",
        f"cat {folder}/tabdone-file.txt",
    ]
    for command in expected:
        pattern = re.escape(command)
        assert session_id in _grep_ids(stack, f"^{pattern}$"), command
    # Negative controls: what was typed and then edited away was never run.
    for typed in ("fxied", "discarded-line", "wordgone", f"{folder}/tabd$"):
        assert session_id not in _grep_ids(stack, typed), typed

    detail = _json(stack.jit("bob", "sessions", "show", session_id, "--json"))
    run = [c["command"] for c in detail["commands_run"]]
    assert run[0] == BASH.format(histfile=history)  # the exec command itself
    assert run[1:] == [*expected, "exit"]
    shown = stack.jit("bob", "sessions", "show", session_id)
    assert shown.returncode == 0, shown.stderr
    for command in expected:
        assert command in shown.stdout


# -- export and replay ----------------------------------------------------------------------------------
def _cli_bytes(stack: LocalStack, user: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """The ``jit-ssh`` CLI as ``user``, its output kept as bytes (what a terminal would be sent)."""
    return subprocess.run(
        [sys.executable, "-m", "jit_ssh.cli", *args],
        env={**stack.user_env(user), "PYTHONIOENCODING": "utf-8"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def _audit(stack: LocalStack, action: str, session_id: str) -> list[dict[str, Any]]:
    """Audit events of ``action`` about ``session_id``, read with ``jit-ssh audit export`` on the bastion."""
    events = [json.loads(line) for line in stack.admin("audit", "export").stdout.splitlines()]
    return [e for e in events if e["action"] == action and e["subject"] == f"session:{session_id}"]


def test_export_reads_back_with_asciinema_cat_byte_for_byte(stack: LocalStack, grant: int, tmp_path: Path) -> None:
    # Multi-byte characters in lines long enough that the session's chunks split some of them.
    done, session_id = _exec_session(
        stack, grant, "yes '日本語 🙂 é ünïcödé ✓ x' | head -n 4000; printf 'tail\\tend\\n'"
    )
    assert done.stdout.endswith(b"tail\tend\n")
    assert len(done.stdout) > 100_000

    remote = tmp_path / "remote.cast"
    exported = stack.jit("bob", "export", session_id, "-o", str(remote))
    assert exported.returncode == 0, exported.stderr
    lines = remote.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2
    assert header["jit_ssh"]["session"] == session_id

    played = subprocess.run(
        [str(ASCIINEMA), "cat", str(remote)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", "LANG": "C.UTF-8"},
        timeout=60,
        check=False,
        start_new_session=True,  # no controlling terminal: asciinema cat would put /dev/tty in raw mode
    )
    assert played.returncode == 0, played.stderr
    assert played.stdout == done.stdout

    # The bastion's own export (an admin, --config) writes the same file.
    local = tmp_path / "local.cast"
    stack.admin("export", session_id, "-o", str(local))
    assert local.read_bytes() == remote.read_bytes()
    assert _audit(stack, "session.export", session_id)


def test_replay_neutralises_terminal_queries_and_clipboard_writes(stack: LocalStack, grant: int) -> None:
    # OSC 52 (clipboard write), DSR 6 (cursor position report), DA (device attributes), a title, and a
    # DECRQSS string: each either acts on the reviewer's terminal or makes it answer into their input.
    hostile = (
        r"""printf '\033]52;c;aGVsbG8=\aA\033[6nB\033[cC\033]0;title\aD"""
        r"""\033P$q"p\033\\E \033[1mbold\033[0m ok\n'"""
    )
    done, session_id = _exec_session(stack, grant, hostile)
    recorded = b'\x1b]52;c;aGVsbG8=\x07A\x1b[6nB\x1b[cC\x1b]0;title\x07D\x1bP$q"p\x1b\\E \x1b[1mbold\x1b[0m ok\n'
    assert done.stdout == recorded  # what the session really printed

    safe = _cli_bytes(stack, "bob", "replay", session_id)
    assert safe.returncode == 0, safe.stderr
    assert safe.stdout == b"ABCDE \x1b[1mbold\x1b[0m ok\n"  # drawing (SGR) kept, every query and OSC gone

    raw = _cli_bytes(stack, "bob", "replay", session_id, "--raw")
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout == recorded
    assert len(_audit(stack, "session.replay", session_id)) == 2


def test_replay_schedule_of_a_real_recording(stack: LocalStack, grant: int) -> None:
    _, session_id = _exec_session(stack, grant, "echo first; sleep 2; echo second; sleep 0.5; echo third")
    row = next(r for r in session_rows(stack) if r["id"] == session_id)
    _, events = asciicast(Path(row["recording_path"]))
    output = [(float(moment), str(data)) for moment, code, data in events if code == "o"]
    assert "".join(text for _, text in output) == "first\nsecond\nthird\n"
    moments = [moment for moment, _ in output]
    gaps = [later - earlier for earlier, later in zip([0.0, *moments], moments, strict=False)]
    longest = max(gaps)  # the two-second sleep, give or take how busy the machine was
    assert longest > 0

    def expected(speed: float, idle: float | None) -> list[float]:
        at, out = 0.0, []
        for gap in gaps:
            step = gap / speed
            at += step if idle is None else min(step, idle)
            out.append(at)
        return out

    for speed, idle in ((1.0, None), (2.0, None), (0.5, None), (1.0, longest / 2), (4.0, longest / 8), (2.0, 0.0)):
        steps = list(schedule(output, speed=speed, idle_limit=idle))
        assert [s.text for s in steps] == [text for _, text in output]
        assert [s.at for s in steps] == pytest.approx(expected(speed, idle)), (speed, idle)
    # An idle limit caps the long pauses and no other; the replay is shorter than the session by the difference.
    limit = longest / 2
    capped = list(schedule(output, idle_limit=limit))
    assert capped[-1].at == pytest.approx(moments[-1] - sum(g - limit for g in gaps if g > limit))
    assert capped[-1].at < moments[-1]
    # --from: what came before is written at once, then the timing resumes from there.
    start = moments[1]
    steps = list(schedule(output, start=start, speed=2.0))
    assert [s.at for s in steps[:2]] == [0.0, 0.0]
    assert steps[2].at == pytest.approx((moments[2] - start) / 2)

    # The CLI plays the same recording with these options (quickly, so no pauses to wait out).
    played = _cli_bytes(stack, "bob", "replay", session_id, "--speed", "1000", "--idle-limit", "1s")
    assert played.returncode == 0, played.stderr
    assert played.stdout == b"first\nsecond\nthird\n"


# -- live watch, and who may review ----------------------------------------------------------------
@contextlib.contextmanager
def _cli_process(stack: LocalStack, user: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``jit-ssh ARGS`` as ``user``, running beside the test (its output piped); killed if still running."""
    process = subprocess.Popen(
        [sys.executable, "-m", "jit_ssh.cli", *args],
        env={**stack.user_env(user), "PYTHONIOENCODING": "utf-8"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


def _read_until(fd: int, needle: bytes, buffer: bytearray, *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in buffer:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {needle!r}; got {bytes(buffer[-2000:])!r}")
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"{needle!r} never came; the stream ended with {bytes(buffer[-2000:])!r}")
            buffer += chunk


def test_live_watch_shows_the_session_and_tells_the_user(stack: LocalStack, grant: int) -> None:
    since = _now()
    argv = [*ssh_argv(stack, "alice", grant, extra=["-tt"]), BASH.format(histfile="/dev/null")]
    with PtyClient(argv) as alice:
        at = alice.expect("$ ")
        live = wait_for(
            lambda: [r for r in _json(stack.jit("bob", "sessions", "--active", "--user", "alice", "--json"))
                     if r["started_at"] >= since],
            what="alice's session in the active list",
        )  # fmt: skip
        session_id = live[0]["id"]
        assert live[0]["active"] is True

        # carol is not a reviewer: no watch, replay or export, and alice is not told of her.
        for args in (("watch", session_id), ("replay", session_id), ("export", session_id, "-o", "/dev/null"),
                     ("sessions",), ("sessions", "show", session_id)):  # fmt: skip
            refused = stack.jit("carol", *args)
            assert refused.returncode == 3, (args, refused.stdout, refused.stderr)
            assert "not a reviewer" in refused.stderr

        with _cli_process(stack, "bob", "watch", session_id) as watcher:
            assert watcher.stdout is not None
            at = alice.expect("bob is watching", start=at)
            alice.send("echo watch-marker-$((3*5))\r")
            at = alice.expect("watch-marker-15", start=at)
            seen = bytearray()
            _read_until(watcher.stdout.fileno(), b"watch-marker-15", seen)
            alice.send("exit\r")
            assert alice.wait() == 0
            rest, errors = watcher.communicate(timeout=30)
            seen += rest
            assert watcher.returncode == 0, errors
    assert "carol is watching" not in alice.text()

    # What bob saw is what alice's terminal showed, made safe (the replay sanitiser), up to her exit; but
    # for the broker's notice to her, which the recording keeps as metadata and not as session output.
    notice = "\r\n[jit-ssh] bob is watching this session\r\n"
    assert alice.text().count(notice) == 1
    shown, _ = sanitize(alice.text().replace(notice, ""))
    watched = seen.decode("utf-8")
    assert "watch-marker-15" in watched
    assert shown.startswith(watched), (watched, shown)
    assert watched.endswith("exit\r\n")  # to the end: the session's last output reached the watcher too
    row = ended_session(stack, since=since)
    assert row["id"] == session_id
    _, events = asciicast(Path(row["recording_path"]))
    assert [data for _, code, data in events if code == "m" and data.startswith("jit-ssh: ")] == [
        "jit-ssh: bob is watching this session"
    ]
    assert [e["actor"] for e in _audit(stack, "session.watch", session_id)] == ["bob"]


# Replaying a live session follows it as it happens: that is watching, whatever the command is called, so the
# user is told and the audit log says session.watch (issue 10, item 13). A refused review command is audited.
def _live_session(stack: LocalStack, since: float) -> str:
    rows = wait_for(
        lambda: [r for r in session_rows(stack, since=since) if r["ended_at"] is None],
        what="alice's live session row",
    )
    return str(rows[0]["id"])


def _about(events: list[dict[str, object]], session_id: str) -> list[object]:
    return [e["actor"] for e in events if e["subject"] == f"session:{session_id}"]


def test_replaying_a_live_session_is_a_watch_the_user_is_told_of(stack: LocalStack, grant: int) -> None:
    since = _now()
    argv = [*ssh_argv(stack, "alice", grant, extra=["-tt"]), BASH.format(histfile="/dev/null")]
    with PtyClient(argv) as alice:
        at = alice.expect("$ ")
        session_id = _live_session(stack, since)
        with _cli_process(stack, "bob", "replay", session_id) as replay:
            at = alice.expect("bob is watching this session", start=at)
            alice.send("exit\r")
            assert alice.wait() == 0
            _, errors = replay.communicate(timeout=60)
            assert replay.returncode == 0, errors
    ended_session(stack, since=since)
    assert _about(audit_events(stack, "session.watch"), session_id) == ["bob"]
    assert _about(audit_events(stack, "session.replay"), session_id) == []

    # Negative control: the same command on the finished session is a replay, and nobody is told.
    again = stack.jit("bob", "replay", session_id)
    assert again.returncode == 0, again.stderr
    assert _about(audit_events(stack, "session.replay"), session_id) == ["bob"]
    assert _about(audit_events(stack, "session.watch"), session_id) == ["bob"]
    assert alice.text().count("is watching") == 1


def test_refused_review_commands_are_audited_with_user_and_command(stack: LocalStack, grant: int) -> None:
    _, session_id = _exec_session(stack, grant, "true")
    before = last_audit_seq(stack)
    commands = {
        "sessions": ("sessions",),
        "session": ("sessions", "show", session_id),
        "verify": ("sessions", "verify"),
        "replay": ("replay", session_id),
        "export": ("export", session_id, "-o", os.devnull),
        "watch": ("watch", session_id),
    }
    for args in commands.values():
        refused = stack.jit("carol", *args)
        assert refused.returncode == 3, (args, refused.stdout, refused.stderr)
        assert "not a reviewer" in refused.stderr
    events = audit_events(stack, "review.refused", after_seq=before)
    assert [(e["actor"], e["details"]["verb"]) for e in events] == [("carol", verb) for verb in commands]
    assert all("not a reviewer" in e["details"]["reason"] for e in events)
    assert {e["subject"] for e in events} == {"sessions", f"session:{session_id}"}
    # Nothing was shown to carol, so nothing is audited as seen by her.
    for action in ("session.replay", "session.export", "session.watch"):
        assert [e for e in audit_events(stack, action, after_seq=before) if e["actor"] == "carol"] == []

    # Negative control: bob, a reviewer, is not refused, and leaves no refusal.
    assert stack.jit("bob", "sessions", "verify", session_id).returncode == 0
    assert len(audit_events(stack, "review.refused", after_seq=before)) == len(events)


# -- verification ----------------------------------------------------------------------------------
def test_verify_names_altered_truncated_and_deleted_recordings(stack: LocalStack, grant: int) -> None:
    ids = [_exec_session(stack, grant, f"echo verify-me-{n}")[1] for n in range(4)]
    altered, truncated, deleted, untouched = ids
    paths = {r["id"]: Path(r["recording_path"]) for r in session_rows(stack) if r["id"] in ids}
    originals = {sid: path.read_bytes() for sid, path in paths.items()}
    for sid in ids:
        ok = stack.jit("bob", "sessions", "verify", sid)
        assert ok.returncode == 0, ok.stderr

    try:
        blob = bytearray(originals[altered])
        blob[len(blob) // 2] ^= 0x01
        paths[altered].write_bytes(bytes(blob))
        paths[truncated].write_bytes(originals[truncated][:-1])
        paths[deleted].unlink()

        problems = {
            altered: "altered",
            truncated: "truncated",
            deleted: "missing",
        }
        for sid, word in problems.items():
            failed = stack.jit("bob", "sessions", "verify", sid)
            assert failed.returncode != 0, sid
            assert f"FAILED {sid}" in failed.stdout
            assert word in failed.stdout
            assert sid in failed.stderr

        everything = stack.jit("bob", "sessions", "verify", "--json")
        assert everything.returncode != 0
        results = {r["id"]: r for r in json.loads(everything.stdout)}
        assert {sid for sid, r in results.items() if not r["ok"]} == set(problems)
        assert results[untouched]["ok"] is True  # negative control: the one left alone still verifies
        on_bastion = stack.admin("sessions", "verify", check=False)
        assert on_bastion.returncode != 0
        for sid in problems:
            assert f"FAILED {sid}" in on_bastion.stdout
        assert f"FAILED {untouched}" not in on_bastion.stdout
    finally:
        for sid, data in originals.items():
            paths[sid].write_bytes(data)
    restored = stack.jit("bob", "sessions", "verify")
    assert restored.returncode == 0, restored.stdout + restored.stderr


# -- a large recording ---------------------------------------------------------------------------
def test_a_500_mb_session_is_listed_searched_and_replayed_from_the_index(tmp_path: Path) -> None:
    size = 500 * 1024 * 1024
    with started_stack(tmp_path / "site") as big:
        request_id = big.grant("alice", "bob")
        big.jit("alice", "cert", str(request_id), check=True)
        since = _now()
        # With a terminal every byte is recorded (without one, bulk output is capped by capture_limit).
        command = f"yes 0123456789 | head -c {size}; echo big-done-$((6*7))"
        client = subprocess.Popen(
            [*ssh_argv(big, "alice", request_id, extra=["-tt"]), command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        printed, tail = 0, b""
        try:
            assert client.stdout is not None
            while chunk := client.stdout.read1(1 << 20):
                printed += len(chunk)
                tail = (tail + chunk)[-64:]
            _, errors = client.communicate(timeout=60)
        finally:
            if client.poll() is None:
                client.kill()
                client.communicate()
        assert client.returncode == 0, errors
        assert printed > size  # the terminal turned each \n into \r\n, too
        assert b"big-done-42" in tail
        row = ended_session(big, since=since, timeout=300)
        session_id = row["id"]
        _indexed(big, session_id, timeout=300)
        recording = Path(row["recording_path"])
        # Every byte is recorded, compressed on disk.
        _, frames, truncated = read_recording(recording)
        assert sum(len(frame.payload) for frame in frames if frame.code == "o") == printed
        assert not truncated[0]
        assert row["recording_size"] < size // 10
        away = recording.with_name(recording.name + ".away")
        try:
            # Take the recording away: listing, searching and showing answer from the index alone.
            recording.rename(away)
            listed = {r["id"]: r for r in _json(big.jit("bob", "sessions", "--json"))}
            assert listed[session_id]["bytes_out"] == printed
            assert listed[session_id]["recording_size"] == row["recording_size"]
            assert listed[session_id]["commands"] >= 1
            found = _json(big.jit("bob", "sessions", "--grep", r"^yes 0123456789 \| head", "--json"))
            assert [r["id"] for r in found] == [session_id]
            assert found[0]["matched_commands"][0]["command"] == command
            assert [r["id"] for r in _json(big.jit("bob", "sessions", "--grep-output", "big-done-42", "--json"))] == [
                session_id
            ]
            assert _json(big.jit("bob", "sessions", "--grep", "no-such-command", "--json")) == []
            detail = _json(big.jit("bob", "sessions", "show", session_id, "--json"))
            assert detail["commands_run"][0]["command"] == command
            # Negative control: what does read the recording now fails, naming the session.
            gone = big.jit("bob", "sessions", "verify", session_id)
            assert gone.returncode != 0
            assert session_id in gone.stdout
        finally:
            if away.exists():
                away.rename(recording)

        # Replay starts at once: the first bytes arrive while most of the recording is still unread.
        replay = subprocess.Popen(
            [sys.executable, "-m", "jit_ssh.cli", "replay", session_id],
            env=big.user_env("bob"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            assert replay.stdout is not None
            first = bytearray()
            _read_until(replay.stdout.fileno(), b"0123456789\r\n0123456789", first, timeout=60)
            assert replay.poll() is None  # still playing
        finally:
            os.killpg(replay.pid, signal.SIGKILL)
            replay.communicate()
        assert _audit(big, "session.replay", session_id)
        recording.unlink()  # 500 MB: do not leave it in pytest's kept temporary folders


# -- retention -------------------------------------------------------------------------------------
BREAK_GLASS_RULE = """
[[rule]]
name = "prod-break-glass"
hosts = ["prod-*"]
requesters = ["sre"]
logins = ["{login}"]
max_duration = "1h"
break_glass = true
"""


def _prune(stack: LocalStack, *extra: str) -> dict[str, Any]:
    return _json(stack.admin("sessions", "prune", "--older-than", "1s", "--json", *extra))


def test_prune_is_a_dry_run_by_default_and_keeps_held_and_break_glass_sessions(tmp_path: Path) -> None:
    with started_stack(tmp_path / "site", policy=DEFAULT_POLICY + BREAK_GLASS_RULE) as st:
        normal = st.grant("alice", "bob")
        st.jit("alice", "cert", str(normal), check=True)
        _, old = _exec_session(st, normal, "echo prune-me")
        _, held = _exec_session(st, normal, "echo hold-me")
        filed = _json(st.jit(
            "alice", "request", HOST, "--reason", "on call: site down", "--for", "30m", "--login", st.login,
            "--break-glass", "--no-wait", "--json",
        ))  # fmt: skip
        assert filed["state"] == "approved"
        assert filed["review_required"] is True
        st.jit("alice", "cert", str(filed["id"]), check=True)
        _, glass = _exec_session(st, int(filed["id"]), "echo break-glass")
        paths = {r["id"]: Path(r["recording_path"]) for r in session_rows(st)}
        held_out = st.admin("sessions", "hold", held)
        assert "on hold" in held_out.stdout

        # Every session has ended over a second ago once the dry run lists the one it may prune.
        wait_for(lambda: _prune(st)["would_prune"], what="the sessions to be older than 1s")
        dry = _prune(st)
        assert dry["would_prune"] == [old]
        kept = {k["id"]: k["why"] for k in dry["kept"]}
        assert kept == {held: "legal hold", glass: "under review (break-glass access)"}
        assert all(path.exists() for path in paths.values())  # a dry run deletes nothing
        text = st.admin("sessions", "prune", "--older-than", "1s")
        assert "dry run" in text.stdout

        applied = _prune(st, "--yes")
        assert applied["pruned"] == [old]
        assert not paths[old].exists()
        assert paths[held].exists()
        assert paths[glass].exists()
        refused = st.jit("bob", "replay", old)
        assert refused.returncode != 0
        assert "pruned" in refused.stderr
        statuses = {r["id"]: r["status"] for r in _json(st.jit("bob", "sessions", "verify", "--json"))}
        assert statuses == {old: "pruned", held: "ok", glass: "ok"}

        # Released from hold, it goes at the next prune; the break-glass session stays until reviewed.
        st.admin("sessions", "hold", held, "--release")
        assert _prune(st, "--yes")["pruned"] == [held]
        assert paths[glass].exists()
        events = [json.loads(line) for line in st.admin("audit", "export").stdout.splitlines()]
        actions = [e["action"] for e in events]
        assert actions.count("sessions.pruned") == 2
        assert "session.hold" in actions
        assert "session.release" in actions


def test_prune_deletes_the_recordings_index_files_with_it(tmp_path: Path) -> None:
    """The index beside a recording holds what was sent to the host (``.input``: a script's lines, a password
    typed blind) and what it printed (``.lines``): pruning the recording must not leave them behind."""
    with started_stack(tmp_path / "site") as st:
        grant = st.grant("alice", "bob")
        st.jit("alice", "cert", str(grant), check=True)
        since = _now()
        done = run_ssh([*ssh_argv(st, "alice", grant), "cat >/dev/null; echo printed-line"], stdin=b"sent-line\n")
        assert done.returncode == 0, done.stderr
        pruned = ended_session(st, since=since)["id"]
        _, kept = _exec_session(st, grant, "echo kept-line")
        for session_id in (pruned, kept):
            _indexed(st, session_id)
        paths = {r["id"]: Path(r["recording_path"]) for r in session_rows(st)}
        beside = {sid: sorted(p.name for p in paths[sid].parent.glob(paths[sid].stem + ".*")) for sid in paths}
        assert {Path(n).suffix for n in beside[pruned]} >= {".jsr", ".lines", ".input"}
        st.admin("sessions", "hold", kept)

        wait_for(lambda: _prune(st)["would_prune"], what="the session to be older than 1s")
        assert _prune(st, "--yes")["pruned"] == [pruned]
        left = sorted(p.name for p in paths[pruned].parent.glob(paths[pruned].stem + ".*"))
        assert left == [], f"pruning left {left} of session {pruned}"
        assert sorted(p.name for p in paths[kept].parent.glob(paths[kept].stem + ".*")) == beside[kept]
