"""``jit-ssh demo``: the whole product on loopback, in a temporary folder, on embedded defaults.

A CA, a broker, two real sshd hosts, alice (engineer) and bob (approver): alice asks for access with
the everyday command, bob approves, the session runs through the broker and is recorded, then the
demo lists and replays it, shows the audit trail, and revokes the grant. Every step is printed as it
happens and checked; a failed check ends the demo with an error. Everything stops and is removed at
the end, on Ctrl-C too, unless ``--keep``.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from jit_ssh.ca import JitSshError
from rich.markup import escape

from ..output import console, step
from .stack import LocalStack

__all__ = ["demo"]

HOSTS = ("prod-web-3", "prod-db-1")
REMOTE = 'echo "hello from $(hostname) as $(id -un)"; df -h / | tail -1; uname -sr'


def _show(result: subprocess.CompletedProcess[str], *, who: str) -> None:
    for line in (result.stdout + result.stderr).rstrip().splitlines():
        console.print(f"    [dim]{who}>[/] {escape(line)}")


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise JitSshError(f"demo check failed: {what}")
    console.print(f"    [green]ok[/] {escape(what)}")


def _run(stack: LocalStack, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    console.print(f"  [bold]{user}$[/] jit-ssh {escape(' '.join(args))}")
    result = stack.jit(user, *args)
    _show(result, who=user)
    return result


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def demo(
    keep: Annotated[bool, typer.Option("--keep", help="Leave it all running and print how to use it.")] = False,
) -> None:
    """Run jit-ssh end to end on this machine, in a temporary folder, and clean up."""
    workdir = Path(tempfile.mkdtemp(prefix="jit-ssh-demo-"))
    stack = LocalStack(workdir, hosts=HOSTS, users=("alice", "bob", "carol"))
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        step(f"Setting up in {workdir}: user, access and host CA keys; policy; sshd hosts {', '.join(HOSTS)}")
        stack.setup()
        for name, sshd in stack.hosts.items():
            console.print(f"    {name}: stock sshd on 127.0.0.1:{sshd.port}, trusting only the access CA")
        step("Starting the broker (jit-ssh serve)")
        stack.start_broker()
        console.print(f"    broker on 127.0.0.1:{stack.port}; users alice (engineer), bob (approver), carol (dev)")
        _scenario(stack)
        if keep:
            _print_keep(stack)
            return
        step("Done: stopping everything and removing the folder")
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: cleaning up[/]")
        keep = False
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not keep:
            stack.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def _scenario(stack: LocalStack) -> None:
    login = stack.login
    step(f"alice asks for {login}@prod-web-3 with the everyday command (it waits for approval)")
    command = ["prod-web-3", "--reason", "INC-4121: disk full", "--for", "15m", "--", REMOTE]
    console.print(f"  [bold]alice$[/] jit-ssh {escape(' '.join(command[:5]))} -- '{escape(REMOTE)}'")
    alice = subprocess.Popen(
        [sys.executable, "-m", "jit_ssh.cli", *command],
        env=stack.user_env("alice"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        pending = _wait_pending(stack)
        step("bob sees the request waiting for him and approves it")
        _run(stack, "bob", "requests", "--pending")
        refused = _run(stack, "alice", "approve", str(pending))
        _check(refused.returncode == 3, "alice cannot approve her own request (exit 3)")
        refused = _run(stack, "carol", "approve", str(pending))
        _check(refused.returncode == 3, "carol, not an approver, cannot approve it either")
        _run(stack, "bob", "approve", str(pending), "--comment", "go ahead")
        out, err = alice.communicate(timeout=60)
    finally:
        if alice.poll() is None:
            alice.kill()
            alice.wait()
    step("alice's session ran through the broker: its output")
    for line in (out + err).rstrip().splitlines():
        console.print(f"    [dim]alice>[/] {escape(line)}")
    _check(alice.returncode == 0 and f"as {login}" in out, "the remote command ran on prod-web-3 (exit 0)")

    step("bob, a reviewer, finds the recorded session and replays it")
    listed = stack.jit("bob", "sessions", "--request", str(pending), "--json")
    sessions: list[dict[str, Any]] = json.loads(listed.stdout or "[]")
    _check(len(sessions) == 1, "one session recorded for the request")
    session_id = sessions[0]["id"]
    _run(stack, "bob", "sessions", "--request", str(pending))
    replay = _run(stack, "bob", "replay", session_id, "--speed", "10")
    _check(replay.returncode == 0 and "hello from" in replay.stdout, "the replay shows what the session printed")
    verified = _run(stack, "bob", "sessions", "verify", session_id)
    _check(verified.returncode == 0, "the recording's digest matches the store and the audit log")

    step("bob revokes the grant: the broker refuses alice's certificate from now on")
    _run(stack, "bob", "revoke", str(pending), "--reason", "incident closed")
    argv = [*stack.ssh_argv("alice", pending), "true"]
    console.print(
        f"  [bold]alice$[/] ssh ... -o CertificateFile=.../request-{pending}-cert.pub -l {login}@prod-web-3 ..."
    )
    again = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    _show(again, who="alice")
    _check(again.returncode == 255 and "revoked" in again.stderr, "the broker refuses the revoked certificate")

    step("The audit trail: hash-chained, verified")
    events = stack.admin("audit", "export").stdout.splitlines()
    for raw in events[-12:]:
        event = json.loads(raw)
        moment = time.strftime("%H:%M:%S", time.localtime(event["time"]))
        console.print(f"    {event['seq']:>3} {moment} {event['actor']:<8} {event['action']:<22} {event['subject']}")
    audit = stack.admin("audit", "verify", check=False)
    _show(audit, who="admin")
    _check(audit.returncode == 0, "audit chain intact")


def _wait_pending(stack: LocalStack) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = stack.jit("bob", "requests", "--pending", "--json")
        if result.returncode == 0:
            waiting = json.loads(result.stdout)
            if waiting:
                request_id = int(waiting[0]["id"])
                console.print(f"    request {request_id} filed and waiting")
                return request_id
        time.sleep(0.3)
    raise JitSshError("demo: alice's request did not appear")


def _print_keep(stack: LocalStack) -> None:
    pid = stack.broker.pid if stack.broker else "?"
    console.print(f"\nLeft running in {stack.root} (broker pid {pid}). Use it as alice or bob:")
    for user in ("alice", "bob"):
        env = stack.user_env(user)
        console.print(
            f"  {user}: export JIT_SSH_CONFIG={env['JIT_SSH_CONFIG']} XDG_CACHE_HOME={env['XDG_CACHE_HOME']}",
            markup=False,
        )
    console.print("  then e.g.: jit-ssh prod-db-1 --reason 'look around'   |   jit-ssh requests --pending")
    console.print(f"  admin: jit-ssh sessions --config {stack.config}", markup=False)
    hosts = " ".join(str(s.process.pid) for s in stack.hosts.values() if s.process)
    console.print(f"Stop it with: kill {pid} {hosts}; rm -rf {stack.root}", markup=False)
