"""Refusals: the one exception base for everything the server says no to.

Each subclass carries a stable `code` that clients match on. The mapping to
HTTP statuses lives in `api.py`, to WebSocket frames and close codes in `ws.py`.
"""

from __future__ import annotations


class Refusal(Exception):
    """A request refused for a reason the client can act on."""

    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(Refusal):
    code = "bad_request"


class Unauthorized(Refusal):
    code = "unauthorized"


class Forbidden(Refusal):
    code = "forbidden"


class Underage(Refusal):
    code = "underage"


class RegionUnavailable(Refusal):
    code = "region_unavailable"


class Suspended(Refusal):
    code = "suspended"


class NotFound(Refusal):
    code = "not_found"


class IdempotencyConflict(Refusal):
    code = "idempotency_conflict"


class PaymentDeclined(Refusal):
    code = "payment_declined"


class InsufficientFunds(Refusal):
    """The (simulated) card has not enough money: not to be confused with coins."""

    code = "insufficient_funds"


class UnknownGift(Refusal):
    code = "unknown_gift"


class UnknownPackage(Refusal):
    code = "unknown_package"


class InsufficientCoins(Refusal):
    code = "insufficient_coins"


class InsufficientDiamonds(Refusal):
    code = "insufficient_diamonds"


class SpendingLimitReached(Refusal):
    code = "spending_limit_reached"


class BelowMinimum(Refusal):
    code = "below_minimum"


class OverDailyLimit(Refusal):
    code = "over_daily_limit"


class NotVerified(Refusal):
    code = "not_verified"


class NoPayoutMethod(Refusal):
    code = "no_payout_method"


class RoomNotLive(Refusal):
    code = "room_not_live"


class RateLimited(Refusal):
    code = "rate_limited"


class Unavailable(Refusal):
    code = "unavailable"


# Every refusal by its code (each class above is a direct subclass of Refusal).
REFUSALS: dict[str, type[Refusal]] = {cls.code: cls for cls in Refusal.__subclasses__()}


def refusal_from_code(code: str, message: str) -> Refusal:
    """Rebuild the refusal a Lua script answered with its code."""
    return REFUSALS.get(code, BadRequest)(message)
