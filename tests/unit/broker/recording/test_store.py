"""The local recording store (broker/recording/store.py): today's layout and files, opaque references, and
references that lead outside the recordings directory refused (rows live in a database others can write)."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from jit_ssh.broker.recording.format import Frame, RecordingFormatError, follow_frames, read_recording
from jit_ssh.broker.recording.recorder import Recorder
from jit_ssh.broker.recording.store import (
    LocalRecordingStore,
    RecordingReferenceError,
    RecordingStore,
    StoredRecording,
)

HEADER = {"version": 2, "width": 80, "height": 24, "timestamp": 1_700_000_000, "jit_ssh": {"session": "s-1"}}


def _written(store: RecordingStore, session_id: str, *chunks: bytes) -> tuple[str, int, str]:
    new = store.create(session_id)
    recorder = Recorder.open(new.path, HEADER)
    for chunk in chunks:
        recorder.data("o", chunk)
    size, digest = recorder.close({"reason": "closed"})
    return new.reference, size, digest


def test_a_new_recording_has_todays_layout_modes_and_reads_back(tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    store = LocalRecordingStore(root)
    reference, size, _ = _written(store, "20261125T101500-1a2b3c4d-1", b"hello\r\n", b"world\r\n")

    day = datetime.now(UTC)
    expected = root / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}" / "20261125T101500-1a2b3c4d-1.jsr"
    assert reference == str(expected)  # what rows have always held
    assert stat.S_IMODE(expected.stat().st_mode) == 0o640
    assert stat.S_IMODE(expected.parent.stat().st_mode) == 0o750
    assert store.exists(reference)
    assert store.size(reference) == size == expected.stat().st_size
    assert abs(store.modified(reference) - time.time()) < 60

    header, frames, truncated = read_recording(StoredRecording(store, reference))
    assert header["jit_ssh"]["session"] == "s-1"
    output = b"".join(f.payload for f in frames if f.code == "o")
    assert output == b"hello\r\nworld\r\n"
    assert truncated == [False]
    with store.open(reference) as handle:
        assert len(handle.read()) == size


def test_a_reference_relative_to_the_directory_is_the_same_recording(tmp_path: Path) -> None:
    store = LocalRecordingStore(tmp_path)
    reference, size, _ = _written(store, "s-rel", b"x")
    relative = str(Path(reference).relative_to(tmp_path))
    assert store.size(relative) == size
    assert store.local_path(relative) == store.local_path(reference) == Path(reference).resolve()


def test_a_legacy_absolute_path_still_resolves(tmp_path: Path) -> None:
    """Rows written before the store held the absolute path; recordings written straight into the directory
    (tools, tests) too."""
    root = tmp_path / "recordings"
    legacy = root / "2025" / "01" / "31" / "20250131T000000-00000000-1.jsr"
    legacy.parent.mkdir(parents=True)
    recorder = Recorder.open(legacy, HEADER)
    recorder.data("i", b"ls\r")
    size, _ = recorder.close()
    flat = root / "fuzz-0.cast"
    Recorder.open(flat, HEADER).close()

    store = LocalRecordingStore(root)
    assert store.exists(str(legacy))
    assert store.size(str(legacy)) == size
    _, frames, _ = read_recording(StoredRecording(store, str(legacy)))
    assert [f.payload for f in frames if f.code == "i"] == [b"ls\r"]
    assert store.exists(str(flat))
    # Named through a symbolic link to the directory (a config that spells the path differently): the same file.
    alias = tmp_path / "alias"
    alias.symlink_to(root)
    assert store.size(str(alias / "2025" / "01" / "31" / legacy.name)) == size


def test_a_growing_recording_is_followed_until_its_session_ends(tmp_path: Path) -> None:
    store = LocalRecordingStore(tmp_path)
    new = store.create("s-live")
    recorder = Recorder.open(new.path, HEADER)
    recorder.data("o", b"first\r\n")
    recorder.flush()
    live = [True]

    async def follow() -> list[Frame]:
        seen: list[Frame] = []
        async for _, frame in follow_frames(StoredRecording(store, new.reference), live=lambda: live[0], poll=0.01):
            if frame is None:
                continue
            seen.append(frame)
            if frame.payload == b"first\r\n":  # read while the session runs; more comes after
                recorder.data("o", b"second\r\n")
                recorder.flush()
            if frame.payload == b"second\r\n":
                recorder.close()
                live[0] = False
        return seen

    seen = asyncio.run(asyncio.wait_for(follow(), 30))
    assert [f.payload for f in seen if f.code == "o"] == [b"first\r\n", b"second\r\n"]
    assert any(f.code == "x" and "end" in f.json() for f in seen)  # the closing record, written before the end


def test_delete_removes_the_recording_and_a_missing_one_is_no_error(tmp_path: Path) -> None:
    store = LocalRecordingStore(tmp_path)
    reference, _, _ = _written(store, "s-del", b"x")
    store.delete(reference)
    assert not store.exists(reference)
    assert not Path(reference).exists()
    store.delete(reference)  # already gone: nothing to do
    with pytest.raises(FileNotFoundError):
        store.open(reference)
    with pytest.raises(RecordingFormatError, match="cannot read recording"):
        read_recording(StoredRecording(store, reference))


def test_trim_cuts_a_recording_to_its_size(tmp_path: Path) -> None:
    store = LocalRecordingStore(tmp_path)
    reference, size, _ = _written(store, "s-trim", b"x" * 1000)
    with open(store.local_path(reference), "ab") as handle:
        handle.write(b"\0" * 4096)
    store.trim(reference, size)
    assert store.size(reference) == size


@pytest.mark.parametrize(
    "reference",
    ["../outside.jsr", "2026/../../outside.jsr", "/etc/passwd", "OUTSIDE", ".", "", "a\x00b", "x" * 5000],
)
def test_a_reference_outside_the_directory_is_refused_for_every_operation(tmp_path: Path, reference: str) -> None:
    root = tmp_path / "recordings"
    root.mkdir()
    outside = tmp_path / "outside.jsr"
    outside.write_bytes(b"not the store's")
    reference = reference.replace("OUTSIDE", str(outside))
    store = LocalRecordingStore(root)
    for operation in (store.open, store.size, store.modified, store.exists, store.delete, store.local_path):
        with pytest.raises(RecordingReferenceError):
            operation(reference)
    with pytest.raises(RecordingReferenceError):
        store.trim(reference, 0)
    with pytest.raises(RecordingReferenceError):  # the readers refuse it too, never read another file
        read_recording(StoredRecording(store, reference))
    assert outside.read_bytes() == b"not the store's"  # negative control: the file was neither cut nor deleted


def test_the_refusal_says_what_was_refused(tmp_path: Path) -> None:
    store = LocalRecordingStore(tmp_path / "recordings")
    with pytest.raises(RecordingReferenceError, match=r"'\.\./x' is outside the recordings directory .*refused"):
        store.size("../x")


def test_a_symbolic_link_out_of_the_directory_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    root.mkdir()
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    (root / "link.jsr").symlink_to(secret)
    (root / "loop.jsr").symlink_to(root / "loop.jsr")
    store = LocalRecordingStore(root)
    for reference in ("link.jsr", str(root / "link.jsr"), "loop.jsr"):
        with pytest.raises(RecordingReferenceError):
            store.delete(reference)
    assert secret.read_bytes() == b"secret"
    # Negative control: a link that stays inside is followed.
    reference, size, _ = _written(store, "s-in", b"x")
    (root / "inside.jsr").symlink_to(reference)
    assert store.size("inside.jsr") == size


@pytest.mark.parametrize("session_id", ["", "../x", "a/b", ".hidden", "x\x00", "x" * 200])
def test_create_refuses_a_name_that_is_not_a_session_id(tmp_path: Path, session_id: str) -> None:
    store = LocalRecordingStore(tmp_path)
    with pytest.raises(RecordingReferenceError, match="session id"):
        store.create(session_id)
    assert os.listdir(tmp_path) == []


def _swapped_after_the_check(monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    """The race between the check and the use: once ``path`` has judged a reference, its file is replaced by a
    symbolic link out of the directory (what anyone who can write in a day's directory could do meanwhile)."""
    judge = LocalRecordingStore.path

    def judged_then_swapped(self: LocalRecordingStore, reference: str) -> Path:
        path = judge(self, reference)
        path.unlink()
        path.symlink_to(target)
        return path

    monkeypatch.setattr(LocalRecordingStore, "path", judged_then_swapped)


def test_a_link_swapped_in_after_the_check_is_not_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "recordings"
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret" * 100)
    store = LocalRecordingStore(root)
    reference, _, _ = _written(store, "s-race", b"x")
    _swapped_after_the_check(monkeypatch, secret)
    with pytest.raises((OSError, RecordingReferenceError)):
        store.open(reference).close()
    for operation in (store.size, store.modified):
        Path(reference).unlink(missing_ok=True)
        Recorder.open(Path(reference), HEADER).close()
        with pytest.raises((OSError, RecordingReferenceError)):
            operation(reference)
    Path(reference).unlink(missing_ok=True)
    Recorder.open(Path(reference), HEADER).close()
    with pytest.raises((OSError, RecordingReferenceError)):
        store.trim(reference, 0)
    assert secret.read_bytes() == b"secret" * 100  # neither read, sized nor cut through the link
    # Negative control: without the swap, a recording opens.
    monkeypatch.undo()
    Path(reference).unlink()
    Recorder.open(Path(reference), HEADER).close()
    with store.open(reference) as handle:
        assert handle.read(4)


def test_a_reference_to_something_not_a_file_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO (or device) inside the directory: opening it to read would wait forever for a writer."""
    store = LocalRecordingStore(tmp_path)
    os.mkfifo(tmp_path / "fifo.jsr")
    (tmp_path / "day").mkdir()
    for reference in ("fifo.jsr", "day"):
        with pytest.raises((RecordingReferenceError, IsADirectoryError)):
            store.open(reference)
        assert not store.exists(reference)
    reference, size, _ = _written(store, "s-file", b"x")  # negative control: a recording
    assert store.exists(reference)
    assert store.size(reference) == size
