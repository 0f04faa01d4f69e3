"""Fuzzing (issue 12), bounded: hypothesis sends REST bodies and queries and WebSocket
frames to a real server of this module's own, made of the fields the contract names
with nasty values (control characters, other scripts' digits, huge and negative numbers,
wrong types, nesting, bytes that are not UTF-8).

Properties: never a 500; every refusal is exactly `{code, message}` with the status its
code has; no wallet changes on a refused request, and a gift's coins leave the wallet
only when it is acked, once per request_id; nothing in the server's log is a traceback;
the audit holds afterwards.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from server.api import ENDPOINTS, STATUS_BY_CODE, Endpoint
from server.audit import audit
from server.services import Services
from server.store.connection import connect as connect_redis
from tests.accounts import APPROVED_CARD
from tests.live_server import LiveServer

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

NASTY_TEXT = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Co", "Zl", "Zp"]), max_size=5),
    st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=20),
    st.sampled_from(
        [
            "",
            "rose",
            "p100",
            "daily",
            "bank",
            "paypal",
            "gift",
            "chat",
            "ping",
            "1990-01-01",
            "²²²²²²²²²²²²4242",
            APPROVED_CARD,
            "110000000",
            "ann@example.com",
            "\x00",
            "a\u202eb",
            "0-0",
            "99999999999999999999-0",
            "1-1",
            "x" * 300,
        ]
    ),
)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 99, 100, 2000, 10**12, 10**12 + 1, 2**63, -1]),
    st.floats(allow_nan=False),
    st.booleans(),
)
SCALARS = st.one_of(st.none(), NUMBERS, NASTY_TEXT)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(NASTY_TEXT, inner, max_size=3)
    ),
    max_leaves=8,
)


def encode(value: Any, ascii_only: bool = True) -> bytes:
    """JSON as a client might write it: the stdlib's (numbers of any size, lone
    surrogates escaped or raw, Infinity), not orjson's (which refuses those)."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def encoded(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.builds(encode, values, st.booleans())


def field_names(kind: Any) -> set[str]:
    info = msgspec.inspect.type_info(kind)
    structs = info.types if isinstance(info, msgspec.inspect.UnionType) else (info,)
    names: set[str] = set()
    for struct in structs:
        assert isinstance(struct, msgspec.inspect.StructType)
        names |= {f.encode_name for f in struct.fields}
        if struct.tag_field:
            names.add(struct.tag_field)
    return names


BODY_ENDPOINTS = [e for e in ENDPOINTS if e.body_type is not None]


def bodies(names: set[str]) -> st.SearchStrategy[bytes]:
    """Bodies built from an endpoint's own field names (so they get past the shape
    checks often), random JSON, and bytes that are not JSON at all."""
    objects = st.dictionaries(
        st.one_of(st.sampled_from(sorted(names)), NASTY_TEXT), JSON, max_size=len(names) + 1
    )
    whole = st.fixed_dictionaries({name: JSON for name in sorted(names)})
    return st.one_of(encoded(objects), encoded(whole), encoded(JSON), st.binary(max_size=40))


@pytest.fixture(scope="module")
def server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(redis_url, log_dir=tmp_path_factory.mktemp("fuzz-logs")).start()
    yield live
    live.stop()
    assert "Traceback" not in server_log(live), server_log(live)[-4000:]


def server_log(server: LiveServer) -> str:
    assert server.log_path is not None
    return server.log_path.read_text()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


@pytest.fixture(scope="module")
def account(client: httpx.Client) -> dict[str, str]:
    """A funded adult, verified, with a payout method: refusals come from the input."""
    r = client.post("/api/users", json={"name": "Fuzz", "birthdate": "1990-01-01", "region": "US"})
    token = r.json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    for package in ("p10000", "p10000"):
        r = client.post(
            "/api/wallet/recharge",
            json={
                "package_id": package,
                "card_number": APPROVED_CARD,
                "idempotency_key": uuid.uuid4().hex,
            },
            headers=headers,
        )
        assert r.status_code == 200
    return {"token": token, **headers}


def check_answer(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/json"), r.headers
        body = r.json()
        assert isinstance(body, dict) and set(body) == {"code", "message"}, body
        assert isinstance(body["code"], str) and isinstance(body["message"], str)
        assert body["message"]
        assert STATUS_BY_CODE[body["code"]] == r.status_code, (r.status_code, body)


def wallet(client: httpx.Client, account: dict[str, str]) -> dict[str, Any]:
    r = client.get("/api/wallet", headers={"Authorization": account["Authorization"]})
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


REQUESTS = st.one_of(
    *(st.tuples(st.just(e), bodies(field_names(e.body_type))) for e in BODY_ENDPOINTS)
)


@settings(FUZZ, max_examples=500)
@given(request=REQUESTS)
def test_rest_bodies(
    client: httpx.Client, account: dict[str, str], request: tuple[Endpoint, bytes]
) -> None:
    endpoint, body = request
    path = endpoint.path.replace("{room_id}", "r0")
    headers = {"Authorization": account["Authorization"], "content-type": "application/json"}
    before = wallet(client, account)
    r = client.request(endpoint.method, path, content=body, headers=headers)
    check_answer(r)
    if r.status_code >= 400:
        assert wallet(client, account) == before, (endpoint.path, body, r.text)


@settings(FUZZ, max_examples=200)
@given(
    params=st.dictionaries(
        st.sampled_from(["limit", "before", "x"]), NASTY_TEXT.filter(lambda t: "\x00" not in t)
    )
)
def test_rest_queries(
    client: httpx.Client, account: dict[str, str], params: dict[str, str]
) -> None:
    headers = {"Authorization": account["Authorization"]}
    r = client.get("/api/wallet/transactions", params=params, headers=headers)
    check_answer(r)


@FUZZ
@given(path=NASTY_TEXT, method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
def test_rest_paths(client: httpx.Client, account: dict[str, str], path: str, method: str) -> None:
    headers = {"Authorization": account["Authorization"]}
    quoted = urllib.parse.quote(path, safe="")
    for template in ("/api/rooms/{}", "/api/wallet/cashouts/{}", "/api/rooms/{}/end", "/{}"):
        r = client.request(method, template.format(quoted), headers=headers)
        check_answer(r)


FRAME_FIELDS = ["type", "request_id", "gift_id", "count", "text"]
FRAME_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "type": st.one_of(st.sampled_from(["gift", "chat", "ping"]), JSON),
    "request_id": st.one_of(st.uuids().map(str), st.sampled_from(["r1", "r2"]), JSON),
    "gift_id": st.one_of(st.sampled_from(["rose", "doughnut", "unicorn"]), JSON),
    "count": st.one_of(st.integers(min_value=-5, max_value=120), JSON),
    "text": st.one_of(NASTY_TEXT, JSON),
}
FRAMES = st.one_of(
    st.lists(st.sampled_from(FRAME_FIELDS), unique=True)
    .flatmap(lambda keys: st.fixed_dictionaries({key: FRAME_VALUES[key] for key in keys}))
    .map(lambda frame: encode(frame).decode()),
    JSON.map(lambda value: encode(value).decode()),
    st.text(max_size=40),
    st.binary(max_size=40),
)


def test_websocket_frames(
    client: httpx.Client, account: dict[str, str], server: LiveServer
) -> None:
    creator = client.post(
        "/api/users", json={"name": "Host", "birthdate": "1990-01-01", "region": "US"}
    ).json()
    room = client.post(
        "/api/rooms",
        json={"title": "fuzzing"},
        headers={"Authorization": f"Bearer {creator['token']}"},
    ).json()["room_id"]
    prices = {g["id"]: g["coins"] for g in client.get("/api/gifts").json()["gifts"]}
    start = wallet(client, account)["coins"]
    acked: dict[str, int] = {}  # request_id -> coins debited (first ack only)
    url = f"{server.ws_url}/ws/rooms/{room}?token={account['token']}"
    with connect(url, open_timeout=15, close_timeout=5) as ws:
        assert orjson.loads(ws.recv(timeout=15))["type"] == "welcome"

        @settings(FUZZ, max_examples=400)
        @given(frame=FRAMES)
        def send_one(frame: str | bytes) -> None:
            ws.send(frame)
            # A ping after every frame: the answers to the frame come before its pong.
            ws.send(orjson.dumps({"type": "ping"}).decode())
            answers: list[dict[str, Any]] = []
            while True:
                got = orjson.loads(ws.recv(timeout=15))
                assert isinstance(got, dict) and got.get("type") in {
                    "events",
                    "room_state",
                    "ack",
                    "error",
                    "pong",
                }, got
                if got["type"] == "pong":
                    break
                if got["type"] in ("ack", "error"):
                    answers.append(got)
            assert len(answers) <= 1, (frame, answers)
            for answer in answers:
                if answer["type"] == "error":
                    assert answer["code"] != "internal", (frame, answer)
                    assert isinstance(answer["message"], str) and answer["message"]
                else:
                    sent = orjson.loads(frame)
                    request_id = sent["request_id"]
                    if request_id not in acked:
                        acked[request_id] = prices[sent["gift_id"]] * sent["count"]

        send_one()
    assert wallet(client, account)["coins"] == start - sum(acked.values())


async def test_the_audit_holds_after_the_fuzzing(services: Services, server: LiveServer) -> None:
    client = connect_redis(services.settings)
    try:
        report = await audit(client, services.settings)
        for _ in range(100):  # gifts in flight are finished by the sweeper
            if not report.pending_transfers:
                break
            await asyncio.sleep(0.1)
            report = await audit(client, services.settings)
        assert report.ok, report.lines()
    finally:
        await client.aclose()
    assert "Traceback" not in server_log(server)
