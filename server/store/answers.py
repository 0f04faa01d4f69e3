"""Decoding what the Lua scripts answer."""

from __future__ import annotations

from typing import Any

import orjson

from server.errors import refusal_from_code


def decode_answer(raw: bytes | str) -> dict[str, Any]:
    """A script's JSON answer; an `{"error": code, "message": …}` answer is raised."""
    answer: dict[str, Any] = orjson.loads(raw)
    code = answer.get("error")
    if code is not None:
        raise refusal_from_code(str(code), str(answer.get("message", code)))
    return answer


def text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def fields(raw: dict[Any, Any]) -> dict[str, str]:
    """A Redis hash as str -> str."""
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
