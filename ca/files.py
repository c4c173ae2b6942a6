"""Files and directories with the modes they are meant to have, whatever the process's umask.

The broker may be started with any umask (a permissive one from a unit file or a shell), and what it
writes holds keys, the audit log and recordings. So modes are never left to the umask: a file is created
with its final mode before its first byte is written (under a temporary name, then renamed into place,
so that nobody sees it half-written either), and every directory is created with an explicit ``chmod``
(``mkdir(parents=True)`` gives the parents the umask's mode, not the one asked for). What already exists
is tightened, not loosened: group write and any access by others are taken away, the owner's other choices
(a group that may read) kept.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["LOOSE", "private_dir", "tighten", "write_private"]

#: Bits a private file or directory must not have: group write, and anything for others.
LOOSE = 0o027


def private_dir(path: Path, mode: int = 0o700, *, tighten_existing: bool = True) -> None:
    """Create ``path`` and its missing parents with exactly ``mode``; tighten ``path`` if it exists (unless
    ``tighten_existing`` is False: a folder the caller was handed, not one of its own)."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process (a second broker) made it first
            folder.mkdir(mode=mode)
        folder.chmod(mode)
    if not missing and tighten_existing:
        tighten(path)


def tighten(path: Path) -> None:
    """Take group write and others' access away from an existing ``path`` (missing: nothing to do)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & LOOSE:
        path.chmod(mode & ~LOOSE)


def write_private(path: Path, data: bytes, *, mode: int = 0o600, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` atomically, with ``mode`` from its first byte.

    ``exclusive``: never replace an existing ``path`` (FileExistsError), so that of two processes creating
    the same key at once, both use the one that won.
    """
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # unique, 0600 from the start
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(tmp, path)
        else:
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
