"""Tokens: HS256 JWTs carrying the user id, with an expiry."""

from __future__ import annotations

import time

import jwt

from server.errors import Unauthorized

ALGORITHM = "HS256"


def issue_token(user_id: str, *, secret: str, ttl_s: int, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    return jwt.encode({"sub": user_id, "iat": issued, "exp": issued + ttl_s}, secret, ALGORITHM)


def user_from_token(token: str, *, secret: str) -> str:
    """The user id in a valid token; `Unauthorized` for a forged, malformed or expired one."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]}
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the token has expired") from None
    except jwt.InvalidTokenError:
        raise Unauthorized("the token is not valid") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise Unauthorized("the token is not valid")
    return sub
