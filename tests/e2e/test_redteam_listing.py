"""Red team, invariant 10 (blinding a reviewer): a listing cut at its limit does not say so.

``jit-ssh sessions`` shows the newest 200 sessions that match, and says nothing when more matched;
``--flagged`` is the reviewer's queue of sessions to look at. A user with a grant who, after the session
that matters, opens 200 more that each trip a flag (``ssh HOST 'nohup true'``, a minute's work through one
ControlMaster) pushes it out of the queue a reviewer reads, silently; ``--user`` only narrows it to the
same 200, and ``--grep`` stops at the limit too. The same holds for any listing with a limit.

Property: a listing cut by its limit says so (how many more, and how to see them). Fix: count what matched
and print "N more not shown (--limit / --since)" (and a ``truncated`` field in ``--json``); the flagged
queue grouped by user, so one user's flood shows as one line.

The limit is lowered to 2 here to keep the test small; the default of 200 behaves the same.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from jit_ssh.cli.bastion.stack import LocalStack

from tests.e2e.stack_fixture import ended_session, granted, indexed, just_before, run_ssh, ssh_argv, started_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with started_stack(tmp_path_factory.mktemp("listing") / "site") as st:
        yield st


def test_a_flagged_listing_cut_at_its_limit_says_so(stack: LocalStack) -> None:
    request_id = granted(stack)
    for command in ("mosh-server new -p 60001 2>/dev/null || true", "nohup true", "nohup true"):
        since = just_before()
        done = run_ssh([*ssh_argv(stack, "alice", request_id), command])
        assert done.returncode == 0, done.stderr
        assert indexed(stack, ended_session(stack, since=since)["id"])["flags_json"]
    listed = stack.jit("bob", "sessions", "--flagged", "--limit", "2")
    assert listed.returncode == 0, listed.stderr
    assert "mosh-server" not in listed.stdout  # the attack: the first flagged session is out of the queue
    assert "more" in listed.stdout.lower(), listed.stdout  # today: nothing says that one was left out
