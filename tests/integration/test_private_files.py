"""Secrets are private from their first byte, whatever the umask (issue 10, item 16).

The broker's host key was written by asyncssh with the umask's mode, then chmod-ed to 0600: for that
moment any local user could read it. Here a Python audit hook looks at the key file (and any temporary
file beside it) at every file operation the process makes while the broker creates its host key under
umask 000, and records the modes it finds. The database is checked the same way: created 0600, and an
existing one left readable by others is tightened when opened.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

import asyncssh
from jit_ssh.broker.server import Broker
from jit_ssh.ca.store import Store

from tests.integration.broker_fixture import in_process_broker

_EVENTS = frozenset({"open", "os.chmod", "os.rename", "os.link", "os.remove", "os.truncate", "os.utime"})


class ModeWatch:
    """Modes of the files in ``folder`` whose names contain ``name``, seen at each file operation."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name = folder, name
        self.seen: list[tuple[str, str, int]] = []
        self.active = False
        self._inside = False
        sys.addaudithook(self._hook)  # hooks cannot be removed: it stays, inactive, for the rest of the run

    def _hook(self, event: str, _args: tuple[Any, ...]) -> None:
        if not self.active or self._inside or event not in _EVENTS:
            return
        self._inside = True  # listing the folder raises audit events of its own
        try:
            for entry in os.scandir(self.folder):
                if self.name in entry.name:
                    self.seen.append((event, entry.name, stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)))
        except FileNotFoundError:
            pass
        finally:
            self._inside = False


def test_the_host_key_is_never_on_disk_with_a_wider_mode_than_0600(tmp_path: Path) -> None:
    broker = in_process_broker(tmp_path)
    watch = ModeWatch(broker.config.host_key.parent, broker.config.host_key.name)
    previous = os.umask(0)
    watch.active = True
    try:
        broker._host_key()
    finally:
        watch.active = False
        os.umask(previous)
        broker.store.dispose()
    assert watch.seen, "the audit hook saw no file operation on the key"
    assert {mode for _, _, mode in watch.seen} == {0o600}, watch.seen
    assert stat.S_IMODE(broker.config.host_key.stat().st_mode) == 0o600
    assert [p.name for p in broker.config.host_key.parent.iterdir() if "ssh_host" in p.name] == [
        broker.config.host_key.name
    ]
    # A second start reads the same key instead of writing another.
    written = broker.config.host_key.read_bytes()
    second = Broker(broker.config, passphrase=None)
    try:
        key, _ = second._host_key()
    finally:
        second.store.dispose()
    assert key.public_data == asyncssh.import_private_key(written).public_data


def test_the_database_is_created_0600_and_an_open_one_is_tightened(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        Store(tmp_path / "new.db").dispose()
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "new.db").stat().st_mode) == 0o600

    old = tmp_path / "old.db"
    Store(old).dispose()
    old.chmod(0o666)
    store = Store(old)
    try:
        with store.transaction() as session:  # a write: the WAL files exist while the store is open
            store.next_serial(session)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir() if p.name.startswith("old.db")}
    finally:
        store.dispose()
    assert modes["old.db"] == 0o640  # group write and others' access taken away; the owner's choice kept
    assert all(mode & 0o027 == 0 for mode in modes.values()), modes
