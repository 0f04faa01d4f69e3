"""Locust load test of giftstream: viewers who sign up, buy coins, join a live room and
watch, chat and send gifts over the WebSocket, and viewers who only watch.

    locust -f load/locustfile.py --headless -u 200 -r 20 -t 60s --host http://127.0.0.1:8000

On every core, and on many machines: one master and any number of workers, each a
process of its own (`--processes -1` forks one per core):

    # the machine that reports:
    locust -f load/locustfile.py --master --headless -u 20000 -r 500 -t 5m \\
        --expect-workers 8 --host http://server:8000
    # each load machine, one worker per core:
    locust -f load/locustfile.py --worker --processes -1 --master-host MASTER_IP

Rooms are opened once, by the master (or the only process), `--gs-rooms` of them unless
`--gs-room-ids` names existing ones, and handed to the workers with the test's start;
the master ends the ones it opened. Each viewer picks one by Zipf popularity
(`--gs-zipf`): a few huge rooms and a long tail of small ones.

The giftstream options (Locust prints `--help` before it loads a locustfile, locust
issue #2917, so they are listed here and in `python -m load.locustfile --help`; each is
also read from the environment variable named):

    --gs-rooms N              rooms to open at the start (GS_LOAD_ROOMS, 20)
    --gs-room-ids A,B,...     live rooms to use instead, most popular first (GS_LOAD_ROOM_IDS)
    --gs-zipf S               Zipf exponent of room popularity, 0 = even (GS_LOAD_ZIPF, 1.2)
    --gs-gift-rate R          gifts/s per gifting viewer (GS_LOAD_GIFT_RATE, 0.5)
    --gs-chat-rate R          chat lines/s per gifting viewer (GS_LOAD_CHAT_RATE, 0.05)
    --gs-anonymous-share F    share of viewers that only watch (GS_LOAD_ANONYMOUS_SHARE, 0.2)
    --gs-package ID           coin package gifting viewers buy (GS_LOAD_PACKAGE, p10000)
    --gs-timed-share F        share of viewers that time every event (GS_LOAD_TIMED_SHARE, 0.01)
    --gs-report PATH          write the run's counts and Locust's statistics here as JSON
                              at the end, from the same figures as Locust's own report

What is measured: see `load/room_socket.py` (the "WS" requests: connect, gift ack, chat,
broadcast, connection) and `load/counters.py` (every event of every viewer, checked by
seq, counted outside Locust's per-request statistics and summed over the workers).
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import gevent
from locust import FastHttpUser, User, constant, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

try:
    import giftstream_client  # noqa: F401
except ImportError:  # a checkout that is not installed: Locust put only load/ on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client_sim.gifts import COMBO_MAX_COINS, GiftInfo, GiftPicker  # noqa: E402
from giftstream_client import calls  # noqa: E402
from giftstream_client.calls import Call  # noqa: E402
from giftstream_client.errors import GiftstreamError  # noqa: E402
from giftstream_client.frames import Limits  # noqa: E402
from giftstream_client.pacing import TokenGate  # noqa: E402
from load.counters import MasterCounters, ProcessCounters  # noqa: E402
from load.popularity import RoomChooser  # noqa: E402
from load.report import stats_report  # noqa: E402
from load.room_socket import RoomSocket  # noqa: E402
from load.rooms import OpenedRooms, end_rooms, fetch_gifts, open_rooms  # noqa: E402

log = logging.getLogger("giftstream.load")
# The rooms' REST calls are few and not worth a line each in Locust's log.
logging.getLogger("httpx").setLevel(logging.WARNING)
T = TypeVar("T")

CHAT_LINES = ("hi", "wow", "so good", "gg", "hello!", "love it", "lol", "nice combo")
# Set on the master's options at the test's start: Locust hands every custom option to
# the workers with the spawn message, so this is how the rooms opened once reach them.
HANDED_ROOMS = "gs_handed_rooms"
HANDED_GIFTS = "gs_handed_gifts"
# At the end the master asks every worker to stop its users and report once more, and
# waits for them, before it ends the rooms and reports: Locust's own quit waits only
# half a second for the workers' last statistics, and a worker still closing thousands
# of sockets would lose them (and keep sending to ended rooms).
STOP_MESSAGE = "gs_stop"
STOPPED_MESSAGE = "gs_stopped"
STOP_WAIT_S = 20.0
STOPPED_WORKERS: set[str] = set()


def add_arguments(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group(
        "giftstream", "The giftstream load test's own options (each also from the variable named)"
    )

    def option(name: str, env: str, help: str, **kwargs: Any) -> None:
        group.add_argument(name, env_var=env, help=f"{help} [{env}]", **kwargs)

    option("--gs-rooms", "GS_LOAD_ROOMS", "rooms to open at the start (default 20)",
           type=int, default=20, metavar="N")
    option("--gs-room-ids", "GS_LOAD_ROOM_IDS",
           "comma-separated live rooms to use instead, most popular first",
           default="", metavar="ID,...")
    option("--gs-zipf", "GS_LOAD_ZIPF",
           "Zipf exponent of room popularity; 0 spreads viewers evenly (default 1.2)",
           type=float, default=1.2, metavar="S")
    option("--gs-gift-rate", "GS_LOAD_GIFT_RATE",
           "gifts per second per gifting viewer, paced under the server's limits (default 0.5)",
           type=float, default=0.5, metavar="R")
    option("--gs-chat-rate", "GS_LOAD_CHAT_RATE",
           "chat lines per second per gifting viewer, paced under the server's limits "
           "(default 0.05)", type=float, default=0.05, metavar="R")
    option("--gs-anonymous-share", "GS_LOAD_ANONYMOUS_SHARE",
           "share of viewers that only watch, without signing in (default 0.2)",
           type=float, default=0.2, metavar="F")
    option("--gs-package", "GS_LOAD_PACKAGE",
           "coin package each gifting viewer buys, again when it runs low (default p10000)",
           default="p10000", metavar="ID")
    option("--gs-timed-share", "GS_LOAD_TIMED_SHARE",
           "share of viewers that time every event they receive (broadcast latency); the "
           "others only check seqs (default 0.01, at least one viewer per process)",
           type=float, default=0.01, metavar="F")
    option("--gs-report", "GS_LOAD_REPORT",
           "write the run's counts and Locust's statistics here as JSON at the end",
           default="", metavar="PATH")  # fmt: skip


@dataclass
class LoadPlan:
    """What every user of this process shares. Set up by `test_start`; module-level
    because Locust users have no other shared owner."""

    chooser: RoomChooser | None = None
    picker: GiftPicker | None = None
    opened: OpenedRooms | None = None  # rooms this process opened (and ends)
    gift_rate: float = 0.5
    chat_rate: float = 0.05
    package_id: str = "p10000"
    timed_share: float = 0.01
    timed_users: int = 0
    workers: int = 0  # on a master: the workers at the end
    started_at: float = field(default_factory=time.time)


PLAN = LoadPlan()
COUNTERS = ProcessCounters()
MASTER_COUNTERS = MasterCounters()


def _on_init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    share = min(max(float(options.gs_anonymous_share), 0.0), 1.0)
    weights: dict[type[User], int] = {
        GiftingViewer: round((1 - share) * 100),
        AnonymousWatcher: round(share * 100),
    }
    for user_class, weight in weights.items():
        user_class.weight = weight
    # A class of weight 0 must not be spawned at all (Locust drops them only before this).
    environment.user_classes[:] = [c for c in environment.user_classes if weights.get(c, 1) > 0]
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        _listen(environment.events.report_to_master, _report_to_master)
        runner.register_message(STOP_MESSAGE, _stop_and_report)
    elif isinstance(runner, MasterRunner):
        _listen(environment.events.worker_report, _worker_report)
        runner.register_message(STOPPED_MESSAGE, _worker_stopped)


def _report_to_master(client_id: str, data: dict[str, Any], **_: Any) -> None:
    data["giftstream"] = COUNTERS.report()


def _worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    report = data.get("giftstream")
    if isinstance(report, dict):
        MASTER_COUNTERS.add(client_id, report)


def _on_test_start(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        log.error("giftstream: run this file with the locust command (it has options)")
        return
    PLAN.gift_rate = max(float(options.gs_gift_rate), 0.0)
    PLAN.chat_rate = max(float(options.gs_chat_rate), 0.0)
    PLAN.package_id = str(options.gs_package)
    PLAN.timed_share = min(max(float(options.gs_timed_share), 0.0), 1.0)
    PLAN.timed_users = 0
    PLAN.started_at = time.time()
    COUNTERS.reset()
    MASTER_COUNTERS.reset()
    if isinstance(environment.runner, WorkerRunner):
        # The master opened the rooms and read the catalog: they came with the spawn.
        room_ids = list(getattr(options, HANDED_ROOMS, None) or [])
        gifts = [GiftInfo(*g) for g in getattr(options, HANDED_GIFTS, None) or []]
        if not room_ids or not gifts:
            _give_up(environment, "the master handed no rooms (is it this locustfile?)")
            return
        PLAN.picker = GiftPicker(gifts)
        PLAN.chooser = RoomChooser(room_ids, s=float(options.gs_zipf))
        return
    host = (environment.host or "").rstrip("/")
    try:
        picker = GiftPicker.from_gifts(fetch_gifts(host))
        room_ids = [r.strip() for r in str(options.gs_room_ids).split(",") if r.strip()]
        if not room_ids:
            PLAN.opened = open_rooms(host, max(1, int(options.gs_rooms)))
            room_ids = PLAN.opened.room_ids
    except (GiftstreamError, ValueError) as exc:
        _give_up(environment, f"could not open the rooms at {host}: {exc}")
        return
    PLAN.picker = picker
    PLAN.chooser = RoomChooser(room_ids, s=float(options.gs_zipf))
    if not isinstance(environment.runner, MasterRunner):
        gevent.spawn(_sample_connected)  # the workers' reports do it on a master
    setattr(options, HANDED_ROOMS, room_ids)
    setattr(options, HANDED_GIFTS, [[g.gift_id, g.name, g.coins] for g in picker.gifts])
    log.info("giftstream: %d rooms, Zipf s=%s", len(room_ids), options.gs_zipf)


def _sample_connected() -> None:
    """Now and then, how many viewers are connected (for the peak), until the run ends."""
    while PLAN.chooser is not None:
        COUNTERS.totals()
        gevent.sleep(2.0)


def _give_up(environment: Environment, why: str) -> None:
    log.error("giftstream: %s", why)
    environment.process_exit_code = 2
    if environment.runner is not None:
        # Nothing to load: end the run now rather than idle until its time limit.
        gevent.spawn_later(0.1, environment.runner.quit)


def _stop_and_report(environment: Environment, msg: Any, **_: Any) -> None:
    """On a worker, when the master asks: stop the users, report, say so."""
    runner = environment.runner
    assert isinstance(runner, WorkerRunner)
    runner.stop()
    runner._send_stats()  # the report with what the stopping users still counted
    runner.send_message(STOPPED_MESSAGE, {"worker": runner.client_id})


def _worker_stopped(environment: Environment, msg: Any, **_: Any) -> None:
    STOPPED_WORKERS.add(str(msg.data.get("worker")))


def _stop_workers(runner: MasterRunner) -> None:
    """Ask every worker to stop and report; wait for them (bounded)."""
    STOPPED_WORKERS.clear()
    expected = {worker.id for worker in runner.clients.all}
    PLAN.workers = len(expected)
    runner.send_message(STOP_MESSAGE)
    deadline = time.monotonic() + STOP_WAIT_S
    while not expected <= STOPPED_WORKERS and time.monotonic() < deadline:
        gevent.sleep(0.1)
    missing = expected - STOPPED_WORKERS
    if missing:
        log.error("giftstream: %d worker(s) did not report their end in time", len(missing))


def _on_test_stop(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        _stop_workers(environment.runner)
    COUNTERS.totals()
    PLAN.chooser = None
    opened, PLAN.opened = PLAN.opened, None
    if opened is not None:
        end_rooms((environment.host or "").rstrip("/"), opened)


def _on_quitting(environment: Environment, **_: Any) -> None:
    """The run's report, from the same statistics Locust's own report shows."""
    options = environment.parsed_options
    runner = environment.runner
    if options is None or not options.gs_report or runner is None:
        return
    if isinstance(runner, WorkerRunner):
        return
    counts = MASTER_COUNTERS.counts if isinstance(runner, MasterRunner) else COUNTERS.totals()
    report = {
        **stats_report(runner.stats),
        "viewers": counts.as_dict(),
        "workers": PLAN.workers,
        "workers_reported_end": len(STOPPED_WORKERS),
        "timed_share": PLAN.timed_share,
    }
    path = Path(options.gs_report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")


def _listen(hook: Any, handler: Callable[..., None]) -> None:
    """`hook.add_listener(handler)` (Locust's hooks are not annotated)."""
    hook.add_listener(handler)


_listen(events.init_command_line_parser, add_arguments)
_listen(events.init, _on_init)
_listen(events.test_start, _on_test_start)
_listen(events.test_stop, _on_test_stop)
_listen(events.quitting, _on_quitting)


def _timed() -> bool:
    """Whether the next viewer times every event: a share of them, and always the first
    of each process (so every worker's deliveries are timed too)."""
    PLAN.timed_users += 1
    return PLAN.timed_users == 1 or random.random() < PLAN.timed_share


class RoomUser(User):
    """A viewer of one room: its socket's own greenlet connects, reads, and reconnects
    with `since`; the user's tasks only send."""

    abstract = True
    socket: RoomSocket
    user_id: str | None = None
    token: str | None = None

    def on_start(self) -> None:
        if PLAN.chooser is None:
            raise StopUser()  # test_start could not open the rooms (logged there)
        self.rng = random.Random()
        self.sign_in()
        host = (self.host or "").rstrip("/")
        ws_base = "ws" + host[len("http") :] if host.startswith("http") else host
        self.socket = RoomSocket(
            ws_base=ws_base,
            room_id=PLAN.chooser.choose(self.rng),
            token=self.token,
            user_id=self.user_id,
            fire=self.environment.events.request.fire,
            counters=COUNTERS,
            timed=_timed(),
            rng=self.rng,
        )
        self.socket.start()

    def sign_in(self) -> None:
        """Anonymous by default."""

    def on_stop(self) -> None:
        socket = getattr(self, "socket", None)
        if socket is not None:
            socket.close()


class GiftingViewer(RoomUser, FastHttpUser):
    """Signs up, buys coins, and chats and sends gifts (Poisson, at the planned rates;
    some gifts are combos of quick taps), paced under the limits the server's welcome
    names."""

    abstract = False
    weight = 80
    combo_share = 0.3
    combo_taps = (3, 10)
    tap_interval_s = 0.12

    def call_api(self, call: Call[T]) -> T | None:
        """One REST call of the one client, sent and timed by Locust; None if refused."""
        body = call.content()
        with self.client.request(
            call.method,
            call.url_path,
            data=body.decode() if body is not None else None,
            headers=call.headers(),
            name=call.label,
            catch_response=True,
        ) as response:
            status = response.status_code or 0
            try:
                return call.answer(status, response.content or b"")
            except GiftstreamError as exc:
                response.failure(f"{exc}" if status else f"no answer: {response.error}")
                return None

    def sign_in(self) -> None:
        account = self.call_api(calls.sign_up(f"viewer-{uuid.uuid4().hex[:8]}"))
        if account is None:
            raise StopUser()
        self.user_id, self.token = account.user_id, account.token
        self.account = account
        self.gates: tuple[Limits, TokenGate, TokenGate] | None = None
        if PLAN.gift_rate > 0:
            self.recharge()  # the welcome frame then tells the socket the balance

    def recharge(self) -> bool:
        answer = self.call_api(calls.recharge(self.account, PLAN.package_id))
        if answer is None:
            return False
        socket = getattr(self, "socket", None)
        if socket is not None:
            socket.coins = answer.coins
        return True

    def gift_actions_per_s(self) -> float:
        """Combos send several frames per action: the action rate that makes the frame
        rate `PLAN.gift_rate`."""
        frames_per_action = (1 - self.combo_share) + self.combo_share * sum(self.combo_taps) / 2
        return PLAN.gift_rate / frames_per_action

    def wait_time(self) -> float:
        """Poisson arrivals on a schedule of their own, so the time an action takes (a
        combo's taps, a top-up) does not lower the rate."""
        rate = self.gift_actions_per_s() + PLAN.chat_rate
        if rate <= 0:
            return 3600.0
        now = time.monotonic()
        scheduled = getattr(self, "_next_action_at", now)
        # Far behind (a stall): start afresh rather than catch up in a burst.
        self._next_action_at = max(scheduled, now - 1.0) + self.rng.expovariate(rate)
        return max(0.0, self._next_action_at - now)

    def _gates(self) -> tuple[TokenGate, TokenGate]:
        limits = self.socket.limits
        if self.gates is None or self.gates[0] != limits:
            self.gates = (limits, TokenGate.for_gifts(limits), TokenGate.for_chat(limits))
        return self.gates[1], self.gates[2]

    @task
    def act(self) -> None:
        socket = self.socket
        if not socket.connected:
            return
        gift_gate, chat_gate = self._gates()
        gifts = self.gift_actions_per_s()
        if self.rng.random() * (gifts + PLAN.chat_rate) >= gifts:
            self.pass_gate(chat_gate)
            socket.send_chat(self.rng.choice(CHAT_LINES))
            return
        assert PLAN.picker is not None
        if socket.coins < 100 and not self.recharge():
            return
        gift = PLAN.picker.pick(self.rng, socket.coins)
        if gift is None:
            return
        taps = 1
        if gift.coins <= COMBO_MAX_COINS and self.rng.random() < self.combo_share:
            taps = self.rng.randint(*self.combo_taps)
        for tap in range(taps):
            if socket.coins < gift.coins:
                return
            if tap:
                gevent.sleep(self.tap_interval_s)
            self.pass_gate(gift_gate)
            if not socket.send_gift(gift.gift_id, 1, gift.coins):
                return

    @staticmethod
    def pass_gate(gate: TokenGate) -> None:
        while (delay := gate.delay()) > 0:
            gevent.sleep(delay)


class AnonymousWatcher(RoomUser):
    """Watches without signing in: receives everything, sends nothing. Its socket's
    greenlet does all the work; the user only idles."""

    weight = 20
    wait_time = constant(30)

    @task
    def watch(self) -> None:
        """Nothing to do: the socket reads, checks and reconnects by itself."""


def main(argv: list[str] | None = None) -> int:
    """`python -m load.locustfile --help`: Locust's help with the giftstream options."""
    from locust.argument_parser import get_parser

    get_parser().parse_args(["--help"] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
