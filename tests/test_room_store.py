"""The room store's read side on a real Redis: a viewer's welcome in one round trip."""

from __future__ import annotations

import uuid

import pytest

from server.errors import NotFound
from server.services import Services
from server.store.keys import RoomKeys
from tests.gifting import gifting, new_room, new_user


async def test_the_welcome_shows_the_room_its_top_gifters_presence_history_and_coins(
    services: Services,
) -> None:
    room = await new_room(services)
    ann = await new_user(services, 1000, name="Ann")
    bob = await new_user(services, 1000, name="Bob")
    async with gifting(services) as g:
        await g.send(ann, room, "rose", 3)
        await g.send(bob, room, "rose", 5)
        await g.send(ann, room, "rose", 1)
    rooms = services.rooms
    await rooms.set_presence(room.room_id, "other-process", 4)

    welcome = await rooms.welcome(
        room.room_id, process_id="this-process", local_viewers=2, since=1, user_id=ann
    )
    assert welcome.room["status"] == "live" and welcome.room["seq"] == "3"
    assert welcome.viewers == 6  # 4 elsewhere, and this process's 2 (written first)
    assert [(t["name"], t["coins"]) for t in welcome.top] == [("Bob", 5), ("Ann", 4)]
    assert welcome.top[0] == {"user_id": bob, "name": "Bob", "coins": 5}
    assert welcome.coins == 1000 - 4
    assert [e[: len(b'{"seq":2,')] for e in welcome.history] == [b'{"seq":2,', b'{"seq":3,']
    assert welcome.complete

    watcher = await rooms.welcome(
        room.room_id, process_id="this-process", local_viewers=3, since=None, user_id=None
    )
    assert watcher.coins is None and watcher.history == [] and watcher.viewers == 7


async def test_the_welcome_says_when_history_was_trimmed(services: Services) -> None:
    room = await new_room(services)
    rooms = services.rooms
    k = RoomKeys(room.room_id)
    for _ in range(3):
        rid = uuid.uuid4().hex
        await rooms.post_chat(room.room_id, user_id="u", name="n", request_id=rid, text="hi")
    # As the cap does in a busy room.
    await services.redis.xtrim(k.events, maxlen=1, approximate=False)
    welcome = await rooms.welcome(
        room.room_id, process_id="p", local_viewers=1, since=0, user_id=None
    )
    assert len(welcome.history) == 1 and not welcome.complete


async def test_no_welcome_for_a_room_that_does_not_exist_and_nothing_written(
    services: Services,
) -> None:
    with pytest.raises(NotFound):
        await services.rooms.welcome(
            "nosuchroom", process_id="p", local_viewers=1, since=None, user_id=None
        )
    assert not await services.redis.exists(RoomKeys("nosuchroom").presence)
