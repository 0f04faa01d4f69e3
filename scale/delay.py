"""A relay that slows a link: every TCP connection redirected to it (nftables `redirect`
in the namespace it runs in) is carried on to its original destination, each chunk of
bytes held back half the added round-trip time in each direction, in order. For kernels
without `tc netem` (see `scale.netns`).

    python -m scale.delay --port 6399 --mark 26483 --rtt-file /path/rtt_ms

The added round-trip time, in ms, is read from `--rtt-file` at start and again on
SIGUSR1, and applies at once to every connection (0: carried on as soon as read). Prints
`ready` once it listens; runs until SIGTERM. Its own connections carry `--mark`, which
the redirect rule lets through.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import struct
from collections import deque
from pathlib import Path

SO_ORIGINAL_DST = 80
_CHUNK = 65536
_MAX_HELD = 4 * 1024 * 1024  # bytes held per direction before reading pauses


def original_destination(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), int(port)


class Delay:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds = 0.0
        self.read()

    def read(self) -> None:
        """Half the round trip, each way."""
        self.seconds = max(0.0, float(self.path.read_text().strip() or 0)) / 2000


async def _carry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Delay) -> None:
    """Bytes from `reader` to `writer`, each chunk held `delay` after it came."""
    loop = asyncio.get_running_loop()
    held: deque[tuple[float, bytes]] = deque()
    held_bytes = 0
    more = asyncio.Event()
    room = asyncio.Event()
    room.set()
    done = False

    async def take() -> None:
        nonlocal held_bytes, done
        while True:
            await room.wait()
            data = await reader.read(_CHUNK)
            if not data:
                done = True
                more.set()
                return
            held.append((loop.time(), data))
            held_bytes += len(data)
            if held_bytes > _MAX_HELD:
                room.clear()
            more.set()

    taker = asyncio.create_task(take())
    try:
        while True:
            if not held:
                if done:
                    break
                more.clear()
                await more.wait()
                continue
            came, data = held[0]
            wait = came + delay.seconds - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            held.popleft()
            held_bytes -= len(data)
            if held_bytes <= _MAX_HELD:
                room.set()
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()
    finally:
        taker.cancel()
        with contextlib.suppress(BaseException):
            await taker


async def _serve_one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delay: Delay, mark: int
) -> None:
    upstream: asyncio.StreamWriter | None = None
    try:
        sock = writer.get_extra_info("socket")
        host, port = original_destination(sock)
        out = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        out.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        out.setblocking(False)
        await asyncio.get_running_loop().sock_connect(out, (host, port))
        up_reader, upstream = await asyncio.open_connection(sock=out)
        for s in (sock, out):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_carry(reader, upstream, delay))
            tg.create_task(_carry(up_reader, writer, delay))
    except (OSError, ExceptionGroup, asyncio.CancelledError):
        pass  # one side closed, or the relay stops: the connection ends
    finally:
        for w in (writer, upstream):
            if w is not None:
                w.close()


async def _main(port: int, rtt_file: Path, mark: int) -> None:
    delay = Delay(rtt_file)
    connections: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            await _serve_one(reader, writer, delay=delay, mark=mark)
        finally:
            connections.discard(task)

    server = await asyncio.start_server(handle, "0.0.0.0", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, delay.read)
    print("ready", flush=True)
    async with server:
        await stop.wait()
        server.close()
        for task in list(connections):
            task.cancel()
        while connections:
            await asyncio.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scale.delay", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rtt-file", type=Path, required=True)
    parser.add_argument("--mark", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(_main(args.port, args.rtt_file, args.mark))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
