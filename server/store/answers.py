"""Decoding what the Lua scripts answer (their one style: `_common.lua`).

A script answers `{'ok', …}` when done, `{code, message}` when it refuses (nothing
written), or an error reply (`GSFAULT …`, or Redis's own: WRONGTYPE, NOPERM, OOM…) when the
store cannot do it now (nothing written either). The first is returned, the second raised
as the `Refusal` its code names, the third raised by redis-py as a `ResponseError`.
"""

from __future__ import annotations

from typing import Any

from server.errors import refusal_for


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def answer(raw: Any) -> list[Any]:
    """The fields of a script's `ok` answer (after 'ok'); a refusal is raised as its
    `Refusal`, an error reply (an exception object from a pipeline) as itself."""
    if isinstance(raw, BaseException):
        raise raw
    status = text(raw[0])
    if status == "ok":
        return list(raw[1:])
    raise refusal_for(status, text(raw[1]))


def fields(raw: dict[Any, Any]) -> dict[str, str]:
    """A Redis hash as str -> str."""
    return {text(k): text(v) for k, v in raw.items()}
