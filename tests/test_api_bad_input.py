"""Bad input over REST (issue 12), end to end on a server of this module's own, so its log
holds only what these requests caused: every refusal is `{code, message}` with DESIGN
section 4's status, numbers are ASCII digits within their ranges, text has no control
characters, nothing refused changes a wallet, and nothing writes a traceback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.accounts import APPROVED_CARD, Account, funded, sign_up
from tests.live_server import LiveServer


@pytest.fixture(scope="module")
def server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(redis_url, log_dir=tmp_path_factory.mktemp("bad-input-logs")).start()
    yield live
    live.stop()
    assert live.log_path is not None
    log = live.log_path.read_text()
    assert "Traceback" not in log, log[-4000:]


@pytest.fixture
async def api(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


def assert_refusal(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"code", "message"}, body
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"], body


async def wallet_of(api: httpx.AsyncClient, account: Account) -> dict[str, object]:
    r = await api.get("/api/wallet", headers=account.headers)
    assert r.status_code == 200
    body: dict[str, object] = r.json()
    return body


# --- the transaction pager ---------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "²"},
        {"limit": "١٠"},
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "-1"},
        {"limit": "+5"},
        {"limit": " 5"},
        {"limit": "5.0"},
        {"limit": "1e1"},
        {"limit": ""},
        {"limit": "9" * 30},
        {"before": "0-0"},
        {"before": "١-١"},
        {"before": "²-²"},
        {"before": "99999999999999999999-0"},
        {"before": "18446744073709551616-0"},
        {"before": "1-18446744073709551616"},
        {"before": "1"},
        {"before": "1-"},
        {"before": "-1"},
        {"before": "1-1-1"},
        {"before": "nope"},
        {"before": "1-1\x00"},
    ],
)
async def test_a_bad_pager_query_is_400_and_keeps_the_connection(
    api: httpx.AsyncClient, params: dict[str, str]
) -> None:
    account = await sign_up(api)
    r = await api.get("/api/wallet/transactions", params=params, headers=account.headers)
    assert_refusal(r, 400, "bad_request")
    # The keep-alive connection was not dropped: the next request rides on it.
    assert "close" not in r.headers.get("connection", "")
    r = await api.get("/api/wallet/transactions", headers=account.headers)
    assert r.status_code == 200


async def test_the_pager_takes_the_largest_ids(api: httpx.AsyncClient) -> None:
    account = await funded(api, "p100")
    top = "18446744073709551615-18446744073709551615"
    r = await api.get("/api/wallet/transactions", params={"before": top}, headers=account.headers)
    assert r.status_code == 200 and len(r.json()["transactions"]) == 1
    r = await api.get("/api/wallet/transactions", params={"before": "0-1"}, headers=account.headers)
    assert r.status_code == 200 and r.json() == {"transactions": [], "next_before": None}
    r = await api.get("/api/wallet/transactions", params={"limit": "100"}, headers=account.headers)
    assert r.status_code == 200


# --- unknown routes and methods -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nope", 404, "not_found"),
        ("GET", "/api", 404, "not_found"),
        ("POST", "/api/nothing/here", 404, "not_found"),
        ("GET", "/static/no-such-file.js", 404, "not_found"),
        ("GET", "/api/users", 405, "method_not_allowed"),
        ("DELETE", "/api/wallet", 405, "method_not_allowed"),
        ("PATCH", "/api/rooms", 405, "method_not_allowed"),
        ("POST", "/api/gifts", 405, "method_not_allowed"),
    ],
)
async def test_unknown_routes_and_methods_answer_json(
    api: httpx.AsyncClient, method: str, path: str, status: int, code: str
) -> None:
    r = await api.request(method, path)
    assert_refusal(r, status, code)
    if status == 405:
        assert r.headers["allow"]


# --- numbers are ASCII digits ------------------------------------------------------------


@pytest.mark.parametrize(
    "card",
    [
        "²²²²²²²²²²²²4242",
        "١٢٣٤٥٦٧٨٩٠١٢4242",
        "４２４２４２４２４２４２４２４２",
        "4242424242424242\x00",
    ],
)
async def test_a_card_number_of_unicode_digits_is_refused(
    api: httpx.AsyncClient, card: str
) -> None:
    account = await sign_up(api)
    r = await api.post(
        "/api/wallet/recharge",
        json={"package_id": "p100", "card_number": card, "idempotency_key": "k1"},
        headers=account.headers,
    )
    assert_refusal(r, 400, "bad_request")
    assert (await wallet_of(api, account))["coins"] == 0


async def test_card_numbers_with_spaces_and_dashes_still_pay(api: httpx.AsyncClient) -> None:
    account = await sign_up(api)
    r = await api.post(
        "/api/wallet/recharge",
        json={"package_id": "p100", "card_number": "4242 4242-4242 4242", "idempotency_key": "k"},
        headers=account.headers,
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("account_number", "routing_number"),
    [
        ("١٢٣٤٥٦٧٨", "110000000"),
        ("²²²²²²²²", "110000000"),
        ("000123456789", "²²²²²²²²²"),
        ("000123456789", "١١٠٠٠٠٠٠٠"),
        ("000123456789", "11000000\x00"),
        ("0001 2345", "110000000"),
    ],
)
async def test_bank_numbers_of_unicode_digits_are_refused(
    api: httpx.AsyncClient, account_number: str, routing_number: str
) -> None:
    account = await sign_up(api)
    r = await api.put(
        "/api/me/payout-method",
        json={"type": "bank", "account_number": account_number, "routing_number": routing_number},
        headers=account.headers,
    )
    assert_refusal(r, 400, "bad_request")
    assert (await api.get("/api/me", headers=account.headers)).json()["payout_method"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"diamonds": "3000", "idempotency_key": "c"},
        {"diamonds": 10**30, "idempotency_key": "c"},
        {"diamonds": 3000.0, "idempotency_key": "c"},
        {"diamonds": True, "idempotency_key": "c"},
    ],
)
async def test_cashout_amounts_are_whole_numbers_in_range(
    api: httpx.AsyncClient, body: dict[str, object]
) -> None:
    account = await sign_up(api)
    r = await api.post("/api/wallet/cashouts", json=body, headers=account.headers)
    assert_refusal(r, 400, "bad_request")


async def test_a_spending_cap_beyond_64_bits_is_refused(api: httpx.AsyncClient) -> None:
    account = await sign_up(api)
    for coins in (2**63, 10**30, -1):
        r = await api.put(
            "/api/wallet/spending-limit",
            json={"period": "daily", "coins": coins},
            headers=account.headers,
        )
        assert_refusal(r, 400, "bad_request")
    assert (await wallet_of(api, account))["spending_limit"] is None


# --- no control characters in text ----------------------------------------------------------

CONTROL_TEXTS = [
    "A\x00",
    "\x00",
    "Ann\nLee",
    "Ann\rLee",
    "Ann\tLee",
    "Ann\x1b[31m",
    "Ann\x7f",
    "Ann\x85",  # NEL
    "Ann\u202eeeL",  # right-to-left override
    "Ann\u2066Lee\u2069",  # bidi isolates
    "Ann\u200bLee",  # zero width space
    "Ann\ufeff",
    "Ann\u2028Lee",  # line separator
    "Ann\ue000",  # private use
]


@pytest.mark.parametrize("name", CONTROL_TEXTS)
async def test_a_name_with_control_characters_is_refused(api: httpx.AsyncClient, name: str) -> None:
    r = await api.post("/api/users", json={"name": name, "birthdate": "1990-01-01", "region": "US"})
    assert_refusal(r, 400, "bad_request")


@pytest.mark.parametrize("title", CONTROL_TEXTS)
async def test_a_room_title_with_control_characters_is_refused(
    api: httpx.AsyncClient, title: str
) -> None:
    creator = await sign_up(api)
    r = await api.post("/api/rooms", json={"title": title}, headers=creator.headers)
    assert_refusal(r, 400, "bad_request")


@pytest.mark.parametrize(
    ("legal_name", "id_number"),
    [
        ("Ann Lee", "\x00"),
        ("Ann Lee", "\x00\x00\x00"),
        ("Ann Lee", "X1\u202e"),
        ("Ann Lee", "X1\n"),
        ("Ann Lee", "¹²³"),
        ("\x00", "X1"),
        ("Ann\nLee", "X1"),
        ("Ann\u202eeeL", "X1"),
        ("Ann Lee", "   "),
    ],
)
async def test_identity_fields_with_control_characters_do_not_verify(
    api: httpx.AsyncClient, legal_name: str, id_number: str
) -> None:
    account = await sign_up(api)
    r = await api.put(
        "/api/me/verification",
        json={"legal_name": legal_name, "id_number": id_number},
        headers=account.headers,
    )
    assert_refusal(r, 400, "bad_request")
    assert (await api.get("/api/me", headers=account.headers)).json()["verified"] is False


@pytest.mark.parametrize("email", ["ann@example.com\x00", "ann\u202e@example.com", "an\nn@x.io"])
async def test_a_paypal_email_with_control_characters_is_refused(
    api: httpx.AsyncClient, email: str
) -> None:
    account = await sign_up(api)
    r = await api.put(
        "/api/me/payout-method", json={"type": "paypal", "email": email}, headers=account.headers
    )
    assert_refusal(r, 400, "bad_request")


@pytest.mark.parametrize(
    "name",
    [
        "Zoë",
        "李小龍",
        "محمد",
        "Ann 🌹",
        "👩\u200d👩\u200d👧",
        "Ann\u00a0Lee",
        "さくら\u3000はな",
        "🩷",
    ],
)
async def test_names_in_any_script_and_emoji_are_welcome(api: httpx.AsyncClient, name: str) -> None:
    r = await api.post("/api/users", json={"name": name, "birthdate": "1990-01-01", "region": "US"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    me = (await api.get("/api/me", headers={"Authorization": f"Bearer {token}"})).json()
    assert me["name"] == name


@pytest.mark.parametrize("birthdate", ["١٩٩٠-٠١-٠١", "1990-0²-01", "1990-01-01\n", "+1990-01-01"])
async def test_a_birthdate_of_unicode_digits_is_refused(
    api: httpx.AsyncClient, birthdate: str
) -> None:
    r = await api.post("/api/users", json={"name": "A", "birthdate": birthdate, "region": "US"})
    assert_refusal(r, 400, "bad_request")


async def test_refused_recharges_change_no_wallet(api: httpx.AsyncClient) -> None:
    account = await funded(api, "p100")
    before = await wallet_of(api, account)
    for body in [
        {"package_id": "p100", "card_number": "²²²²²²²²²²²²4242", "idempotency_key": "z1"},
        {"package_id": "p100\x00", "card_number": APPROVED_CARD, "idempotency_key": "z2"},
        {"package_id": "p100", "card_number": APPROVED_CARD, "idempotency_key": "z\u202e"},
    ]:
        r = await api.post("/api/wallet/recharge", json=body, headers=account.headers)
        assert r.status_code == 400, (body, r.text)
    assert await wallet_of(api, account) == before
