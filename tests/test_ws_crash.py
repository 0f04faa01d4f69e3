"""kill -9 of the server during a gift storm: once a new process's sweeper has run, the
audit holds, every acked gift was credited to the creator exactly once and stands exactly
once in the room's history, and the dead process's viewers drop out of the count."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.exceptions import ConnectionClosed

from server.audit import audit
from server.embedded import EmbeddedRedis
from server.settings import Settings
from server.store.connection import Client, connect
from server.store.keys import RoomKeys, UserKeys
from tests.accounts import Account, funded
from tests.live_server import TEST_SECRET, LiveServer
from tests.room_client import RoomClient, gift, live_room

STORM_ENV = {"GS_GIFT_RATE_PER_S": "100000", "GS_GIFT_BURST": "100000"}


async def ledger_refs(client: Client, keys: UserKeys, kind: str) -> list[str]:
    rows = await client.xrange(keys.ledger)
    return [raw[b"ref"].decode() for _, raw in rows if raw[b"kind"] == kind.encode()]


async def test_kill_9_during_a_gift_storm_loses_nothing_and_shows_nothing_twice(
    tmp_path: Path,
) -> None:
    with EmbeddedRedis(tmp_path / "redis") as redis_server:
        settings = Settings(redis_url=redis_server.url, token_secret=TEST_SECRET)
        first = LiveServer(redis_server.url, log_dir=tmp_path / "logs", env=STORM_ENV).start()
        second: LiveServer | None = None
        client = connect(settings)
        try:
            async with httpx.AsyncClient(base_url=first.url, timeout=15) as http:
                creator, room_id = await live_room(http)
                fans = [await funded(http, "p1000", name=f"Fan{i}") for i in range(4)]
            await storm_until_killed(first, room_id, fans, client, settings)

            second = LiveServer(redis_server.url, log_dir=tmp_path / "logs").start()
            async with asyncio.timeout(60):
                while (report := await audit(client, settings)).pending_transfers:
                    await asyncio.sleep(0.2)
            assert report.ok, report.lines()

            # Every debit was credited once and published once.
            creator_keys = UserKeys.of(creator.user_id, settings.wallet_buckets)
            debits: list[str] = []
            for fan in fans:
                debits += await ledger_refs(
                    client, UserKeys.of(fan.user_id, settings.wallet_buckets), "gift_sent"
                )
            credits = await ledger_refs(client, creator_keys, "gift_received")
            assert len(set(debits)) == len(debits) > 0
            assert Counter(credits) == Counter(debits)
            room = RoomKeys(room_id)
            for transfer_id in debits:
                assert await client.exists(room.done(transfer_id))
            history = [orjson.loads(raw[b"e"]) for _, raw in await client.xrange(room.events)]
            gifts = [e for e in history if e["kind"] == "gift"]
            assert [e["seq"] for e in history] == list(range(1, len(history) + 1))
            assert len(gifts) == len(debits)
            wallet = await client.hgetall(creator_keys.wallet)
            assert sum(e["coins"] for e in gifts) == int(wallet[b"diamonds"])

            # The dead process's viewers vanish from the count (presence expiry).
            async with httpx.AsyncClient(base_url=second.url, timeout=15) as http:
                async with asyncio.timeout(30):
                    while (await http.get(f"/api/rooms/{room_id}")).json()["viewers"] != 0:
                        await asyncio.sleep(0.2)
                # And the room goes on through the new process.
                viewer = await RoomClient.open(second.ws_url, room_id, token=fans[0].token)
                assert viewer.welcome["seq"] == len(history)
                assert (await viewer.request(gift()))["type"] in ("ack", "error")
                await viewer.close()
        finally:
            first.stop()
            if second is not None:
                second.stop()
            await client.aclose()


async def storm_until_killed(
    server: LiveServer,
    room_id: str,
    fans: list[Account],
    client: Client,
    settings: Settings,
) -> None:
    """Four senders gift as fast as acks come back; the server is killed with SIGKILL once
    150 gifts were acked. Then checks that every acked gift was debited (and so, by the
    caller's checks, credited and shown)."""
    acked: dict[str, list[str]] = {fan.user_id: [] for fan in fans}
    enough = asyncio.Event()

    async def send(fan: Account) -> None:
        conn = await RoomClient.open(server.ws_url, room_id, token=fan.token, max_queue=None)
        try:
            while True:
                frames = [gift() for _ in range(10)]
                for frame in frames:
                    await conn.send(frame)
                for frame in frames:
                    answer = await conn.answer(frame["request_id"])
                    if answer["type"] == "ack":
                        acked[fan.user_id].append(frame["request_id"])
                    else:
                        assert answer["code"] == "insufficient_coins", answer
                if sum(map(len, acked.values())) >= 150:
                    enough.set()
        except (ConnectionClosed, OSError):
            return
        finally:
            await conn.close()

    async def kill() -> None:
        await enough.wait()
        server.kill()

    async with asyncio.timeout(120):
        async with asyncio.TaskGroup() as tg:
            for fan in fans:
                tg.create_task(send(fan))
            tg.create_task(kill())
    assert sum(map(len, acked.values())) >= 150
    for fan in fans:
        keys = UserKeys.of(fan.user_id, settings.wallet_buckets)
        debited = set(await ledger_refs(client, keys, "gift_sent"))
        for request_id in acked[fan.user_id]:
            # The answer kept for replays: ["ok", replayed, transfer_id, coins].
            answer: list[Any] = orjson.loads(
                await client.hget(keys.idempotency("gift", request_id), "a")
            )
            assert answer[2] in debited
