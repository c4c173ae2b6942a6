"""quick_acks: every byte still reaches the protocol, in order, and the wrapper leaves after its reads."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from jit_ssh.broker.tcp import quick_acks


class _Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.reads = 0
        self.transport: Any = None
        self.done = asyncio.Event()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_extra_info(self, name: str) -> Any:
        return self.transport.get_extra_info(name)

    def data_received(self, data: bytes, datatype: Any = None) -> None:
        self.reads += 1
        self.data += data

    def eof_received(self) -> None:
        self.done.set()


def test_data_passes_and_wrapper_leaves() -> None:
    async def main() -> tuple[_Collect, bool, bytes]:
        received = _Collect()
        server = await asyncio.get_running_loop().create_server(lambda: received, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sent = bytearray()
        with socket.create_connection(("127.0.0.1", port)) as client:
            while received.transport is None:
                await asyncio.sleep(0.01)
            quick_acks(received, reads=3)
            wrapped = "data_received" in vars(received)
            for n in range(10):
                chunk = bytes([n]) * (n + 1)
                sent += chunk
                client.sendall(chunk)
                await asyncio.sleep(0.02)  # separate reads
            client.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(received.done.wait(), 10)
        server.close()
        assert wrapped
        return received, "data_received" in vars(received), bytes(sent)

    received, still_wrapped, sent = asyncio.run(main())
    assert bytes(received.data) == sent
    assert received.reads >= 4
    assert not still_wrapped
