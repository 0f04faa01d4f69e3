"""`python -m bench.raw_server --port P`: the raw ceiling.

A bare `websockets` asyncio server with nothing behind it: no auth, no Redis, no
per-socket queues or writer tasks. On `broadcast` it builds one events frame every
`window_ms` (the same size and number of events as the giftstream frames it is compared
with), and writes it to every client with `websockets.asyncio.server.broadcast`: encoded
once, written to all, synchronously, as the giftstream fan-out writes too. It has no
backpressure of its own, so a client whose transport already holds `skip_bytes` (at least
two frames) is skipped for that frame (giftstream instead drops a reader that holds more
than its socket bound unsent): what is skipped is counted, and the clients see it as
missing seqs.

Commands, one JSON line each on stdin, answered on stdout: `broadcast`, `count`, `quit`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, broadcast, serve

from bench.limits import run_fast


def raw_frame(*, first_seq: int, events: int, event_bytes: int, sent_at: float) -> str:
    """An events frame of `events` events numbered from `first_seq`, each padded to about
    `event_bytes`, stamped with `sent_at` (monotonic seconds)."""
    items = []
    for i in range(events):
        head = f'{{"seq":{first_seq + i},"t":{sent_at:.6f},"kind":"raw","pad":"'
        pad = max(0, event_bytes - len(head) - 2)
        items.append(head + "x" * pad + '"}')
    return '{"type":"events","events":[' + ",".join(items) + "]}"


class RawBroadcaster:
    def __init__(self) -> None:
        self.clients: set[ServerConnection] = set()
        self.seq = 0

    async def handler(self, conn: ServerConnection) -> None:
        self.clients.add(conn)
        try:
            await conn.send(orjson.dumps({"type": "welcome", "seq": self.seq}).decode())
            async for _ in conn:
                pass
        finally:
            self.clients.discard(conn)

    async def broadcast(self, cmd: dict[str, Any]) -> dict[str, Any]:
        window = float(cmd["window_ms"]) / 1000
        events = max(1, int(cmd["events_per_frame"]))
        frame_bytes = int(cmd["frame_bytes"])
        event_bytes = max(40, (frame_bytes - 30) // events)
        start_at = float(cmd["start_at"])
        stop_at = start_at + float(cmd["duration"])
        written = skipped = ticks = late = 0
        sizes = 0
        delay = start_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        due = start_at
        while True:
            now = time.monotonic()
            if now >= stop_at:
                break
            if now < due:
                await asyncio.sleep(due - now)
            frame = raw_frame(
                first_seq=self.seq + 1,
                events=events,
                event_bytes=event_bytes,
                sent_at=time.monotonic(),
            )
            self.seq += events
            limit = max(int(cmd["skip_bytes"]), 2 * len(frame))
            targets = [c for c in self.clients if c.transport.get_write_buffer_size() < limit]
            broadcast(targets, frame)
            written += len(targets)
            skipped += len(self.clients) - len(targets)
            sizes += len(frame)
            ticks += 1
            due += window
            if due < time.monotonic():
                late += 1
                due = time.monotonic()
            # Let the loop read (clients' pings and closes) between ticks.
            await asyncio.sleep(0)
        return {
            "frames_written": written,
            "skipped": skipped,
            "ticks": ticks,
            "late_ticks": late,
            "frame_bytes": sizes // ticks if ticks else 0,
            "last_seq": self.seq,
            "clients": len(self.clients),
        }


async def main_async(port: int, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    raw = RawBroadcaster()
    out = sys.stdout.buffer

    def reply(message: dict[str, Any]) -> None:
        out.write(orjson.dumps(message) + b"\n")
        out.flush()

    async with serve(
        raw.handler,
        "127.0.0.1",
        port,
        compression=None,
        ping_interval=20,
        ping_timeout=20,
        backlog=4096,
    ):
        reply({"id": 0, "ok": True, "pid": os.getpid()})
        try:
            async with asyncio.timeout(max_seconds):
                while True:
                    line = await stdin.readline()
                    if not line:
                        break
                    cmd = orjson.loads(line)
                    if cmd["cmd"] == "quit":
                        break
                    try:
                        if cmd["cmd"] == "broadcast":
                            result = await raw.broadcast(cmd)
                        else:
                            result = {"clients": len(raw.clients)}
                        reply({"id": cmd["id"], "ok": True, **result})
                    except Exception as exc:  # noqa: BLE001 - reported to the bench
                        reply({"id": cmd["id"], "ok": False, "error": repr(exc)})
        except TimeoutError:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()
    run_fast(main_async(args.port, args.max_seconds))


if __name__ == "__main__":
    main()
