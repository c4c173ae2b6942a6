"""``jit-ssh export`` of real sessions, read by every asciicast reader (issue 10, item 14).

Real sessions through ``jit-ssh serve`` to a real sshd: an exec whose output is not all UTF-8 and whose
environment is partly refused, a terminal session that is resized and cut off by a revocation (so a
notice from jit-ssh is in it), an SFTP session with a success and a failure, and an exec killed by a
signal. Each export must be asciicast v2 exactly as asciinema 3's parser reads it (tests/e2e/
asciicast_rules.py mirrors src/asciicast/v2.rs), must be read by asciinema 2.4 (``cat`` and ``play``), and
must carry jit-ssh's metadata as marker events with readable labels. ``--format v3`` must be v3 as
asciinema 3 reads it (v3.rs), with the exit status as the ``x`` event. Negative controls: the checker
refuses what asciinema 3 refuses (the old export's float timestamp and JSON-object ``x`` events among it),
and asciinema 2.4 refuses the v3 file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from jit_ssh.broker.recording.format import MAGIC, encode_frame
from jit_ssh.cli.bastion.stack import LocalStack

from tests.e2e.asciicast_rules import CastError, check_v2, check_v3
from tests.e2e.stack_fixture import (
    asciicast,
    cached_certificate,
    ended_session,
    granted,
    live_shell,
    recording_frames,
    run_ssh,
    session_rows,
    ssh_argv,
    ssh_options,
    started_stack,
    stream_bytes,
)

pytestmark = pytest.mark.e2e

ASCIINEMA = Path(sys.executable).with_name("asciinema")
TIMEOUT = 60.0


@dataclass(frozen=True)
class Recorded:
    session_id: str
    row_started: float
    facts: dict[str, object]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with started_stack(tmp_path_factory.mktemp("export") / "site") as st:
        yield st


def _since() -> float:
    return time.time() - 0.01


def _exec(stack: LocalStack, grant: int) -> Recorded:
    """Output that is not UTF-8 on stdout, a line on stderr, exit 3; one variable forwarded, one refused."""
    since = _since()
    command = r"printf 'caf\303\251 \377\376 end\n'; printf 'to stderr\n' >&2; exit 3"
    argv = ssh_argv(stack, "alice", grant, extra=["-o", "SetEnv=LC_MESSAGES=C LC_JITTEST=refused-value"])
    done = run_ssh([*argv, command])
    assert done.returncode == 3, done.stderr
    assert done.stdout == b"caf\xc3\xa9 \xff\xfe end\n"
    row = ended_session(stack, since=since)
    return Recorded(row["id"], row["started_at"], {"command": command, "stdout": done.stdout, "stderr": done.stderr})


def _pty(stack: LocalStack) -> Recorded:
    """A terminal session resized from 100x30 to 132x50, then cut off by revoking its grant."""
    second = granted(stack)
    since = _since()
    with live_shell(ssh_argv(stack, "alice", second, extra=["-tt"])) as client:
        client.resize(132, 50)
        client.send("stty size\r")
        client.expect("50 132")
        stack.jit("bob", "revoke", str(second), "--reason", "export test", check=True)
        client.expect(f"grant {second} revoked: session closed")
        assert client.wait() == 255
    row = ended_session(stack, since=since)
    return Recorded(row["id"], row["started_at"], {"request": second})


def _sftp(stack: LocalStack, grant: int, work: Path) -> Recorded:
    """An upload, a download of a file that does not exist (refused by the server), a removal."""
    local, remote, missing = work / "local.txt", work / "uploaded.txt", work / "missing.txt"
    local.write_bytes(b"new content\n")
    batch = work / "batch"
    batch.write_text(f"put {local} {remote}\n-get {missing} {work / 'got'}\nrm {remote}\n", encoding="utf-8")
    cert = cached_certificate(stack, "alice", grant)
    options = ssh_options(stack, "alice", cert, f"{stack.login}@{stack.host_names[0]}")
    since = _since()
    done = subprocess.run(
        ["sftp", "-q", *options, "-P", str(stack.port), "-b", str(batch), "127.0.0.1"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    row = ended_session(stack, since=since)
    return Recorded(row["id"], row["started_at"], {"remote": str(remote), "missing": str(missing)})


def _signal(stack: LocalStack, grant: int) -> Recorded:
    since = _since()
    done = run_ssh([*ssh_argv(stack, "alice", grant), "kill -TERM $$"])
    assert done.returncode == 255
    row = ended_session(stack, since=since)
    assert (row["exit_status"], row["exit_signal"]) == (None, "TERM")
    return Recorded(row["id"], row["started_at"], {})


@pytest.fixture(scope="module")
def recorded(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Recorded]:
    grant = granted(stack)
    return {
        "exec": _exec(stack, grant),
        "pty": _pty(stack),
        "sftp": _sftp(stack, grant, tmp_path_factory.mktemp("sftp-area")),
        "signal": _signal(stack, grant),
    }


def _export(stack: LocalStack, session_id: str, out: Path, *options: str) -> str:
    done = stack.jit("bob", "export", session_id, "-o", str(out), *options)
    assert done.returncode == 0, done.stderr
    return out.read_bytes().decode("utf-8")  # strict: a file that is not UTF-8 is refused by every reader


def _asciinema(*args: str) -> subprocess.CompletedProcess[bytes]:
    """asciinema 2.4 (PyPI) with no terminal: stdin from /dev/null and no controlling tty to open."""
    return subprocess.run(
        [str(ASCIINEMA), *args],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", "LANG": "C.UTF-8"},
        timeout=TIMEOUT,
        check=False,
        start_new_session=True,
    )


def _markers(events: list[tuple[int, str, str]]) -> list[str]:
    return [data for _, code, data in events if code == "m"]


# -- the checker is as strict as asciinema 3 -------------------------------------------------------------
GOOD_HEADER = '{"version": 2, "width": 80, "height": 24, "timestamp": 1700000000, "jit_ssh": {"any": [1, null]}}'


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        # What jit-ssh export wrote before: each line is refused by asciinema 3.
        (['{"version": 2, "width": 80, "height": 24, "timestamp": 1700000000.25}'], "timestamp"),
        ([GOOD_HEADER, '[1.5, "x", {"end": {"exit_status": 0}}]'], "data must be a string"),
        ([GOOD_HEADER, '[1.5, "x", {"raw": "o", "base64": "/w=="}]'], "data must be a string"),
        # And the other rules of v2.rs and serde_json.
        (['{"version": 2, "width": 80.0, "height": 24}'], "width"),
        (['{"version": 2, "width": 80, "height": 70000}'], "height"),
        (['{"version": 2, "width": 80}'], "height"),
        (['{"version": 1, "width": 80, "height": 24}'], "not an asciicast v2"),
        (['{"version": 2, "width": 80, "height": 24, "env": {"TERM": 1}}'], "env"),
        (['{"version": 2, "width": 80, "height": 24, "title": ["t"]}'], "title"),
        (['{"version": 2, "width": 80, "height": 24, "width": 81}'], "duplicate"),
        ([GOOD_HEADER, '[-0.5, "o", "a"]'], "u64"),
        ([GOOD_HEADER, '["1.0", "o", "a"]'], "number"),
        ([GOOD_HEADER, '[NaN, "o", "a"]'], "NaN"),
        ([GOOD_HEADER, '[1.0, "", "a"]'], "missing event code"),
        ([GOOD_HEADER, '[1.0, "\\u006f", "a"]'], "without escapes"),
        ([GOOD_HEADER, '[1.0, "o", null]'], "data must be a string"),
        ([GOOD_HEADER, '[1.0, "o", "a", "b"]'], "3-element"),
        ([GOOD_HEADER, '[1.0, "o", "\\ud800"]'], "lone surrogate"),
        ([GOOD_HEADER, '[1.0, "r", "80"]'], "resize"),
        ([GOOD_HEADER, '[1.0, "r", "80x-1"]'], "resize"),
        ([GOOD_HEADER, '[1.0, "r", "80x65536"]'], "resize"),
        ([GOOD_HEADER, '[2.0, "o", "a"]', '[1.0, "o", "b"]'], "time goes back"),
    ],
)
def test_checker_refuses_what_asciinema_3_refuses(lines: list[str], why: str) -> None:
    with pytest.raises(CastError, match=why):
        check_v2("\n".join(lines) + "\n")


def test_checker_accepts_what_asciinema_3_accepts() -> None:
    header, events = check_v2(
        GOOD_HEADER + "\n\n"  # an empty line is skipped
        '[0, "o", "a"]\n[0.0000015, "i", "b"]\n[1.5, "m", ""]\n[2, "r", "+80x24"]\n[2.25, "q", "other"]\n'
    )
    assert header["jit_ssh"] == {"any": [1, None]}  # an unknown header field is ignored
    assert events == [(0, "o", "a"), (1, "i", "b"), (1_500_000, "m", ""), (2_000_000, "r", "+80x24"),
                      (2_250_000, "q", "other")]  # fmt: skip
    v3 = (
        '{"version": 3, "term": {"cols": 80, "rows": 24}, "tags": ["x"]}\n'
        '# a comment\n[0.5, "o", "a"]\n[0.25, "x", "-1"]\n'  # intervals; an exit status may be negative
    )
    assert check_v3(v3)[1] == [(500_000, "o", "a"), (750_000, "x", "-1")]
    with pytest.raises(CastError, match="i32"):
        check_v3(v3.replace('"-1"', '"2147483648"'))
    with pytest.raises(CastError, match="no null"):
        check_v3(v3.replace('"tags"', '"env": {"SHELL": null}, "tags"'))


# -- exports of real sessions ----------------------------------------------------------------------------
def test_every_export_is_asciicast_v2_as_asciinema_3_reads_it(
    stack: LocalStack, recorded: dict[str, Recorded], tmp_path: Path
) -> None:
    for name, session in recorded.items():
        text = _export(stack, session.session_id, tmp_path / f"{name}.cast")
        header, events = check_v2(text)
        assert header["timestamp"] == int(session.row_started), name
        assert header["jit_ssh"]["session"] == session.session_id
        assert {code for _, code, _ in events} <= {"o", "i", "r", "m"}, name  # the codes the specification lists
        # The bastion's own export (an admin, --config) writes the same file.
        local = tmp_path / f"{name}-local.cast"
        stack.admin("export", session.session_id, "-o", str(local))
        assert local.read_text(encoding="utf-8") == text, name


def test_asciinema_2_cats_and_plays_every_export(
    stack: LocalStack, recorded: dict[str, Recorded], tmp_path: Path
) -> None:
    for name, session in recorded.items():
        path = tmp_path / f"{name}.cast"
        _, events = check_v2(_export(stack, session.session_id, path))
        output = "".join(data for _, code, data in events if code == "o").encode()

        cat = _asciinema("cat", str(path))
        assert cat.returncode == 0, (name, cat.stderr)
        assert cat.stdout == output, name

        played = _asciinema("play", "-s", "1000", str(path))
        assert played.returncode == 0, (name, played.stderr)
        assert played.stdout == output, name

        # Every event, as asciinema read it: the same codes and data in the same order.
        dumped = _asciinema("play", "-s", "1000", "--out-fmt", "asciicast", str(path))
        assert dumped.returncode == 0, (name, dumped.stderr)
        lines = dumped.stdout.decode("utf-8").split("\r\n")
        assert [e[1:] for e in map(json.loads, filter(None, lines[1:]))] == [[c, d] for _, c, d in events], name


def test_metadata_is_in_markers(stack: LocalStack, recorded: dict[str, Recorded], tmp_path: Path) -> None:
    exported = {
        name: check_v2(_export(stack, session.session_id, tmp_path / f"{name}.cast"))[1]
        for name, session in recorded.items()
    }
    facts = recorded["exec"].facts
    markers = _markers(exported["exec"])
    assert markers[:3] == [f"exec: {facts['command']}", "env LC_MESSAGES=C", "env refused LC_JITTEST"]
    assert markers[-1] == "exit 3"
    assert re.fullmatch(r"end: closed; \d+ bytes in, \d+ bytes out", markers[-2]), markers

    request = recorded["pty"].facts["request"]
    events = exported["pty"]
    assert ("r", "132x50") in [(code, data) for _, code, data in events]
    assert "stty size" in "".join(data for _, code, data in events if code == "i")
    markers = _markers(events)
    assert f"jit-ssh: grant {request} revoked: session closed" in markers
    assert re.fullmatch(rf"end: grant {request} revoked: session closed; \d+ bytes in, \d+ bytes out", markers[-1])
    assert not [m for m in markers if m.startswith("exit")]  # the host never said: cut off by jit-ssh

    facts = recorded["sftp"].facts
    markers = _markers(exported["sftp"])
    digest = hashlib.sha256(b"new content\n").hexdigest()
    remote = re.escape(str(facts["remote"]))
    written = rf"sftp write {remote} \[write,creat,trunc\] mode 0\d{{3}} 12 bytes sha256 {digest}: ok"
    assert [m for m in markers if re.fullmatch(written, m)], markers
    assert f"sftp remove {facts['remote']}: ok" in markers
    assert [m for m in markers if str(facts["missing"]) in m and ": no such file" in m], markers
    assert "o" not in {code for _, code, _ in exported["sftp"]}  # no file content in the terminal stream

    markers = _markers(exported["signal"])
    assert markers[-1] == "exit signal TERM"


def test_labels_from_the_session_cannot_act_on_a_terminal(stack: LocalStack, tmp_path: Path) -> None:
    grant = granted(stack)
    since = _since()
    done = run_ssh([*ssh_argv(stack, "alice", grant), "true '\033]52;c;aGk=\007\t\u202e'"])
    assert done.returncode == 0, done.stderr
    session_id = ended_session(stack, since=since)["id"]
    _, events = check_v2(_export(stack, session_id, tmp_path / "hostile.cast"))
    # The command in the marker is shown, never obeyed: every character a terminal or a browser would act on
    # (ESC, BEL, TAB, a bidi override) is a visible escape; the recording keeps the command exactly.
    assert _markers(events)[0] == "exec: true '\\u001b]52;c;aGk=\\u0007\\t\\u202e'"


def test_text_that_is_not_utf8_is_replaced_and_kept_in_the_recording(
    stack: LocalStack, recorded: dict[str, Recorded], tmp_path: Path
) -> None:
    session = recorded["exec"]
    _, events = check_v2(_export(stack, session.session_id, tmp_path / "exec.cast"))
    shown = "".join(data for _, code, data in events if code == "o")
    assert "café \ufffd\ufffd end\n" in shown
    assert "to stderr\n" in shown
    assert any("not UTF-8" in m for m in _markers(events))  # the reader is told the bytes were replaced
    row = next(r for r in session_rows(stack) if r["id"] == session.session_id)
    _, frames, _ = recording_frames(Path(row["recording_path"]))
    assert stream_bytes(frames, "o") == session.facts["stdout"]  # the exact bytes, in the recording
    verified = stack.jit("bob", "sessions", "verify", session.session_id)
    assert verified.returncode == 0, verified.stderr
    helped = stack.jit("bob", "export", "--help")
    assert "U+FFFD" in helped.stdout


def test_v3_export_as_asciinema_3_reads_it(stack: LocalStack, recorded: dict[str, Recorded], tmp_path: Path) -> None:
    for name, session in recorded.items():
        _, v2_events = check_v2(_export(stack, session.session_id, tmp_path / f"{name}.cast"))
        path = tmp_path / f"{name}-v3.cast"
        header, events = check_v3(_export(stack, session.session_id, path, "--format", "v3"))
        assert header["timestamp"] == int(session.row_started), name
        assert header["jit_ssh"]["session"] == session.session_id
        assert isinstance(header["term"]["cols"], int)
        exits = [data for _, code, data in events if code == "x"]
        # The same events as v2, at the same times (to the microsecond), and the exit status last.
        assert [e for e in events if e[1] != "x"] == v2_events, name
        expected = {"exec": ["3"], "pty": [], "sftp": ["0"], "signal": ["143"]}[name]  # 128 + SIGTERM's 15
        assert exits == expected, name
        if exits:
            assert events[-1][1] == "x"
        # Negative control: asciinema 2.4 reads v2 only, and says so.
        refused = _asciinema("cat", str(path))
        assert refused.returncode != 0
        assert b"only asciicast v1 and v2" in refused.stderr


def test_an_unknown_format_is_refused(stack: LocalStack, recorded: dict[str, Recorded], tmp_path: Path) -> None:
    done = stack.jit("bob", "export", recorded["exec"].session_id, "-o", str(tmp_path / "x.cast"), "--format", "v4")
    assert done.returncode == 2
    assert "v4" in done.stderr
    assert not (tmp_path / "x.cast").exists()


def test_replay_still_plays_the_export_stream(stack: LocalStack, recorded: dict[str, Recorded]) -> None:
    done = subprocess.run(
        [*stack.jit_argv(), "replay", recorded["exec"].session_id, "--speed", "1000"],
        env={**stack.user_env("bob"), "PYTHONIOENCODING": "utf-8"},
        stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "café \ufffd\ufffd end\n" in done.stdout.decode("utf-8")


# -- a recording written by an older broker ------------------------------------------------------------
def test_an_old_recording_with_a_float_timestamp_exports_an_integer(tmp_path: Path) -> None:
    header = {"version": 2, "width": 80, "height": 24, "timestamp": 1700000000.75, "env": {"TERM": "xterm"},
              "jit_ssh": {"session": "old-1", "command": "ls", "started": 1700000000.75}}  # fmt: skip
    frames = [
        encode_frame(b"x", 0.0, json.dumps({"exec": "ls"}).encode()),
        encode_frame(b"o", 0.5, b"a\xff\n"),
        encode_frame(b"x", 1.0, json.dumps({"end": {"reason": "closed", "exit_status": 0}}).encode()),
    ]
    path = tmp_path / "old.rec"
    path.write_bytes(MAGIC + json.dumps(header).encode() + b"\n" + b"".join(frames))
    header_out, events = asciicast(path)
    assert header_out["timestamp"] == 1700000000
    assert [(code, data) for _, code, data in events if code != "m"] == [("o", "a\ufffd\n")]
    assert _markers([(0, code, data) for _, code, data in events])[0] == "exec: ls"
    assert _markers([(0, code, data) for _, code, data in events])[-1] == "exit 0"
