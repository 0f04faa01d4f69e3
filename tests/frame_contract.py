"""The published WebSocket contract as a check: every frame the server sends in the
end-to-end tests must match docs/asyncapi.yaml. `tests/room_client.py` passes each frame
it reads to `check_server_frame`, which keeps it; after each test (an autouse fixture in
tests/conftest.py) `verify_seen` checks them all, so that checking costs a test's clients
no time while they read (a slow reader's deadline is real)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
import yaml

ASYNCAPI = Path(__file__).resolve().parents[1] / "docs" / "asyncapi.yaml"
checked = 0  # frames checked in this test session
_seen: list[Any] = []  # frames read since the last `verify_seen`


def _message_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


@functools.cache
def _schema() -> dict[str, Any]:
    doc = yaml.safe_load(ASYNCAPI.read_text())
    names: set[str] = set()
    for operation in doc["operations"].values():
        if operation["action"] == "send":
            names |= {_message_name(m["$ref"]) for m in operation["messages"]}
        if "reply" in operation:
            names |= {_message_name(m["$ref"]) for m in operation["reply"]["messages"]}
    messages = doc["components"]["messages"]
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "oneOf": [messages[name]["payload"] for name in sorted(names)],
        "components": doc["components"],
    }
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


@functools.cache
def _fast() -> jsonschema_rs.Validator:
    # Thousands of frames a test: jsonschema-rs says yes or no in microseconds (the
    # pure-Python validator takes milliseconds for a frame of events, enough to make a
    # reader too slow); jsonschema explains a no.
    return jsonschema_rs.validator_for(_schema())


def server_frame_errors(frame: Any) -> list[str]:
    """How `frame` breaks the document (nothing when it matches one server message)."""
    if _fast().is_valid(frame):
        return []
    validator = jsonschema.Draft202012Validator(_schema())
    best = jsonschema.exceptions.best_match(validator.iter_errors(frame))
    return ["does not match"] if best is None else [f"{list(best.absolute_path)}: {best.message}"]


def check_server_frame(frame: Any) -> None:
    """Keep `frame` for `verify_seen` (the frames are the test's clients' own objects)."""
    _seen.append(frame)


def verify_seen() -> None:
    """Check every frame kept since the last call against the document."""
    global checked
    frames = list(_seen)
    _seen.clear()
    for frame in frames:
        errors = server_frame_errors(frame)
        assert not errors, f"frame does not match docs/asyncapi.yaml: {errors}: {frame}"
    checked += len(frames)
