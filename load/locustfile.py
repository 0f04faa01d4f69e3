"""Locust load test of giftstream: viewers who sign up, buy coins, join a live room and
watch, chat and send gifts over the WebSocket, and anonymous watchers.

    locust -f load/locustfile.py --headless -u 200 -r 20 -t 60s --host http://127.0.0.1:8000

Rooms are opened up front (`test_start`) by creator users, `--gs-rooms` of them, unless
`--gs-room-ids` names existing ones; each viewer picks one by Zipf popularity
(`--gs-zipf`): a few huge rooms and a long tail of small ones. The options below are
also read from the environment (the names in brackets in `locust --help`).

What is measured (request_type "WS", see `load/room_socket.py`): "connect", "gift ack",
"chat", "broadcast" (a gift's send to each viewer's receipt of its event) and
"connection" (closes by the server). Broadcast latency is measured only for gifts sent
by users of this Locust process (their send times are here), so run it without
workers, or accept that each worker times its own senders' gifts.
"""

from __future__ import annotations

import logging
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import requests
from locust import HttpUser, User, constant, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner

try:
    import client_sim  # noqa: F401
except ImportError:  # a checkout that is not installed: Locust put only load/ on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client_sim.broadcast import BroadcastTimer  # noqa: E402
from client_sim.gifts import COMBO_MAX_COINS, GiftPicker  # noqa: E402
from client_sim.pacing import (  # noqa: E402
    CHAT_BURST,
    CHAT_RATE_PER_S,
    GIFT_BURST,
    GIFT_RATE_PER_S,
    TokenGate,
)
from giftstream_client.calls import ADULT_BIRTHDATE, APPROVED_CARD  # noqa: E402
from load.popularity import RoomChooser  # noqa: E402
from load.room_socket import RoomSocket  # noqa: E402

log = logging.getLogger("giftstream.load")

CHAT_LINES = ("hi", "wow", "so good", "gg", "hello!", "love it", "lol", "nice combo")


@events.init_command_line_parser.add_listener
def _arguments(parser: Any, **_: Any) -> None:
    group = parser.add_argument_group("giftstream")
    group.add_argument(
        "--gs-rooms",
        type=int,
        default=20,
        env_var="GS_LOAD_ROOMS",
        help="rooms to open at the start (default 20)",
    )
    group.add_argument(
        "--gs-room-ids",
        default="",
        env_var="GS_LOAD_ROOM_IDS",
        help="comma-separated live rooms to use instead, most popular first",
    )
    group.add_argument(
        "--gs-zipf",
        type=float,
        default=1.2,
        env_var="GS_LOAD_ZIPF",
        help="Zipf exponent of room popularity; 0 spreads viewers evenly (default 1.2)",
    )
    group.add_argument(
        "--gs-gift-rate",
        type=float,
        default=0.5,
        env_var="GS_LOAD_GIFT_RATE",
        help="gifts per second per gifting viewer (default 0.5, at most 18)",
    )
    group.add_argument(
        "--gs-chat-rate",
        type=float,
        default=0.05,
        env_var="GS_LOAD_CHAT_RATE",
        help="chat lines per second per gifting viewer (default 0.05, at most 1.8)",
    )
    group.add_argument(
        "--gs-anonymous-share",
        type=float,
        default=0.2,
        env_var="GS_LOAD_ANONYMOUS_SHARE",
        help="share of users that only watch, without signing in (default 0.2)",
    )
    group.add_argument(
        "--gs-package",
        default="p10000",
        env_var="GS_LOAD_PACKAGE",
        help="coin package each gifting viewer buys, again when it runs low (default p10000)",
    )
    group.add_argument(
        "--gs-broadcast-sample",
        type=int,
        default=1,
        env_var="GS_LOAD_BROADCAST_SAMPLE",
        help="report the broadcast latency of one gift event in N (default 1: every one)",
    )


@dataclass
class LoadPlan:
    """What every user of this process shares: the rooms, the catalog, the options, and
    the broadcast timer (it matches one user's sends to every user's receipts). Set up
    by `test_start`; module-level because Locust users have no other shared owner."""

    chooser: RoomChooser | None = None
    picker: GiftPicker | None = None
    creators: list[tuple[str, str]] = field(default_factory=list)  # (room_id, token)
    timer: BroadcastTimer = field(default_factory=BroadcastTimer)
    gift_rate: float = 0.5
    chat_rate: float = 0.05
    package_id: str = "p10000"
    broadcast_sample: int = 1


PLAN = LoadPlan()


@events.init.add_listener
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


@events.test_start.add_listener
def _open_rooms(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        return  # the workers open their own
    options = environment.parsed_options
    if options is None:
        log.error("giftstream: run this file with the locust command (it has options)")
        return
    host = (environment.host or "").rstrip("/")
    PLAN.gift_rate = min(max(float(options.gs_gift_rate), 0.0), GIFT_RATE_PER_S * 0.9)
    PLAN.chat_rate = min(max(float(options.gs_chat_rate), 0.0), CHAT_RATE_PER_S * 0.9)
    PLAN.package_id = str(options.gs_package)
    PLAN.broadcast_sample = max(1, int(options.gs_broadcast_sample))
    try:
        with requests.Session() as http:
            PLAN.picker = GiftPicker.from_catalog(_ok(http.get(f"{host}/api/gifts", timeout=10)))
            room_ids = [r for r in str(options.gs_room_ids).split(",") if r.strip()]
            if not room_ids:
                for i in range(max(1, int(options.gs_rooms))):
                    creator = _ok(
                        http.post(
                            f"{host}/api/users",
                            json={
                                "name": f"Creator {i + 1}",
                                "birthdate": ADULT_BIRTHDATE,
                                "region": "US",
                            },
                            timeout=10,
                        )
                    )
                    room = _ok(
                        http.post(
                            f"{host}/api/rooms",
                            json={"title": f"Load room {i + 1}"},
                            headers={"Authorization": f"Bearer {creator['token']}"},
                            timeout=10,
                        )
                    )
                    PLAN.creators.append((room["room_id"], creator["token"]))
                room_ids = [room_id for room_id, _ in PLAN.creators]
    except (requests.RequestException, ValueError, KeyError) as exc:
        log.error("giftstream: could not open the rooms at %s: %s", host, exc)
        environment.process_exit_code = 2
        if environment.runner is not None:
            # Nothing to load: end the run now rather than idle until its time limit.
            gevent.spawn_later(0.1, environment.runner.quit)
        return
    PLAN.chooser = RoomChooser(room_ids, s=float(options.gs_zipf))
    log.info("giftstream: %d rooms, Zipf s=%s", len(room_ids), options.gs_zipf)


@events.test_stop.add_listener
def _end_rooms(environment: Environment, **_: Any) -> None:
    host = (environment.host or "").rstrip("/")
    with requests.Session() as http:
        for room_id, token in PLAN.creators:
            try:
                http.post(
                    f"{host}/api/rooms/{room_id}/end",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=10,
                )
            except requests.RequestException:
                pass
    PLAN.creators.clear()


def _ok(response: requests.Response) -> dict[str, Any]:
    if response.status_code >= 300:
        raise ValueError(
            f"{response.request.method} {response.url}: {response.status_code} "
            f"{response.text[:200]}"
        )
    body: dict[str, Any] = response.json()
    return body


class RoomUser(HttpUser):
    """A viewer of one room: joins in `on_start`, reconnects with `since` whenever the
    server closed its socket, leaves in `on_stop`."""

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
            timer=PLAN.timer,
            fire=self.environment.events.request.fire,
            broadcast_sample=PLAN.broadcast_sample,
        )
        self.socket.open()

    def sign_in(self) -> None:
        """Anonymous by default."""

    def on_stop(self) -> None:
        socket = getattr(self, "socket", None)
        if socket is not None:
            socket.close()

    def ensure_connected(self) -> bool:
        """Reconnect (with `since`) after a close by the server; False while it fails."""
        if self.socket.ended:
            return False
        if not self.socket.alive:
            self.socket.close()
            self.socket.open()
        return self.socket.alive


class GiftingViewer(RoomUser):
    """Signs up, buys coins, and chats and sends gifts (Poisson, at the planned rates;
    some gifts are combos of quick taps), always under the per-connection limits."""

    weight = 80
    combo_share = 0.3
    combo_taps = (3, 10)
    tap_interval_s = 0.12

    def sign_in(self) -> None:
        name = f"viewer-{uuid.uuid4().hex[:8]}"
        with self.client.post(
            "/api/users",
            json={"name": name, "birthdate": ADULT_BIRTHDATE, "region": "US"},
            name="POST /api/users",
            catch_response=True,
        ) as response:
            if response.status_code != 201:
                response.failure(f"sign-up: {response.status_code} {response.text[:100]}")
                raise StopUser()
            body = response.json()
        self.user_id, self.token = str(body["user_id"]), str(body["token"])
        self.gift_gate = TokenGate.under(GIFT_RATE_PER_S, GIFT_BURST)
        self.chat_gate = TokenGate.under(CHAT_RATE_PER_S, CHAT_BURST)
        if PLAN.gift_rate > 0:
            self.recharge()  # the welcome frame then tells the socket the balance

    def recharge(self) -> bool:
        with self.client.post(
            "/api/wallet/recharge",
            json={
                "package_id": PLAN.package_id,
                "card_number": APPROVED_CARD,
                "idempotency_key": uuid.uuid4().hex,
            },
            headers={"Authorization": f"Bearer {self.token}"},
            name="POST /api/wallet/recharge",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"recharge: {response.status_code} {response.text[:100]}")
                return False
            balance = int(response.json()["coins"])
        socket = getattr(self, "socket", None)
        if socket is not None:
            socket.coins = balance
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

    @task
    def act(self) -> None:
        if not self.ensure_connected():
            return
        gifts = self.gift_actions_per_s()
        if self.rng.random() * (gifts + PLAN.chat_rate) >= gifts:
            self.pass_gate(self.chat_gate)
            self.socket.send_chat(self.rng.choice(CHAT_LINES))
            return
        assert PLAN.picker is not None
        if self.socket.coins < 100 and not self.recharge():
            return
        gift = PLAN.picker.pick(self.rng, self.socket.coins)
        if gift is None:
            return
        taps = 1
        if gift.coins <= COMBO_MAX_COINS and self.rng.random() < self.combo_share:
            taps = self.rng.randint(*self.combo_taps)
        for tap in range(taps):
            if self.socket.coins < gift.coins:
                return
            if tap:
                gevent.sleep(self.tap_interval_s)
            self.pass_gate(self.gift_gate)
            self.socket.send_gift(gift.gift_id, 1, gift.coins)

    @staticmethod
    def pass_gate(gate: TokenGate) -> None:
        while (delay := gate.delay()) > 0:
            gevent.sleep(delay)


class AnonymousWatcher(RoomUser):
    """Watches without signing in: receives everything, sends nothing."""

    weight = 20
    wait_time = constant(1)

    @task
    def watch(self) -> None:
        self.ensure_connected()
