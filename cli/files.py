"""Small file helpers the CLI shares."""

from __future__ import annotations

import os
from pathlib import Path

from jit_ssh.ca import JitSshError

__all__ = ["write_atomic"]


def write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Replace ``path`` with ``data`` in one rename, so readers (sshd's RevokedKeys) never see a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.chmod(mode)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise JitSshError(f"cannot write {path}: {exc.strerror}") from exc
