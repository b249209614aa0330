"""The fault-injection proxy the outage tests rely on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.events.tcp_proxy import TcpProxy


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _roundtrip(port: int, payload: bytes = b"ping") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    data = await reader.readexactly(len(payload))
    writer.close()
    return data


async def test_forwards_cuts_and_restores(echo_port: int) -> None:
    proxy = TcpProxy("127.0.0.1", echo_port)
    port = await proxy.start()
    try:
        assert await _roundtrip(port) == b"ping"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"

        await proxy.cut()
        assert proxy.is_cut and proxy.live_connections == 0
        assert await reader.read(10) == b""  # the live connection is gone
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)

        await proxy.restore()
        assert proxy.port == port  # clients keep their address
        assert await _roundtrip(port, b"again") == b"again"
        assert proxy.connections_total == 3
    finally:
        await proxy.close()


async def test_stall_holds_bytes_until_restore(echo_port: int) -> None:
    proxy = TcpProxy("127.0.0.1", echo_port)
    port = await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await proxy.stall()
        writer.write(b"held")
        await writer.drain()
        pending = asyncio.ensure_future(reader.readexactly(4))
        done, _ = await asyncio.wait({pending}, timeout=0.2)
        assert not done  # nothing gets through while stalled
        await proxy.restore()
        assert await pending == b"held"
        writer.close()
    finally:
        await proxy.close()


async def test_unreachable_target_resets_the_client() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    proxy = TcpProxy("127.0.0.1", dead_port)
    port = await proxy.start()
    try:
        reader, _ = await asyncio.open_connection("127.0.0.1", port)
        try:
            data = await reader.read(10)
        except ConnectionResetError:
            data = b""
        assert data == b""
    finally:
        await proxy.close()
