"""``jit-ssh demo``, the README's first command, run as a user would run it (issue 6).

The demo checks its own outcome (a session recorded, replayed and verified, a revoked certificate refused,
an intact audit chain) and exits non-zero when a check fails; these tests run the installed console script
and then check what it leaves behind: nothing, neither its temporary folder nor a process, also when it
is interrupted with Ctrl-C half way.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jit_ssh.ca import Certificate
from jit_ssh.ca.store import Store

from tests.e2e.stack_fixture import wait_for
from tests.integration.test_issuer import check_every_certificate_is_accounted_for, kind_of

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


def _stop_kept(output: str) -> None:
    """End the processes a ``demo --keep`` left running, by the ids it printed."""
    match = re.search(r"Stop it with: kill ([\d ]+);", output)
    assert match, output
    pids = [int(pid) for pid in match.group(1).split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), timeout=15, what="them to end")


def test_every_certificate_the_demo_signed_has_a_row_and_an_audit_event() -> None:
    """Issue 11: after the demo, every serial handed out is a row of the store with its own audit event, of
    every kind the demo signs (the hosts', the broker's own, alice's, the onward one of her session), and
    every certificate the demo left on disk is one of them."""
    done = subprocess.run(
        [str(JIT_SSH), "demo", "--keep"], capture_output=True, text=True, stdin=subprocess.DEVNULL, env=ENV,
        timeout=180, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    workdir = _workdir(output)
    try:
        _stop_kept(output)
        assert done.returncode == 0, output
        store = Store(workdir / "data" / "jit-ssh.db")
        try:
            rows = check_every_certificate_is_accounted_for(store)
        finally:
            store.dispose()
        kinds = [kind_of(row) for row in rows]
        assert sorted(set(kinds)) == ["broker", "host", "onward", "user"], kinds
        assert (kinds.count("host"), kinds.count("broker")) == (2, 1)
        assert sorted(row.subject for row in rows if kind_of(row) == "host") == ["prod-db-1", "prod-web-3"]
        by_serial = {row.serial: row for row in rows}
        on_disk = [Certificate.parse(path.read_text(encoding="utf-8")) for path in workdir.rglob("*-cert.pub")]
        assert len(on_disk) >= 3, on_disk  # the two hosts' and alice's
        for cert in on_disk:
            row = by_serial[cert.serial]
            assert (row.key_id, row.key_fingerprint) == (cert.key_id, cert.subject.fingerprint())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
