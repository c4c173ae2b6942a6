"""The packet fast path between two real asyncssh endpoints in this process (both sides on it).

OpenSSH on both hops is tested in tests/e2e/test_broker_fastpath.py; here both ends are asyncssh, so
the ciphers and rekey intervals can be chosen freely, and the relay's write can be driven into a
channel that has just closed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import ClassVar

import asyncssh
import pytest
from jit_ssh.broker import fastpath


class _Sink(asyncssh.SSHServerSession[bytes]):
    """Echoes what it gets back in chunks, and hashes it."""

    def __init__(self) -> None:
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.digest = hashlib.sha256()

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan

    def shell_requested(self) -> bool:
        return True

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.digest.update(data)
        assert self.chan is not None
        fastpath.write(self.chan, data)

    def eof_received(self) -> bool:
        assert self.chan is not None
        self.chan.exit(0)
        return False


class _Server(asyncssh.SSHServer):
    sessions: ClassVar[list[_Sink]] = []

    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: this tests the transport, not who may use it

    def session_requested(self) -> _Sink:
        sink = _Sink()
        _Server.sessions.append(sink)
        return sink


async def _pair(cipher: str, rekey_bytes: int) -> tuple[asyncssh.SSHAcceptor, asyncssh.SSHClientConnection]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        _Server, "127.0.0.1", 0, server_host_keys=[key], encryption_algs=[cipher], rekey_bytes=rekey_bytes,
        encoding=None,
    )  # fmt: skip
    port = server.sockets[0].getsockname()[1]
    client = await asyncssh.connect(
        "127.0.0.1", port, known_hosts=([key.convert_to_public()], [], []), username="x",
        encryption_algs=[cipher], rekey_bytes=rekey_bytes, client_keys=None, agent_path=None, config=None,
    )  # fmt: skip
    return server, client


@pytest.mark.parametrize(
    "cipher", ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]
)
def test_echo_through_rekeys(cipher: str) -> None:
    assert fastpath.install()
    data = os.urandom(6 * 1024 * 1024 + 17)

    async def main() -> tuple[bytes, str]:
        server, client = await _pair(cipher, rekey_bytes=256 * 1024)
        received = bytearray()
        async with client:
            process = await client.create_process(encoding=None, term_type=None)

            async def read_all() -> None:
                while chunk := await process.stdout.read(65536):
                    received.extend(chunk)

            reader = asyncio.create_task(read_all())
            for pos in range(0, len(data), 100_000):
                process.stdin.write(data[pos : pos + 100_000])
                await process.stdin.drain()
            process.stdin.write_eof()
            await asyncio.wait_for(reader, 60)
            await process.wait()
        server.close()
        return bytes(received), _Server.sessions[-1].digest.hexdigest()

    received, server_digest = asyncio.run(main())
    assert received == data
    assert server_digest == hashlib.sha256(data).hexdigest()


def test_write_to_a_closing_channel_is_dropped() -> None:
    assert fastpath.install()

    async def main() -> None:
        server, client = await _pair("aes128-gcm@openssh.com", rekey_bytes=1 << 30)
        async with client:
            process = await client.create_process(encoding=None, term_type=None)
            process.stdin.write(b"x")
            assert await process.stdout.readexactly(1) == b"x"
            sink = _Server.sessions[-1]
            assert sink.chan is not None
            process.close()
            await process.wait_closed()
            for _ in range(100):  # the server's channel leaves "open" once the client's close arrives
                if sink.chan._send_state != "open":
                    break
                await asyncio.sleep(0.01)
            assert sink.chan._send_state != "open"
            fastpath.write(sink.chan, b"late")  # asyncssh's write would raise BrokenPipeError
            with pytest.raises(BrokenPipeError):
                sink.chan.write(b"late")
        server.close()

    asyncio.run(main())
