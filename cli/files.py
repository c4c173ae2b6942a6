"""Small file helpers the CLI shares."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from jit_ssh.ca import JitSshError

__all__ = ["write_atomic", "write_stream_atomic"]


@contextmanager
def _replacing(path: Path, mode: int) -> Iterator[BinaryIO]:
    """A file to write in place of ``path``: renamed over it, synced, once the block ends; removed if it fails."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        tmp.chmod(mode)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise JitSshError(f"cannot write {path}: {exc.strerror}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Replace ``path`` with ``data`` in one rename, so readers (sshd's RevokedKeys) never see a part."""
    with _replacing(path, mode) as handle:
        handle.write(data)


async def write_stream_atomic(path: Path, chunks: AsyncIterator[bytes], *, mode: int) -> int:
    """Write ``chunks`` to ``path`` as they come, replacing it in one rename at the end; returns the size.

    Nothing is held in memory (an export can be gigabytes of JSON), and if the stream fails nothing is
    left behind: no empty or half-written file where the reviewer expects the whole.
    """
    size = 0
    with _replacing(path, mode) as handle:
        async for chunk in chunks:
            handle.write(chunk)
            size += len(chunk)
    return size
