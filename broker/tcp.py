"""Acknowledge a new connection's first segments at once, so that peers using Nagle do not stall.

OpenSSH's ``ssh`` and ``sshd`` leave Nagle's algorithm on until a session is interactive, and they
write several small packets in a row during key exchange, authentication and channel set-up. Each
small packet after the first then waits for the ACK of the one before, and Linux delays that ACK up to
40 ms when the broker has nothing to send back at once: measured here, a stray few hundred
microseconds of broker work at the wrong moment added 40 ms to ``ssh HOST true``. ``TCP_QUICKACK``
makes the kernel ACK at once; the kernel drops back to delayed ACKs by itself, so it is set again after
each of the first reads (the set-up), then left alone for bulk data.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

__all__ = ["SETUP_READS", "quick_acks"]

SETUP_READS = 64
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def quick_acks(conn: Any, reads: int = SETUP_READS) -> None:
    """ACK at once for ``conn``'s next ``reads`` reads (an asyncssh connection; nothing where unsupported)."""
    sock = conn.get_extra_info("socket")
    if _QUICKACK is None or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    original = conn.data_received
    left = [reads]

    def _arm() -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def data_received(data: bytes, datatype: Any = None) -> None:
        _arm()
        left[0] -= 1
        if left[0] <= 0:
            del conn.data_received  # back to the class's method
        original(data, datatype)

    _arm()
    conn.data_received = data_received
