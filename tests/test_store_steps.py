"""Each Lua step on its own, against the real Redis: checks first, writes after, once only."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from typing import cast

import orjson
import pytest

from server.economy import PaymentOutcome
from server.errors import Forbidden, IdempotencyConflict, InsufficientCoins, SpendingLimitReached
from server.services import Services
from server.store.gifts import GiftOrder, GiftReceipt
from server.store.keys import RoomKeys, UserKeys

BORN = dt.date(1990, 1, 1)


async def new_user(services: Services, coins: int = 0) -> str:
    user_id = await services.wallets.create_user(name="U", born=BORN, region="US")
    if coins:
        package = next(p for p in services.catalog.packages.values() if p.coins == coins)
        await services.wallets.recharge(
            user_id,
            package=package,
            card_number="4242424242424242",
            outcome=PaymentOutcome.APPROVED,
            idempotency_key=uuid.uuid4().hex,
        )
    return user_id


async def new_room(services: Services) -> tuple[str, str]:
    creator = await new_user(services)
    room_id = await services.rooms.create(creator_id=creator, creator_name="C", title="t")
    return creator, room_id


def order(
    services: Services,
    sender: str,
    room: tuple[str, str],
    gift_id: str = "rose",
    count: int = 1,
    request_id: str | None = None,
) -> GiftOrder:
    creator, room_id = room
    return GiftOrder(
        sender,
        "S",
        room_id,
        creator,
        services.catalog.gift(gift_id),
        count,
        request_id or uuid.uuid4().hex,
    )


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


async def test_gift_saga_moves_coins_to_diamonds_once(services: Services) -> None:
    sender = await new_user(services, 1000)
    room = await new_room(services)
    o = order(services, sender, room, "doughnut", 3)
    receipt = await services.gifts.send(o)
    assert receipt.coins == 910 and not receipt.replayed
    again = await services.gifts.send(o)
    assert again.coins == 910 and again.replayed and again.transfer_id == receipt.transfer_id
    assert (await services.wallets.wallet(room[0]))["diamonds"] == 90
    events, complete = await services.rooms.events_since(room[1], 0)
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


async def test_finish_is_idempotent(services: Services) -> None:
    sender = await new_user(services, 100)
    room = await new_room(services)
    receipt = await services.gifts.send(order(services, sender, room, "finger_heart"))
    transfer = {
        "t": receipt.transfer_id,
        "s": sender,
        "n": "S",
        "r": room[1],
        "c": room[0],
        "g": "finger_heart",
        "k": 1,
        "p": 5,
        "ts": 0,
    }
    await services.gifts.finish(transfer)
    await services.gifts.finish(transfer)
    assert (await services.wallets.wallet(room[0]))["diamonds"] == 5
    events, _ = await services.rooms.events_since(room[1], 0)
    assert len(events) == 1


async def test_refused_debit_writes_nothing(services: Services) -> None:
    sender = await new_user(services, 100)
    room = await new_room(services)
    k = UserKeys.of(sender, services.settings.wallet_buckets)
    before = await services.redis.xlen(k.ledger)
    with pytest.raises(InsufficientCoins):
        await services.gifts.send(order(services, sender, room, "money_gun"))
    assert (await services.wallets.wallet(sender))["coins"] == 100
    assert await services.redis.xlen(k.ledger) == before
    assert await services.redis.hlen(k.pending) == 0
    assert (await services.rooms.events_since(room[1], 0))[0] == []
    # A suspended sender is refused before anything is written, too.
    await services.wallets.set_status(sender, "suspended")
    with pytest.raises(Forbidden):
        await services.gifts.send(order(services, sender, room))
    assert (await services.wallets.wallet(sender))["coins"] == 100
    assert await services.redis.xlen(k.ledger) == before


async def test_spending_cap_allows_reaching_it_exactly(services: Services) -> None:
    sender = await new_user(services, 1000)
    room = await new_room(services)
    await services.wallets.set_spending_limit(sender, "daily", 100)
    await services.gifts.send(order(services, sender, room, "doughnut", 3))  # 90
    with pytest.raises(SpendingLimitReached):
        await services.gifts.send(order(services, sender, room, "doughnut", 1))  # 120 > 100
    await services.gifts.send(order(services, sender, room, "finger_heart", 2))  # exactly 100
    with pytest.raises(SpendingLimitReached):
        await services.gifts.send(order(services, sender, room, "rose", 1))
    await services.wallets.set_spending_limit(sender, "monthly", 150)
    await services.gifts.send(order(services, sender, room, "doughnut", 1))  # 130 this month
    await services.wallets.set_spending_limit(sender, "daily", None)
    await services.gifts.send(order(services, sender, room, "cap", 1))
    assert (await services.wallets.wallet(sender))["coins"] == 1000 - 130 - 99


async def test_combo_counts_a_run_of_the_same_gift(services: Services) -> None:
    sender = await new_user(services, 1000)
    room = await new_room(services)
    for gift_id, count in [("rose", 1), ("rose", 5), ("rose", 1), ("doughnut", 1), ("rose", 2)]:
        await services.gifts.send(order(services, sender, room, gift_id, count))
    events, _ = await services.rooms.events_since(room[1], 0)
    assert [orjson.loads(e)["combo"] for e in events] == [1, 6, 7, 1, 2]


async def test_sweeper_finishes_a_transfer_left_pending(services: Services) -> None:
    """A crash right after the debit: the pending transfer is finished by the sweeper."""
    sender = await new_user(services, 100)
    creator, room_id = await new_room(services)
    k = UserKeys.of(sender, services.settings.wallet_buckets)
    transfer = {
        "t": "g" + uuid.uuid4().hex[:16],
        "s": sender,
        "n": "S",
        "r": room_id,
        "c": creator,
        "g": "doughnut",
        "k": 1,
        "p": 30,
        "ts": 1,
    }
    # What debit_gift.lua leaves behind when the process dies before steps 2-4.
    await services.redis.hset(k.wallet, mapping={"coins": 70, "spent": 30})
    await services.redis.xadd(
        k.ledger, {"kind": "gift_sent", "coins": -30, "diamonds": 0, "ref": transfer["t"]}
    )
    await services.redis.hset(k.pending, transfer["t"], orjson.dumps(transfer))
    assert await services.gifts.sweep(min_age_ms=0) >= 1
    assert await services.gifts.sweep(min_age_ms=0) == 0
    assert (await services.wallets.wallet(creator))["diamonds"] == 30
    assert await services.redis.hget(RoomKeys(room_id).room, "gift_coins") == b"30"


async def test_chat_and_end_room(services: Services) -> None:
    creator, room_id = await new_room(services)
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


async def test_gifts_sent_at_once_each_get_their_own_answer(
    services: Services,
) -> None:
    rich = await new_user(services, 1000)
    poor = await new_user(services)  # cannot afford anything
    room = await new_room(services)
    orders = [order(services, rich, room) for _ in range(30)] + [order(services, poor, room)]
    replay = orders[0]
    # Made in one turn of the event loop, their steps go to Redis in shared pipelines.
    outcomes = await asyncio.gather(
        *(services.gifts.send(o) for o in [*orders, replay]), return_exceptions=True
    )
    receipts = outcomes[:30]
    assert all(isinstance(r, GiftReceipt) for r in receipts)
    assert isinstance(outcomes[30], InsufficientCoins)
    # 31 debits, 3 steps for each of 30 gifts and one replay: the same answer, charged once.
    replayed = outcomes[31]
    assert isinstance(replayed, GiftReceipt) and replayed.replayed
    assert replayed.transfer_id == cast(GiftReceipt, receipts[0]).transfer_id
    assert sorted(cast(GiftReceipt, r).coins for r in receipts) == list(range(970, 1000))
    assert (await services.wallets.wallet(rich))["coins"] == 970
    assert (await services.wallets.wallet(room[0]))["diamonds"] == 30
    events, _ = await services.rooms.events_since(room[1], 0)
    assert len(events) == 30


async def test_a_redis_that_lost_its_scripts_gets_them_again(services: Services) -> None:
    sender = await new_user(services, 100)
    room = await new_room(services)
    await services.redis.script_flush()  # as after a restart without persistence
    receipts = await asyncio.gather(
        *(services.gifts.send(order(services, sender, room)) for _ in range(3))
    )
    assert sorted(r.coins for r in receipts) == [97, 98, 99]
    assert (await services.wallets.wallet(room[0]))["diamonds"] == 3
    events, _ = await services.rooms.events_since(room[1], 0)
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
    _, room_id = await new_room(services)
    presence = RoomKeys(room_id).presence
    ttl_ms = services.settings.presence_ttl_s * 1000
    await services.rooms.set_presence(room_id, "alive", 3)
    now = int(time.time() * 1000)
    await services.redis.hset(presence, "just-died", f"5:{now - 1}")
    await services.redis.hset(presence, "long-dead", f"7:{now - 11 * ttl_ms}")
    assert await services.rooms.viewers([room_id]) == {room_id: 3}
    # The long-dead process's field is gone; the one just expired is kept a while.
    assert set(await services.redis.hkeys(presence)) == {b"alive", b"just-died"}
