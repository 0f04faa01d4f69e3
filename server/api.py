"""REST endpoints (DESIGN section 4). Refusals become `{code, message}` bodies here, and
only here (`refusal_response`), with the HTTP status each `Refusal` carries."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server import economy, metrics
from server.auth import issue_token, user_from_token
from server.errors import BadRequest, Refusal, Suspended, Unauthorized, Underage
from server.services import Services
from server.store.wallets import Profile, check_idempotency_key

MAX_BODY_BYTES = 16 * 1024
MAX_TITLE_LENGTH = 100
MAX_PAGE = 100


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def refusal_response(exc: Refusal) -> JSONResponse:
    """A refusal as its `{code, message}` body with its own HTTP status."""
    return JSONResponse({"code": exc.code, "message": exc.message}, status_code=exc.status)


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


async def read_json(
    request: Request, *, required: set[str], optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The body as a JSON object with exactly the `required` fields (and maybe `optional`)."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    missing = required - body.keys()
    if missing:
        raise BadRequest(f"missing field(s): {', '.join(sorted(missing))}")
    extra = body.keys() - required - optional
    if extra:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(extra))}")
    return body


def string_field(body: dict[str, Any], name: str, *, max_length: int = 200) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    if len(value) > max_length:
        raise BadRequest(f"{name} is longer than {max_length} characters")
    return value


def int_field(body: dict[str, Any], name: str, *, minimum: int, maximum: int) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"{name} must be a whole number")
    if not minimum <= value <= maximum:
        raise BadRequest(f"{name} must be from {minimum} to {maximum}")
    return value


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


# --- users ---------------------------------------------------------------------


async def sign_up(request: Request) -> Response:
    svc = services(request)
    body = await read_json(request, required={"name", "birthdate", "region"})
    name = economy.validate_name(string_field(body, "name"))
    born = economy.parse_birthdate(string_field(body, "birthdate", max_length=10), today=today())
    region = economy.validate_region(string_field(body, "region", max_length=2), svc.catalog)
    user_id = await svc.wallets.create_user(name=name, born=born, region=region)
    token = issue_token(user_id, secret=svc.settings.token_secret, ttl_s=svc.settings.token_ttl_s)
    return JSONResponse({"user_id": user_id, "token": token}, status_code=201)


async def me(request: Request) -> Response:
    svc = services(request)
    user = await current_user(request)
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


async def verify_identity(request: Request) -> Response:
    svc = services(request)
    user = await current_user(request)
    body = await read_json(request, required={"legal_name", "id_number"})
    legal_name = string_field(body, "legal_name").strip()
    id_number = string_field(body, "id_number", max_length=40).strip()
    if not legal_name or not id_number:
        raise BadRequest("legal_name and id_number must not be empty")
    if economy.age_on(user.born, today()) < economy.ADULT_AGE:
        raise Underage("identity verification needs an account aged 18 or over")
    await svc.wallets.verify_identity(user.user_id, legal_name=legal_name, id_number=id_number)
    return JSONResponse({"verified": True})


async def set_payout_method(request: Request) -> Response:
    svc = services(request)
    user = await current_user(request)
    body = await read_json(
        request,
        required={"type"},
        optional=frozenset({"account_number", "routing_number", "email"}),
    )
    method = economy.validate_payout_method(body)
    await svc.wallets.set_payout_method(user.user_id, method)
    return JSONResponse({"payout_method": economy.mask_payout_method(method)})


# --- catalog and wallet ------------------------------------------------------------


async def gifts(request: Request) -> Response:
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
    catalog = services(request).catalog
    return JSONResponse(
        {
            "packages": [
                {"id": p.id, "coins": p.coins, "price_cents": p.price_cents}
                for p in sorted(catalog.packages.values(), key=lambda p: p.coins)
            ]
        }
    )


async def wallet(request: Request) -> Response:
    svc = services(request)
    user = await current_user(request)
    return JSONResponse(await svc.wallets.wallet(user.user_id))


async def recharge(request: Request) -> Response:
    svc = services(request)
    user = await current_user(request)
    body = await read_json(request, required={"package_id", "card_number", "idempotency_key"})
    key = check_idempotency_key(body["idempotency_key"])
    package = svc.catalog.package(string_field(body, "package_id", max_length=40))
    card = economy.normalize_card(string_field(body, "card_number", max_length=40))
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


async def transactions(request: Request) -> Response:
    svc = services(request)
    user = await current_user(request)
    raw_limit = request.query_params.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise BadRequest(f"limit must be 1 to {MAX_PAGE}")
    before = request.query_params.get("before") or None
    entries, next_before = await svc.wallets.transactions(
        user.user_id, limit=int(raw_limit), before=before
    )
    return JSONResponse({"transactions": entries, "next_before": next_before})


async def spending_limit(request: Request) -> Response:
    svc = services(request)
    user = await current_user(request)
    body = await read_json(request, required={"period", "coins"})
    period, coins = economy.validate_spending_limit(body["period"], body["coins"])
    await svc.wallets.set_spending_limit(user.user_id, period, coins)
    return JSONResponse(
        {"spending_limit": None if coins is None else {"period": period, "coins": coins}}
    )


async def request_cashout(request: Request) -> Response:
    svc = services(request)
    user = await current_user(request)
    body = await read_json(request, required={"diamonds", "idempotency_key"})
    key = check_idempotency_key(body["idempotency_key"])
    diamonds = int_field(body, "diamonds", minimum=1, maximum=10**12)
    economy.check_cashout_allowed(
        born=user.born, today=today(), diamonds=diamonds, minimum=svc.settings.cashout_min_diamonds
    )
    answer = await svc.wallets.request_cashout(user.user_id, diamonds=diamonds, idempotency_key=key)
    if not answer["replayed"]:
        metrics.DIAMONDS_CASHED_OUT.inc(diamonds)
    return JSONResponse(answer, status_code=202)


async def cashout(request: Request) -> Response:
    svc = services(request)
    user = await current_user(request)
    return JSONResponse(await svc.wallets.cashout(user.user_id, request.path_params["cashout_id"]))


# --- rooms ------------------------------------------------------------------------


async def create_room(request: Request) -> Response:
    svc = services(request)
    user = await current_user(request)
    if user.status != "active":
        raise Suspended("this account is suspended")
    body = await read_json(request, required={"title"})
    title = string_field(body, "title", max_length=MAX_TITLE_LENGTH).strip()
    if not title:
        raise BadRequest("title must not be empty")
    room_id = await svc.rooms.create(creator_id=user.user_id, creator_name=user.name, title=title)
    return JSONResponse({"room_id": room_id}, status_code=201)


async def list_rooms(request: Request) -> Response:
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


async def end_room(request: Request) -> Response:
    svc = services(request)
    user = await current_user(request)
    room_id = request.path_params["room_id"]
    await svc.rooms.end(room_id, user_id=user.user_id)
    return JSONResponse({"room_id": room_id, "status": "ended"})


async def healthz(request: Request) -> Response:
    svc = services(request)
    try:
        redis_ok = bool(await svc.redis.ping())
    except Exception:  # noqa: BLE001 - liveness answers even when Redis is away
        redis_ok = False
    return JSONResponse({"status": "ok", "redis": "up" if redis_ok else "down"})


async def prometheus_metrics(request: Request) -> Response:
    svc = services(request)
    try:
        metrics.ROOMS_LIVE.set(await svc.rooms.live_room_count())
    except Exception:  # noqa: BLE001 - the process metrics are worth serving without Redis
        metrics.REDIS_ERRORS.inc()
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


routes = [
    Route("/healthz", healthz),
    Route("/metrics", prometheus_metrics),
    Route("/api/users", sign_up, methods=["POST"]),
    Route("/api/me", me),
    Route("/api/me/verification", verify_identity, methods=["PUT"]),
    Route("/api/me/payout-method", set_payout_method, methods=["PUT"]),
    Route("/api/gifts", gifts),
    Route("/api/coin-packages", coin_packages),
    Route("/api/wallet", wallet),
    Route("/api/wallet/recharge", recharge, methods=["POST"]),
    Route("/api/wallet/transactions", transactions),
    Route("/api/wallet/spending-limit", spending_limit, methods=["PUT"]),
    Route("/api/wallet/cashouts", request_cashout, methods=["POST"]),
    Route("/api/wallet/cashouts/{cashout_id}", cashout),
    Route("/api/rooms", create_room, methods=["POST"]),
    Route("/api/rooms", list_rooms, methods=["GET"]),
    Route("/api/rooms/{room_id}", get_room),
    Route("/api/rooms/{room_id}/end", end_room, methods=["POST"]),
]
