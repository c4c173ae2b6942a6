"""The broker's connection to a host lives only while sessions use it (``onward_idle``, 1 s here).

It is made as soon as the engineer authenticates; a client that then opens no session (``ssh -N``), or
keeps its connection after its sessions (a ControlMaster), must not keep a login on the host. The next
session on the same client connection gets a new onward connection, with a new certificate.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jit_ssh.cli.bastion.stack import LocalStack

from tests.e2e.stack_fixture import (
    control_master,
    granted,
    open_sockets,
    run_ssh,
    session_rows,
    ssh_argv,
    started_stack,
    wait_for,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with started_stack(tmp_path_factory.mktemp("onward-idle"), broker_settings={"onward_idle": '"1s"'}) as stack:
        yield stack


def test_a_client_without_sessions_does_not_keep_a_host_login(stack: LocalStack) -> None:
    request_id = granted(stack)
    assert stack.broker is not None
    pid = stack.broker.pid
    time.sleep(0.5)
    before = open_sockets(pid)
    client = subprocess.Popen(
        [*ssh_argv(stack, "alice", request_id), "-N"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # authenticated: the client's connection and the onward one (made at authentication) ...
        wait_for(lambda: open_sockets(pid) == before + 2, timeout=20, what="the onward connection")
        # ... and a second later, with no session on it, only the client's
        wait_for(lambda: open_sockets(pid) == before + 1, timeout=20, what="the idle onward connection to close")
        assert client.poll() is None, "the client's own connection stays"
    finally:
        client.kill()
        client.wait()
    wait_for(lambda: open_sockets(pid) == before, timeout=20, what="the client's connection to close")


def test_a_control_master_gets_a_new_onward_connection_after_the_idle_close(stack: LocalStack, tmp_path: Path) -> None:
    request_id = granted(stack)
    with control_master(ssh_argv(stack, "alice", request_id), tmp_path / "ctl") as shared:
        since = time.time() - 0.01
        first = run_ssh([*shared, "echo one"])
        assert (first.returncode, first.stdout) == (0, b"one\n"), first.stderr
        time.sleep(2.5)  # past onward_idle: the broker closed its connection to the host
        second = run_ssh([*shared, "echo two"])
        assert (second.returncode, second.stdout) == (0, b"two\n"), second.stderr
        rows = wait_for(
            lambda: (r := session_rows(stack, since=since)) and len(r) == 2 and all(x["ended_at"] for x in r) and r,
            timeout=20, what="both sessions' rows",
        )  # fmt: skip
        serials = [row["onward_serial"] for row in rows]
        assert None not in serials
        assert serials[0] != serials[1], "the second session went over a new onward connection"
