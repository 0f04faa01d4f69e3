"""The rules of the economy, as plain functions."""

from __future__ import annotations

import datetime as dt

import pytest

from server import economy
from server.economy import PaymentOutcome
from server.errors import (
    BadRequest,
    BelowMinimum,
    Forbidden,
    RegionUnavailable,
    Underage,
    UnknownGift,
    UnknownPackage,
)

TODAY = dt.date(2026, 11, 25)


def test_catalog_has_the_gifts_and_packages_the_design_names() -> None:
    catalog = economy.load_catalog()
    assert len(catalog.gifts) >= 15
    prices = [g.coins for g in catalog.gifts.values()]
    assert min(prices) == 1 and max(prices) > 30_000
    assert catalog.gift("rose").coins == 1
    assert sorted(p.coins for p in catalog.packages.values()) == [100, 500, 1000, 5000, 10000]
    assert catalog.package("p1000").price_cents == 990
    per_coin = [
        p.price_cents / p.coins for p in sorted(catalog.packages.values(), key=lambda p: p.coins)
    ]
    assert per_coin == sorted(per_coin, reverse=True), "bigger packages are no dearer per coin"
    with pytest.raises(UnknownGift):
        catalog.gift("nope")
    with pytest.raises(UnknownPackage):
        catalog.package("p7")


@pytest.mark.parametrize(
    ("born", "age"),
    [("2008-11-25", 18), ("2008-11-26", 17), ("2000-02-29", 26), ("2008-02-29", 18)],
)
def test_age_counts_whole_years(born: str, age: int) -> None:
    assert economy.age_on(dt.date.fromisoformat(born), TODAY) == age


@pytest.mark.parametrize(
    "raw", ["2030-01-01", "1990-13-01", "1990-02-30", "90-01-01", "", "1850-01-01"]
)
def test_bad_birthdates_are_refused(raw: str) -> None:
    with pytest.raises(BadRequest):
        economy.parse_birthdate(raw, today=TODAY)


def test_names_and_regions_are_validated() -> None:
    catalog = economy.load_catalog()
    assert economy.validate_name("  Ann ") == "Ann"
    for bad in ["", "   ", "x" * 41, "a\x00b"]:
        with pytest.raises(BadRequest):
            economy.validate_name(bad)
    assert economy.validate_region("US", catalog) == "US"
    for bad in ["us", "USA", "ZZ", ""]:
        with pytest.raises(BadRequest):
            economy.validate_region(bad, catalog)


def test_test_cards_follow_the_convention() -> None:
    assert economy.simulate_payment("4242424242424242") is PaymentOutcome.APPROVED
    assert economy.simulate_payment("4000000000000002") is PaymentOutcome.DECLINED
    assert economy.simulate_payment("4000000000009995") is PaymentOutcome.INSUFFICIENT_FUNDS
    assert economy.normalize_card("4242 4242 4242 4242") == "4242424242424242"
    with pytest.raises(BadRequest):
        economy.normalize_card("4242abc")


def test_recharge_needs_an_adult_in_an_open_region() -> None:
    catalog = economy.load_catalog()
    adult, minor = dt.date(1990, 1, 1), dt.date(2010, 1, 1)
    economy.check_recharge_allowed(born=adult, region="US", today=TODAY, catalog=catalog)
    with pytest.raises(Underage):
        economy.check_recharge_allowed(born=minor, region="US", today=TODAY, catalog=catalog)
    with pytest.raises(RegionUnavailable):
        economy.check_recharge_allowed(born=adult, region="KP", today=TODAY, catalog=catalog)


def test_gift_totals_and_diamonds_are_integers() -> None:
    catalog = economy.load_catalog()
    assert economy.gift_total(catalog.gift("doughnut"), 12) == 360
    for bad in [0, 100, -1]:
        with pytest.raises(BadRequest):
            economy.gift_total(catalog.gift("rose"), bad)
    assert economy.diamonds_for(360, 1) == 360
    assert economy.usd_cents_for(2000) == 1000  # 2,000 diamonds = $10
    assert economy.usd_cents_for(3) == 1  # floor: half a cent is not paid


def test_spending_periods_are_utc() -> None:
    late = dt.datetime(2026, 11, 30, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert economy.spending_periods(late) == ("20261201", "202612")


def test_cashout_rules() -> None:
    """The pure rules only: identity and payout method are the store's to check
    (request_cashout.lua), atomically and only there."""
    ok = {"born": dt.date(1990, 1, 1), "today": TODAY, "diamonds": 2000, "minimum": 2000}
    economy.check_cashout_allowed(**ok)  # type: ignore[arg-type]
    cases = [({"born": dt.date(2010, 1, 1)}, Underage), ({"diamonds": 1999}, BelowMinimum)]
    for change, refusal in cases:
        with pytest.raises(refusal):
            economy.check_cashout_allowed(**{**ok, **change})  # type: ignore[arg-type]


def test_payout_methods() -> None:
    bank = economy.validate_payout_method(
        {"type": "bank", "account_number": "000123456789", "routing_number": "110000000"}
    )
    assert economy.mask_payout_method(bank) == {"type": "bank", "account_last4": "6789"}
    assert economy.payout_succeeds(bank)
    assert not economy.payout_succeeds({**bank, "account_number": "0000000002"})
    paypal = economy.validate_payout_method({"type": "paypal", "email": "ann@example.com"})
    assert economy.mask_payout_method(paypal)["email"] == "a***@example.com"
    for bad in [
        {"type": "crypto"},
        {"type": "paypal", "email": "nope"},
        {"type": "bank", "account_number": "12", "routing_number": "110000000"},
        {"type": "paypal", "email": "a@b.co", "extra": 1},
    ]:
        with pytest.raises(BadRequest):
            economy.validate_payout_method(bad)


def test_spending_limit_validation() -> None:
    assert economy.validate_spending_limit("daily", 500) == ("daily", 500)
    assert economy.validate_spending_limit("monthly", None) == ("monthly", None)
    for period, coins in [
        ("weekly", 5),
        ("daily", -1),
        ("daily", 1.5),
        ("daily", True),
        ("daily", "5"),
    ]:
        with pytest.raises(BadRequest):
            economy.validate_spending_limit(period, coins)


def test_wallet_bucket_is_crc32_mod_buckets() -> None:
    import zlib

    assert economy.wallet_bucket("u1", 1024) == zlib.crc32(b"u1") % 1024


def test_a_creator_cannot_gift_their_own_live() -> None:
    economy.check_gift_allowed(sender_id="ua", creator_id="ub")
    with pytest.raises(Forbidden):
        economy.check_gift_allowed(sender_id="ua", creator_id="ua")


@pytest.mark.parametrize(
    "text",
    [
        "\x00",
        "a\nb",
        "a\tb",
        "\x1b[2J",
        "\x7f",
        "\x85",
        "a\u202eb",
        "a\u2066b",
        "a\u200bb",
        "\ufeff",
        "a\u2028b",
        "a\u2029b",
        "\ue000",
        "\U000e0001",
        "\ud800",
    ],
)
def test_control_characters_are_found(text: str) -> None:
    assert economy.has_control_characters(text)
    with pytest.raises(BadRequest):
        economy.clean_text("title", "ok " + text, max_length=100)


@pytest.mark.parametrize(
    "text",
    [
        "Ann",
        "Zoë",
        "李小龍",
        "محمد",
        "🌹 x12",
        "👩\u200d👩\u200d👧",
        "क्\u200dष",
        "a\u00a0b",
        "a\u3000b",
        "🩷",
    ],
)
def test_text_in_any_script_with_emoji_is_clean(text: str) -> None:
    assert not economy.has_control_characters(text)
    assert economy.clean_text("name", f"  {text} ", max_length=100) == text


def test_numbers_are_ascii_digits() -> None:
    assert economy.ascii_digits("0123456789")
    for raw in ["", "²", "١", "４", "1 2", "+1", "-1", "1.0", "1_0", "1\n"]:
        assert not economy.ascii_digits(raw), raw
    for card in ["²²²²²²²²²²²²4242", "١٢٣٤٥٦٧٨٩٠١٢4242", "4242424242424242\n"]:
        with pytest.raises(BadRequest):
            economy.normalize_card(card)
    for account, routing in [("²²²²²²²²", "110000000"), ("00012345", "١١٠٠٠٠٠٠٠")]:
        with pytest.raises(BadRequest):
            economy.validate_payout_method(
                {"type": "bank", "account_number": account, "routing_number": routing}
            )
    with pytest.raises(BadRequest):
        economy.parse_birthdate("١٩٩٠-٠١-٠١", today=TODAY)


def test_identity_needs_a_clean_name_and_an_ascii_id_number() -> None:
    assert economy.validate_identity(" Ann Lee ", " X-12/3 ") == ("Ann Lee", "X-12/3")
    for legal_name, id_number in [
        ("Ann", "\x00"),
        ("Ann", ""),
        ("Ann", "¹²³"),
        ("Ann", "X1\n"),
        ("Ann", "-X1"),
        ("Ann", "X" * 41),
        ("\x00", "X1"),
        ("Ann\u202e", "X1"),
        ("  ", "X1"),
    ]:
        with pytest.raises(BadRequest):
            economy.validate_identity(legal_name, id_number)
