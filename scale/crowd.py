"""The clients of the multi-host runs: watchers that keep every event they are shown, and
senders that send gifts until each one is acked, moving to another host when theirs
fails them, as a real app behind a load balancer would.

A watcher reconnects to the next host with `since=<last seq>` whenever its socket is
closed or lost; what it records is every event frame's events, so a duplicate or a gap
across reconnects shows in `seqs`. A sender retries a gift with the same `request_id`
(never charged twice) after `unavailable`, a close, or no answer within `answer_timeout_s`,
on the next host.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

APPROVED_CARD = "4242424242424242"
_OPEN_TIMEOUT_S = 10.0


class Refused(Exception):
    pass


async def sign_up(http: httpx.AsyncClient, name: str, *, package: str | None) -> tuple[str, str]:
    """A new user (funded with `package` when given): (user_id, token)."""
    r = await http.post(
        "/api/users", json={"name": name, "birthdate": "1990-01-01", "region": "US"}
    )
    r.raise_for_status()
    user_id, token = r.json()["user_id"], r.json()["token"]
    if package is not None:
        r = await http.post(
            "/api/wallet/recharge",
            json={
                "package_id": package,
                "card_number": APPROVED_CARD,
                "idempotency_key": uuid.uuid4().hex,
            },
            headers={"Authorization": f"Bearer {token}"},
        )
        r.raise_for_status()
    return user_id, token


def _url(ws_base: str, room_id: str, *, token: str | None, since: int | None) -> str:
    query = []
    if token:
        query.append(f"token={token}")
    if since is not None:
        query.append(f"since={since}")
    return f"{ws_base}/ws/rooms/{room_id}" + ("?" + "&".join(query) if query else "")


@dataclass
class Watcher:
    """A viewer of one room, starting on host `home` of `hosts` (ws base URLs)."""

    hosts: list[str]
    room_id: str
    home: int
    token: str | None = None
    seqs: list[int] = field(default_factory=list)
    # (sender's user id, event ts ms, arrival epoch ms, host index) for every gift event.
    arrivals: list[tuple[str, int, float, int]] = field(default_factory=list)
    gifts_from: dict[str, int] = field(default_factory=dict)
    closes: list[tuple[int, int | None]] = field(default_factory=list)  # (host, close code)
    connected_to: int = -1
    first_seq: int | None = None
    viewers_seen: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _conn: ClientConnection | None = None
    _next: int | None = None

    @property
    def last(self) -> int:
        return self.seqs[-1] if self.seqs else (self.first_seq or 0)

    async def run(self, stop: asyncio.Event) -> None:
        """Watch until `stop` is set (then return at once), reconnecting as it must."""
        host = self.home
        while not stop.is_set():
            since = None if self.first_seq is None else self.last
            url = _url(self.hosts[host], self.room_id, token=self.token, since=since)
            try:
                async with connect(url, open_timeout=_OPEN_TIMEOUT_S, max_size=None) as conn:
                    self._conn = conn
                    await self._watch(conn, host, stop)
                    return
            except ConnectionClosed as exc:
                if self._next is None:  # not our own `go_home`
                    self.closes.append((host, exc.rcvd.code if exc.rcvd is not None else None))
            except (OSError, InvalidHandshake, TimeoutError):
                self.closes.append((host, None))
            finally:
                self._conn = None
            self.connected_to = -1
            host = (host + 1) % len(self.hosts) if self._next is None else self._next
            self._next = None
            await asyncio.sleep(0.05)

    async def _watch(self, conn: ClientConnection, host: int, stop: asyncio.Event) -> None:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                receiving = asyncio.ensure_future(conn.recv())
                await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not receiving.done():
                    receiving.cancel()
                    with contextlib.suppress(BaseException):
                        await receiving
                    return
                frame = orjson.loads(receiving.result())
                self._keep(frame, host)
        finally:
            stopping.cancel()

    async def go_home(self) -> None:
        """Back to its first host (after being moved away from a failing one), resuming
        with since=<last seq>."""
        if self.connected_to != self.home and self._conn is not None:
            self._next = self.home
            await self._conn.close()

    def _keep(self, frame: dict[str, Any], host: int) -> None:
        kind = frame["type"]
        if kind == "welcome":
            self.connected_to = host
            if self.first_seq is None:
                self.first_seq = int(frame["seq"])
            self.viewers_seen = int(frame["viewers"])
            self.ready.set()
        elif kind == "room_state":
            self.viewers_seen = int(frame["viewers"])
        elif kind == "events":
            now = time.time() * 1000
            for event in frame["events"]:
                seq = int(event["seq"])
                self.seqs.append(seq)
                if event["kind"] == "gift":
                    sender = event["from"]["user_id"]
                    self.gifts_from[sender] = self.gifts_from.get(sender, 0) + 1
                    self.arrivals.append((sender, int(event["ts"]), now, host))

    def problems(self, last: int) -> list[str]:
        """What is wrong with what it saw, for a room whose last event is `last`: every
        seq after its first welcome's, exactly once, in order."""
        start = self.first_seq or 0
        if self.seqs == list(range(start + 1, last + 1)):
            return []
        seen = set(self.seqs)
        missing = [s for s in range(start + 1, last + 1) if s not in seen]
        dupes = len(self.seqs) - len(seen)
        ordered = self.seqs == sorted(self.seqs)
        return [
            f"watcher from host {self.home + 1}: {len(missing)} missing (first {missing[:5]}),"
            f" {dupes} duplicated, {'in' if ordered else 'out of'} order,"
            f" last seen {self.last} of {last}"
        ]


@dataclass
class Sender:
    """A signed-in viewer who sends gifts, starting on host `home`."""

    hosts: list[str]
    room_id: str
    home: int
    user_id: str
    token: str
    answer_timeout_s: float = 8.0
    acked: dict[str, int] = field(default_factory=dict)  # request_id -> coins after
    # (host index, seconds from send to ack) for each ack.
    ack_times: list[tuple[int, float]] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)  # code -> count
    moves: list[tuple[int, str]] = field(default_factory=list)  # (from host, why)
    host: int = -1
    _conn: ClientConnection | None = None

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def go_home(self) -> None:
        """Back to its first host (after moving away from a failing one)."""
        if self.host != self.home:
            await self.close()
            self.host = self.home

    async def send_gifts(
        self, count: int, *, interval_s: float = 0.0, gift_id: str = "rose"
    ) -> None:
        """Send `count` gifts one after another (`interval_s` apart at least), each until
        acked."""
        for _ in range(count):
            started = time.perf_counter()
            await self.gift(gift_id)
            rest = interval_s - (time.perf_counter() - started)
            if rest > 0:
                await asyncio.sleep(rest)

    async def gift(self, gift_id: str = "rose", *, deadline_s: float = 120.0) -> int:
        """One gift, retried with its request_id until acked; the coins after it."""
        request_id = uuid.uuid4().hex
        frame = orjson.dumps(
            {"type": "gift", "request_id": request_id, "gift_id": gift_id, "count": 1}
        ).decode()
        async with asyncio.timeout(deadline_s):
            while True:
                conn = await self._connection()
                host = self.host
                sent = time.perf_counter()
                try:
                    await conn.send(frame)
                    answer = await self._answer(conn, request_id)
                except (ConnectionClosed, OSError, TimeoutError) as exc:
                    self._move(f"{type(exc).__name__}")
                    continue
                if answer["type"] == "ack":
                    coins = int(answer["coins"])
                    self.acked[request_id] = coins
                    self.ack_times.append((host, time.perf_counter() - sent))
                    return coins
                code = str(answer.get("code"))
                self.refusals[code] = self.refusals.get(code, 0) + 1
                if code == "rate_limited":
                    await asyncio.sleep(0.2)
                elif code in ("unavailable", "internal"):
                    # `internal` is a server bug, counted in `refusals` for the report; the
                    # gift is retried as after `unavailable`.
                    self._move(code)
                else:
                    raise Refused(f"gift refused: {answer}")

    async def _answer(self, conn: ClientConnection, request_id: str) -> dict[str, Any]:
        async with asyncio.timeout(self.answer_timeout_s):
            while True:
                frame = orjson.loads(await conn.recv())
                if frame["type"] in ("ack", "error") and frame.get("request_id") == request_id:
                    return dict(frame)

    def _move(self, why: str) -> None:
        self.moves.append((self.host, why))
        conn, self._conn = self._conn, None
        if conn is not None:
            asyncio.ensure_future(conn.close())
        self.host = (self.host + 1) % len(self.hosts)

    async def _connection(self) -> ClientConnection:
        while self._conn is None:
            if self.host < 0:
                self.host = self.home
            url = _url(self.hosts[self.host], self.room_id, token=self.token, since=None)
            try:
                conn = await connect(url, open_timeout=_OPEN_TIMEOUT_S, max_size=None)
                async with asyncio.timeout(_OPEN_TIMEOUT_S):
                    welcome = orjson.loads(await conn.recv())
                if welcome["type"] != "welcome":
                    await conn.close()
                    raise OSError(f"no welcome: {welcome}")
                self._conn = conn
            except (ConnectionClosed, OSError, InvalidHandshake, TimeoutError) as exc:
                self._move(f"connect: {type(exc).__name__}")
                await asyncio.sleep(0.1)
        return self._conn


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]
