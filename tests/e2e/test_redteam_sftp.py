"""Red team, invariant 5: code planted over SFTP runs on the host later, and no recording holds it or flags it.

SFTP is the one stream the broker records as operations (path, size, SHA-256) instead of content, so a
file written over SFTP is a way to get text to an interpreter on the host without it being in any
recording. broker/recording/flags.py answers that by flagging changes to files that run code at the next login
(``.bashrc``, ``.profile``, ``authorized_keys``, cron, ...). Two ways around it, each demonstrated here with
the planted code seen to run and neither session flagged:

* **through a symlink**: ``ln -s ~/.bash_profile notes.txt``, then ``put payload notes.txt``. The write's
  path is ``notes.txt``; the symlink's ``target`` field is never checked against the list, and the
  server follows the link when it opens the file. The next login runs the payload.
* **a start-up file the list does not name**: ``~/.bash_logout`` (run when a login shell exits), and a
  ``.pth`` file in Python's user site-packages (its ``import`` lines run at every ``python3`` start; here
  an innocent-looking ``ssh HOST python3 -c 'print(1)'`` runs it). Others of the kind: ``.bash_aliases``
  (sourced by Debian's and Ubuntu's ``.bashrc``), ``~/.config/systemd/user/*``, ``.gitconfig`` hooks,
  ``/var/spool/cron/crontabs/*`` and ``/etc/systemd/system/*`` for root, ``/etc/passwd``.

Property: a change over SFTP that makes the host run code later is flagged for review. Fix: check every
path an operation names (a symlink's target too) and resolve a write through a symlink made in the same
session; widen the list; better, record the content of small files written over SFTP (start-up files and
scripts are small) so that the recording holds what will run.

In the test stack the host's sshd sets ``HOME`` to a folder of its own (``SetEnv``) while ``internal-sftp``
starts in the login's home directory, so the paths below are absolute.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from jit_ssh.cli.bastion.stack import LocalStack

from tests.e2e.stack_fixture import (
    cached_certificate,
    granted,
    grep_ids,
    indexed,
    just_before,
    run_ssh,
    session_rows,
    ssh_argv,
    ssh_options,
    started_stack,
    wait_for,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with started_stack(tmp_path_factory.mktemp("plant") / "site") as st:
        yield st


@pytest.fixture(scope="module")
def grant(stack: LocalStack) -> int:
    return granted(stack)


def _home(stack: LocalStack) -> Path:
    return stack.root / "hosts" / stack.host_names[0] / "home"


def _sftp(stack: LocalStack, grant: int, batch: str, work: Path) -> None:
    (work / "batch").write_text(batch, encoding="utf-8")
    options = ssh_options(
        stack, "alice", cached_certificate(stack, "alice", grant), f"{stack.login}@{stack.host_names[0]}"
    )
    done = subprocess.run(
        ["sftp", "-q", *options, "-P", str(stack.port), "-b", str(work / "batch"), "127.0.0.1"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def _sessions_ended(stack: LocalStack, since: float, count: int) -> list[dict[str, object]]:
    def ended() -> list[dict[str, object]] | None:
        rows = session_rows(stack, since=since)
        return rows if len(rows) == count and all(r["ended_at"] is not None for r in rows) else None

    rows: list[dict[str, object]] = wait_for(ended, what="the sessions' ends")
    return [indexed(stack, str(row["id"])) for row in rows]


def _user_site(home: Path) -> Path:
    found = subprocess.run(
        ["python3", "-c", "import site; print(site.getusersitepackages())"],
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return Path(found.stdout.strip())


@pytest.mark.parametrize("way", ["symlink-to-bash-profile", "bash-logout", "python-pth"])
def test_code_planted_over_sftp_is_flagged(stack: LocalStack, grant: int, tmp_path: Path, way: str) -> None:
    home = _home(stack)
    ran = home / f"ran-{way}"
    payload = tmp_path / "payload"
    since = just_before()
    if way == "symlink-to-bash-profile":
        payload.write_text(f"touch {ran}\n", encoding="utf-8")
        link = home / "notes.txt"
        _sftp(stack, grant, f"ln -s {home / '.bash_profile'} {link}\nput {payload} {link}\n", tmp_path)
        trigger = run_ssh([*ssh_argv(stack, "alice", grant), "-T"], stdin=b"")  # a login shell
    elif way == "bash-logout":
        payload.write_text(f"touch {ran}\n", encoding="utf-8")
        _sftp(stack, grant, f"put {payload} {home / '.bash_logout'}\n", tmp_path)
        trigger = run_ssh([*ssh_argv(stack, "alice", grant), "-T"], stdin=b"exit\n")
    else:
        site = _user_site(home)
        payload.write_text(f"import os; open({str(ran)!r}, 'w').close()\n", encoding="utf-8")
        mkdirs = "".join(f"-mkdir {p}\n" for p in reversed([site, *site.parents]) if home in p.parents)
        _sftp(stack, grant, f"{mkdirs}put {payload} {site / 'zz-redteam.pth'}\n", tmp_path)
        trigger = run_ssh([*ssh_argv(stack, "alice", grant), "python3 -c 'print(1)'"])
    assert trigger.returncode == 0, trigger.stderr
    assert ran.exists(), "the planted code did not run: the attack itself failed"
    rows = _sessions_ended(stack, since, 2)
    assert any(row["flags_json"] for row in rows), f"neither the SFTP session nor the {way} trigger is flagged"


def test_a_small_file_written_over_sftp_is_in_the_recording_searched_and_flagged(
    stack: LocalStack, grant: int, tmp_path: Path
) -> None:
    """The first 64 KiB of each file written over SFTP are kept: a script planted to run later can be read,
    found by --grep, and flagged by what it says."""
    script = tmp_path / "cleanup.sh"
    script.write_text("#!/bin/sh\necho tidy\nnc -l 4444 -e /bin/sh  # planted-listener-marker\n", encoding="utf-8")
    since = just_before()
    _sftp(stack, grant, f"put {script} {_home(stack) / 'cleanup.sh'}\n", tmp_path)
    [row] = _sessions_ended(stack, since, 1)
    assert "listener: nc -l" in str(row["flags_json"])
    assert row["id"] in grep_ids(stack, "planted-listener-marker")
