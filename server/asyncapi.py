"""The WebSocket protocol of a live room as an AsyncAPI 3.0 document, built from the
frame types of `server.contract` (the very types client frames are decoded with), the
close codes and the rate limits' defaults.

    python -m server.asyncapi > docs/asyncapi.yaml

The repository keeps the generated document in `docs/asyncapi.yaml`; a test checks that
it is what this module generates, that it is valid AsyncAPI 3.0, and that every frame
the server sends in the end-to-end tests matches it.
"""

from __future__ import annotations

import sys
from importlib import metadata
from typing import Any

import msgspec
import yaml

from server import contract
from server.settings import Settings

REF = "#/components/schemas/{name}"

# Every close code the server ends a room socket with (DESIGN section 4).
CLOSE_CODES: dict[int, str] = {
    1008: "Too slow: the socket held more unsent bytes than it may (the reader fell "
    "behind the room). Reconnect with `since=<seq>`. Also an admission refused for a "
    "reason without a code of its own.",
    1009: "A frame over the size limit (GS_MAX_FRAME_BYTES, 64 KiB by default).",
    1011: "An internal error.",
    1012: "Service restart: the server is draining, closing its sockets in staggered "
    "batches. Reconnect (to another server) with `since=<seq>`.",
    1013: "Try again later: the store is unavailable. Reconnect with backoff.",
    4401: "The token is bad or expired.",
    4403: "Not allowed: a browser handshake from an Origin that is not allowed, or an "
    "account that may not join.",
    4404: "No such room, or its live has ended.",
    4429: "Too many open sockets for this user.",
}

FRAMES: dict[str, tuple[type[Any], str, dict[str, Any]]] = {
    # name: (payload, summary, example)
    "gift": (
        contract.GiftCommand,
        "Send a gift (idempotent by request_id, even across connections)",
        {"type": "gift", "request_id": "3f2b9c1e-0001", "gift_id": "rose", "count": 5},
    ),
    "chat": (
        contract.ChatCommand,
        "Say something in the room",
        {"type": "chat", "request_id": "c-81", "text": "hello!"},
    ),
    "ping": (contract.PingCommand, "Are you there? (answered by pong)", {"type": "ping"}),
    "welcome": (
        contract.Welcome,
        "The first frame: the room, its latest seq, viewers, top gifters, you",
        {
            "type": "welcome",
            "room": {
                "room_id": "5f0c2a9b1d3e",
                "title": "Friday karaoke",
                "creator": {"user_id": "u1f2e3d4c5b6a7980", "name": "Cleo"},
                "status": "live",
            },
            "seq": 41,
            "viewers": 120,
            "top": [{"user_id": "u0a1b2c3d4e5f6071", "name": "Ann", "coins": 5000}],
            "you": {"user_id": "u0a1b2c3d4e5f6071", "coins": 995},
            "recovered": False,
        },
    ),
    "events": (
        contract.Events,
        "Room events, oldest first, each with its seq",
        {
            "type": "events",
            "events": [
                {
                    "seq": 42,
                    "ts": 1764547200123,
                    "kind": "gift",
                    "from": {"user_id": "u0a1b2c3d4e5f6071", "name": "Ann"},
                    "gift_id": "rose",
                    "count": 5,
                    "coins": 5,
                    "combo": 12,
                },
                {
                    "seq": 43,
                    "ts": 1764547200456,
                    "kind": "chat",
                    "from": {"user_id": "u0a1b2c3d4e5f6071", "name": "Ann"},
                    "text": "hello!",
                },
            ],
        },
    ),
    "room_state": (
        contract.RoomState,
        "Viewers and top gifters changed",
        {"type": "room_state", "viewers": 121, "top": []},
    ),
    "ack": (
        contract.Ack,
        "A gift was debited: the sender's balance",
        {"type": "ack", "request_id": "3f2b9c1e-0001", "coins": 990},
    ),
    "error": (
        contract.ErrorFrame,
        "A frame refused; the socket stays open",
        {
            "type": "error",
            "request_id": "3f2b9c1e-0001",
            "code": "insufficient_coins",
            "message": "you have 3 coins; this gift costs 5",
        },
    ),
    "pong": (contract.Pong, "The answer to ping", {"type": "pong"}),
}
CLIENT_FRAMES = ("gift", "chat", "ping")
SERVER_FRAMES = ("welcome", "events", "room_state", "ack", "error", "pong")


def _asyncapi_schema(node: Any) -> Any:
    """msgspec's JSON Schema as AsyncAPI schema objects: their `discriminator` is the
    property's name, not OpenAPI's object; descriptions (docstrings) on one line, as
    every msgspec version gives them."""
    if isinstance(node, dict):
        out = {key: _asyncapi_schema(value) for key, value in node.items()}
        discriminator = out.get("discriminator")
        if isinstance(discriminator, dict):
            out["discriminator"] = discriminator["propertyName"]
        if isinstance(out.get("description"), str):
            out["description"] = " ".join(out["description"].split())
        return out
    if isinstance(node, list):
        return [_asyncapi_schema(item) for item in node]
    return node


def _version() -> str:
    try:
        return metadata.version("giftstream")
    except metadata.PackageNotFoundError:
        return "0"


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the live-room socket."""
    payloads = [payload for payload, _, _ in FRAMES.values()]
    schemas, components = msgspec.json.schema_components(payloads, ref_template=REF)
    defaults = Settings()
    limits = (
        f"Per user, across all of that user's connections and server processes: gifts "
        f"{defaults.gift_rate_per_s:g}/s with bursts of {defaults.gift_burst} (fast combo "
        f"tapping passes), chat {defaults.chat_rate_per_s:g}/s with bursts of "
        f"{defaults.chat_burst}; a cap on open sockets per user (4429 past it). Over a "
        "limit a frame is refused with an `error` frame `rate_limited`, never a close."
    )
    closes = "\n".join(f"- `{code}`: {text}" for code, text in CLOSE_CODES.items())
    messages = {
        name: {
            "name": name,
            "title": name,
            "summary": summary,
            "contentType": "application/json",
            "payload": schema,
            "examples": [{"name": name, "payload": example}],
        }
        for (name, (_, summary, example)), schema in zip(FRAMES.items(), schemas, strict=True)
    }
    channel_messages = {name: {"$ref": f"#/components/messages/{name}"} for name in FRAMES}

    def refs(names: tuple[str, ...]) -> list[dict[str, str]]:
        return [{"$ref": f"#/channels/room/messages/{name}"} for name in names]

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "giftstream live room",
            "version": _version(),
            "description": (
                "A live room over one WebSocket: JSON text frames, one object each, "
                "encoded once per room for every viewer. Watching needs no token; "
                "gifts and chat need one (`token` query parameter or an "
                "`Authorization: Bearer` header).\n\n"
                "**Resume.** Every room event carries the room's `seq`. A client that "
                "reconnects with `since=<the last seq it saw>` gets, after `welcome`, "
                "the events it missed that the room's capped history still holds, in "
                "order, each once (`welcome.recovered` says whether that was all of "
                "them); then live events, never one twice.\n\n"
                "**Idempotency.** A gift's `request_id` is its idempotency key: a retry "
                "with the same id, even on another connection, is answered with the "
                "first answer and never charged twice.\n\n"
                f"**Rate limits.** {limits}\n\n"
                "**Close codes.** The server accepts the handshake and then closes with "
                "a code, so every client can read it:\n" + closes
            ),
            "license": {"name": "MIT"},
        },
        "servers": {
            "local": {
                "host": "127.0.0.1:8000",
                "protocol": "ws",
                "description": "A server started with `python -m server` (wss behind TLS)",
            }
        },
        "defaultContentType": "application/json",
        "channels": {
            "room": {
                "address": "/ws/rooms/{room_id}",
                "title": "A live room",
                "description": "Room events, state and answers to the client's frames.",
                "parameters": {"room_id": {"description": "From POST /api/rooms"}},
                "messages": channel_messages,
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "query": {
                            "type": "object",
                            "properties": {
                                "token": {
                                    "type": "string",
                                    "description": "The user's token; none: watch only",
                                },
                                "since": {
                                    "type": "string",
                                    "pattern": "^[0-9]{1,18}$",
                                    "description": "Resume after this seq (see Resume)",
                                },
                            },
                        },
                        "bindingVersion": "0.1.0",
                    }
                },
                "x-close-codes": {str(code): text for code, text in CLOSE_CODES.items()},
            }
        },
        "operations": {
            "sendGift": {
                "action": "receive",
                "channel": {"$ref": "#/channels/room"},
                "title": "A viewer sends a gift",
                "messages": refs(("gift",)),
                "reply": {
                    "channel": {"$ref": "#/channels/room"},
                    "messages": refs(("ack", "error")),
                },
            },
            "chat": {
                "action": "receive",
                "channel": {"$ref": "#/channels/room"},
                "title": "A viewer chats (shown as a chat event, or refused with error)",
                "messages": refs(("chat",)),
            },
            "ping": {
                "action": "receive",
                "channel": {"$ref": "#/channels/room"},
                "messages": refs(("ping",)),
                "reply": {"channel": {"$ref": "#/channels/room"}, "messages": refs(("pong",))},
            },
            "watch": {
                "action": "send",
                "channel": {"$ref": "#/channels/room"},
                "title": "The server tells the room what happens",
                "messages": refs(("welcome", "events", "room_state", "error")),
            },
        },
        "components": {
            "messages": messages,
            "schemas": _asyncapi_schema(components),
        },
    }


def render() -> str:
    header = "# Generated by `python -m server.asyncapi` from server/contract.py: do not edit.\n"
    body: str = yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=88)
    return header + body


if __name__ == "__main__":
    sys.stdout.write(render())
