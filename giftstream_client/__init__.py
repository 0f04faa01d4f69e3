"""giftstream's Python client: typed REST calls and room sockets, for asyncio (and a
gevent twin of the socket for Locust).

    from giftstream_client import GiftstreamClient, RoomSession

    async with GiftstreamClient("http://127.0.0.1:8000") as api:
        ann = await api.sign_up("Ann")
        await api.recharge(ann, "p1000")
        async with RoomSession(api.ws_base, room_id, token=ann.token) as room:
            ...

Modules: `calls` (every REST call as a value), `rest` (the asyncio REST client),
`frames` (the room protocol's codec), `room` (asyncio sockets), `green` (gevent),
`reconnect` (when to reconnect), `pacing` (staying under the limits), `models`,
`errors`.
"""

from __future__ import annotations

from giftstream_client.errors import (
    ApiError,
    GiftstreamError,
    ProtocolError,
    RoomClosed,
    RoomRefusal,
    ServerUnreachable,
)
from giftstream_client.frames import (
    Ack,
    ChatRequest,
    ErrorFrame,
    Event,
    Events,
    GiftRequest,
    Limits,
    RoomState,
    SeqTracker,
    ServerFrame,
    Welcome,
)
from giftstream_client.models import Account, Gift, Room, RoomDetail, Wallet
from giftstream_client.reconnect import Backoff, should_reconnect
from giftstream_client.rest import GiftstreamClient, ws_base
from giftstream_client.room import GiftAck, RoomConnection, RoomSession, room_url

__all__ = [
    "Account",
    "Ack",
    "ApiError",
    "Backoff",
    "ChatRequest",
    "ErrorFrame",
    "Event",
    "Events",
    "Gift",
    "GiftAck",
    "GiftRequest",
    "GiftstreamClient",
    "GiftstreamError",
    "Limits",
    "ProtocolError",
    "Room",
    "RoomClosed",
    "RoomConnection",
    "RoomDetail",
    "RoomRefusal",
    "RoomSession",
    "RoomState",
    "SeqTracker",
    "ServerFrame",
    "ServerUnreachable",
    "Wallet",
    "Welcome",
    "room_url",
    "should_reconnect",
    "ws_base",
]
