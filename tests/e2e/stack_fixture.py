"""Helpers for the broker's end-to-end tests: a whole installation (``LocalStack``), the session rows and
audit events it writes, its recordings read back, and the real OpenSSH client driven through a pty.

Nothing here fakes a part: the client is OpenSSH ``ssh``/``scp``/``sftp``, the broker is ``jit-ssh
serve``, the hosts are real ``sshd``. Every helper that starts a process stops it; waits poll with a
generous timeout and never assert how long something took.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import select
import signal
import sqlite3
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jit_ssh.broker.recording.asciicast import to_asciicast
from jit_ssh.broker.recording.format import Frame, read_recording
from jit_ssh.ca import Certificate, PublicKey, Signer
from jit_ssh.ca.certs import mint_user_certificate
from jit_ssh.cli.bastion.stack import LocalStack

from tests.e2e.asciicast_rules import check_v2

__all__ = [
    "PtyClient",
    "asciicast",
    "audit_events",
    "cached_certificate",
    "cli_json",
    "control_master",
    "ended_session",
    "forge_certificate",
    "grep_ids",
    "indexed",
    "just_before",
    "last_audit_seq",
    "live_shell",
    "metadata",
    "read_certificate",
    "recording_frames",
    "run_ssh",
    "session_rows",
    "ssh_argv",
    "ssh_options",
    "started_stack",
    "stream_bytes",
    "wait_for",
]

TIMEOUT = 60.0


def just_before() -> float:
    """A moment just before now: rows started from here on are the ones a test makes next."""
    return time.time() - 0.01


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30.0, what: str = "a condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail (not a timing assertion) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- the store ---------------------------------------------------------------------------------------
def granted(stack: LocalStack, requester: str = "alice", approver: str = "bob") -> int:
    """A request by ``requester`` approved by ``approver``, its certificate fetched into the requester's cache."""
    request_id = stack.grant(requester, approver)
    stack.jit(requester, "cert", str(request_id), check=True)
    return request_id


def process_fds(pid: int) -> list[str]:
    """What each open file descriptor of process ``pid`` points to (``socket:[...]``, paths, ...)."""
    out = []
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            out.append(os.readlink(entry))
        except OSError:
            continue  # closed while listed
    return out


def open_sockets(pid: int) -> int:
    return sum(target.startswith("socket:") for target in process_fds(pid))


def _query(stack: LocalStack, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(stack.data_dir / "jit-ssh.db", timeout=10)) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(sql, params)]


def session_rows(stack: LocalStack, *, since: float = 0.0) -> list[dict[str, Any]]:
    """Rows of the ``sessions`` table started at or after ``since``, oldest first."""
    return _query(stack, "SELECT * FROM sessions WHERE started_at >= ? ORDER BY started_at", (since,))


def ended_session(stack: LocalStack, *, since: float, timeout: float = 30.0) -> dict[str, Any]:
    """The one session started since ``since``, once the broker has written its end (digest included)."""

    def ended() -> dict[str, Any] | None:
        rows = session_rows(stack, since=since)
        assert len(rows) <= 1, f"expected one session, found {len(rows)}: {[r['id'] for r in rows]}"
        return rows[0] if rows and rows[0]["ended_at"] is not None else None

    row: dict[str, Any] = wait_for(ended, timeout=timeout, what="the session row's end")
    return row


def audit_events(stack: LocalStack, action: str, *, after_seq: int = 0) -> list[dict[str, Any]]:
    rows = _query(
        stack,
        "SELECT seq, actor, action, subject, details_json FROM audit_events WHERE action = ? AND seq > ? ORDER BY seq",
        (action, after_seq),
    )
    for row in rows:
        row["details"] = json.loads(row.pop("details_json"))
    return rows


def last_audit_seq(stack: LocalStack) -> int:
    rows = _query(stack, "SELECT COALESCE(MAX(seq), 0) AS seq FROM audit_events")
    return int(rows[0]["seq"])


# -- recordings --------------------------------------------------------------------------------------
def recording_frames(path: Path) -> tuple[dict[str, Any], list[Frame], bool]:
    """The header, every complete frame, and whether the file ends mid-frame."""
    header, frames, truncated = read_recording(path)
    return header, list(frames), truncated[0]


def stream_bytes(frames: Sequence[Frame], code: str) -> bytes:
    return b"".join(f.payload for f in frames if f.code == code)


def metadata(frames: Sequence[Frame]) -> list[dict[str, Any]]:
    return [f.json() for f in frames if f.code == "x"]


def asciicast(path: Path) -> tuple[dict[str, Any], list[list[Any]]]:
    """Export ``path`` with ``to_asciicast``, check it as asciinema 3 reads asciicast v2 (asciicast_rules.py),
    and return the header and the events as written (``[seconds, code, data]``)."""
    out = io.StringIO()
    to_asciicast(path, out)
    text = out.getvalue()
    text.encode("utf-8")  # every reader opens the file as UTF-8
    header, _ = check_v2(text)
    assert header["width"] > 0
    assert header["height"] > 0
    events = [json.loads(line) for line in text.splitlines()[1:]]
    assert {code for _, code, _ in events} <= {"o", "i", "r", "m"}  # the codes the v2 specification lists
    return header, events


# -- certificates and the OpenSSH client -------------------------------------------------------------
def cached_certificate(stack: LocalStack, user: str, request_id: int) -> Path:
    return stack.root / "users" / user / "cache" / "jit-ssh" / f"request-{request_id}-cert.pub"


def forge_certificate(
    stack: LocalStack,
    user: str,
    signer: Signer,
    out: Path,
    *,
    principals: Sequence[str],
    serial: int,
    key_id: str,
    valid_for: timedelta = timedelta(minutes=10),
) -> Path:
    """A certificate for ``user``'s own key, signed by ``signer`` with whatever fields a test needs."""
    now = datetime.now(UTC)
    cert = mint_user_certificate(
        signer,
        PublicKey.parse(stack.identity(user).with_suffix(".pub").read_text(encoding="utf-8")),
        principals=list(principals),
        key_id=key_id,
        serial=serial,
        valid_from=now,
        valid_until=now + valid_for,
        max_validity=valid_for,
        now=now,
    )
    out.write_text(cert.to_openssh() + "\n", encoding="utf-8")
    return out


def read_certificate(path: Path) -> Certificate:
    return Certificate.parse(path.read_text(encoding="utf-8"))


def ssh_options(stack: LocalStack, user: str, cert: Path, target: str) -> list[str]:
    """Options common to ssh, scp and sftp through the broker (the port is -p or -P, so not here)."""
    return [
        "-F", "none",
        "-o", f"UserKnownHostsFile={stack.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
        "-i", str(stack.identity(user)), "-o", f"CertificateFile={cert}",
        "-o", f"User={target}",
    ]  # fmt: skip


def ssh_argv(
    stack: LocalStack, user: str, request_id: int, *, host: str | None = None, login: str | None = None,
    cert: Path | None = None, extra: Sequence[str] = (),
) -> list[str]:  # fmt: skip
    target = f"{login or stack.login}@{host or stack.host_names[0]}"
    cert = cert or cached_certificate(stack, user, request_id)
    return ["ssh", *ssh_options(stack, user, cert, target), *extra, "-p", str(stack.port), "127.0.0.1"]


def run_ssh(
    argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        list(argv),
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


class PtyClient:
    """A process (the real ``ssh -tt``) on the slave side of a pty; the test types into the master."""

    def __init__(self, argv: Sequence[str], *, cols: int = 100, rows: int = 30) -> None:
        master, slave = os.openpty()
        try:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            self.process = subprocess.Popen(list(argv), stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.master: int | None = master
        self.output = bytearray()
        self.eof = False

    def send(self, text: str) -> None:
        assert self.master is not None
        os.write(self.master, text.encode())

    def resize(self, cols: int, rows: int) -> None:
        """Resize the terminal as a terminal emulator does: the new size on the pty, then SIGWINCH."""
        assert self.master is not None
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.killpg(self.process.pid, signal.SIGWINCH)

    def _read(self, timeout: float) -> None:
        if self.eof or self.master is None:
            time.sleep(min(timeout, 0.05))
            return
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every holder of the slave side has closed it
            data = b""
        if data:
            self.output += data
        else:
            self.eof = True

    def expect(self, needle: str, *, timeout: float = 30.0, start: int = 0) -> int:
        """Read until ``needle`` appears after offset ``start``; returns the offset just past it."""
        wanted = needle.encode()
        deadline = time.monotonic() + timeout
        while True:
            found = self.output.find(wanted, start)
            if found >= 0:
                return found + len(wanted)
            if self.eof and self.process.poll() is not None:
                raise AssertionError(f"{needle!r} never came; the client exited with: {self.text()[-2000:]!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {needle!r}; output so far: {self.text()[-2000:]!r}")
            self._read(0.1)

    def wait(self, *, timeout: float = 30.0) -> int:
        """Read the rest of the output and the exit status."""
        deadline = time.monotonic() + timeout
        while not (self.eof and self.process.poll() is not None):
            if time.monotonic() > deadline:
                raise AssertionError(f"the client did not exit; output so far: {self.text()[-2000:]!r}")
            self._read(0.1)
        return self.process.wait()

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        if self.master is not None:
            os.close(self.master)
            self.master = None

    def __enter__(self) -> PtyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def live_shell(argv: Sequence[str]) -> PtyClient:
    """A live interactive session: ``argv`` (``ssh -tt ...``) in a pty, its shell seen to run a command."""
    client = PtyClient(argv)
    try:
        client.send("echo live-$((20+3))\r")
        client.expect("live-23")
    except BaseException:
        client.close()
        raise
    return client


@contextlib.contextmanager
def control_master(argv: Sequence[str], control: Path) -> Iterator[list[str]]:
    """An OpenSSH ControlMaster (``ssh -M -N``) for ``argv``; yields the argv of clients that share its connection."""
    master = subprocess.Popen(
        [*argv[:-1], "-M", "-S", str(control), "-N", argv[-1]],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(control.exists, timeout=20, what="the control socket")
        yield [*argv[:-1], "-S", str(control), argv[-1]]
    finally:
        master.kill()
        master.wait()


@contextlib.contextmanager
def started_stack(root: Path, **kwargs: Any) -> Iterator[LocalStack]:
    with LocalStack(root, **kwargs) as stack:
        stack.start_broker()
        yield stack


# -- review, as a reviewer sees it ---------------------------------------------------------------------
def cli_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def indexed(stack: LocalStack, session_id: str, *, timeout: float = 60.0) -> dict[str, Any]:
    """The session's row once its index is written (just after its end); not a timing assertion."""

    def done() -> dict[str, Any] | None:
        rows = [r for r in session_rows(stack) if r["id"] == session_id]
        return rows[0] if rows and rows[0]["index_json"] else None

    row: dict[str, Any] = wait_for(done, timeout=timeout, what=f"the index of session {session_id}")
    return row


def grep_ids(stack: LocalStack, pattern: str, *, output: bool = False, reviewer: str = "bob") -> set[str]:
    """The sessions ``jit-ssh sessions --grep`` (or ``--grep-output``) finds for a reviewer."""
    option = "--grep-output" if output else "--grep"
    return {row["id"] for row in cli_json(stack.jit(reviewer, "sessions", option, pattern, "--json"))}
