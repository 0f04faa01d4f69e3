"""A test client of a live room: the project's client (`giftstream_client`) opens the
socket and reads the welcome, its codec decodes the frames, and this keeps every frame
it reads, sorted by type, to answer "what happened" questions. Frames are kept as the
JSON objects the server sent, so a test sees exactly what is on the wire.

Reads raise `websockets`' `ConnectionClosed` at the end, as the socket does. Waits are
bounded only so that a broken server fails a test instead of hanging it: every
assertion is about what arrived, never about how fast.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from giftstream_client.frames import ChatRequest, GiftRequest, loads
from giftstream_client.frames import new_request_id as new_request_id
from giftstream_client.room import RoomConnection, room_url
from tests.accounts import Account, api, sign_up
from tests.frame_contract import check_server_frame

WAIT_S = 15.0


async def live_room(http: httpx.AsyncClient, *, title: str = "a live") -> tuple[Account, str]:
    """A new creator and its live room."""
    creator = await sign_up(http, name="Creator")
    return creator, await api(http).create_room(creator, title)


def gift(gift_id: str = "rose", count: int = 1, request_id: str | None = None) -> dict[str, Any]:
    return GiftRequest(gift_id, count, request_id or new_request_id()).as_dict()


def chat(text: str, request_id: str | None = None) -> dict[str, Any]:
    return ChatRequest(text, request_id or new_request_id()).as_dict()


@dataclass
class RoomClient:
    connection: RoomConnection
    welcome: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)
    # Acks and errors by request_id, in arrival order.
    answers: dict[str | None, list[dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    async def open(
        cls,
        ws_url: str,
        room_id: str,
        *,
        token: str | None = None,
        since: int | None = None,
        **options: Any,
    ) -> RoomClient:
        """Connect and read the welcome; `options` go to `websockets.connect`."""
        url = room_url(ws_url, room_id, token=token, since=since)
        connection = await RoomConnection.open(url, open_timeout_s=WAIT_S, **options)
        check_server_frame(connection.welcome_json)  # as docs/asyncapi.yaml publishes it
        return cls(connection, connection.welcome_json)

    @property
    def conn(self) -> ClientConnection:
        return self.connection.conn

    async def close(self) -> None:
        await self.connection.close()

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        """A dict as a JSON text frame, a str as a text frame, bytes as a binary frame."""
        if isinstance(frame, dict):
            await self.conn.send(orjson.dumps(frame).decode())
        else:
            await self.conn.send(frame)

    def _keep(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)
        if frame["type"] == "events":
            self.events.extend(frame["events"])
        elif frame["type"] in ("ack", "error"):
            self.answers.setdefault(frame.get("request_id"), []).append(frame)

    async def read(self) -> dict[str, Any]:
        """The next frame (kept)."""
        async with asyncio.timeout(WAIT_S):
            frame = loads(await self.conn.recv())
        check_server_frame(frame)  # as docs/asyncapi.yaml publishes it
        self._keep(frame)
        return frame

    async def answer(self, request_id: str, nth: int = 0) -> dict[str, Any]:
        """The `nth` ack or error for `request_id`, reading as far as needed."""
        while len(self.answers.get(request_id, [])) <= nth:
            await self.read()
        return self.answers[request_id][nth]

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send `frame` and return the answer to it (not an earlier one to the same id)."""
        nth = len(self.answers.get(frame["request_id"], []))
        await self.send(frame)
        return await self.answer(frame["request_id"], nth)

    async def until_seq(self, seq: int) -> list[dict[str, Any]]:
        """Read until the event numbered `seq` has arrived; every event so far."""
        while not any(e["seq"] >= seq for e in self.events):
            await self.read()
        return self.events

    async def until_type(self, frame_type: str) -> dict[str, Any]:
        while True:
            frame = await self.read()
            if frame["type"] == frame_type:
                return frame

    async def closed_with(self) -> int | None:
        """Read (keeping frames) until the server closes; the close code it sent."""
        try:
            while True:
                await self.read()
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None


async def close_code_of(ws_url: str, path: str) -> int | None:
    """Connect to `path` and return the close code the server ends it with."""
    async with connect(ws_url + path, open_timeout=WAIT_S) as conn:
        try:
            async with asyncio.timeout(WAIT_S):
                while True:
                    await conn.recv()
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None
    return None


async def fence(sender: RoomClient) -> int:
    """Send a chat line through `sender` and return its seq once `sender` has seen it:
    every event published before it has a lower seq."""
    marker = "fence-" + new_request_id()
    await sender.send(chat(marker))
    while True:
        for event in sender.events:
            if event["kind"] == "chat" and event["text"] == marker:
                return int(event["seq"])
        frame = await sender.read()
        if frame["type"] == "error":
            raise AssertionError(f"fence refused: {frame}")


def gift_events(client: RoomClient) -> list[dict[str, Any]]:
    return [e for e in client.events if e["kind"] == "gift"]


def seqs(client: RoomClient) -> list[int]:
    return [int(e["seq"]) for e in client.events]
