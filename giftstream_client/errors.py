"""What the client raises: one base, `GiftstreamError`, and below it what went wrong.

- `ApiError` (and a subclass per HTTP status): the server answered a REST call with an
  error body; `code` is its stable code (`insufficient_coins`, `idempotency_conflict`, …),
  `status` the HTTP status, `message` the server's human message.
- `ServerUnreachable`: no answer at all (connection refused, timed out, reset).
- `RoomRefusal`: the server answered a room frame with an error frame (`code`,
  `request_id`).
- `RoomClosed`: the server closed the room socket (`code`: 4401 bad token, 4404 unknown
  or ended room, 1008 too slow, 1009 frame too big, 1012 restarting, 1013 try later).
- `ProtocolError`: the server sent something that is not the protocol.
"""

from __future__ import annotations


class GiftstreamError(Exception):
    """Everything this client raises about the server derives from this."""


class ServerUnreachable(GiftstreamError):
    """No answer from `url`: `reason` says why in a few words (a one-line message)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url}: {reason}")
        self.url = url
        self.reason = reason


class ProtocolError(GiftstreamError):
    """The server's answer is not what the protocol says it is."""


class ApiError(GiftstreamError):
    """A REST call was refused: `status` (HTTP), `code` (stable), `message` (human)."""

    status: int = 0

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class BadRequest(ApiError):
    """400: the request broke a rule of the protocol (`bad_request`, `unknown_gift`, …)."""


class Unauthorized(ApiError):
    """401: no token, or a bad or expired one."""


class PaymentRequired(ApiError):
    """402: `payment_declined`, `insufficient_funds` (the card) or `insufficient_coins`."""


class Forbidden(ApiError):
    """403: not allowed (`underage`, `region_unavailable`, `suspended`, `forbidden`, …)."""


class NotFound(ApiError):
    """404: no such user, room or cash-out (or no such route)."""


class Conflict(ApiError):
    """409: `idempotency_conflict` (same key, another body) or `room_not_live`."""


class RuleRefused(ApiError):
    """422: a rule said no (`below_minimum`, `over_daily_limit`, `spending_limit_reached`)."""


class RateLimited(ApiError):
    """429: too many requests; try again later."""


class ServerError(ApiError):
    """500: the server failed (`internal`)."""


class Unavailable(ApiError):
    """503: the server's store is unavailable (`unavailable`); try again later."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    402: PaymentRequired,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: RuleRefused,
    429: RateLimited,
    500: ServerError,
    503: Unavailable,
}


def api_error(status: int, code: str, message: str) -> ApiError:
    """The `ApiError` subclass for `status` (`ApiError` itself for any other status)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else ApiError
    return cls(status, code, message)


class RoomRefusal(GiftstreamError):
    """The server answered a gift or chat with an error frame."""

    def __init__(self, code: str, message: str, request_id: str | None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


class RoomClosed(GiftstreamError):
    """The room socket closed: `code` as the server sent it (1006: no close frame)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"room socket closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason
