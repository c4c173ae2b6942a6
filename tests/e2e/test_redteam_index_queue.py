"""Red team, invariants 5 and 6: one user's sessions hold up the index, and so the flags, of everyone else's.

Indexing runs in budgeted processes (broker/isolate.py), one recording at a time by default
(``index_workers = 1``), each up to ``index_cpu_budget`` (2 minutes by default) and four times that in
wall-clock time. The queue is first in, first out, for all users together. A session of one keystroke after
16 KiB of ``ESC # 8`` on a 1000x500 terminal costs its whole budget, so a user with a grant who opens 30
such sessions (a minute's work) holds the queue for an hour at least: every session that ends meanwhile,
anyone's, waits behind them with no index, so ``--grep`` does not find it, ``--flagged`` does not list it,
and no ``session.flagged`` webhook goes out. The attacker's own real session, ended after the flood, is
hidden the same way.

Property: one user's backlog cannot delay another user's index behind all of it. Fix: a fair queue (round
robin by user, or by grant) and a bound on the CPU time one user's recordings may take in a window (over
it: index cheaply, keys and lines without the emulator, and flag); flags that need no emulator (exec
commands, environment values, file operations) written at the session's end, before the index.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.e2e.stack_fixture import (
    ended_session,
    granted,
    just_before,
    run_ssh,
    session_rows,
    ssh_argv,
    started_stack,
    wait_for,
)
from tests.e2e.test_enforcement_jam import _pathological_session

pytestmark = pytest.mark.e2e

_FLOOD = 4


def test_one_users_backlog_does_not_delay_anothers_index(tmp_path: Path) -> None:
    settings = {"index_cpu_budget": '"2s"', "index_workers": "1"}
    with started_stack(tmp_path / "site", users=("alice", "bob", "carol", "dave"), broker_settings=settings) as stack:
        attacker = granted(stack)
        other = granted(stack, requester="dave", approver="bob")
        since = just_before()
        threads = [
            threading.Thread(target=_pathological_session, args=(ssh_argv(stack, "alice", attacker, extra=["-tt"]),))
            for _ in range(_FLOOD)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)

        def flood_ended() -> list[str] | None:
            ended = [str(r["id"]) for r in session_rows(stack, since=since) if r["ended_at"] is not None]
            return ended if len(ended) == _FLOOD else None

        flood: list[str] = wait_for(flood_ended, what="the pathological sessions' ends", timeout=120)

        since = just_before()
        done = run_ssh([*ssh_argv(stack, "dave", other), "mosh-server new -p 60001 2>/dev/null || true"])
        assert done.returncode == 0, done.stderr
        victim = ended_session(stack, since=since)["id"]

        def victim_indexed() -> dict[str, bool] | None:
            done = {r["id"]: r["index_json"] is not None or r["index_error"] is not None for r in session_rows(stack)}
            return done if done[victim] else None

        state: dict[str, bool] = wait_for(victim_indexed, timeout=300, what="dave's index")
        waiting = [session for session in flood if not state[session]]
        # Fair: dave's session comes at most one job after the first of alice's. Today it comes after all.
        assert len(waiting) >= _FLOOD - 2, f"dave's index waited for {_FLOOD - len(waiting)} of alice's sessions"
