"""Disk space claimed for recordings before their bytes are relayed (broker/space.py), on a real small tmpfs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from jit_ssh.broker.recording.writer import RecordingError, RecordingFile
from jit_ssh.broker.space import CLOSING, NoSpace, Reservation, light_limit, reserve_floor

MIB = 1024 * 1024


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "disk"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)], capture_output=True,
                             text=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_claims_allocate_ahead_without_changing_the_files_size(disk: Path) -> None:
    fd = os.open(disk / "r", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        space = Reservation(fd, 0, "alice")
        before = _free(disk)
        space.initial()
        assert _free(disk) < before  # allocated: nobody else can take it
        assert os.fstat(fd).st_size == 0  # KEEP_SIZE: appends still land at the file's end
        space.claim(2 * MIB)
        assert space.end >= space.claimed + CLOSING
        assert os.fstat(fd).st_size == 0
        space.release()
    finally:
        os.close(fd)


def test_a_heavy_user_stops_at_the_reserve_and_a_light_one_may_use_it(disk: Path) -> None:
    heavy_fd = os.open(disk / "heavy", os.O_WRONLY | os.O_CREAT, 0o600)
    light_fd = os.open(disk / "light", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        heavy, light = Reservation(heavy_fd, 0, "dave"), Reservation(light_fd, 0, "alice")
        heavy.initial()
        light.initial()
        with pytest.raises(NoSpace, match="down to its reserve"):  # noqa: PT012 - the claims until refused
            for _ in range(100):
                heavy.claim(256 * 1024)
        assert _free(disk) >= reserve_floor(heavy_fd) - 256 * 1024
        # alice holds little: she may claim from the reserve, up to her light limit
        light.claim(light_limit(light_fd) // 2)
        heavy.release()
        light.release()
    finally:
        os.close(heavy_fd)
        os.close(light_fd)


def test_a_recording_that_cannot_claim_refuses_before_the_bytes_and_still_closes(disk: Path) -> None:
    filler = disk / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass  # the disk is full
    filler.unlink()
    with filler.open("wb") as handle:  # full again, but for what one small recording needs
        handle.write(b"\0" * (_free(disk) - 256 * 1024))
    recording = RecordingFile.create(disk / "rec.jsr", b"JITSSH-REC2\n", user="dave")
    with pytest.raises(RecordingError, match="no space for the session recording"):  # noqa: PT012 - until refused
        for _ in range(64):
            recording.claim(256 * 1024)
    size, digest = recording.close(b"the closing record, within the space kept for it").result()
    assert size == (disk / "rec.jsr").stat().st_size > 0
    assert len(digest) == 64
