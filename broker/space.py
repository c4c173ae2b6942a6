"""Disk space for recordings, claimed before the bytes that need it are relayed (invariants 5 and 6).

Recordings are written behind the relay (broker/recording/writer.py): a write that fails for lack of space would end
a session only after the host had the bytes that could not be recorded. So each recording claims space
ahead of what it will write: allocated beyond the end of its file (``fallocate`` with ``KEEP_SIZE``: the
file's size does not change, its next writes cannot fail for space), before the bytes are relayed. When
space cannot be claimed, the session ends before relaying them.

One user must not be able to fill the disk for everyone (``head -c 100G /dev/urandom | ssh HOST 'cat >
/dev/null'`` is recorded in full). Every recording gets :data:`INITIAL` bytes when it starts, as long as
the disk has them. Beyond that, the file system keeps a reserve free (5 % of its size, at most 1 GiB) for
light users: a user whose live recordings hold more than :func:`light_limit` may not claim into it. A
flood therefore ends its own session at the reserve, while other users' sessions (typing, reading output)
go on, and an operator has the reserve's room to act.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading

__all__ = ["CHUNK", "INITIAL", "NoSpace", "Reservation", "reserve_floor"]

#: Space every recording gets at its start (on a file system of 100 MiB or more), and the unit of more.
INITIAL = 1024 * 1024
CHUNK = 4 * 1024 * 1024
#: Kept at the end of what a recording has claimed, for its closing record (written whatever happens).
CLOSING = 16 * 1024
_SMALLEST = 64 * 1024
_KEEP_SIZE = 1  # FALLOC_FL_KEEP_SIZE
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)
_fallocate.restype = ctypes.c_int


#: Bytes claimed by each user's live recordings (claims happen on the loop, first ones in worker threads).
_held: dict[str, int] = {}
_held_lock = threading.Lock()


def _hold(user: str, amount: int) -> int:
    """Count ``amount`` more bytes (negative: fewer) against ``user``; returns what the user holds now."""
    with _held_lock:
        held = _held.get(user, 0) + amount
        if held > 0:
            _held[user] = held
        else:
            _held.pop(user, None)
        return held


def light_limit(fd: int) -> int:
    """What a user's live recordings may hold and still claim from the reserve: 4 MiB, or 10 % of a smaller
    file system."""
    st = os.fstatvfs(fd)
    return min(CHUNK, st.f_blocks * st.f_frsize // 10)


class NoSpace(OSError):
    """No space could be claimed for a recording (the disk is full, or down to its reserve)."""


def reserve_floor(fd: int) -> int:
    """The free bytes a file system keeps for recordings that have not used their first MiB yet."""
    st = os.fstatvfs(fd)
    return min(st.f_blocks * st.f_frsize * 5 // 100, 1 << 30)


def _allocate(fd: int, offset: int, length: int) -> None:
    if _fallocate(fd, _KEEP_SIZE, offset, length) == 0:
        return
    code = ctypes.get_errno()
    if code in (errno.EOPNOTSUPP, errno.ENOSYS):
        # A file system without fallocate: the best this can do is look at the free space.
        st = os.fstatvfs(fd)
        if st.f_bavail * st.f_frsize >= length:
            return
        code = errno.ENOSPC
    raise NoSpace(code, os.strerror(code))


class Reservation:
    """The space one recording file has claimed: bytes promised to it (``claimed``) and allocated (``end``).

    Used on the event loop only; the writer thread writes within what was allocated.
    """

    __slots__ = ("_fd", "_start", "claimed", "end", "user")

    def __init__(self, fd: int, start: int, user: str = "") -> None:
        self._fd = fd
        self.user = user
        self._start = start
        self.claimed = start
        self.end = start

    def release(self) -> None:
        """The recording is closed: what it claimed no longer counts against its user."""
        _hold(self.user, -(self.end - self._start))
        self._start = self.end

    def initial(self) -> None:
        """The recording's first MiB (or 1 % of a smaller file system), whatever the reserve; raises NoSpace
        if the disk has not got it."""
        st = os.fstatvfs(self._fd)
        amount = max(CLOSING * 2, min(INITIAL, st.f_blocks * st.f_frsize // 100))
        _allocate(self._fd, self.end, amount)
        self.end += amount
        _hold(self.user, amount)

    def claim(self, size: int) -> None:
        """Claim room for ``size`` more bytes of log (compressed, they take at most about as much)."""
        # zstd's bound for incompressible data (n + n/256 and a little), and a frame's own bytes per write.
        need = self.claimed + size + (size >> 7) + 64
        if need + CLOSING > self.end:
            self._grow(need + CLOSING - self.end)
        self.claimed = need

    def _grow(self, short: int) -> None:
        st = os.fstatvfs(self._fd)
        free = st.f_bavail * st.f_frsize
        room = free - reserve_floor(self._fd)
        if room < short:
            if _hold(self.user, 0) + short > light_limit(self._fd):
                raise NoSpace(errno.ENOSPC, f"recording space is down to its reserve ({free // 1024} KiB free)")
            room = free  # a light user may use the reserve
        amount = min(max(CHUNK, short), room)
        while True:
            try:
                _allocate(self._fd, self.end, amount)
            except NoSpace:
                if amount <= max(short, _SMALLEST):
                    raise
                amount = max(short, amount // 2)
                continue
            self.end += amount
            _hold(self.user, amount)
            return
