"""Serving on a socket `python -m server` has bound: one uvicorn server in this process,
or `Supervisor` with several worker processes sharing the socket.

Stopping (SIGTERM, SIGHUP, Ctrl-C) goes in this order: `/readyz` answers 503, the
listening socket closes (no new connections), the WebSockets are closed with 1012 in
batches spread over `drain_s` so their clients reconnect elsewhere spread out (at once
for Ctrl-C, which asks to stop now), uvicorn gives what is still in flight
`shutdown_timeout_s` to finish, and the app's lifespan ends (gift steps, Redis). A second
Ctrl-C skips the waits. A process that stopped this way exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import os
import random
import signal
import socket
import time
from collections.abc import Callable, Generator, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn
from websockets.exceptions import InvalidState
from websockets.server import ServerProtocol

from server import logs, metrics
from server.direct import RoomSocketProtocol
from server.lifecycle import LIFECYCLE_STATE, Lifecycle

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# uvicorn's exit code for a worker whose startup failed (the lifespan raised).
STARTUP_FAILURE = 3
_DRAIN_STEP_S = 0.1


class WebSocketProtocol(RoomSocketProtocol):
    """The room sockets' protocol (`server.direct`, uvicorn's `websockets-sansio` made
    leaner), with a `shutdown` (close 1012) that may be called more than once (by the
    drain, then by uvicorn's own shutdown for what is still closing, and after the app
    began a close), and each connection's close code counted once it is gone
    (`giftstream_websocket_closes`: the code whoever closed first sent, 1006 for none)."""

    _shutting_down = False

    def shutdown(self) -> None:
        if self._shutting_down:
            return
        self._shutting_down = True
        try:
            super().shutdown()
        except InvalidState:  # a close is already under way: only the socket is left
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handshake_complete:
            metrics.WEBSOCKET_CLOSES.labels(code=str(_close_code(self.conn))).inc()
        super().connection_lost(exc)


def _close_code(conn: ServerProtocol) -> int:
    sent, received = conn.close_sent, conn.close_rcvd
    if sent is not None and (received is None or not conn.close_rcvd_then_sent):
        return sent.code
    if received is not None:
        return received.code
    return 1006


class GiftstreamServer(uvicorn.Server):
    """uvicorn's server with giftstream's stop: SIGHUP stops too, the WebSockets are
    drained in staggered batches, and the signal is not raised again once stopped (so
    the process exits 0). `on_started` runs once it serves."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        drain_s: float,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.drain_s = drain_s
        self.on_started = on_started
        self.stop_signal: int | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.stop_signal is None:
            self.stop_signal = sig
            self.should_exit = True
        elif sig == signal.SIGINT:
            # A second Ctrl-C: stop now. (A repeated SIGTERM, as from a supervisor and a
            # process-group kill at once, changes nothing.)
            self.force_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit and self.on_started is not None:
            self.on_started()

    def _lifecycle(self) -> Lifecycle | None:
        lifespan = getattr(self, "lifespan", None)
        state: dict[str, Any] = getattr(lifespan, "state", {})
        found = state.get(LIFECYCLE_STATE)
        return found if isinstance(found, Lifecycle) else None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        lifecycle = self._lifecycle()
        if lifecycle is not None:
            lifecycle.draining = True
        for server in getattr(self, "servers", []):
            server.close()
        spread = 0.0 if self.stop_signal == signal.SIGINT else self.drain_s
        await self._close_websockets(spread)
        await super().shutdown(sockets=sockets)

    async def _close_websockets(self, spread_s: float) -> None:
        """Close every WebSocket with 1012 (service restart): in batches every 100 ms
        spread over `spread_s`, in random order so each room's viewers come back spread
        out; all at once after a second Ctrl-C."""
        protocol = self.config.ws_protocol_class
        if protocol is None:
            return
        sockets = [c for c in self.server_state.connections if isinstance(c, protocol)]
        if not sockets:
            return
        random.shuffle(sockets)
        steps = max(1, int(spread_s / _DRAIN_STEP_S))
        batch = math.ceil(len(sockets) / steps)
        log.info("draining: closing %d websockets (1012) over up to %g s", len(sockets), spread_s)
        while sockets:
            if self.force_exit:
                batch = len(sockets)
            now, sockets = sockets[:batch], sockets[batch:]
            for connection in now:
                with contextlib.suppress(Exception):  # gone meanwhile: nothing to close
                    connection.shutdown()
            if sockets:
                await asyncio.sleep(_DRAIN_STEP_S)


def serve(
    config: uvicorn.Config,
    sockets: list[socket.socket],
    *,
    drain_s: float,
    on_started: Callable[[], None] | None = None,
) -> int:
    """Serve in this process until a stop signal; 0 once stopped, else uvicorn's code
    (3: the app failed to start)."""
    server = GiftstreamServer(config, drain_s=drain_s, on_started=on_started)
    try:
        server.run(sockets=sockets)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0 if server.started else STARTUP_FAILURE


def _worker(
    config: uvicorn.Config,
    sockets: list[socket.socket],
    ready: Connection,
    log_format: str,
    log_level: str,
    drain_s: float,
) -> None:  # pragma: no cover - runs in a worker process
    logs.configure(log_format=log_format, level=log_level)

    def started() -> None:
        with contextlib.suppress(OSError):
            ready.send(os.getpid())

    raise SystemExit(serve(config, sockets, drain_s=drain_s, on_started=started))


class Supervisor:
    """`workers` processes serving `sockets`. A worker that dies is reaped (its live
    metrics forgotten: `metrics.process_exited`) and replaced; a stop signal reaches
    every worker once (SIGTERM; a second Ctrl-C as SIGINT), and the workers get
    `stop_timeout_s` to finish before SIGKILL. `run` returns 0 once stopped, 1 if a
    worker could not start."""

    def __init__(
        self,
        config: uvicorn.Config,
        sockets: Sequence[socket.socket],
        *,
        workers: int,
        drain_s: float,
        stop_timeout_s: float,
        log_format: str,
        log_level: str,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._config = config
        self._sockets = list(sockets)
        self._logs = (log_format, log_level)
        self._drain_s = drain_s
        # Each worker says on its pipe when it serves (pipes need no resource tracker).
        self._pipes: dict[int, Connection] = {}
        self.workers = workers
        self.stop_timeout_s = stop_timeout_s
        self.on_ready = on_ready
        self.processes: list[BaseProcess] = []
        self._signals: list[int] = []
        self._serving: set[int] = set()
        self._reaped: set[int | None] = set()

    def _spawn(self) -> BaseProcess:
        ours, theirs = self._ctx.Pipe(duplex=False)
        args = (self._config, self._sockets, theirs, *self._logs, self._drain_s)
        process = self._ctx.Process(target=_worker, args=args, name="giftstream-worker")
        process.start()
        theirs.close()
        assert process.pid is not None
        self._pipes[process.pid] = ours
        return process

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            return self._run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals.append(sig)

    def _run(self) -> int:
        self.processes = [self._spawn() for _ in range(self.workers)]
        announced = False
        stopping_since: float | None = None
        result = 0
        while True:
            self._collect_ready()
            if not announced and len(self._serving) >= self.workers:
                announced = True
                if self.on_ready is not None:
                    self.on_ready()
            if self._signals:
                first = stopping_since is None
                sigs, self._signals = self._signals, []
                if first:
                    stopping_since = time.monotonic()
                    self._tell_all(signal.SIGTERM)
                if signal.SIGINT in sigs and (not first or sigs.count(signal.SIGINT) > 1):
                    self._tell_all(signal.SIGINT)  # a second Ctrl-C: stop now
            for i, process in enumerate(self.processes):
                if process.is_alive() or process.pid in self._reaped:
                    continue
                process.join()
                served = process.pid in self._serving
                self._reap(process)
                if stopping_since is not None:
                    continue
                if process.exitcode == STARTUP_FAILURE and not served:
                    log.error("a worker failed to start (see above): stopping")
                    result = 1
                    stopping_since = time.monotonic()
                    self._tell_all(signal.SIGTERM)
                    continue
                log.warning(
                    "worker %s exited (code %s): starting another", process.pid, process.exitcode
                )
                self.processes[i] = self._spawn()
            if stopping_since is not None:
                alive = [p for p in self.processes if p.is_alive()]
                if not alive:
                    for process in self.processes:
                        if process.pid not in self._reaped:
                            process.join()
                            self._reap(process)
                    return result
                if time.monotonic() - stopping_since > self.stop_timeout_s:
                    for process in alive:
                        log.error("worker %s did not stop in time: killing it", process.pid)
                        process.kill()
                        process.join()
                        self._reap(process)
                    return result
            time.sleep(0.1)

    def _collect_ready(self) -> None:
        for pid, pipe in list(self._pipes.items()):
            try:
                if pipe.poll():
                    pipe.recv()
                    self._serving.add(pid)
            except (OSError, EOFError):
                pass  # the worker is gone: reaped below
            else:
                continue
            pipe.close()
            del self._pipes[pid]

    def _tell_all(self, sig: signal.Signals) -> None:
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, sig)

    def _reap(self, process: BaseProcess) -> None:
        if process.pid is not None:
            metrics.process_exited(process.pid)
            self._reaped.add(process.pid)
            self._serving.discard(process.pid)
            pipe = self._pipes.pop(process.pid, None)
            if pipe is not None:
                pipe.close()
