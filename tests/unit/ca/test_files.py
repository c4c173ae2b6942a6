"""private_dir and write_private: the modes asked for, exactly, under a umask that would give everything
away (000); what exists is tightened, never loosened; an exclusive write never replaces a file."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from jit_ssh.ca.files import private_dir, tighten, write_private


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
def test_every_missing_directory_gets_the_mode(tmp_path: Path) -> None:
    private_dir(tmp_path / "a" / "b" / "c", 0o750)
    assert [_mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o750] * 3
    assert _mode(tmp_path) != 0o750  # what existed above is not ours to change


@pytest.mark.usefixtures("open_umask")
def test_existing_ones_are_tightened_not_loosened(tmp_path: Path) -> None:
    (tmp_path / "wide").mkdir(0o777)
    (tmp_path / "narrow").mkdir(0o700)
    private_dir(tmp_path / "wide", 0o700)
    private_dir(tmp_path / "narrow", 0o750)
    assert (_mode(tmp_path / "wide"), _mode(tmp_path / "narrow")) == (0o750, 0o700)
    tighten(tmp_path / "missing")  # nothing there, nothing to do


@pytest.mark.usefixtures("open_umask")
def test_write_private_modes_and_exclusive(tmp_path: Path) -> None:
    target = tmp_path / "key"
    write_private(target, b"one")
    assert (_mode(target), target.read_bytes()) == (0o600, b"one")
    write_private(target, b"two", mode=0o640)
    assert (_mode(target), target.read_bytes()) == (0o640, b"two")
    with pytest.raises(FileExistsError):
        write_private(target, b"three", exclusive=True)
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]  # no temporary file left behind


def test_a_folder_handed_in_is_not_tightened_when_asked_not_to(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: a recording written straight into it must not take it from others
    private_dir(shared, 0o750, tighten_existing=False)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    private_dir(shared / "day", 0o750, tighten_existing=False)
    assert stat.S_IMODE((shared / "day").stat().st_mode) == 0o750
