"""The WebSocket protocol's published contract (issue 13.2): docs/asyncapi.yaml is what
`python -m server.asyncapi` generates from server/contract.py, it is valid AsyncAPI 3.0
(checked against the official JSON Schema, tests/data/), it names every frame and close
code, and the frames a real server sends match it (tests/room_client.py checks every
frame every end-to-end test reads; here a session covers each kind of frame)."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import yaml

from server import asyncapi, contract, ws
from server.economy import load_catalog
from server.errors import REFUSALS
from server.protocol import decode_client_frame
from tests import frame_contract
from tests.accounts import funded
from tests.frame_contract import server_frame_errors
from tests.live_server import LiveServer
from tests.room_client import RoomClient, chat, fence, gift, live_room

ROOT = Path(__file__).resolve().parents[1]
SPEC_SCHEMA = ROOT / "tests" / "data" / "asyncapi-3.0.0.schema.json"


def load_document() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    return doc


def test_the_document_is_the_generated_one() -> None:
    assert (ROOT / "docs" / "asyncapi.yaml").read_text() == asyncapi.render(), (
        "docs/asyncapi.yaml is stale: run `python -m server.asyncapi > docs/asyncapi.yaml`"
    )


def test_the_document_is_valid_asyncapi_3() -> None:
    schema = json.loads(SPEC_SCHEMA.read_text())
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(load_document()))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]


def test_the_document_names_every_frame_and_close_code() -> None:
    doc = load_document()
    messages = doc["components"]["messages"]
    client_tags = {t.__struct_config__.tag for t in typing.get_args(contract.ClientFrame)}
    assert set(asyncapi.CLIENT_FRAMES) == client_tags
    assert set(messages) == set(asyncapi.CLIENT_FRAMES) | set(asyncapi.SERVER_FRAMES)
    constants = {v for k, v in vars(ws).items() if k.startswith("CLOSE_") and isinstance(v, int)}
    constants |= {refusal.close for refusal in REFUSALS.values()}
    assert constants <= set(asyncapi.CLOSE_CODES), constants - set(asyncapi.CLOSE_CODES)
    closes = doc["channels"]["room"]["x-close-codes"]
    assert {int(code) for code in closes} == set(asyncapi.CLOSE_CODES)
    for code in (1008, 1009, 1012, 1013, 4401, 4404):
        assert f"`{code}`" in doc["info"]["description"]
    assert "since" in doc["info"]["description"]
    assert "rate_limited" in doc["info"]["description"]


def test_the_examples_are_frames_the_server_takes_and_sends() -> None:
    doc = load_document()
    catalog = load_catalog()
    for name, message in doc["components"]["messages"].items():
        example = message["examples"][0]["payload"]
        if name in asyncapi.CLIENT_FRAMES:
            decode_client_frame(json.dumps(example), catalog)  # not refused
        else:
            assert not server_frame_errors(example), (name, server_frame_errors(example))


def test_a_frame_off_the_document_is_caught() -> None:
    for frame in [
        {"type": "ack", "request_id": "r"},
        {"type": "ack", "request_id": "r", "coins": -1},
        {"type": "events", "events": [{"seq": 1, "ts": 1, "kind": "gift"}]},
        {"type": "events", "events": []},
        {"type": "error", "request_id": None, "code": "nope", "message": "m"},
        {"type": "welcome"},
        {"type": "surprise"},
        [],
    ]:
        assert server_frame_errors(frame), frame


async def test_every_kind_of_server_frame_matches_the_document(
    http: httpx.AsyncClient, live_server: LiveServer
) -> None:
    creator, room_id = await live_room(http)
    fan = await funded(http, "p100")
    before = frame_contract.checked
    client = await RoomClient.open(live_server.ws_url, room_id, token=fan.token)
    watcher = await RoomClient.open(live_server.ws_url, room_id)
    try:
        assert (await client.request(gift("rose", 3)))["type"] == "ack"
        assert (await client.request(gift("unicorn")))["code"] == "unknown_gift"
        await client.send({"type": "ping"})
        await client.until_type("pong")
        await client.send(chat("hello"))
        seq = await fence(client)
        if not any(frame["type"] == "room_state" for frame in client.frames):
            await client.until_type("room_state")
        # Resume with since: the missed events again, checked the same way.
        again = await RoomClient.open(live_server.ws_url, room_id, since=0)
        try:
            assert again.welcome["recovered"] is True
            await again.until_seq(seq)
        finally:
            await again.close()
        r = await http.post(f"/api/rooms/{room_id}/end", headers=creator.headers)
        assert r.status_code == 200
        await watcher.until_seq(seq + 1)
    finally:
        await client.close()
        await watcher.close()
    kinds = {frame["type"] for frame in client.frames} | {"welcome"}
    assert kinds >= {"welcome", "ack", "error", "pong", "events", "room_state"}, kinds
    assert {e["kind"] for e in watcher.events} >= {"gift", "chat", "room_ended"}
    frame_contract.verify_seen()
    assert frame_contract.checked > before + len(client.frames)
