"""Refusals: the one exception base for everything the server says no to.

Each subclass carries, in one table (its class attributes), everything an edge needs:
- `code`: the stable code clients match on (REST bodies, Lua script answers);
- `status`: the HTTP status of DESIGN section 4;
- `wire`: the code of a WebSocket error frame (one of DESIGN section 4's list);
- `close`: the WebSocket close code when it is met before the welcome (admission).
The REST edge (`api.py`) and the WebSocket edge (`ws.py`) read these; neither keeps a
table of its own.
"""

from __future__ import annotations


class Refusal(Exception):
    """A request refused for a reason the client can act on."""

    code = "bad_request"
    status = 400
    wire = "bad_request"
    close = 1008

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(Refusal):
    code = "bad_request"


class Unauthorized(Refusal):
    code = "unauthorized"
    status = 401
    wire = "unauthorized"
    close = 4401


class Forbidden(Refusal):
    code = "forbidden"
    status = 403
    wire = "forbidden"
    close = 4403


class Underage(Forbidden):
    code = "underage"


class RegionUnavailable(Forbidden):
    code = "region_unavailable"


class Suspended(Forbidden):
    """The one code for a suspended account, wherever it is met."""

    code = "suspended"


class NotVerified(Forbidden):
    code = "not_verified"


class NoPayoutMethod(Forbidden):
    code = "no_payout_method"


class NotFound(Refusal):
    code = "not_found"
    status = 404
    close = 4404


class IdempotencyConflict(Refusal):
    """The same idempotency key (or a gift's `request_id`) with another request."""

    code = "idempotency_conflict"
    status = 409


class PaymentDeclined(Refusal):
    code = "payment_declined"
    status = 402


class InsufficientFunds(Refusal):
    """The (simulated) card has not enough money: not to be confused with coins."""

    code = "insufficient_funds"
    status = 402


class UnknownGift(Refusal):
    code = "unknown_gift"
    wire = "unknown_gift"


class UnknownPackage(Refusal):
    code = "unknown_package"


class InsufficientCoins(Refusal):
    code = "insufficient_coins"
    status = 402
    wire = "insufficient_coins"


class InsufficientDiamonds(Refusal):
    code = "insufficient_diamonds"
    status = 422


class SpendingLimitReached(Refusal):
    code = "spending_limit_reached"
    status = 422
    wire = "spending_limit_reached"


class BelowMinimum(Refusal):
    code = "below_minimum"
    status = 422


class OverDailyLimit(Refusal):
    code = "over_daily_limit"
    status = 422


class RoomNotLive(Refusal):
    code = "room_not_live"
    status = 409
    wire = "room_not_live"
    close = 4404


class RateLimited(Refusal):
    code = "rate_limited"
    status = 429
    wire = "rate_limited"
    close = 4429


class Unavailable(Refusal):
    """Redis (or another part the request needs) is away: try again shortly."""

    code = "unavailable"
    status = 503
    wire = "unavailable"
    close = 1013


class Internal(Refusal):
    """A fault of the server's own: logged where it happened."""

    code = "internal"
    status = 500
    wire = "internal"
    close = 1011


def _all_subclasses(cls: type[Refusal]) -> list[type[Refusal]]:
    found: list[type[Refusal]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


# Every refusal by its code. A code defined twice would make the table ambiguous.
REFUSALS: dict[str, type[Refusal]] = {}
for _cls in _all_subclasses(Refusal):
    if _cls.code in REFUSALS and REFUSALS[_cls.code] is not _cls:
        raise RuntimeError(f"refusal code {_cls.code!r} defined twice")
    REFUSALS[_cls.code] = _cls


# Every code a WebSocket error frame can carry (DESIGN section 4's list).
WIRE_CODES: frozenset[str] = frozenset(cls.wire for cls in REFUSALS.values())


class UnknownRefusal(Exception):
    """A Lua script answered a refusal code that no `Refusal` class defines: a bug."""


def refusal_for(code: str, message: str) -> Refusal:
    """The refusal a Lua script answered with `code`. `UnknownRefusal` for a code that no
    class defines (never silently another code)."""
    try:
        return REFUSALS[code](message)
    except KeyError:
        raise UnknownRefusal(f"a script refused with unknown code {code!r}: {message}") from None
