"""The rooms of a load run, opened once (by the runner, or by Locust's master) and handed
to every worker; ended at the end. The REST calls are the one client's
(`giftstream_client.calls`), sent with a blocking httpx client (gevent makes it
cooperative inside Locust)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import httpx

from giftstream_client import calls
from giftstream_client.calls import Call
from giftstream_client.errors import GiftstreamError, ServerUnreachable
from giftstream_client.models import Account, Gift
from giftstream_client.rest import describe_transport_error

T = TypeVar("T")


def run_call(http: httpx.Client, call: Call[T]) -> T:
    """Send one call; its answer, or the client's typed error."""
    try:
        response = http.request(
            call.method, call.url_path, content=call.content(), headers=call.headers()
        )
    except httpx.TransportError as exc:
        raise ServerUnreachable(
            str(http.base_url).rstrip("/"), describe_transport_error(exc)
        ) from exc
    return call.answer(response.status_code, response.content)


@dataclass(frozen=True, slots=True)
class OpenedRooms:
    """Rooms opened for a run: their ids, most popular first, and their creators' tokens
    (to end them)."""

    room_ids: list[str]
    creators: list[Account]


def open_rooms(host: str, count: int, *, timeout_s: float = 10.0) -> OpenedRooms:
    """`count` creators, each live in a room of its own. Raises `GiftstreamError`."""
    room_ids: list[str] = []
    creators: list[Account] = []
    with httpx.Client(base_url=host, timeout=timeout_s) as http:
        for i in range(count):
            creator = run_call(http, calls.sign_up(f"Creator {i + 1}"))
            room_ids.append(run_call(http, calls.create_room(creator, f"Load room {i + 1}")))
            creators.append(creator)
    return OpenedRooms(room_ids, creators)


def fetch_gifts(host: str, *, timeout_s: float = 10.0) -> list[Gift]:
    with httpx.Client(base_url=host, timeout=timeout_s) as http:
        return run_call(http, calls.gifts())


def end_rooms(host: str, rooms: OpenedRooms, *, timeout_s: float = 10.0) -> int:
    """End the rooms (best effort: a failure is skipped); how many were ended."""
    ended = 0
    with httpx.Client(base_url=host, timeout=timeout_s) as http:
        for room_id, creator in zip(rooms.room_ids, rooms.creators, strict=True):
            try:
                run_call(http, calls.end_room(creator, room_id))
                ended += 1
            except GiftstreamError:
                continue
    return ended
