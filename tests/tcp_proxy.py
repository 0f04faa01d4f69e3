"""A TCP proxy on loopback between a test's clients and the real server, to inject the
faults a network does: `cut()` drops every connection through it at once (as a lost
link does), and `hold_replies` swallows what the server sends (as a link that dies
after the request got through): the server acts, the client never hears of it."""

from __future__ import annotations

import asyncio
import contextlib

from server.embedded import free_port


class TcpProxy:
    def __init__(self, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self.port = 0
        self.hold_replies = False
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._pairs: dict[tuple[asyncio.StreamWriter, asyncio.StreamWriter], bytes] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def __aenter__(self) -> TcpProxy:
        self.port = free_port()
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    def cut(self, *, only_path: bytes = b"") -> int:
        """Drop every connection now (the client sees its socket die, no close frame), or
        only those whose request was for a path starting with `only_path` (`b"/ws/"`: the
        room sockets, not the REST calls); how many."""
        cut = 0
        for pair, first in list(self._pairs.items()):
            if only_path and not first.startswith(b"GET " + only_path):
                continue
            for writer in pair:
                with contextlib.suppress(Exception):
                    writer.transport.abort()
            del self._pairs[pair]
            cut += 1
        return cut

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs[pair] = b""
        for task in (
            asyncio.create_task(self._pump(reader, up_writer, replies=False, pair=pair)),
            asyncio.create_task(self._pump(up_reader, writer, replies=True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        replies: bool,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter] | None = None,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if pair is not None and self._pairs.get(pair) == b"":
                    self._pairs[pair] = data[:64]
                if replies and self.hold_replies:
                    continue
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()
