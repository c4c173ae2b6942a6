"""A leaner asyncssh packet path for the broker process, where every relayed byte crosses it twice.

Profiled on a 1 GiB download through the broker (perf and py-spy), the event loop was full, a fifth of
it copying memory, and much of the rest asyncssh's per-packet Python. What costs without buying
anything on the broker's connections:

* every packet sent after key exchange is preceded by an empty ``SSH_MSG_IGNORE`` packet: a
  countermeasure against CBC-mode attacks, which is a second packet to pad, encrypt, send and for
  the peer to decrypt, for ciphers (AES-GCM, ChaCha20-Poly1305) that the attacks do not apply to.
  OpenSSH does not send them; RFC 4253 section 11.2 says no implementation is required to;
* every packet, sent or received, is described in a formatted string for the packet log before the
  logger finds out that packet logging (asyncssh debug level 3) is off;
* AES-GCM builds a new cipher context (key schedule) for every packet;
* the input buffer's remainder is copied twice per packet received, and each packet several more times
  on its way in and out.

:func:`install` replaces ``SSHConnection.send_packet``, ``SSHConnection._recv_pkthdr`` and
``SSHPacketLogger._log_packet``, and the relay writes through :func:`write`; all of them only in the
steady state (after key exchange and authentication, AES-GCM or for sending also ChaCha20, no
compression, no rekey due). Anything else goes to asyncssh's own code. The replacements are installed
only over the exact asyncssh code they were written against (its source is fingerprinted), so a
different asyncssh version runs unchanged, only slower (logged once).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import time
from typing import Any

from asyncssh import __version__ as asyncssh_version
from asyncssh import channel as _channel
from asyncssh import connection as _connection
from asyncssh import packet as _packet
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_CHANNEL_EXTENDED_DATA, MSG_USERAUTH_LAST
from asyncssh.crypto.cipher import GCMCipher
from asyncssh.encryption import ChachaEncryption, GCMEncryption
from asyncssh.logging import SSHLogger
from asyncssh.misc import MACError, ProtocolError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["install", "mismatch", "write"]

log = logging.getLogger("jit_ssh.broker.fastpath")

#: SHA-256 of the source of each replaced asyncssh function, as written against (asyncssh 2.24.x).
_FINGERPRINTS = {
    "SSHConnection.send_packet": "fb9da7bec6dd395a2f379f8a0f4dbfc5f194ff80e1ed8630d9a6dbf291359406",
    "SSHPacketLogger._log_packet": "f3263d7da93663f1a3825d53a0ef71122da1168957e28d0b84dc20a3bba0c45c",
    "GCMEncryption.encrypt_packet": "6a59190103eaab06f3c5eed1854732ea902e2cb994ede0ec50ed221a9a018373",
    "GCMCipher.encrypt_and_sign": "adb87dbdb4f9039ab1f0029bd845b032bd6571d2ae894c7b067ea1f62bb0726e",
    "GCMCipher._update_iv": "bce250a8d9dc82b6aa456657118d8773477e693b34cdb7f5d34da34e76ccba6d",
    "SSHConnection._recv_pkthdr": "7adc4d88fe20593cef39c00322547733a2d81f0aed40924e6105d5f57aa2a820",
    "SSHConnection._recv_packet": "b3daa22e9763eee9f3ec710d1469c1b54c8df5066bae3e65b66bdf1db8063c8b",
    "SSHConnection._finish_recv_packet": "e12d96db58b3524e90032440bfd6f2705a53a3b74caaa121e14b7d164ad2e6de",
    "SSHConnection._recv_data": "fc4e0735191bb0fdd7fa8f91761067015989bfa47246ac1843c9abaeef7d243f",
    "GCMEncryption.decrypt_packet": "6feb840baa1102a45480a86f2bba0c24c1cb17d2baef0baefcb6b6bad7217ecb",
    "GCMCipher.verify_and_decrypt": "c09eb5b36d0f6a92a6df6430e70d479dbd6354f3403b98b65e9dc9ecccc37b52",
    "SSHChannel.write": "1045e200084699330b3c75abe2e63e760dc8a12eb008c85ec5cefcafab372e38",
    "SSHChannel._flush_send_buf": "3f11e9dc27c58b18847c12007b945cb36c7767def131c9b96b0c0a81a8b72dbc",
    "SSHChannel._process_data": "342490795c4b893cbff8868df9c32b79230f0fd881b7fa435afd267e3ce22586",
    "SSHChannel._accept_data": "33121e9e185c98506d75d35b326b5e849ac6e76a92af56299be96e5cb5017ede",
    "SSHChannel.send_packet": "00e81b763c8f3dd2f3012a14cb28f5824ab653940b03f548abad871db918c0ae",
}

_state: dict[str, bool] = {"installed": False}
_PAD_POOL = 4096


class _Padding:
    """Random padding bytes, drawn from a pool refilled from os.urandom (one system call per 4 KiB)."""

    pool = b""
    pos = 0

    @classmethod
    def take(cls, length: int) -> bytes:
        pos = cls.pos
        if pos + length > len(cls.pool):
            cls.pool = os.urandom(_PAD_POOL)
            pos = 0
        cls.pos = pos + length
        return cls.pool[pos : pos + length]


def _fingerprint(function: Any) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


_original_send_packet = _connection.SSHConnection.send_packet
_original_log_packet = _packet.SSHPacketLogger._log_packet
_original_recv_pkthdr = _connection.SSHConnection._recv_pkthdr
_original_recv_packet = _connection.SSHConnection._recv_packet

_GCM_TAG = 16


def _log_packet(self: Any, msg: str, pkttype: int, pktid: int | None, packet: Any, note: str) -> None:
    if SSHLogger._debug_level >= 3:  # the only level at which SSHLogger.packet writes anything
        _original_log_packet(self, msg, pkttype, pktid, packet, note)


def _aead(cipher: GCMCipher) -> AESGCM:
    """The cipher's AES-GCM context, made once per key (asyncssh makes one per packet)."""
    aead = cipher.__dict__.get("_jit_ssh_aead")
    if aead is None:
        aead = cipher.__dict__["_jit_ssh_aead"] = AESGCM(cipher._key)
    return aead


# -- sending ------------------------------------------------------------------------------------------
def _steady(conn: Any) -> bool:
    """Key exchange and authentication done, no rekey due, no compression: the state the fast path covers."""
    return (
        conn._kex_complete
        and conn._auth_complete
        and conn._compressor is None
        and conn._rekey_bytes_sent < conn._rekey_bytes
        and not (conn._rekey_seconds and time.monotonic() >= conn._rekey_time)
    )


def _seal(conn: Any, payload_parts: tuple[bytes, ...], payload_len: int) -> int:
    """Pad, encrypt and send one packet (AES-GCM or ChaCha20-Poly1305); returns its sequence number."""
    padlen = -(conn._send_enchdrlen + payload_len) % conn._send_blocksize
    if padlen < 4:
        padlen += conn._send_blocksize
    pktlen = 1 + payload_len + padlen
    header = pktlen.to_bytes(4, "big")
    plain = b"".join((bytes((padlen,)), *payload_parts, _Padding.take(padlen)))
    seq = conn._send_seq
    encryption = conn._send_encryption
    if type(encryption) is GCMEncryption:  # into one buffer, with the cipher's context kept
        out = bytearray(4 + pktlen + _GCM_TAG)
        out[:4] = header
        cipher = encryption._cipher
        _aead(cipher).encrypt_into(cipher._iv, plain, header, memoryview(out)[4:])
        cipher._update_iv()
        conn._send(out)
    else:  # ChaCha20-Poly1305: asyncssh's cipher code, only without the IGNORE packet before it
        sealed, mac = encryption.encrypt_packet(seq, header, plain)
        conn._send(sealed + mac)
    conn._send_seq = (seq + 1) & 0xFFFFFFFF
    conn._rekey_bytes_sent += pktlen
    return int(seq)


def _send_packet(self: Any, pkttype: int, *args: bytes, handler: Any = None) -> None:
    kind = type(self._send_encryption)
    if (
        pkttype <= MSG_USERAUTH_LAST
        or (kind is not GCMEncryption and kind is not ChachaEncryption)
        or not _steady(self)
    ):
        _original_send_packet(self, pkttype, *args, handler=handler)
        return
    payload = bytes((pkttype,)) + b"".join(args)
    seq = _seal(self, (payload,), len(payload))
    if SSHLogger._debug_level >= 3:
        (handler or self).log_sent_packet(pkttype, seq, payload)


def write(chan: Any, data: bytes, datatype: int | None = None) -> None:
    """``chan.write(data, datatype)``, sending at once, without copies, when nothing is queued before it.

    For a chunk the peer's window and packet size take whole (what a relay mostly writes), on an
    AES-GCM connection in the steady state: one packet, built and encrypted into one buffer. Anything
    else is asyncssh's own ``write``, which queues, splits and pauses. Data for a channel no longer
    open for sending is dropped (asyncssh's ``write`` raises BrokenPipeError).
    """
    if chan._send_state != "open":
        # Closing (the peer's close was processed this loop iteration, the session's end is yet to
        # run): the relay drops what no longer has a reader instead of raising into the other
        # connection's receive loop, which would close that whole connection.
        return
    size = len(data)
    conn = chan._conn
    if (
        not _state["installed"]
        or chan._send_buf
        or chan._encoding
        or not 0 < size <= min(chan._send_window, chan._send_pktsize)
        or (datatype is not None and datatype not in chan._write_datatypes)
        or conn is None
        or type(conn._send_encryption) is not GCMEncryption
        or SSHLogger._debug_level >= 2
        or not _steady(conn)
    ):
        chan.write(data, datatype)
        return
    chan._send_window -= size
    if datatype is None:
        prefix = bytes((MSG_CHANNEL_DATA,)) + chan._send_chan.to_bytes(4, "big") + size.to_bytes(4, "big")
    else:
        prefix = (
            bytes((MSG_CHANNEL_EXTENDED_DATA,))
            + chan._send_chan.to_bytes(4, "big")
            + datatype.to_bytes(4, "big")
            + size.to_bytes(4, "big")
        )
    _seal(conn, (prefix, data), len(prefix) + size)


# -- receiving ----------------------------------------------------------------------------------------
class _Decrypted:
    """Stands in for the connection's decryption for one packet that the fast path already decrypted."""

    __slots__ = ("plain",)

    def __init__(self, plain: bytes) -> None:
        self.plain = plain

    def decrypt_packet(self, seq: int, first: bytes, rest: bytes, header_len: int, mac: bytes) -> bytes:
        return self.plain


def _recv_pkthdr(self: Any) -> bool:
    """Every complete packet in the input buffer, read in place; channel data delivered directly.

    asyncssh copies what remains of its input buffer twice per packet (eight times a 32 KiB packet's
    size for a 256 KiB read) and the packet itself five more times. Here a data packet is decrypted
    from a view of the buffer and its data sliced out once. Any other packet, or a data packet the
    checks below do not pass, goes through asyncssh's own ``_recv_packet`` (which raises its errors).
    """
    encryption = self._recv_encryption
    if (
        type(encryption) is not GCMEncryption
        or self._decompressor is not None
        or not self._auth_complete
        or SSHLogger._debug_level >= 2
    ):
        return bool(_original_recv_pkthdr(self))
    cipher = encryption._cipher
    aead = _aead(cipher)
    buf = self._inpbuf
    view = memoryview(buf)
    total = len(buf)
    pos = 0
    channels = self._channels
    try:
        while total - pos >= 4:
            pktlen = int.from_bytes(view[pos : pos + 4], "big")
            if pktlen > self._max_recv_pktlen:
                raise ProtocolError("Max packet size exceeded")
            end = pos + 4 + pktlen + _GCM_TAG
            if end > total:
                break
            try:
                plain = aead.decrypt(cipher._iv, view[pos + 4 : end], view[pos : pos + 4])
            except InvalidTag:
                raise MACError("MAC verification failed") from None
            cipher._update_iv()
            if len(plain) < 10 or plain[0] < 4:  # too short for channel data, or padding out of spec
                self._inpbuf = buf[pos:]
                return _handover(self, encryption, plain, pktlen)
            payload_end = len(plain) - plain[0]
            chan = channels.get(int.from_bytes(plain[2:6], "big")) if plain[1] == MSG_CHANNEL_DATA else None
            size = int.from_bytes(plain[6:10], "big") if chan is not None else -1
            if chan is None or 10 + size != payload_end or chan._recv_state != "open" or size > chan._recv_window:
                # asyncssh's own code for this packet (it finds the packet at the buffer's start)
                self._inpbuf = buf[pos:]
                return _handover(self, encryption, plain, pktlen)
            pos = end
            self._recv_seq = (self._recv_seq + 1) & 0xFFFFFFFF
            self._auth_final = True
            chan._accept_data(plain[10:payload_end])
            if self._transport is None or self._recv_encryption is not encryption:
                break
    finally:
        view.release()
    if pos:
        self._inpbuf = buf[pos:]
    return False


def _handover(self: Any, encryption: Any, plain: bytes, pktlen: int) -> bool:
    """Run asyncssh's ``_recv_packet`` on a packet already decrypted (and its nonce already used)."""
    blocksize = self._recv_blocksize
    self._packet = self._inpbuf[:blocksize]
    self._inpbuf = self._inpbuf[blocksize:]
    self._pktlen = pktlen
    self._recv_handler = self._recv_packet
    self._recv_encryption = _Decrypted(plain)
    try:
        return bool(_original_recv_packet(self))
    finally:
        if isinstance(self._recv_encryption, _Decrypted):  # unless the packet was NEWKEYS
            self._recv_encryption = encryption


def _targets() -> dict[str, Any]:
    return {
        "SSHConnection.send_packet": _original_send_packet,
        "SSHPacketLogger._log_packet": _original_log_packet,
        "SSHConnection._recv_pkthdr": _original_recv_pkthdr,
        "SSHConnection._recv_packet": _original_recv_packet,
        "SSHConnection._finish_recv_packet": _connection.SSHConnection._finish_recv_packet,
        "SSHConnection._recv_data": _connection.SSHConnection._recv_data,
        # what the replacements do in their place: the same key, nonce and nonce update, the same
        # channel bookkeeping
        "GCMEncryption.encrypt_packet": GCMEncryption.encrypt_packet,
        "GCMEncryption.decrypt_packet": GCMEncryption.decrypt_packet,
        "GCMCipher.encrypt_and_sign": GCMCipher.encrypt_and_sign,
        "GCMCipher.verify_and_decrypt": GCMCipher.verify_and_decrypt,
        "GCMCipher._update_iv": GCMCipher._update_iv,
        "SSHChannel.write": _channel.SSHChannel.write,
        "SSHChannel._flush_send_buf": _channel.SSHChannel._flush_send_buf,
        "SSHChannel._process_data": _channel.SSHChannel._process_data,
        "SSHChannel._accept_data": _channel.SSHChannel._accept_data,
        "SSHChannel.send_packet": _channel.SSHChannel.send_packet,
    }


def mismatch() -> str | None:
    """The first asyncssh function that is not the code the fast path was written against, if any."""
    for name, function in _targets().items():
        try:
            found = _fingerprint(function)
        except (OSError, TypeError):
            found = "(no source)"
        if found != _FINGERPRINTS.get(name):
            return name
    return None


def install() -> bool:
    """Replace asyncssh's methods in this process (the broker's); False if asyncssh is not the expected code."""
    if _state["installed"]:
        return True
    changed = mismatch()
    if changed is not None:
        log.warning("asyncssh's %s is not the code the broker's fast path was written for; running without it", changed)
        return False
    _connection.SSHConnection.send_packet = _send_packet  # type: ignore[method-assign]
    _connection.SSHConnection._recv_pkthdr = _recv_pkthdr  # type: ignore[method-assign]
    _packet.SSHPacketLogger._log_packet = _log_packet  # type: ignore[method-assign]
    _state["installed"] = True
    log.info("packet fast path on (asyncssh %s)", asyncssh_version)
    return True
