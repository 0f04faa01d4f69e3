"""Wiring only: routes, lifespan, error handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from server import api, metrics, ws
from server.direct import DirectWrites
from server.errors import Internal, Refusal, Unavailable
from server.http_limits import BodyLimit
from server.hub import RoomHub
from server.room_commands import RoomCommands, run_gift_steps
from server.services import Services
from server.settings import Settings
from server.store.connection import STORE_ERRORS

log = logging.getLogger(__name__)


async def _payout_processor(svc: Services) -> None:
    """The simulated payout processor: finishes due cash-outs every half second."""
    while True:
        try:
            await svc.wallets.finish_due_cashouts()
        except Exception as exc:  # noqa: BLE001 - outlives Redis outages
            log.warning("payout round failed: %s", exc)
        await asyncio.sleep(0.5)


STATIC_DIR = Path(__file__).parent / "static"


def static_routes() -> list[BaseRoute]:
    """The browser page: `/` is the lobby, `/static/…` its files (no build step)."""

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    return [Route("/", index), Mount("/static", StaticFiles(directory=STATIC_DIR), name="static")]


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
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
        tasks = [
            asyncio.create_task(run_gift_steps(commands), name="gift-steps"),
            asyncio.create_task(_payout_processor(svc), name="payout-processor"),
            asyncio.create_task(hub.run(), name="room-hub"),
            asyncio.create_task(svc.sockets.run(), name="user-sockets"),
        ]
        try:
            yield
        finally:
            # Gifts debited and acked finish their steps before the process goes (what
            # does not finish in time stays pending, for a sweeper).
            if not await commands.finisher.drain(timeout_s=settings.drain_gift_steps_s):
                log.warning("shutdown: gift steps still running; a sweeper will finish them")
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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

    return Starlette(
        routes=[*api.routes, *ws.routes, *static_routes()],
        lifespan=lifespan,
        middleware=[
            # First: room sockets are served from here and never enter the others (each
            # would keep a suspended frame per socket for the connection's life).
            Middleware(
                DirectWrites,
                routes=ws.routes,
                sndbuf_bytes=settings.socket_sndbuf_bytes,
                stall_s=settings.stalled_reader_s,
            ),
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
