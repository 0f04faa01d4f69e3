"""Wiring only: routes, lifespan, error handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from server import api, metrics, ws
from server.direct import DirectWrites
from server.errors import Internal, Refusal, Unavailable
from server.http_limits import BodyLimit
from server.hub import RoomHub
from server.lifecycle import LIFECYCLE_STATE, Lifecycle
from server.room_commands import RoomCommands, run_gift_steps
from server.services import Services
from server.settings import Settings
from server.store.cancellation import reraise_lost_cancellation
from server.store.connection import STORE_ERRORS

log = logging.getLogger(__name__)


async def _payout_processor(svc: Services) -> None:
    """The simulated payout processor: finishes due cash-outs every half second. An
    outage is logged when it starts and when it ends, not every round."""
    failing = False
    while True:
        try:
            await svc.wallets.finish_due_cashouts()
        except Exception as exc:  # noqa: BLE001 - outlives Redis outages
            if not failing:
                log.warning("payout rounds failing (%s); retrying every 0.5 s", exc)
            failing = True
        else:
            if failing:
                log.info("payout rounds work again")
            failing = False
        reraise_lost_cancellation()
        await asyncio.sleep(0.5)


async def _record_build_info(svc: Services) -> None:
    """`giftstream_build_info`, with the Redis server's name and version once it answers."""
    try:
        version = metadata.version("giftstream")
    except metadata.PackageNotFoundError:
        version = "unknown"
    while True:
        try:
            info: Mapping[str, Any] = await svc.redis.info("server")
        except Exception:  # noqa: BLE001 - Redis away: try again
            reraise_lost_cancellation()
            await asyncio.sleep(5)
            continue
        # A cluster client answers per node: any node says what the servers are.
        if info and all(isinstance(v, dict) for v in info.values()):
            info = next(iter(info.values()))
        name = "valkey" if "valkey_version" in info else "redis"
        found = info.get("valkey_version") or info.get("redis_version") or "unknown"
        metrics.set_build_info(version=version, redis=f"{name} {found}")
        return


async def _stop(tasks: Sequence[asyncio.Task[None]], *, timeout_s: float = 5.0) -> None:
    """Cancel `tasks` and wait for them to end. redis-py can lose a cancel that lands
    while it writes (see `store.cancellation`): a task still running is cancelled again,
    until `timeout_s`; one that never ends is logged and left."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = {t for t in tasks if not t.done()}
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)
    for task in pending:
        log.error("shutdown: task %s did not stop", task.get_name())
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("task %s had failed", task.get_name(), exc_info=task.exception())


async def readyz(request: Request) -> Response:
    """Readiness: 200 while this process can serve (Redis answers and it is not
    draining), else 503 with why; `/healthz` is liveness."""
    lifecycle: Lifecycle = request.app.state.lifecycle
    svc: Services = request.app.state.services
    if lifecycle.draining:
        return JSONResponse(
            {"code": "unavailable", "message": "draining: this process is stopping"},
            status_code=503,
        )
    try:
        async with asyncio.timeout(2.0):
            redis_up = bool(await svc.redis.ping())
    except Exception:  # noqa: BLE001 - any failure to answer is "not ready"
        redis_up = False
    if not redis_up:
        return JSONResponse(
            {"code": "unavailable", "message": "redis does not answer"}, status_code=503
        )
    return JSONResponse({"status": "ready"})


STATIC_DIR = Path(__file__).parent / "static"


def static_routes() -> list[BaseRoute]:
    """The browser page: `/` is the lobby, `/static/…` its files (no build step)."""

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    return [Route("/", index), Mount("/static", StaticFiles(directory=STATIC_DIR), name="static")]


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        svc = Services.build(settings)
        # A durability level this Redis cannot give (no WAITAOF, AOF off) is refused at
        # start, not found out gift by gift.
        problems = await svc.durability.problems()
        if problems:
            await svc.close()
            level = settings.ack_durability
            message = f"GS_ACK_DURABILITY={level} cannot work here: " + "; ".join(problems)
            log.error("%s", message)
            raise RuntimeError(message)
        app.state.services = svc
        hub = RoomHub(
            rooms=svc.rooms, client=svc.redis, settings=settings, process_id=svc.process_id
        )
        app.state.hub = hub
        commands = RoomCommands(
            steps=svc.gifts,
            rooms=svc.rooms,
            settings=settings,
            is_live=hub.is_live,
            durability=svc.durability,
        )
        app.state.commands = commands
        lifecycle = Lifecycle()
        app.state.lifecycle = lifecycle
        tasks = [
            asyncio.create_task(run_gift_steps(commands), name="gift-steps"),
            asyncio.create_task(_payout_processor(svc), name="payout-processor"),
            asyncio.create_task(hub.run(), name="room-hub"),
            asyncio.create_task(svc.sockets.run(), name="user-sockets"),
            asyncio.create_task(_record_build_info(svc), name="build-info"),
        ]
        try:
            # The state is how the server (server.serving) finds the lifecycle to drain.
            yield {LIFECYCLE_STATE: lifecycle}
        finally:
            lifecycle.draining = True
            # Gifts debited and acked finish their steps before the process goes (what
            # does not finish in time stays pending, for a sweeper).
            if not await commands.finisher.drain(timeout_s=settings.drain_gift_steps_s):
                log.warning("shutdown: gift steps still running; a sweeper will finish them")
            await _stop(tasks)
            await svc.close()

    async def on_refusal(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refusal)
        return api.refusal_response(exc)

    async def on_redis_down(request: Request, exc: Exception) -> Response:
        metrics.REDIS_ERRORS.inc()
        log.warning("redis unavailable: %s", exc)
        return api.refusal_response(Unavailable("the store is unavailable; try again shortly"))

    async def on_client_gone(request: Request, exc: Exception) -> Response:
        # Counted and logged where it is seen (server.http_limits); no one to answer.
        return Response(status_code=400)

    async def on_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error", exc_info=exc)
        return api.refusal_response(Internal("internal error"))

    routes = [*api.routes, Route("/readyz", readyz), *ws.routes, *static_routes()]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            # First: room sockets are served from here and never enter the others (each
            # would keep a suspended frame per socket for the connection's life); it must
            # also see uvicorn's own `send`. Their close codes are counted by the protocol
            # (server.serving).
            Middleware(
                DirectWrites,
                routes=ws.routes,
                sndbuf_bytes=settings.socket_sndbuf_bytes,
                stall_s=settings.stalled_reader_s,
            ),
            # Before BodyLimit, so its refusals (413) are counted too.
            Middleware(metrics.RequestMetrics, routes=routes),
            Middleware(BodyLimit, max_bytes=api.MAX_BODY_BYTES),
        ],
        exception_handlers={
            Refusal: on_refusal,
            HTTPException: api.http_error,
            ClientDisconnect: on_client_gone,
            **dict.fromkeys(STORE_ERRORS, on_redis_down),
            Exception: on_error,
        },
    )
