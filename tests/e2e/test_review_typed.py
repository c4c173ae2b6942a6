"""Typed lines the screen does not show where they were typed, end to end (issue 10, item 4): the real
OpenSSH client (``ssh -tt``, a login shell) through ``jit-ssh serve`` to a real sshd, then ``jit-ssh
sessions --grep`` as bob, a reviewer.

A line typed at once after connecting reaches the host before its shell does and is read at the first
prompt, after "Last login:" and the motd; a line typed while output is still printing is read at the
prompt that follows it; a line typed after ``stty -echo`` never shows. Each is found by the command as
typed, and the blind ones are marked; negative controls: neither the banner nor output is a command.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack_fixture import PtyClient, ended_session, granted, session_rows, ssh_argv, started_stack, wait_for

pytestmark = pytest.mark.e2e

AT_LOGIN = "echo typed-at-login-$((5*5))"
# Prints until a whole line waits in the terminal's input: whatever the timing, the next line is
# typed while this one is still printing.
PRINTING = "until read -t 0; do seq 1 20000; done"
AHEAD = "echo typed-ahead-$((6*6))"
ECHO_OFF = "stty -echo; PS1='blind> '; echo echo-off-$((1+1))"  # a prompt of our own, to type at
BLIND = "echo blind-$((7*7))"


def test_lines_typed_ahead_at_login_during_output_and_blind_are_found(tmp_path: Path) -> None:
    with started_stack(tmp_path / "site") as stack:
        grant = granted(stack)
        since = time.time() - 0.01
        with PtyClient(ssh_argv(stack, "alice", grant, extra=["-tt"])) as client:  # no command: a login shell
            client.send(AT_LOGIN + "\r")  # at once: ssh is still connecting
            at = client.expect("typed-at-login-25")
            client.send(PRINTING + "\r")
            at = client.expect("\n20000\r\n", start=at)
            client.send(AHEAD + "\r")
            at = client.expect("typed-ahead-36", start=at)
            client.send(ECHO_OFF + "\r")
            at = client.expect("blind> ", start=client.expect("echo-off-2", start=at))
            for key in BLIND + "\r":  # at the prompt, one key at a time; none of them shows
                client.send(key)
            at = client.expect("blind> ", start=client.expect("blind-49", start=at))
            client.send("stty echo; exit\r")
            assert client.wait() == 0, client.text()
        session_id = ended_session(stack, since=since)["id"]
        wait_for(
            lambda: any(r["id"] == session_id and r["index_json"] for r in session_rows(stack)),
            what="the session's index",
        )

        def matched(pattern: str) -> set[str]:
            """The session's commands that ``jit-ssh sessions --grep PATTERN`` names, as bob (a reviewer)."""
            listed = stack.jit("bob", "sessions", "--grep", pattern, "--json")
            assert listed.returncode == 0, listed.stderr
            rows = [row for row in json.loads(listed.stdout) if row["id"] == session_id]
            return {match["command"] for row in rows for match in row["matched_commands"]}

        typed = (AT_LOGIN, PRINTING, AHEAD, BLIND)
        assert matched("^(?:" + "|".join(map(re.escape, typed)) + ")$") == set(typed)
        # Negative controls: neither the banner, nor output, nor a prompt glued on is a command.
        assert matched(r"Last login|GNU/Linux|^[0-9]+$|[#$>] echo") == set()

        shown = stack.jit("bob", "sessions", "show", session_id, "--json")
        assert shown.returncode == 0, shown.stderr
        run: list[dict[str, Any]] = json.loads(shown.stdout)["commands_run"]
        assert [c["command"] for c in run] == [
            AT_LOGIN, PRINTING, AHEAD, ECHO_OFF, BLIND, "stty echo; exit",
        ]  # fmt: skip
        blind = [c["command"] for c in run if c["source"] == "keys-noecho"]
        assert blind == [BLIND, "stty echo; exit"]
