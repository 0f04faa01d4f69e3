"""Live rooms: the room hash, its event history, top gifters, chat and presence."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from server.errors import NotFound
from server.settings import Settings
from server.store.answers import answer, fields
from server.store.connection import (
    Client,
    Scripts,
    command,
    publish_command,
    run_pipelined,
    script_call,
)
from server.store.keys import LIVE_ROOMS, RoomKeys, UserKeys
from server.store.wallets import now_ms

_ROOM_ID = re.compile(r"^[a-z0-9]{1,32}$")
TOP_GIFTERS = 10
CHAT_MARKER_TTL_S = 24 * 3600


def valid_room_id(room_id: str) -> bool:
    return bool(_ROOM_ID.fullmatch(room_id))


@dataclass(frozen=True, slots=True)
class WelcomeSnapshot:
    """What a viewer's welcome shows, read at one instant (`RoomStore.welcome`)."""

    room: dict[str, str]
    # Viewers over every live process, this one's newcomer included.
    viewers: int
    top: list[dict[str, Any]]
    # The signed-in viewer's coins (None: watching only).
    coins: int | None
    # The events after `since` still kept, oldest first, and whether that is all of them.
    history: list[bytes]
    complete: bool


def _live_viewers(presence: dict[bytes, bytes], now: int) -> int:
    """Viewers in a room's presence hash whose process's entry has not expired."""
    total = 0
    for value in presence.values():
        count, _, expires = value.decode().partition(":")
        if int(expires) > now:
            total += int(count)
    return total


class RoomStore:
    def __init__(self, client: Client, scripts: Scripts, settings: Settings):
        self._r = client
        self._scripts = scripts
        self._settings = settings
        self._publish = publish_command(client)

    async def create(self, *, creator_id: str, creator_name: str, title: str) -> str:
        """A creator goes live: a new room, listed among the live ones."""
        room_id = secrets.token_hex(6)
        k = RoomKeys(room_id)
        now = now_ms()
        await self._r.hset(
            k.room,
            mapping={
                "title": title,
                "creator_id": creator_id,
                "creator_name": creator_name,
                "status": "live",
                "created_ms": now,
                "seq": 0,
                "gift_coins": 0,
                "gift_count": 0,
                "chat_count": 0,
            },
        )
        await self._r.zadd(LIVE_ROOMS, {room_id: now})
        return room_id

    async def room(self, room_id: str) -> dict[str, str]:
        """The room's hash; `NotFound` if there is no such room."""
        if not valid_room_id(room_id):
            raise NotFound("no such room")
        raw = fields(await self._r.hgetall(RoomKeys(room_id).room))
        if not raw:
            raise NotFound("no such room")
        return raw

    async def end(self, room_id: str, *, user_id: str) -> int:
        """End the live. Atomic; idempotent (0 when it had ended before, else the
        room_ended event's seq). Only the creator may end it (`Forbidden`); `NotFound`
        for no such room. A gift not shown by then is refunded (DESIGN section 3)."""
        if not valid_room_id(room_id):
            raise NotFound("no such room")
        k = RoomKeys(room_id)
        now = now_ms()
        event = orjson.dumps({"ts": now, "kind": "room_ended"})
        _, seq = answer(
            await self._scripts.end_room(
                keys=[k.room, k.events],
                args=[
                    user_id,
                    event,
                    f"{now}|{self._settings.history_events}|{self._publish}",
                    k.channel,
                ],
            )
        )
        await self._r.zrem(LIVE_ROOMS, room_id)
        return int(seq)

    async def admit_chat(self, user_id: str) -> None:
        """May `user_id` post a chat line now? Atomic, in the user's bucket: refused
        (`Suspended`, `Unauthorized`) for an account not in good standing, and
        (`RateLimited`) over the per-user chat rate, shared by all its connections; takes
        one token when it admits."""
        s = self._settings
        k = UserKeys.of(user_id, s.wallet_buckets)
        answer(
            await self._scripts.admit_chat(
                keys=[k.profile, k.rate("chat")],
                args=[f"{s.chat_rate_per_s}|{s.chat_burst}"],
            )
        )

    async def post_chat(
        self, room_id: str, *, user_id: str, name: str, request_id: str, text: str
    ) -> int:
        """Append a chat line to the room. Atomic; idempotent by (user, request_id).
        Returns its seq, or 0 for a repeat. `RoomNotLive` if the room has ended."""
        k = RoomKeys(room_id)
        event = orjson.dumps(
            {
                "ts": now_ms(),
                "kind": "chat",
                "from": {"user_id": user_id, "name": name},
                "text": text,
            }
        )
        s = self._settings
        _, seq = answer(
            await self._scripts.post_chat(
                keys=[k.room, k.events, k.done(f"chat:{user_id}:{request_id}")],
                args=[event, f"{s.history_events}|{CHAT_MARKER_TTL_S}|{self._publish}", k.channel],
            )
        )
        return int(seq)

    async def top(self, room_id: str, n: int = TOP_GIFTERS) -> list[dict[str, Any]]:
        """Top gifters, highest first: [{user_id, name, coins}]."""
        k = RoomKeys(room_id)
        rows = await self._r.zrevrange(k.top, 0, n - 1, withscores=True)
        if not rows:
            return []
        ids = [member.decode() for member, _ in rows]
        names = await self._r.hmget(k.names, ids)
        return [
            {"user_id": uid, "name": (name or b"").decode(), "coins": int(score)}
            for uid, name, (_, score) in zip(ids, names, rows, strict=True)
        ]

    async def events_since(self, room_id: str, since: int) -> tuple[list[bytes], bool]:
        """The events after `since` still in the capped history, oldest first, and whether
        that is all of them (False when some had already been trimmed)."""
        rows = await self._r.xrange(RoomKeys(room_id).events, f"({since}-0", "+")
        events = [raw[b"e"] for _, raw in rows]
        first = int(rows[0][0].split(b"-")[0]) if rows else None
        complete = first is None or first == since + 1
        return events, complete

    async def welcome(
        self,
        room_id: str,
        *,
        process_id: str,
        local_viewers: int,
        since: int | None,
        user_id: str | None,
    ) -> WelcomeSnapshot:
        """Everything a viewer's welcome shows, in one round trip: this process's presence
        is written first (`local_viewers`, counting the newcomer), then the room, its top
        gifters, its viewers over every process, the events after `since` and the
        viewer's coins are read. The room's part is one atomic script (one instant);
        the coins are read beside it. `NotFound` if there is no such room (nothing is
        written then)."""
        if not valid_room_id(room_id):
            raise NotFound("no such room")
        k = RoomKeys(room_id)
        expires = now_ms() + self._settings.presence_ttl_s * 1000
        calls = [
            script_call(
                self._scripts.room_welcome,
                keys=[k.room, k.top, k.names, k.presence, k.events],
                args=[
                    process_id,
                    f"{max(1, local_viewers)}:{expires}",
                    "" if since is None else str(since),
                    TOP_GIFTERS,
                ],
            )
        ]
        if user_id is not None:
            wallet = UserKeys.of(user_id, self._settings.wallet_buckets).wallet
            calls.append(command("HGET", wallet, "coins"))
        results = await run_pipelined(self._r, self._scripts, calls)
        room_rows, top_rows, presence_rows, history_rows = answer(results[0])
        coins: int | None = None
        if user_id is not None:
            if isinstance(results[1], BaseException):
                raise results[1]
            coins = int(results[1] or 0)
        room = fields(dict(zip(room_rows[::2], room_rows[1::2], strict=True)))
        top = [
            {"user_id": uid.decode(), "name": name.decode(), "coins": int(float(score))}
            for uid, score, name in zip(top_rows[::3], top_rows[1::3], top_rows[2::3], strict=True)
        ]
        presence = dict(zip(presence_rows[::2], presence_rows[1::2], strict=True))
        history = list(history_rows[1::2])
        first = int(history_rows[0].split(b"-")[0]) if history_rows else None
        return WelcomeSnapshot(
            room=room,
            viewers=_live_viewers(presence, now_ms()),
            top=top,
            coins=coins,
            history=history,
            complete=since is None or first is None or first == since + 1,
        )

    async def set_presence(self, room_id: str, process_id: str, viewers: int) -> None:
        """This process has `viewers` local viewers in the room, for the next
        `presence_ttl_s` seconds (a dead process's viewers vanish with the expiry)."""
        k = RoomKeys(room_id)
        expires = now_ms() + self._settings.presence_ttl_s * 1000
        if viewers > 0:
            await self._r.hset(k.presence, process_id, f"{viewers}:{expires}")
        else:
            await self._r.hdel(k.presence, process_id)

    async def viewers(self, room_ids: list[str]) -> dict[str, int]:
        """Viewers per room summed over every live process."""
        if not room_ids:
            return {}
        async with self._r.pipeline(transaction=False) as pipe:
            for room_id in room_ids:
                pipe.hgetall(RoomKeys(room_id).presence)
            rows = await pipe.execute()
        now = now_ms()
        # A field expired this long ago is a dead process's (a live one rewrites its own
        # every third of the expiry): it is removed, so the hash does not grow forever.
        stale_before = now - 10 * self._settings.presence_ttl_s * 1000
        counts: dict[str, int] = {}
        stale: list[tuple[str, bytes]] = []
        for room_id, raw in zip(room_ids, rows, strict=True):
            counts[room_id] = _live_viewers(raw, now)
            for process_id, value in raw.items():
                if int(value.decode().partition(":")[2]) < stale_before:
                    stale.append((RoomKeys(room_id).presence, process_id))
        if stale:
            async with self._r.pipeline(transaction=False) as pipe:
                for key, process_id in stale:
                    pipe.hdel(key, process_id)
                await pipe.execute(raise_on_error=False)
        return counts

    async def live_room_count(self) -> int:
        return int(await self._r.zcard(LIVE_ROOMS))

    async def live_room_ids(self, *, limit: int = 100) -> list[str]:
        return [m.decode() for m in await self._r.zrevrange(LIVE_ROOMS, 0, limit - 1)]

    async def describe(self, room_id: str, raw: dict[str, str] | None = None) -> dict[str, Any]:
        """The room as the API and the welcome frame show it."""
        raw = raw if raw is not None else await self.room(room_id)
        return {
            "room_id": room_id,
            "title": raw["title"],
            "creator": {"user_id": raw["creator_id"], "name": raw["creator_name"]},
            "status": raw["status"],
        }
