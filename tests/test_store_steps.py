"""Each Lua step on its own and the gift path, against the real Redis: checks first,
writes after, once only."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest

from server.economy import PaymentOutcome
from server.errors import (
    IdempotencyConflict,
    InsufficientCoins,
    RateLimited,
    SpendingLimitReached,
    Suspended,
)
from server.services import Services
from server.store.gifts import Transfer
from server.store.keys import RoomKeys, UserKeys
from server.store.wallets import now_ms
from tests.gifting import Gifting, gifting, new_room, new_user


@pytest.fixture
async def g(services: Services) -> AsyncIterator[Gifting]:
    async with gifting(services) as running:
        yield running


async def test_recharge_replays_and_refuses_conflicts(services: Services) -> None:
    user = await new_user(services)
    p100 = services.catalog.package("p100")
    first = await services.wallets.recharge(
        user,
        package=p100,
        card_number="4242424242424242",
        outcome=PaymentOutcome.APPROVED,
        idempotency_key="k",
    )
    again = await services.wallets.recharge(
        user,
        package=p100,
        card_number="4242424242424242",
        outcome=PaymentOutcome.APPROVED,
        idempotency_key="k",
    )
    assert again == {**first, "replayed": True}
    with pytest.raises(IdempotencyConflict):
        await services.wallets.recharge(
            user,
            package=p100,
            card_number="5555555555554242",
            outcome=PaymentOutcome.APPROVED,
            idempotency_key="k",
        )
    assert (await services.wallets.wallet(user))["coins"] == 100


async def test_gift_saga_moves_coins_to_diamonds_once(services: Services, g: Gifting) -> None:
    sender = await new_user(services, 1000)
    room = await new_room(services)
    assert await g.send(sender, room, "doughnut", 3, request_id="r1") == 910
    assert await g.send(sender, room, "doughnut", 3, request_id="r1") == 910  # a replay
    assert (await services.wallets.wallet(sender))["coins"] == 910
    assert (await services.wallets.wallet(room.creator_id))["diamonds"] == 90
    events, complete = await services.rooms.events_since(room.room_id, 0)
    assert complete and len(events) == 1
    event = orjson.loads(events[0])
    assert (
        event["seq"],
        event["kind"],
        event["gift_id"],
        event["count"],
        event["coins"],
        event["combo"],
    ) == (1, "gift", "doughnut", 3, 90, 3)
    assert (
        await services.redis.hlen(UserKeys.of(sender, services.settings.wallet_buckets).pending)
        == 0
    )
    with pytest.raises(IdempotencyConflict):  # the same request_id for another gift
        await g.send(sender, room, "rose", 1, request_id="r1")


async def test_finish_is_idempotent(services: Services, g: Gifting) -> None:
    sender = await new_user(services, 100)
    room = await new_room(services)
    await g.send(sender, room, "finger_heart", finish=False)
    await g.finished()
    (ledger_entry,) = [
        e
        for e in (await services.wallets.transactions(sender, limit=5, before=None))[0]
        if e["kind"] == "gift_sent"
    ]
    transfer = Transfer(
        ledger_entry["ref"], sender, "S", room.room_id, room.creator_id, "finger_heart", 1, 5, 0
    )
    for _ in range(2):
        (outcome,) = await g.commands.finisher.finish([transfer])
        assert outcome.result == "settled"
    assert (await services.wallets.wallet(room.creator_id))["diamonds"] == 5
    events, _ = await services.rooms.events_since(room.room_id, 0)
    assert len(events) == 1


async def test_refused_debit_writes_nothing(services: Services, g: Gifting) -> None:
    sender = await new_user(services, 100)
    room = await new_room(services)
    k = UserKeys.of(sender, services.settings.wallet_buckets)
    before = await services.redis.xlen(k.ledger)
    with pytest.raises(InsufficientCoins):
        await g.send(sender, room, "money_gun")
    assert (await services.wallets.wallet(sender))["coins"] == 100
    assert await services.redis.xlen(k.ledger) == before
    assert await services.redis.hlen(k.pending) == 0
    assert (await services.rooms.events_since(room.room_id, 0))[0] == []
    # A suspended sender is refused before anything is written, too: one code for it.
    await services.wallets.set_status(sender, "suspended")
    with pytest.raises(Suspended):
        await g.send(sender, room)
    assert (await services.wallets.wallet(sender))["coins"] == 100
    assert await services.redis.xlen(k.ledger) == before


async def test_spending_cap_allows_reaching_it_exactly(services: Services, g: Gifting) -> None:
    sender = await new_user(services, 1000)
    room = await new_room(services)
    await services.wallets.set_spending_limit(sender, "daily", 100)
    await g.send(sender, room, "doughnut", 3)  # 90
    with pytest.raises(SpendingLimitReached):
        await g.send(sender, room, "doughnut", 1)  # 120 > 100
    await g.send(sender, room, "finger_heart", 2)  # exactly 100
    with pytest.raises(SpendingLimitReached):
        await g.send(sender, room, "rose", 1)
    await services.wallets.set_spending_limit(sender, "monthly", 150)
    await g.send(sender, room, "doughnut", 1)  # 130 this month
    await services.wallets.set_spending_limit(sender, "daily", None)
    await g.send(sender, room, "cap", 1)
    assert (await services.wallets.wallet(sender))["coins"] == 1000 - 130 - 99


async def test_combo_counts_a_run_of_the_same_gift(services: Services, g: Gifting) -> None:
    sender = await new_user(services, 1000)
    room = await new_room(services)
    for gift_id, count in [("rose", 1), ("rose", 5), ("rose", 1), ("doughnut", 1), ("rose", 2)]:
        await g.send(sender, room, gift_id, count)
    events, _ = await services.rooms.events_since(room.room_id, 0)
    assert [orjson.loads(e)["combo"] for e in events] == [1, 6, 7, 1, 2]


async def test_sweeper_finishes_a_transfer_left_pending(services: Services, g: Gifting) -> None:
    """A crash right after the debit: the pending transfer is finished by the sweeper."""
    sender = await new_user(services, 100)
    room = await new_room(services)
    k = UserKeys.of(sender, services.settings.wallet_buckets)
    raw = orjson.dumps(
        {
            "t": "g" + uuid.uuid4().hex[:16],
            "s": sender,
            "n": "S",
            "r": room.room_id,
            "c": room.creator_id,
            "g": "doughnut",
            "k": 1,
            "p": 30,
            "ts": 1,
        }
    )  # as recorded before the fields had names: still finished
    transfer = Transfer.from_json(raw)
    # What debit_gift.lua leaves behind when the process dies before steps 2-4.
    await services.redis.hset(k.wallet, mapping={"coins": 70, "spent": 30})
    await services.redis.xadd(
        k.ledger,
        {"kind": "gift_sent", "coins": -30, "diamonds": 0, "ref": transfer.transfer_id},
    )
    await services.redis.hset(k.pending, transfer.transfer_id, raw)
    outcomes = await g.commands.sweeper.sweep(min_age_ms=0)
    assert [(o.transfer.transfer_id, o.result) for o in outcomes] == [
        (transfer.transfer_id, "settled")
    ]
    assert await g.commands.sweeper.sweep(min_age_ms=0) == []
    assert (await services.wallets.wallet(room.creator_id))["diamonds"] == 30
    assert await services.redis.hget(RoomKeys(room.room_id).room, "gift_coins") == b"30"


async def test_a_gift_whose_room_ended_before_it_was_shown_is_refunded(
    services: Services, g: Gifting
) -> None:
    sender = await new_user(services, 100)
    room = await new_room(services)
    await services.wallets.set_spending_limit(sender, "daily", 100)
    await g.send(sender, room, "doughnut", finish=False)  # debited: 70 left
    await g.finished()
    # The same again, but the room ends between the debit and the publish.
    await services.rooms.end(room.room_id, user_id=room.creator_id)
    await g.send(sender, room, "doughnut")
    wallet = await services.wallets.wallet(sender)
    assert wallet["coins"] == 70  # the second doughnut came back
    entries, _ = await services.wallets.transactions(sender, limit=10, before=None)
    assert [e["kind"] for e in entries][:3] == ["gift_refunded", "gift_sent", "gift_sent"]
    assert entries[0]["coins"] == 30 and entries[0]["ref"] == entries[1]["ref"]
    assert (await services.wallets.wallet(room.creator_id))["diamonds"] == 30
    events, _ = await services.rooms.events_since(room.room_id, 0)
    assert [orjson.loads(e)["kind"] for e in events] == ["gift", "room_ended"]
    # The refund gave the coins back to the day's cap as well: 70 more may be spent.
    room2 = await new_room(services)
    await g.send(sender, room2, "doughnut", 2)
    assert (await services.wallets.wallet(sender))["coins"] == 10
    # A refund happens once, however often the transfer is finished again.
    refund = Transfer(
        entries[0]["ref"], sender, "U", room.room_id, room.creator_id, "doughnut", 1, 30, now_ms()
    )
    (outcome,) = await g.commands.finisher.finish([refund])
    assert outcome.result == "refunded"
    assert (await services.wallets.wallet(sender))["coins"] == 10


async def test_gift_rate_limit_is_per_user_across_connections(
    services: Services, g: Gifting
) -> None:
    """The burst is shared by every connection and process of the user: sockets are not a
    way around it (the bucket lives in Redis, in the user's tag)."""
    sender = await new_user(services, 1000)
    room = await new_room(services)
    burst = services.settings.gift_burst
    results = await asyncio.gather(
        *(g.send(sender, room, finish=False) for _ in range(burst + 30)), return_exceptions=True
    )
    await g.finished()
    acked = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if isinstance(r, RateLimited)]
    # A few tokens come back while they run (20 a second); never 30.
    assert burst <= len(acked) < burst + 10 and len(acked) + len(refused) == len(results)
    assert (await services.wallets.wallet(sender))["coins"] == 1000 - len(acked)


async def test_chat_and_end_room(services: Services) -> None:
    room = await new_room(services)
    creator, room_id = room.creator_id, room.room_id
    assert (
        await services.rooms.post_chat(
            room_id, user_id=creator, name="C", request_id="r1", text="hi"
        )
        == 1
    )
    assert (
        await services.rooms.post_chat(
            room_id, user_id=creator, name="C", request_id="r1", text="hi"
        )
        == 0
    )
    assert await services.rooms.end(room_id, user_id=creator) == 2
    assert await services.rooms.end(room_id, user_id=creator) == 0
    events, complete = await services.rooms.events_since(room_id, 1)
    assert complete and [orjson.loads(e)["kind"] for e in events] == ["room_ended"]


async def test_gifts_sent_at_once_each_get_their_own_answer(services: Services, g: Gifting) -> None:
    rich = await new_user(services, 1000)
    poor = await new_user(services)  # cannot afford anything
    room = await new_room(services)
    sends = [g.send(rich, room, request_id=f"r{i}", finish=False) for i in range(30)]
    sends += [g.send(poor, room, finish=False), g.send(rich, room, request_id="r0", finish=False)]
    # Made in one turn of the event loop, their debits go to Redis in one shared pipeline.
    outcomes = await asyncio.gather(*sends, return_exceptions=True)
    await g.finished()
    assert isinstance(outcomes[30], InsufficientCoins)
    # 30 debits and one replay (the same answer as its first attempt, charged once).
    assert sorted(outcomes[:30]) == list(range(970, 1000))  # type: ignore[type-var]
    assert outcomes[31] == outcomes[0]
    assert (await services.wallets.wallet(rich))["coins"] == 970
    assert (await services.wallets.wallet(room.creator_id))["diamonds"] == 30
    events, _ = await services.rooms.events_since(room.room_id, 0)
    assert len(events) == 30


async def test_a_redis_that_lost_its_scripts_gets_them_again(
    services: Services, g: Gifting
) -> None:
    sender = await new_user(services, 100)
    room = await new_room(services)
    await services.redis.script_flush()  # as after a restart without persistence
    acks = await asyncio.gather(*(g.send(sender, room, finish=False) for _ in range(3)))
    await g.finished()
    assert sorted(acks) == [97, 98, 99]
    assert (await services.wallets.wallet(room.creator_id))["diamonds"] == 3
    events, _ = await services.rooms.events_since(room.room_id, 0)
    assert len(events) == 3
    p100 = services.catalog.package("p100")
    await services.redis.script_flush()
    answer = await services.wallets.recharge(
        sender,
        package=p100,
        card_number="4242424242424242",
        outcome=PaymentOutcome.APPROVED,
        idempotency_key=uuid.uuid4().hex,
    )
    assert answer["coins"] == 197


async def test_presence_of_dead_processes_stops_counting_then_goes(services: Services) -> None:
    room_id = (await new_room(services)).room_id
    presence = RoomKeys(room_id).presence
    ttl_ms = services.settings.presence_ttl_s * 1000
    await services.rooms.set_presence(room_id, "alive", 3)
    now = int(time.time() * 1000)
    await services.redis.hset(presence, "just-died", f"5:{now - 1}")
    await services.redis.hset(presence, "long-dead", f"7:{now - 11 * ttl_ms}")
    assert await services.rooms.viewers([room_id]) == {room_id: 3}
    # The long-dead process's field is gone; the one just expired is kept a while.
    assert set(await services.redis.hkeys(presence)) == {b"alive", b"just-died"}
