"""REST endpoints (DESIGN section 4). Refusals become `{code, message}` bodies here, and
only here (`refusal_response`), with the HTTP status each `Refusal` carries.

Each endpoint is an `Endpoint`: a handler whose parameters say what it takes — `user`
(a signed-in `Profile`), `body` and `query` (Structs of `server.contract`) — and the
`Endpoint` authenticates, decodes and validates exactly that before the handler runs.
`/openapi.json` is built from the same `ENDPOINTS`, so the document says what the code
does.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import logging
import typing
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from server import contract, economy, metrics, openapi
from server.auth import issue_token, user_from_token
from server.contract import (
    BankAccount,
    CashoutRequest,
    NewRoom,
    PayPal,
    Recharge,
    SignUp,
    SpendingLimitChange,
    TransactionsQuery,
    Verification,
)
from server.errors import REFUSALS, BadRequest, Refusal, Suspended, Unauthorized, Underage
from server.services import Services
from server.store.wallets import Profile, check_idempotency_key

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024
MAX_PAGE = contract.MAX_PAGE

# The HTTP status of every code: each refusal's own (server.errors), and the refusals of
# the HTTP layer itself, which no handler raises (server.http_limits, Starlette's routing).
STATUS_BY_CODE: dict[str, int] = {
    **{code: refusal.status for code, refusal in REFUSALS.items()},
    "method_not_allowed": 405,
    "timeout": 408,
    "too_large": 413,
    "headers_too_large": 431,
}
# The code of a refusal that only has an HTTP status (Starlette's own 404 and 405).
CODE_BY_STATUS: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    500: "internal",
    503: "unavailable",
}


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(
    code: str, message: str, *, headers: typing.Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"code": code, "message": message},
        status_code=STATUS_BY_CODE.get(code, 400),
        headers=headers,
    )


def refusal_response(exc: Refusal) -> JSONResponse:
    """A refusal as its `{code, message}` body with its own HTTP status."""
    return JSONResponse({"code": exc.code, "message": exc.message}, status_code=exc.status)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route: 404, wrong method: 405) as `{code,
    message}` too, with their headers (405's `Allow`)."""
    assert isinstance(exc, HTTPException)
    code = CODE_BY_STATUS.get(exc.status_code, "bad_request")
    message = {
        404: f"no such endpoint: {request.url.path[:100]}",
        405: f"{request.method[:10]} is not allowed here",
    }.get(exc.status_code, exc.detail)
    response = error_response(code, message, headers=exc.headers)
    response.status_code = exc.status_code
    return response


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send Authorization: Bearer <token>")
    return token.strip()


async def current_user(request: Request) -> Profile:
    svc = services(request)
    user_id = user_from_token(bearer_token(request), secret=svc.settings.token_secret)
    return await svc.wallets.profile(user_id)


# --- decoding what an endpoint takes ------------------------------------------------------


async def read_body(request: Request, decoder: msgspec.json.Decoder[Any]) -> Any:
    """The body decoded and validated by `decoder` (a contract type); `BadRequest`
    naming the field and the rule otherwise. Its size is bounded while it is read
    (`server.http_limits.BodyLimit`); this check holds under any server."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise BadRequest(str(exc)) from None
    except msgspec.DecodeError:
        raise BadRequest("the body is not valid JSON") from None


def _is_int(kind: msgspec.inspect.Type) -> bool:
    while isinstance(kind, msgspec.inspect.Metadata):
        kind = kind.type
    if isinstance(kind, msgspec.inspect.UnionType):
        return any(_is_int(t) for t in kind.types)
    return isinstance(kind, msgspec.inspect.IntType)


class QueryReader:
    """Reads a contract Struct from a query string: each field at most once; a whole
    number only in ASCII digits (`int()` would take "²", " 5" and "1_0"); then the
    Struct's own ranges and patterns."""

    def __init__(self, query_type: type[Any]) -> None:
        info = msgspec.inspect.type_info(query_type)
        assert isinstance(info, msgspec.inspect.StructType)
        self.query_type = query_type
        self.fields = [(f.encode_name, _is_int(f.type)) for f in info.fields]

    def read(self, request: Request) -> Any:
        values: dict[str, str | int] = {}
        for name, whole_number in self.fields:
            given = request.query_params.getlist(name)
            if not given:
                continue
            if len(given) > 1:
                raise BadRequest(f"{name} is given more than once")
            raw = given[0]
            if whole_number:
                if not economy.ascii_digits(raw) or len(raw) > 20:
                    raise BadRequest(f"{name} must be a whole number written in digits 0-9")
                values[name] = int(raw)
            else:
                values[name] = raw
        try:
            return msgspec.convert(values, self.query_type)
        except msgspec.ValidationError as exc:
            raise BadRequest(str(exc)) from None


Handler = Callable[..., Awaitable[Response]]


class Endpoint:
    """One REST operation: `handler` at `method path`, answering `status` with a JSON
    body described by `answer` (a contract Struct). The handler's parameters after the
    request say what it takes, and it gets them checked: `user: Profile` (signed in:
    401 otherwise), `query: <Struct>`, `body: <Struct or union>` (400 naming the field
    and the rule otherwise). `refuses` lists the refusal codes it may answer with beyond
    those (for the document)."""

    def __init__(
        self,
        method: str,
        path: str,
        handler: Handler,
        *,
        answer: type[Any] | None,
        status: int = 200,
        refuses: tuple[str, ...] = (),
        tag: str,
        media_type: str = "application/json",
    ) -> None:
        self.method = method
        self.path = path
        self.handler = handler
        self.operation_id = handler.__name__
        self.answer = answer
        self.status = status
        self.refuses = refuses
        self.tag = tag
        self.media_type = media_type
        hints = typing.get_type_hints(handler)
        self.needs_user = "user" in hints
        self.body_type: Any = hints.get("body")
        self.query_type: Any = hints.get("query")
        self._body = None if self.body_type is None else msgspec.json.Decoder(self.body_type)
        self._query = None if self.query_type is None else QueryReader(self.query_type)
        doc = inspect.getdoc(handler) or ""
        self.summary, _, rest = doc.partition("\n")
        self.description = rest.strip()

    async def serve(self, request: Request) -> Response:
        kwargs: dict[str, Any] = {}
        if self.needs_user:
            kwargs["user"] = await current_user(request)
        if self._query is not None:
            kwargs["query"] = self._query.read(request)
        if self._body is not None:
            kwargs["body"] = await read_body(request, self._body)
        return await self.handler(request, **kwargs)

    def route(self) -> Route:
        return Route(self.path, self.serve, methods=[self.method], name=self.handler.__name__)


# --- users ---------------------------------------------------------------------


async def sign_up(request: Request, body: SignUp) -> Response:
    """Sign up (simulated): an account and its token."""
    svc = services(request)
    name = economy.validate_name(body.name)
    born = economy.parse_birthdate(body.birthdate, today=today())
    region = economy.validate_region(body.region, svc.catalog)
    user_id = await svc.wallets.create_user(name=name, born=born, region=region)
    token = issue_token(user_id, secret=svc.settings.token_secret, ttl_s=svc.settings.token_ttl_s)
    return JSONResponse({"user_id": user_id, "token": token}, status_code=201)


async def me(request: Request, user: Profile) -> Response:
    """Your profile and balances."""
    svc = services(request)
    wallet = await svc.wallets.wallet(user.user_id)
    return JSONResponse(
        {
            "user_id": user.user_id,
            "name": user.name,
            "birthdate": user.born.isoformat(),
            "age": economy.age_on(user.born, today()),
            "region": user.region,
            "status": user.status,
            "verified": user.verified,
            "payout_method": economy.mask_payout_method(user.payout) if user.payout else None,
            **wallet,
        }
    )


async def verify_identity(request: Request, user: Profile, body: Verification) -> Response:
    """The simulated identity check (needed to cash out)."""
    svc = services(request)
    legal_name, id_number = economy.validate_identity(body.legal_name, body.id_number)
    if economy.age_on(user.born, today()) < economy.ADULT_AGE:
        raise Underage("identity verification needs an account aged 18 or over")
    await svc.wallets.verify_identity(user.user_id, legal_name=legal_name, id_number=id_number)
    return JSONResponse({"verified": True})


async def set_payout_method(
    request: Request, user: Profile, body: BankAccount | PayPal
) -> Response:
    """Link where cash-outs are paid: a bank account or a PayPal address."""
    svc = services(request)
    method = economy.validate_payout_method(msgspec.to_builtins(body))
    await svc.wallets.set_payout_method(user.user_id, method)
    return JSONResponse({"payout_method": economy.mask_payout_method(method)})


# --- catalog and wallet ------------------------------------------------------------


async def gifts(request: Request) -> Response:
    """The gift catalog, cheapest first."""
    catalog = services(request).catalog
    return JSONResponse(
        {
            "gifts": [
                {"id": g.id, "name": g.name, "coins": g.coins, "tier": g.tier}
                for g in sorted(catalog.gifts.values(), key=lambda g: (g.coins, g.id))
            ]
        }
    )


async def coin_packages(request: Request) -> Response:
    """The coin packages on sale, smallest first."""
    catalog = services(request).catalog
    return JSONResponse(
        {
            "packages": [
                {"id": p.id, "coins": p.coins, "price_cents": p.price_cents}
                for p in sorted(catalog.packages.values(), key=lambda p: p.coins)
            ]
        }
    )


async def wallet(request: Request, user: Profile) -> Response:
    """Your balances and spending cap."""
    svc = services(request)
    return JSONResponse(await svc.wallets.wallet(user.user_id))


async def recharge(request: Request, user: Profile, body: Recharge) -> Response:
    """Buy coins (18+, in a region where it is available; payment simulated).

    Idempotent by `idempotency_key`: the same key and body replays the first answer
    (`replayed: true`), the same key with another body is refused (409)."""
    svc = services(request)
    key = check_idempotency_key(body.idempotency_key)
    package = svc.catalog.package(body.package_id)
    card = economy.normalize_card(body.card_number)
    economy.check_recharge_allowed(
        born=user.born, region=user.region, today=today(), catalog=svc.catalog
    )
    answer = await svc.wallets.recharge(
        user.user_id,
        package=package,
        card_number=card,
        outcome=economy.simulate_payment(card),
        idempotency_key=key,
    )
    if not answer["replayed"]:
        metrics.COINS_RECHARGED.inc(int(answer["added"]))
    return JSONResponse(answer)


async def transactions(request: Request, user: Profile, query: TransactionsQuery) -> Response:
    """Your ledger, newest first, a page at a time."""
    svc = services(request)
    entries, next_before = await svc.wallets.transactions(
        user.user_id, limit=query.limit, before=query.before
    )
    return JSONResponse({"transactions": entries, "next_before": next_before})


async def spending_limit(request: Request, user: Profile, body: SpendingLimitChange) -> Response:
    """Set or remove your cap on coins spent on gifts per UTC day or month."""
    svc = services(request)
    period, coins = economy.validate_spending_limit(body.period, body.coins)
    await svc.wallets.set_spending_limit(user.user_id, period, coins)
    return JSONResponse(
        {"spending_limit": None if coins is None else {"period": period, "coins": coins}}
    )


async def request_cashout(request: Request, user: Profile, body: CashoutRequest) -> Response:
    """Cash out diamonds: they are locked until the simulated payout settles or fails.

    Needs 18+, a verified identity and a payout method; at least the minimum and within
    the daily limit. Idempotent by `idempotency_key`."""
    svc = services(request)
    key = check_idempotency_key(body.idempotency_key)
    economy.check_cashout_allowed(
        born=user.born,
        today=today(),
        diamonds=body.diamonds,
        minimum=svc.settings.cashout_min_diamonds,
    )
    answer = await svc.wallets.request_cashout(
        user.user_id, diamonds=body.diamonds, idempotency_key=key
    )
    if not answer["replayed"]:
        metrics.DIAMONDS_CASHED_OUT.inc(body.diamonds)
    return JSONResponse(answer, status_code=202)


async def cashout(request: Request, user: Profile) -> Response:
    """One of your cash-outs: pending, then settled or failed (diamonds returned)."""
    svc = services(request)
    return JSONResponse(await svc.wallets.cashout(user.user_id, request.path_params["cashout_id"]))


# --- rooms ------------------------------------------------------------------------


async def create_room(request: Request, user: Profile, body: NewRoom) -> Response:
    """Go live: a new room of yours."""
    svc = services(request)
    if user.status != "active":
        raise Suspended("this account is suspended")
    title = economy.validate_title(body.title)
    room_id = await svc.rooms.create(creator_id=user.user_id, creator_name=user.name, title=title)
    return JSONResponse({"room_id": room_id}, status_code=201)


async def list_rooms(request: Request) -> Response:
    """The live rooms, most watched first."""
    svc = services(request)
    room_ids = await svc.rooms.live_room_ids()
    viewers = await svc.rooms.viewers(room_ids)
    rooms = []
    for room_id in room_ids:
        try:
            described = await svc.rooms.describe(room_id)
        except Refusal:
            continue
        rooms.append({**described, "viewers": viewers.get(room_id, 0)})
    rooms.sort(key=lambda r: -int(r["viewers"]))
    return JSONResponse({"rooms": rooms})


async def get_room(request: Request) -> Response:
    """One room: its state, totals and top gifters (ended rooms too)."""
    svc = services(request)
    room_id = request.path_params["room_id"]
    raw = await svc.rooms.room(room_id)
    viewers = await svc.rooms.viewers([room_id])
    return JSONResponse(
        {
            **await svc.rooms.describe(room_id, raw),
            "viewers": viewers[room_id],
            "seq": int(raw["seq"]),
            "totals": {
                "gift_coins": int(raw["gift_coins"]),
                "gift_count": int(raw["gift_count"]),
                "chat_count": int(raw["chat_count"]),
            },
            "top": await svc.rooms.top(room_id),
            "created_ms": int(raw["created_ms"]),
            "ended_ms": int(raw["ended_ms"]) if raw.get("ended_ms") else None,
        }
    )


async def end_room(request: Request, user: Profile) -> Response:
    """End your live (idempotent); its viewers get a room_ended event."""
    svc = services(request)
    room_id = request.path_params["room_id"]
    await svc.rooms.end(room_id, user_id=user.user_id)
    return JSONResponse({"room_id": room_id, "status": "ended"})


async def healthz(request: Request) -> Response:
    """Liveness: answers while the process runs, saying whether Redis answers too."""
    svc = services(request)
    try:
        redis_ok = bool(await svc.redis.ping())
    except Exception:  # noqa: BLE001 - liveness answers even when Redis is away
        redis_ok = False
    return JSONResponse({"status": "ok", "redis": "up" if redis_ok else "down"})


async def prometheus_metrics(request: Request) -> Response:
    """Prometheus metrics (text exposition format)."""
    svc = services(request)
    try:
        metrics.ROOMS_LIVE.set(await svc.rooms.live_room_count())
    except Exception:  # noqa: BLE001 - the process metrics are worth serving without Redis
        metrics.REDIS_ERRORS.inc()
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


ENDPOINTS: list[Endpoint] = [
    Endpoint("GET", "/healthz", healthz, answer=contract.Health, tag="operations"),
    Endpoint(
        "GET",
        "/metrics",
        prometheus_metrics,
        answer=None,
        tag="operations",
        media_type="text/plain",
    ),
    Endpoint("POST", "/api/users", sign_up, answer=contract.SignedUp, status=201, tag="users"),
    Endpoint("GET", "/api/me", me, answer=contract.Me, tag="users"),
    Endpoint(
        "PUT",
        "/api/me/verification",
        verify_identity,
        answer=contract.Verified,
        refuses=("underage",),
        tag="users",
    ),
    Endpoint(
        "PUT",
        "/api/me/payout-method",
        set_payout_method,
        answer=contract.PayoutMethodSet,
        tag="users",
    ),
    Endpoint("GET", "/api/gifts", gifts, answer=contract.GiftCatalog, tag="catalog"),
    Endpoint(
        "GET", "/api/coin-packages", coin_packages, answer=contract.CoinPackages, tag="catalog"
    ),
    Endpoint("GET", "/api/wallet", wallet, answer=contract.Balances, tag="wallet"),
    Endpoint(
        "POST",
        "/api/wallet/recharge",
        recharge,
        answer=contract.Recharged,
        refuses=(
            "unknown_package",
            "payment_declined",
            "insufficient_funds",
            "underage",
            "region_unavailable",
            "suspended",
            "idempotency_conflict",
        ),
        tag="wallet",
    ),
    Endpoint(
        "GET",
        "/api/wallet/transactions",
        transactions,
        answer=contract.TransactionsPage,
        tag="wallet",
    ),
    Endpoint(
        "PUT",
        "/api/wallet/spending-limit",
        spending_limit,
        answer=contract.SpendingLimitSet,
        tag="wallet",
    ),
    Endpoint(
        "POST",
        "/api/wallet/cashouts",
        request_cashout,
        answer=contract.CashoutRequested,
        status=202,
        refuses=(
            "underage",
            "not_verified",
            "no_payout_method",
            "suspended",
            "idempotency_conflict",
            "below_minimum",
            "over_daily_limit",
            "insufficient_diamonds",
        ),
        tag="wallet",
    ),
    Endpoint(
        "GET",
        "/api/wallet/cashouts/{cashout_id}",
        cashout,
        answer=contract.Cashout,
        refuses=("not_found",),
        tag="wallet",
    ),
    Endpoint(
        "POST",
        "/api/rooms",
        create_room,
        answer=contract.RoomCreated,
        status=201,
        refuses=("forbidden",),
        tag="rooms",
    ),
    Endpoint("GET", "/api/rooms", list_rooms, answer=contract.RoomList, tag="rooms"),
    Endpoint(
        "GET",
        "/api/rooms/{room_id}",
        get_room,
        answer=contract.RoomDetail,
        refuses=("not_found",),
        tag="rooms",
    ),
    Endpoint(
        "POST",
        "/api/rooms/{room_id}/end",
        end_room,
        answer=contract.RoomEnded,
        refuses=("not_found", "forbidden"),
        tag="rooms",
    ),
]


@functools.cache
def openapi_bytes() -> bytes:
    """/openapi.json, built once."""
    return orjson.dumps(openapi.document(ENDPOINTS, STATUS_BY_CODE, max_body=MAX_BODY_BYTES))


async def openapi_document(request: Request) -> Response:
    """The OpenAPI 3.1 document of this API."""
    return Response(openapi_bytes(), media_type="application/json")


routes: list[BaseRoute] = [
    *(endpoint.route() for endpoint in ENDPOINTS),
    Route("/openapi.json", openapi_document, methods=["GET"]),
    *openapi.docs_routes(),
]
