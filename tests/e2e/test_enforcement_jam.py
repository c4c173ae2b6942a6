"""Invariant 6 against a user who wants to freeze the broker (issue 10, items 7 and 8).

Six sessions print pathological terminal output (``ESC # 8`` fills the whole screen, on a 1000x500 terminal,
between keystrokes), which made indexing fill the thread pool that authentication, control commands and the
enforcer shared. While they are indexed, a control command answers, a revocation closes another session,
and the broker stops on SIGTERM without waiting for them; each index stops at its budget, keeps what it has
and marks the session. A search pattern with catastrophic backtracking answers instead of freezing the
broker. Nothing here asserts how long anything took: each wait has a generous bound.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

import pytest

from tests.e2e.stack_fixture import (
    PtyClient,
    cli_json,
    ended_session,
    granted,
    grep_ids,
    indexed,
    just_before,
    run_ssh,
    session_rows,
    ssh_argv,
    started_stack,
    wait_for,
)

pytestmark = pytest.mark.e2e

PATHOLOGICAL = 6


def _pathological_session(argv: list[str], rounds: int = 8) -> None:
    """A 1000x500 terminal: 16 KiB of ESC#8 and no line end before each of a few keystrokes (each makes the
    indexer's emulator fill the whole screen some 5,000 times: about 0.2 s of CPU a key here)."""
    with PtyClient(argv, cols=1000, rows=500) as client:
        client.send(f"for i in $(seq {rounds}); do printf '\\033#8%.0s' $(seq 5500); printf 'R%d>' $i; read -rsn1; "
                    "done; echo all-rounds-done\r")  # fmt: skip
        for round_ in range(1, rounds + 1):
            client.expect(f"R{round_}>")
            client.send("x")
        client.expect("all-rounds-done")
        client.send("exit\r")
        client.wait(timeout=60)


def test_pathological_output_neither_delays_enforcement_nor_control(tmp_path: Path) -> None:
    settings = {"index_cpu_budget": '"1s"', "index_workers": "2"}
    with started_stack(tmp_path / "site", users=("alice", "bob", "carol", "dave"), broker_settings=settings) as stack:
        request_id = granted(stack)
        other = granted(stack, requester="dave", approver="bob")
        since = just_before()
        threads = [
            threading.Thread(target=_pathological_session, args=(ssh_argv(stack, "alice", request_id, extra=["-tt"]),))
            for _ in range(PATHOLOGICAL)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        wait_for(
            lambda: len([r for r in session_rows(stack, since=since) if r["ended_at"] is not None]) == PATHOLOGICAL,
            what="the pathological sessions' ends", timeout=60,
        )  # fmt: skip

        # Their indexes are being built now. The broker answers, and enforces, meanwhile.
        with PtyClient(ssh_argv(stack, "dave", other, extra=["-tt"])) as victim:
            victim.send("echo still-enforced-$((1+1))\r")
            victim.expect("still-enforced-2")
            status = stack.jit("alice", "status", "--json", timeout=30)
            assert status.returncode == 0, status.stderr
            revoked = stack.jit("bob", "revoke", str(other), "--reason", "jam test", timeout=30)
            assert revoked.returncode == 0, revoked.stderr
            assert victim.wait(timeout=30) == 255
            assert f"grant {other} revoked" in victim.text()

        # Each pathological index stopped at its budget, kept what it had, and says so.
        rows = [r for r in session_rows(stack, since=since) if r["pty"] and r["user"] == "alice"]
        assert len(rows) == PATHOLOGICAL
        for row in rows:
            done = indexed(stack, row["id"], timeout=300)
            assert "over its budget" in (done["index_json"] or ""), done["index_json"]
            assert "index incomplete" in (done["flags_json"] or "")
        listed = {r["id"]: r for r in cli_json(stack.jit("bob", "sessions", "--json"))}
        assert {listed[r["id"]]["index"] for r in rows} == {"partial"}
        # The typed command is still found, from the raw keys.
        assert {r["id"] for r in rows} <= grep_ids(stack, "echo all-rounds-done")


def test_sigterm_does_not_wait_for_indexing(tmp_path: Path) -> None:
    settings = {"index_cpu_budget": '"10m"'}  # far more than the test takes: the index is still running
    with started_stack(tmp_path / "site", broker_settings=settings) as stack:
        request_id = granted(stack)
        since = just_before()
        _pathological_session(ssh_argv(stack, "alice", request_id, extra=["-tt"]))
        row = ended_session(stack, since=since)
        assert row["index_json"] is None  # still being indexed
        assert stack.stop_broker(signal.SIGTERM) == 0  # stopped, not killed after the grace period
        # Indexed when the broker starts again (again within no budget worth waiting for: only queued).
        stack.start_broker()


def test_a_backtracking_search_pattern_does_not_freeze_the_broker(tmp_path: Path) -> None:
    with started_stack(tmp_path / "site") as stack:
        request_id = granted(stack)
        since = just_before()
        done = run_ssh([*ssh_argv(stack, "alice", request_id), "echo " + "a" * 40 + "!"])
        assert done.returncode == 0, done.stderr
        indexed(stack, ended_session(stack, since=since)["id"])
        # Python's re needs about 2**40 steps for this on that command; a linear-time matcher answers at once.
        search = subprocess.Popen(
            [*stack.jit_argv(), "sessions", "--grep", "(a+)+$", "--json"],
            env=stack.user_env("bob"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            status = stack.jit("alice", "status", "--json", timeout=30)
            assert status.returncode == 0, status.stderr
            out, err = search.communicate(timeout=60)
        finally:
            if search.poll() is None:
                search.kill()
                search.communicate()
        assert search.returncode == 0, err
        assert out.strip() == "[]"
        # RE2 syntax: what it cannot do in linear time (back-references) is refused with one line.
        refused = stack.jit("bob", "sessions", "--grep", r"(a)\1")
        assert refused.returncode == 2
        assert "RE2" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
