"""The one refusal table (server.errors): each refusal's HTTP status, wire code and close
code, as DESIGN section 4 lists them."""

from __future__ import annotations

from server.errors import REFUSALS, WIRE_CODES, Refusal, UnknownRefusal, refusal_for

# DESIGN section 4.
DESIGN_WIRE_CODES = {
    "bad_request",
    "unauthorized",
    "unknown_gift",
    "insufficient_coins",
    "spending_limit_reached",
    "rate_limited",
    "room_not_live",
    "forbidden",
    "unavailable",
    "internal",
}
DESIGN_STATUSES = {400, 401, 402, 403, 404, 409, 422, 429, 500, 503}


def test_every_refusal_carries_a_status_a_wire_code_and_a_close_code() -> None:
    assert WIRE_CODES == DESIGN_WIRE_CODES
    for code, cls in REFUSALS.items():
        assert cls.code == code and issubclass(cls, Refusal)
        assert cls.status in DESIGN_STATUSES or cls.status >= 405, (code, cls.status)
        assert cls.wire in DESIGN_WIRE_CODES
        assert 1000 <= cls.close <= 4999
    assert REFUSALS["suspended"].status == 403 and REFUSALS["suspended"].wire == "forbidden"


def test_an_unknown_code_is_never_silently_another() -> None:
    assert isinstance(refusal_for("insufficient_coins", "m"), REFUSALS["insufficient_coins"])
    try:
        refusal_for("no_such_code", "m")
    except UnknownRefusal:
        pass
    else:
        raise AssertionError("an unknown code must not map to a refusal")
