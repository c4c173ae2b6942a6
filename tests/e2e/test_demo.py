"""``jit-ssh demo``, the README's first command, run as a user would run it (issue 6).

The demo checks its own outcome (a session recorded, replayed and verified, a revoked certificate refused,
an intact audit chain) and exits non-zero when a check fails; these tests run the installed console script
and then check what it leaves behind: nothing, neither its temporary folder nor a process, also when it
is interrupted with Ctrl-C half way.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.stack_fixture import wait_for

pytestmark = pytest.mark.e2e

JIT_SSH = Path(sys.executable).with_name("jit-ssh")
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
CHECKS = (
    "ok alice cannot approve her own request (exit 3)",
    "ok carol, not an approver, cannot approve it either",
    "ok the remote command ran on prod-web-3 (exit 0)",
    "ok one session recorded for the request",
    "ok the replay shows what the session printed",
    "ok the recording's digest matches the store and the audit log",
    "ok the broker refuses the revoked certificate",
    "ok audit chain intact",
)


def _workdir(output: str) -> Path:
    match = re.search(r"Setting up in (/\S+?):", output)
    assert match, output
    return Path(match.group(1))


def _processes_in(folder: Path) -> list[str]:
    """Command lines of running processes that mention ``folder`` (the demo's broker and sshd hosts do)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # it ended while we looked
        if str(folder) in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_demo_runs_end_to_end_checks_itself_and_cleans_up() -> None:
    done = subprocess.run(
        [str(JIT_SSH), "demo"], capture_output=True, text=True, stdin=subprocess.DEVNULL, env=ENV, timeout=180,
        check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for check in CHECKS:
        assert check in output, check
    assert "demo check failed" not in output
    assert "Audit chain intact" in output
    assert "hello from" in output
    workdir = _workdir(output)
    assert workdir.name.startswith("jit-ssh-demo-")
    assert not workdir.exists()
    assert wait_for(lambda: not _processes_in(workdir), timeout=15, what="the demo's processes to end")


def test_demo_interrupted_with_ctrl_c_still_cleans_up() -> None:
    # A terminal's Ctrl-C interrupts the whole foreground process group: the demo and what it started.
    demo = subprocess.Popen(
        [str(JIT_SSH), "demo"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=ENV, start_new_session=True,
    )  # fmt: skip
    output = bytearray()
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 120
        while b"filed and waiting" not in output:
            assert time.monotonic() < deadline, output.decode(errors="replace")
            ready, _, _ = select.select([demo.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(demo.stdout.fileno(), 65536)
                assert chunk, output.decode(errors="replace")
                output += chunk
        os.killpg(demo.pid, signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
        output += rest
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.communicate()
    text = output.decode(errors="replace")
    assert demo.returncode == 130, text
    assert "interrupted: cleaning up" in text
    workdir = _workdir(text)
    assert not workdir.exists()
    assert wait_for(lambda: not _processes_in(workdir), timeout=15, what="the demo's processes to end")
