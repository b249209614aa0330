"""A TCP proxy for fault injection: sits between a client and a server and can cut or stall the link.

    proxy = TcpProxy("127.0.0.1", 5432)
    port = await proxy.start()        # clients connect to 127.0.0.1:port
    await proxy.cut()                 # live connections reset, new ones refused (like a dead host)
    await proxy.restore()             # accept and forward again, on the same port
    await proxy.stall()               # keep connections but forward nothing (a hung server)
    await proxy.close()
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["TcpProxy"]

_CHUNK = 1 << 16


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.port: int | None = None
        self.connections_total = 0
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def live_connections(self) -> int:
        return len(self._links)

    @property
    def is_cut(self) -> bool:
        return self._server is None and self.port is not None

    async def start(self) -> int:
        """Listen on an ephemeral port (the same one again after ``restore``); returns it."""
        if self._server is not None:
            raise RuntimeError("proxy already listening")
        self._server = await asyncio.start_server(self._accept, self.listen_host, self.port or 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def cut(self) -> None:
        """Stop listening (new connections are refused) and reset every live connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for client, upstream in list(self._links):
            client.transport.abort()
            upstream.transport.abort()
        self._links.clear()

    async def stall(self) -> None:
        """Keep every connection open but stop forwarding bytes, in both directions."""
        self._flowing.clear()

    async def restore(self) -> None:
        """Undo ``cut`` and ``stall``."""
        self._flowing.set()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        self._flowing.set()
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.port = None

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_writer.transport.abort()
            return
        if self._server is None:  # cut while connecting upstream
            client_writer.transport.abort()
            up_writer.transport.abort()
            return
        self.connections_total += 1
        link = (client_writer, up_writer)
        self._links.add(link)
        for reader, writer in ((client_reader, up_writer), (up_reader, client_writer)):
            task = asyncio.create_task(self._pipe(reader, writer, link))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                await self._flowing.wait()
                if link not in self._links:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # One direction ending ends the link: Postgres has no use for half-open sockets.
            self._links.discard(link)
            for w in link:
                w.transport.abort()
