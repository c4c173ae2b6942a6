"""Where recordings are kept: the :class:`RecordingStore` seam, and the local directory the broker uses today.

A session row holds an opaque reference to its recording (``sessions.recording_path``), never a path that
code opens: everything that creates, reads, sizes or deletes a recording asks the store, so that keeping
recordings elsewhere (S3-compatible object storage, DESIGN.md "Scale") is one more class.

The writer always appends to a file on this machine (:attr:`NewRecording.path`): its disk-space claims
(broker/space.py), the writer thread's fsync and the checkpoints that crash recovery checks
(broker/recovery.py) are about that file. A store that keeps recordings elsewhere uses it as its spool.

A reference is data from the store's database, which several brokers and admins share: a reference that
leads outside the store (``../x``, an absolute path elsewhere) is refused with :class:`RecordingReferenceError`,
never followed, whatever is asked (read, size, delete).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Protocol

from jit_ssh.ca import JitSshError

__all__ = [
    "LocalRecordingStore",
    "NewRecording",
    "RecordingReferenceError",
    "RecordingStore",
    "StoredRecording",
]

#: Session ids are the broker's own (``20261125T101500-1a2b3c4d-1``); a name is checked all the same.
_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SUFFIX = ".jsr"


class RecordingReferenceError(JitSshError):
    """A recording reference that the store does not hold (it leads outside it): refused, never followed."""


@dataclass(frozen=True, slots=True)
class NewRecording:
    """A recording about to be written: its reference (for the session's row) and the local file to write."""

    reference: str
    path: Path


class RecordingStore(Protocol):
    """Where recordings live. Every method may raise RecordingReferenceError for a reference it does not hold;
    the others raise OSError as the file system would (a recording missing, unreadable)."""

    def create(self, session_id: str) -> NewRecording:
        """Where a new recording of ``session_id`` is written (the writer creates the file, never over one)."""
        ...

    def open(self, reference: str) -> IO[bytes]:
        """The recording's bytes, read sequentially; at its current end a read gives ``b""``, and more once it grows
        (``watch`` and a replay of a live session read on)."""
        ...

    def size(self, reference: str) -> int: ...

    def modified(self, reference: str) -> float:
        """When the recording was last written (epoch seconds): the end of a session cut by a crash."""
        ...

    def trim(self, reference: str, size: int) -> None:
        """Cut the recording to ``size`` bytes: what a crashed writer had claimed beyond its end goes back."""
        ...

    def exists(self, reference: str) -> bool: ...

    def delete(self, reference: str) -> None:
        """Remove the recording; one that is not there is no error."""
        ...

    def local_path(self, reference: str) -> Path:
        """A file on this machine with the recording, for readers in another process (the index job), and beside
        which the index writes its text files (broker/recording/index.py)."""
        ...


@dataclass(frozen=True, slots=True)
class StoredRecording:
    """One recording of a store, for the format's readers (broker/recording/format.py): opened when they start,
    named in their errors by its reference."""

    store: RecordingStore
    reference: str

    def open(self) -> IO[bytes]:
        return self.store.open(self.reference)

    def __str__(self) -> str:
        return self.reference


class LocalRecordingStore:
    """Recordings as files under ``root``: ``YYYY/MM/DD/SESSION.jsr`` by the day (UTC) the session started.

    The reference of a new recording is its absolute path, as rows have always held it; a path relative to
    ``root`` (``2026/11/25/SESSION.jsr``) is read too. Either must lead inside ``root`` (symbolic links
    followed): anything else raises RecordingReferenceError.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def create(self, session_id: str) -> NewRecording:
        if not _SESSION_ID.fullmatch(session_id):
            raise RecordingReferenceError(f"expected a session id for a recording's name, found {session_id[:64]!r}")
        day = datetime.now(UTC)
        path = self.root / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}" / f"{session_id}{_SUFFIX}"
        return NewRecording(str(path), path)

    def open(self, reference: str) -> IO[bytes]:
        return os.fdopen(self._open(reference, os.O_RDONLY), "rb")

    def size(self, reference: str) -> int:
        return self._stat(reference).st_size

    def modified(self, reference: str) -> float:
        return self._stat(reference).st_mtime

    def trim(self, reference: str, size: int) -> None:
        fd = self._open(reference, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def exists(self, reference: str) -> bool:
        path = self.path(reference)
        try:
            return stat.S_ISREG(path.lstat().st_mode)
        except FileNotFoundError:
            return False

    def delete(self, reference: str) -> None:
        self.path(reference).unlink(missing_ok=True)

    def local_path(self, reference: str) -> Path:
        return self.path(reference)

    def _open(self, reference: str, flags: int) -> int:
        """A descriptor of the file judged by :meth:`path`: if a symbolic link took its place meanwhile, the open
        fails (ELOOP) instead of following it out of the directory; anything but a regular file is refused."""
        fd = os.open(self.path(reference), flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RecordingReferenceError(f"recording reference {reference[:200]!r} is not a file: refused")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _stat(self, reference: str) -> os.stat_result:
        fd = self._open(reference, os.O_RDONLY)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def path(self, reference: str) -> Path:
        """The file of ``reference``, checked to be inside ``root``; RecordingReferenceError if it is not."""
        if not reference or "\x00" in reference or len(reference) > 4096:
            raise RecordingReferenceError(f"expected a recording reference, found {reference[:64]!r}")
        given = Path(reference)
        try:
            # Judged by where it leads: "..", and symbolic links out of the directory, are refused; the file
            # opened is the one judged.
            root = self.root.resolve()
            path = (given if given.is_absolute() else self.root / given).resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise RecordingReferenceError(f"recording reference {reference[:200]!r} cannot be resolved") from exc
        if path == root or not path.is_relative_to(root):
            raise RecordingReferenceError(
                f"recording reference {reference[:200]!r} is outside the recordings directory {self.root}: refused"
            )
        return path
