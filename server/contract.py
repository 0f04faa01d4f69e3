"""The published contract as types: every REST request body, query and answer, and every
WebSocket frame, as msgspec Structs.

The server decodes and validates what clients send with these very types (`server.api`
for REST, `server.protocol` for frames), and `/openapi.json` (`server.openapi`) and
`docs/asyncapi.yaml` (`server.asyncapi`) are generated from them: the documents cannot
drift from what the server accepts. Shapes, types, lengths, patterns and ranges live
here; the rules a schema cannot say (control characters, card numbers, ages) live in
`server.economy`, and each field's description names them.

Answers and server frames are built elsewhere (the store, the Lua scripts, `protocol`);
their Structs here describe them, and the tests check what the server sends against them.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from server.economy import (
    MAX_AMOUNT,
    MAX_CHAT_LENGTH,
    MAX_COMBO,
    MAX_ID_NUMBER_LENGTH,
    MAX_LEGAL_NAME_LENGTH,
    MAX_NAME_LENGTH,
    MAX_TITLE_LENGTH,
)

MAX_PAGE = 100
MAX_REQUEST_ID_LENGTH = 64
MAX_IDEMPOTENCY_KEY_LENGTH = 100
# Redis stream ids (ledger entries) are two unsigned 64-bit numbers.
MAX_STREAM_ID_PART = 2**64 - 1


def whole(pattern: str) -> str:
    """A pattern the whole string must match, with the same meaning in Python's `re` and
    in ECMA-262 (JSON Schema): Python's `$` also matches before a final newline."""
    return rf"^(?:{pattern})(?![\s\S])"


NO_CONTROLS = (
    "No control characters: nothing of Unicode category C (NUL, newlines, tabs, "
    "direction overrides such as U+202E, zero-width spaces, private use), no line or "
    "paragraph separators; the joiners U+200C/U+200D of emoji and scripts are fine. "
    "Surrounding spaces are removed."
)

RequestId = Annotated[
    str,
    Meta(
        pattern=whole(rf"[A-Za-z0-9_.:-]{{1,{MAX_REQUEST_ID_LENGTH}}}"),
        description="The client's id for this request: a retry with the same id is "
        "answered again, never done twice (idempotency key).",
        examples=["3f2b9c1e-gift-0001"],
    ),
]
IdempotencyKey = Annotated[
    str,
    Meta(
        pattern=whole(rf"[A-Za-z0-9_.:-]{{1,{MAX_IDEMPOTENCY_KEY_LENGTH}}}"),
        description="The same key with the same body replays the first answer; with "
        "another body it is refused (409 idempotency_conflict). Kept for 24 hours.",
        examples=["recharge-2026-12-01-001"],
    ),
]
UserId = Annotated[str, Meta(examples=["u1f2e3d4c5b6a7980"])]
Amount = Annotated[int, Meta(ge=0)]


class ErrorBody(Struct):
    """Every refusal: a stable `code` to match on and a `message` for people."""

    code: Annotated[str, Meta(examples=["bad_request"])]
    message: Annotated[str, Meta(examples=["limit must be from 1 to 100"])]


# --- REST requests ----------------------------------------------------------------------


class SignUp(Struct, forbid_unknown_fields=True):
    """A new account (simulated: no email, no password; the token is the login)."""

    name: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=MAX_NAME_LENGTH,
            description=f"The display name: any script, emoji welcome. {NO_CONTROLS}",
            examples=["Ann"],
        ),
    ]
    birthdate: Annotated[
        str,
        Meta(
            pattern=whole("[0-9]{4}-[0-9]{2}-[0-9]{2}"),
            description="YYYY-MM-DD (ASCII digits), a real date after 1900 and not in "
            "the future. Buying coins and cashing out need 18+.",
            extra_json_schema={"format": "date"},
            examples=["1990-01-01"],
        ),
    ]
    region: Annotated[
        str,
        Meta(
            pattern=whole("[A-Z]{2}"),
            description="ISO 3166-1 alpha-2 code; buying coins is not available everywhere.",
            examples=["US"],
        ),
    ]


class Verification(Struct, forbid_unknown_fields=True):
    """The simulated identity check: verified when both are valid and the user is 18+."""

    legal_name: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=MAX_LEGAL_NAME_LENGTH,
            description=NO_CONTROLS,
            examples=["Ann Lee"],
        ),
    ]
    id_number: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=MAX_ID_NUMBER_LENGTH,
            description="ASCII letters and digits, with spaces, dots, slashes or dashes "
            "between them; it starts with a letter or digit.",
            examples=["X1234567"],
        ),
    ]


class BankAccount(Struct, tag_field="type", tag="bank", forbid_unknown_fields=True):
    """Cash-outs paid to a bank account (an account number ending in 0002 is rejected
    by the simulated bank)."""

    account_number: Annotated[
        str, Meta(pattern=whole("[0-9]{4,17}"), description="4 to 17 ASCII digits")
    ]
    routing_number: Annotated[
        str, Meta(pattern=whole("[0-9]{9}"), description="9 ASCII digits (ABA)")
    ]


class PayPal(Struct, tag_field="type", tag="paypal", forbid_unknown_fields=True):
    """Cash-outs paid to a PayPal address (one starting with "fail" is rejected)."""

    email: Annotated[
        str,
        Meta(
            min_length=3,
            max_length=254,
            pattern=whole(r"[^@\s]+@[^@\s]+\.[^@\s]+"),
            description=f"An email address. {NO_CONTROLS}",
            examples=["ann@example.com"],
        ),
    ]


PayoutMethod = BankAccount | PayPal


class Recharge(Struct, forbid_unknown_fields=True):
    """Buy a coin package (payment simulated with test cards)."""

    package_id: Annotated[
        str, Meta(max_length=40, description="From GET /api/coin-packages", examples=["p1000"])
    ]
    card_number: Annotated[
        str,
        Meta(
            max_length=40,
            pattern=whole("[0-9 -]*"),
            description="12 to 19 ASCII digits, spaces and dashes ignored. Test cards: "
            "…4242 approves, …0002 declines (402 payment_declined), …9995 declines for "
            "insufficient funds (402 insufficient_funds); any other number declines.",
            examples=["4242 4242 4242 4242"],
        ),
    ]
    idempotency_key: IdempotencyKey


Period = Literal["daily", "monthly"]


class SpendingLimitChange(Struct, forbid_unknown_fields=True):
    """A cap on coins spent on gifts per UTC day or month; reaching it exactly is allowed."""

    period: Period
    coins: Annotated[
        Annotated[int, Meta(ge=0, le=MAX_AMOUNT)] | None,
        Meta(description="The cap in coins, or null to remove it"),
    ]


class CashoutRequest(Struct, forbid_unknown_fields=True):
    """Turn diamonds into money: 2,000 diamonds = $10 (minimum and daily limit apply)."""

    diamonds: Annotated[int, Meta(ge=1, le=MAX_AMOUNT, examples=[2000])]
    idempotency_key: IdempotencyKey


class NewRoom(Struct, forbid_unknown_fields=True):
    """A creator goes live."""

    title: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=MAX_TITLE_LENGTH,
            description=NO_CONTROLS,
            examples=["Friday night karaoke"],
        ),
    ]


EntryId = Annotated[
    str,
    Meta(
        pattern=whole("[0-9]{1,20}-[0-9]{1,20}"),
        description="A transaction id (`next_before` of the previous page): two ASCII "
        "numbers up to 2^64-1, not 0-0.",
        examples=["1764547200000-0"],
    ),
]


class TransactionsQuery(Struct, forbid_unknown_fields=True):
    """One page of the ledger, newest first."""

    limit: Annotated[int, Meta(ge=1, le=MAX_PAGE, description="Entries per page")] = 20
    before: EntryId | None = None

    def __post_init__(self) -> None:
        if self.before is not None:
            millis, _, seq = self.before.partition("-")
            if int(millis) > MAX_STREAM_ID_PART or int(seq) > MAX_STREAM_ID_PART:
                raise ValueError("before is not a transaction id: a part is over 2^64-1")
            if int(millis) == 0 and int(seq) == 0:
                raise ValueError("before is not a transaction id: 0-0 is before them all")


# --- REST answers -------------------------------------------------------------------------


class SignedUp(Struct):
    user_id: UserId
    token: Annotated[str, Meta(description="Send as `Authorization: Bearer <token>`")]


class SpendingLimit(Struct):
    period: Period
    coins: Amount


class Balances(Struct):
    coins: Amount
    diamonds: Amount
    locked_diamonds: Annotated[int, Meta(ge=0, description="Diamonds in pending cash-outs")]
    spending_limit: SpendingLimit | None


class MaskedBankAccount(Struct, tag_field="type", tag="bank"):
    account_last4: str


class MaskedPayPal(Struct, tag_field="type", tag="paypal"):
    email: Annotated[str, Meta(examples=["a***@example.com"])]


class Me(Struct):
    user_id: UserId
    name: str
    birthdate: Annotated[str, Meta(extra_json_schema={"format": "date"})]
    age: Annotated[int, Meta(ge=0)]
    region: str
    status: Literal["active", "suspended"]
    verified: bool
    payout_method: MaskedBankAccount | MaskedPayPal | None
    coins: Amount
    diamonds: Amount
    locked_diamonds: Amount
    spending_limit: SpendingLimit | None


class Verified(Struct):
    verified: bool


class PayoutMethodSet(Struct):
    payout_method: MaskedBankAccount | MaskedPayPal


class GiftInfo(Struct):
    id: Annotated[str, Meta(examples=["rose"])]
    name: str
    coins: Annotated[int, Meta(ge=1, description="Price of one")]
    tier: str


class GiftCatalog(Struct):
    gifts: list[GiftInfo]


class CoinPackageInfo(Struct):
    id: str
    coins: Annotated[int, Meta(ge=1)]
    price_cents: Annotated[int, Meta(ge=0, description="US cents")]


class CoinPackages(Struct):
    packages: list[CoinPackageInfo]


class Recharged(Struct):
    recharge_id: str
    coins: Annotated[int, Meta(ge=0, description="The balance after this recharge")]
    added: Annotated[int, Meta(ge=1)]
    price_cents: Amount
    package_id: str
    replayed: Annotated[bool, Meta(description="True when this answers a repeated key")]


class LedgerEntry(Struct):
    """One change of a balance. `kind` is one of recharge, gift_sent, gift_received,
    gift_refunded, cashout_requested, cashout_settled, cashout_failed; each kind names
    the balances it changed after (`coins_after`, `diamonds_after`, `locked_after`)."""

    id: Annotated[str, Meta(description="Pass as `before` for the next page")]
    kind: str
    coins: int
    diamonds: int
    locked: int
    ref: str
    ts: Annotated[int, Meta(description="Epoch milliseconds")]


class TransactionsPage(Struct):
    transactions: list[LedgerEntry]
    next_before: Annotated[str | None, Meta(description="null on the last page")]


class SpendingLimitSet(Struct):
    spending_limit: SpendingLimit | None


class CashoutRequested(Struct):
    cashout_id: str
    status: Literal["pending"]
    diamonds: Annotated[int, Meta(ge=1)]
    usd_cents: Amount
    replayed: bool


class Cashout(Struct):
    cashout_id: str
    status: Literal["pending", "settled", "failed"]
    diamonds: Annotated[int, Meta(ge=1)]
    usd_cents: Amount
    created_ms: int
    finished_ms: int | None


class RoomCreated(Struct):
    room_id: str


class Person(Struct):
    user_id: UserId
    name: str


class TopGifter(Struct):
    user_id: UserId
    name: str
    coins: Annotated[int, Meta(ge=0, description="Coins this viewer gifted in the room")]


RoomStatus = Literal["live", "ended"]


class RoomSummary(Struct):
    room_id: str
    title: str
    creator: Person
    status: RoomStatus
    viewers: Amount


class RoomList(Struct):
    rooms: list[RoomSummary]


class RoomTotals(Struct):
    gift_coins: Amount
    gift_count: Amount
    chat_count: Amount


class RoomDetail(Struct):
    room_id: str
    title: str
    creator: Person
    status: RoomStatus
    viewers: Amount
    seq: Annotated[int, Meta(ge=0, description="The room's latest event sequence number")]
    totals: RoomTotals
    top: list[TopGifter]
    created_ms: int
    ended_ms: int | None


class RoomEnded(Struct):
    room_id: str
    status: Literal["ended"]


class Health(Struct):
    status: Literal["ok"]
    redis: Literal["up", "down"]


# --- WebSocket frames: client to server ------------------------------------------------------


class GiftCommand(Struct, tag_field="type", tag="gift", forbid_unknown_fields=True):
    """Send a gift to the room's creator; answered by `ack` or `error` with its request_id."""

    request_id: RequestId
    gift_id: Annotated[str, Meta(description="From GET /api/gifts", examples=["rose"])]
    count: Annotated[
        int, Meta(ge=1, le=MAX_COMBO, description="A combo: this many of the gift at once")
    ]


class ChatCommand(Struct, tag_field="type", tag="chat", forbid_unknown_fields=True):
    """Say something in the room; shown as a `chat` event, refused with an `error`."""

    request_id: RequestId
    text: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=MAX_CHAT_LENGTH,
            description=f"Not blank. {NO_CONTROLS}",
            examples=["hello!"],
        ),
    ]


class PingCommand(Struct, tag_field="type", tag="ping", forbid_unknown_fields=True):
    """Answered by `pong`."""


ClientFrame = GiftCommand | ChatCommand | PingCommand


# --- WebSocket frames: server to client ------------------------------------------------------


class Room(Struct):
    room_id: str
    title: str
    creator: Person
    status: RoomStatus


class You(Struct):
    user_id: UserId
    coins: Amount


class Welcome(Struct, tag_field="type", tag="welcome"):
    """The first frame on every socket."""

    room: Room
    seq: Annotated[int, Meta(ge=0, description="The room's latest sequence number")]
    viewers: Amount
    top: list[TopGifter]
    you: Annotated[You | None, Meta(description="null when watching without a token")]
    recovered: Annotated[
        bool,
        Meta(
            description="With `since`: true when every missed event was still in the "
            "room's history (they follow in `events` frames), false when some were lost"
        ),
    ]


Seq = Annotated[int, Meta(ge=1, description="The room's sequence number of this event")]
Ts = Annotated[int, Meta(description="Server time, epoch milliseconds")]


class GiftEvent(Struct, tag_field="kind", tag="gift"):
    seq: Seq
    ts: Ts
    from_: Annotated[Person, Meta(description="The sender")] = msgspec.field(name="from")
    gift_id: str = msgspec.field()
    count: Annotated[int, Meta(ge=1, le=MAX_COMBO)] = msgspec.field()
    coins: Annotated[int, Meta(ge=1, description="Total price: count × the gift's price")] = (
        msgspec.field()
    )
    combo: Annotated[
        int,
        Meta(
            ge=1,
            description="How many of this gift this sender has sent in a row, counting "
            'this one, with gaps of a few seconds at most: clients show "x12"',
        ),
    ] = msgspec.field()


class ChatEvent(Struct, tag_field="kind", tag="chat"):
    seq: Seq
    ts: Ts
    from_: Annotated[Person, Meta(description="Who said it")] = msgspec.field(name="from")
    text: str = msgspec.field()


class RoomEndedEvent(Struct, tag_field="kind", tag="room_ended"):
    seq: Seq
    ts: Ts


RoomEvent = GiftEvent | ChatEvent | RoomEndedEvent


class Events(Struct, tag_field="type", tag="events"):
    """One or more room events, oldest first, each once."""

    events: Annotated[list[RoomEvent], Meta(min_length=1)]


class RoomState(Struct, tag_field="type", tag="room_state"):
    """A snapshot sent when the viewer count or the top gifters change (a few times a
    second at most); not sequenced, not kept."""

    viewers: Amount
    top: Annotated[list[TopGifter], Meta(description="Highest first")]


class Ack(Struct, tag_field="type", tag="ack"):
    """A gift was debited."""

    request_id: RequestId
    coins: Annotated[int, Meta(ge=0, description="The sender's balance after the gift")]


class ErrorFrame(Struct, tag_field="type", tag="error"):
    """A frame refused: the socket stays open."""

    request_id: Annotated[
        str | None, Meta(description="The refused frame's, when it named a valid one")
    ]
    code: Annotated[
        Literal[
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
        ],
        Meta(description="Stable: match on it"),
    ]
    message: str


class Pong(Struct, tag_field="type", tag="pong"):
    """The answer to `ping`."""


ServerFrame = Welcome | Events | RoomState | Ack | ErrorFrame | Pong
