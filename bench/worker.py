"""`python -m bench.worker`: one load-client process.

It holds a share of the viewers and senders and does what the bench tells it, one JSON
object a line on stdin, each answered by one JSON line on stdout with the same `id`.
Commands run concurrently. It exits when stdin closes (the bench is gone), on `quit`,
or after `--max-seconds`, whatever happens: a load that stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from bench.clients import GiftSender, RoomViewer, TimedViewer
from bench.limits import run_fast
from bench.wire import ClosedBeforeWelcome, HandshakeFailed, connect

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ClosedBeforeWelcome):
        return f"closed {exc.code}"
    if isinstance(exc, HandshakeFailed):
        return f"handshake: {exc}"[:80]
    return type(exc).__name__


class ClientWorker:
    def __init__(self) -> None:
        self.viewers: dict[str, list[RoomViewer]] = {}
        self.senders: dict[str, list[GiftSender]] = {}

    # --- connecting -------------------------------------------------------------------

    async def _open(
        self,
        factory: Callable[[], RoomViewer],
        *,
        host: str,
        port: int,
        timeout: float,
        failures: Counter[str],
    ) -> RoomViewer | None:
        client: RoomViewer | None = None
        try:
            client = await connect(factory, host, port, timeout=timeout)
            async with asyncio.timeout(timeout):
                if await client.welcomed:
                    return client
            failures[f"closed {client.close_code}"] += 1
        except (OSError, TimeoutError, HandshakeFailed, ClosedBeforeWelcome) as exc:
            failures[_reason(exc)] += 1
        if client is not None:
            client.close()
        return None

    async def viewers_cmd(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Connect `n` viewers (the first `timed` of them timed) to `path` on `port`."""
        host, port, path = cmd["host"], int(cmd["port"]), cmd["path"]
        n, timed = int(cmd["n"]), int(cmd.get("timed", 0))
        limit = asyncio.Semaphore(int(cmd.get("concurrency", 64)))
        failures: Counter[str] = Counter()
        opened: list[RoomViewer] = []
        started = time.monotonic()

        async def one(i: int) -> None:
            kind = TimedViewer if i < timed else RoomViewer
            async with limit:
                client = await self._open(
                    lambda: kind(host=host, port=port, path=path),
                    host=host,
                    port=port,
                    timeout=float(cmd.get("timeout_s", 30.0)),
                    failures=failures,
                )
            if client is not None:
                opened.append(client)

        async with asyncio.TaskGroup() as tg:
            for i in range(n):
                tg.create_task(one(i))
        self.viewers.setdefault(cmd["group"], []).extend(opened)
        return {
            "connected": len(opened),
            "failed": dict(failures),
            "seconds": time.monotonic() - started,
        }

    async def senders_cmd(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Connect one sender per entry of `senders` ({user_id, token, port, path})."""
        host = cmd["host"]
        limit = asyncio.Semaphore(int(cmd.get("concurrency", 64)))
        failures: Counter[str] = Counter()
        opened: list[GiftSender] = []

        async def one(spec: dict[str, Any]) -> None:
            port = int(spec["port"])

            def factory() -> RoomViewer:
                return GiftSender(host=host, port=port, path=spec["path"], user_id=spec["user_id"])

            async with limit:
                client = await self._open(
                    factory,
                    host=host,
                    port=port,
                    timeout=float(cmd.get("timeout_s", 30.0)),
                    failures=failures,
                )
            if client is not None:
                assert isinstance(client, GiftSender)
                opened.append(client)

        async with asyncio.TaskGroup() as tg:
            for spec in cmd["senders"]:
                tg.create_task(one(spec))
        self.senders.setdefault(cmd["group"], []).extend(opened)
        return {"connected": len(opened), "failed": dict(failures)}

    # --- sending ----------------------------------------------------------------------

    async def send_cmd(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Run the group's senders: `mode` "open" (each at `rate`, its first gift at
        `start_at + offsets[user_id]`) or "closed"; then wait for the last answers."""
        senders = self.senders.get(cmd["group"], [])
        start_at, duration = float(cmd["start_at"]), float(cmd["duration"])
        offsets: dict[str, float] = cmd.get("offsets", {})
        for sender in senders:
            sender.reset_counts()
        async with asyncio.TaskGroup() as tg:
            for sender in senders:
                if cmd["mode"] == "open":
                    offset = float(offsets.get(sender.user_id, 0.0))
                    tg.create_task(
                        sender.run_open_loop(
                            rate=float(cmd["rate"]),
                            start_at=start_at + offset,
                            duration=duration - offset,
                            max_in_flight=int(cmd["max_in_flight"]),
                        )
                    )
                else:
                    tg.create_task(
                        sender.run_closed_loop(
                            start_at=start_at, duration=duration, timeout=float(cmd["timeout_s"])
                        )
                    )
        finished_at = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            for sender in senders:
                tg.create_task(sender.settle(timeout=float(cmd["settle_timeout"])))
        errors: Counter[str] = Counter()
        ack_ms: list[float] = []
        per_sender = []
        for sender in senders:
            errors.update(sender.errors)
            ack_ms.extend(sender.ack_ms)
            per_sender.append(
                {
                    "user_id": sender.user_id,
                    "sent": sender.sent,
                    "held_back": sender.held_back,
                    "acked": sender.acked,
                    "unanswered": sender.in_flight,
                    "coins_at_welcome": sender.coins_at_welcome,
                    "last_coins": sender.last_coins,
                    "closed": sender.close_code if sender.closed.done() else None,
                    "sent_at": sender.published_sent_at() if cmd.get("keep_times") else [],
                }
            )
        return {
            "senders": per_sender,
            "errors": dict(errors),
            "ack_ms": [round(x, 3) for x in ack_ms],
            "finished_at": finished_at,
            "settled_at": time.monotonic(),
        }

    # --- viewers' counts --------------------------------------------------------------

    async def mark_cmd(self, cmd: dict[str, Any]) -> dict[str, Any]:
        for viewer in self.viewers.get(cmd["group"], []):
            viewer.mark()
        return {"at": time.monotonic()}

    async def drain_cmd(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Wait (up to `timeout`) until every open viewer of the group has seen the event
        numbered `final_seq`, then report the group's counts since the mark."""
        viewers = self.viewers.get(cmd["group"], [])
        final_seq = int(cmd["final_seq"])
        deadline = time.monotonic() + float(cmd["timeout_s"])
        while time.monotonic() < deadline:
            if all(v.next_seq > final_seq or v.closed.done() for v in viewers):
                break
            await asyncio.sleep(0.05)
        closed: Counter[str] = Counter()
        missing = duplicates = frames = events = size = complete = to_final = 0
        first_at = float("inf")
        last_at = 0.0
        for v in viewers:
            tail = max(0, final_seq + 1 - v.next_seq)
            # The seqs from the mark to `final_seq` this viewer has reached (events published
            # after `final_seq` was read are counted in `events`, not here).
            to_final += max(0, min(v.next_seq - 1, final_seq) - v.mark_seq + 1)
            missing += v.missing + tail
            duplicates += v.duplicates
            if v.missing == 0 and tail == 0 and v.duplicates == 0:
                complete += 1
            if v.closed.done():
                closed[str(v.close_code)] += 1
            frames += v.frames
            events += v.events
            size += v.bytes
            if v.frames:
                first_at = min(first_at, v.first_at)
                last_at = max(last_at, v.last_at)
        return {
            "viewers": len(viewers),
            "complete": complete,
            "missing": missing,
            "duplicates": duplicates,
            "closed": dict(closed),
            "frames": frames,
            "events": events,
            "events_to_final": to_final,
            "bytes": size,
            "first_at": first_at if frames else None,
            "last_at": last_at if frames else None,
        }

    async def latency_cmd(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Broadcast latencies of the group's timed viewers since the mark: gift events
        matched to `sent_at` ({sender user_id: [send times of its published gifts, in
        order]}), and the raw server's events."""
        sent_at: dict[str, list[float]] = cmd.get("sent_at", {})
        latencies: list[float] = []
        unmatched = 0
        for v in self.viewers.get(cmd["group"], []):
            if not isinstance(v, TimedViewer):
                continue
            latencies.extend(v.raw_latencies_ms)
            for user_id, combo, received in v.gifts:
                times = sent_at.get(user_id)
                if times is None or not 1 <= combo <= len(times):
                    unmatched += 1
                    continue
                latencies.append((received - times[combo - 1]) * 1000)
        return {"latency_ms": [round(x, 3) for x in latencies], "unmatched": unmatched}

    async def close_cmd(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Close the group's viewers and senders and wait (briefly) for them to go."""
        clients: list[RoomViewer] = [
            *self.viewers.pop(cmd["group"], []),
            *self.senders.pop(cmd["group"], []),
        ]
        for client in clients:
            client.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(float(cmd.get("timeout_s", 10.0))):
                for client in clients:
                    await client.closed
        return {"closed": len(clients)}

    async def close_all_cmd(self, cmd: dict[str, Any]) -> dict[str, Any]:
        closed = 0
        for group in list(self.viewers) + list(self.senders):
            closed += (await self.close_cmd({"group": group, "timeout_s": 5.0}))["closed"]
        return {"closed": closed}

    async def info_cmd(self, cmd: dict[str, Any]) -> dict[str, Any]:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        loop = type(asyncio.get_running_loop()).__module__
        return {"pid": os.getpid(), "fd_soft": soft, "fd_hard": hard, "loop": loop}


async def serve(stdin: asyncio.StreamReader, *, max_seconds: float) -> None:
    worker = ClientWorker()
    handlers: dict[str, Handler] = {
        "viewers": worker.viewers_cmd,
        "senders": worker.senders_cmd,
        "send": worker.send_cmd,
        "mark": worker.mark_cmd,
        "drain": worker.drain_cmd,
        "latency": worker.latency_cmd,
        "close": worker.close_cmd,
        "close_all": worker.close_all_cmd,
        "info": worker.info_cmd,
    }
    out = sys.stdout.buffer

    def reply(message: dict[str, Any]) -> None:
        out.write(orjson.dumps(message) + b"\n")
        out.flush()

    async def run(cmd: dict[str, Any]) -> None:
        try:
            result = await handlers[cmd["cmd"]](cmd)
            reply({"id": cmd["id"], "ok": True, **result})
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the bench
            reply({"id": cmd["id"], "ok": False, "error": f"{type(exc).__name__}: {exc}"})

    # Owned here: cancelled on the way out, whatever ends the loop.
    tasks: set[asyncio.Task[None]] = set()
    try:
        async with asyncio.timeout(max_seconds):
            while True:
                line = await stdin.readline()
                if not line:
                    break
                cmd = orjson.loads(line)
                if cmd["cmd"] == "quit":
                    break
                task = asyncio.create_task(run(cmd))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    except TimeoutError:
        pass
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for group in list(worker.viewers) + list(worker.senders):
            with contextlib.suppress(Exception):
                await worker.close_cmd({"group": group, "timeout_s": 2.0})


async def main_async(max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    await serve(stdin, max_seconds=max_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()
    run_fast(main_async(args.max_seconds))


if __name__ == "__main__":
    main()
