"""The rules of the economy: catalog, prices, conversion, who may do what.

Pure: no asyncio, no Redis, no JSON encoding. Every amount is an integer.
Functions that refuse raise a `Refusal` subclass carrying a stable code.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
import unicodedata
import zlib
from dataclasses import dataclass
from enum import Enum
from importlib import resources

from server.errors import (
    BadRequest,
    BelowMinimum,
    Forbidden,
    RegionUnavailable,
    Underage,
    UnknownGift,
    UnknownPackage,
)

ADULT_AGE = 18
MAX_COMBO = 99
# A diamond redeems for $0.005: 5,000 micro-dollars (DESIGN says 500: a slip), so two
# diamonds make a cent.
MICRO_USD_PER_DIAMOND = 5_000
MICRO_USD_PER_CENT = 10_000
MAX_NAME_LENGTH = 40
MAX_TITLE_LENGTH = 100
MAX_LEGAL_NAME_LENGTH = 100
MAX_ID_NUMBER_LENGTH = 40
MAX_CHAT_LENGTH = 200
MIN_BIRTH_YEAR = 1900
# Coins of a spending cap and diamonds of a cash-out: far above any real amount, far
# below what a 64-bit integer (Redis, Lua) holds.
MAX_AMOUNT = 10**12


@dataclass(frozen=True, slots=True)
class Gift:
    id: str
    name: str
    coins: int
    tier: str


@dataclass(frozen=True, slots=True)
class CoinPackage:
    id: str
    coins: int
    price_cents: int


@dataclass(frozen=True, slots=True)
class Catalog:
    gifts: dict[str, Gift]
    packages: dict[str, CoinPackage]
    recharge_regions: frozenset[str]
    known_regions: frozenset[str]

    def gift(self, gift_id: str) -> Gift:
        try:
            return self.gifts[gift_id]
        except KeyError:
            raise UnknownGift(f"there is no gift {gift_id!r}") from None

    def package(self, package_id: str) -> CoinPackage:
        try:
            return self.packages[package_id]
        except KeyError:
            raise UnknownPackage(f"there is no coin package {package_id!r}") from None


def load_catalog() -> Catalog:
    """Read the gift catalog, coin packages and regions shipped in `server/data`."""
    data = resources.files("server") / "data"
    gifts_doc = tomllib.loads((data / "gifts.toml").read_text("utf-8"))
    packages_doc = tomllib.loads((data / "coin_packages.toml").read_text("utf-8"))
    regions_doc = tomllib.loads((data / "regions.toml").read_text("utf-8"))
    gifts = {
        g["id"]: Gift(g["id"], g["name"], int(g["coins"]), g["tier"]) for g in gifts_doc["gift"]
    }
    packages = {
        p["id"]: CoinPackage(p["id"], int(p["coins"]), int(p["price_cents"]))
        for p in packages_doc["package"]
    }
    for gift in gifts.values():
        if gift.coins < 1:
            raise ValueError(f"gift {gift.id} must cost at least one coin")
    recharge = frozenset(regions_doc["recharge_available"])
    return Catalog(
        gifts=gifts,
        packages=packages,
        recharge_regions=recharge,
        known_regions=recharge | frozenset(regions_doc["recharge_unavailable"]),
    )


# --- text and numbers as people type them ----------------------------------------

# `str.isdigit` and `\d` take any script's digits ("²", "١"): numbers are ASCII here.
_DIGITS = re.compile(r"[0-9]+")
# Format characters that real text needs: the zero-width (non-)joiner of Indic and
# Arabic scripts and of emoji sequences ("👩‍👩‍👧").
_JOINERS = frozenset("\u200c\u200d")
# Where new emoji are assigned: unassigned to this Python's Unicode tables, but not to
# the phones that send them.
_EMOJI_PLANE = range(0x1F000, 0x1FB00)


def ascii_digits(raw: str) -> bool:
    """Only the digits 0-9, at least one."""
    return _DIGITS.fullmatch(raw) is not None


def has_control_characters(text: str) -> bool:
    """Whether `text` holds a character of Unicode category C (controls such as NUL and
    newlines, format characters such as the bidi override U+202E, surrogates, private
    use, unassigned) or a line or paragraph separator. The joiners U+200C/U+200D and
    unassigned code points where emoji are assigned are allowed."""
    if text.isprintable():  # the common case, in C: no C* and no Z* but the space
        return False
    for char in text:
        category = unicodedata.category(char)
        if category[0] == "C":
            if char in _JOINERS or (category == "Cn" and ord(char) in _EMOJI_PLANE):
                continue
            return True
        if category in ("Zl", "Zp"):
            return True
    return False


def clean_text(field: str, raw: str, *, max_length: int) -> str:
    """`raw` without surrounding spaces: not empty, at most `max_length` characters, no
    control characters (`has_control_characters`). `BadRequest` otherwise."""
    if has_control_characters(raw):
        raise BadRequest(
            f"{field} must not contain control characters (such as newlines, NUL or "
            "direction overrides)"
        )
    text = raw.strip()
    if not text:
        raise BadRequest(f"{field} must not be empty")
    if len(text) > max_length:
        raise BadRequest(f"{field} is longer than {max_length} characters")
    return text


# --- users -----------------------------------------------------------------

_REGION = re.compile(r"^[A-Z]{2}$")
_BIRTHDATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ID_NUMBER = re.compile(rf"[A-Za-z0-9][A-Za-z0-9 ./-]{{0,{MAX_ID_NUMBER_LENGTH - 1}}}")


def parse_birthdate(raw: str, *, today: dt.date) -> dt.date:
    """A birthdate `YYYY-MM-DD`, in the past and after 1900."""
    if not _BIRTHDATE.fullmatch(raw):
        raise BadRequest("birthdate must be YYYY-MM-DD")
    try:
        born = dt.date.fromisoformat(raw)
    except ValueError:
        raise BadRequest("birthdate is not a real date") from None
    if born > today:
        raise BadRequest("birthdate is in the future")
    if born.year < MIN_BIRTH_YEAR:
        raise BadRequest("birthdate is too far in the past")
    return born


def age_on(born: dt.date, today: dt.date) -> int:
    """Whole years of age on `today`; a 29 February birthday counts from 1 March."""
    years = today.year - born.year
    if (today.month, today.day) < (born.month, born.day):
        years -= 1
    return years


def validate_name(raw: str) -> str:
    """A display name: any script, emoji welcome, no control characters."""
    return clean_text("name", raw, max_length=MAX_NAME_LENGTH)


def validate_title(raw: str) -> str:
    """A room's title, by the rules of `clean_text`."""
    return clean_text("title", raw, max_length=MAX_TITLE_LENGTH)


def validate_identity(legal_name: str, id_number: str) -> tuple[str, str]:
    """The simulated identity check's input: a legal name (`clean_text`) and an ID
    number of ASCII letters and digits (with spaces, dots, slashes or dashes between)."""
    name = clean_text("legal_name", legal_name, max_length=MAX_LEGAL_NAME_LENGTH)
    number = id_number.strip(" ")
    if not _ID_NUMBER.fullmatch(number):
        raise BadRequest(
            f"id_number must be 1 to {MAX_ID_NUMBER_LENGTH} ASCII letters and digits "
            "(spaces, . / - allowed between them)"
        )
    return name, number


def validate_region(raw: str, catalog: Catalog) -> str:
    if not _REGION.fullmatch(raw) or raw not in catalog.known_regions:
        raise BadRequest(f"unknown region {raw!r}: use an ISO 3166 two-letter code")
    return raw


# --- recharge --------------------------------------------------------------


class PaymentOutcome(Enum):
    APPROVED = "approved"
    DECLINED = "payment_declined"
    INSUFFICIENT_FUNDS = "insufficient_funds"


def normalize_card(raw: str) -> str:
    """A card number as typed, spaces and dashes removed: 12 to 19 ASCII digits."""
    digits = raw.replace(" ", "").replace("-", "")
    if not ascii_digits(digits) or not 12 <= len(digits) <= 19:
        raise BadRequest("card_number must be 12 to 19 digits (0-9)")
    return digits


def simulate_payment(card_number: str) -> PaymentOutcome:
    """The well-known test-card convention: …4242 approves, …0002 declines,
    …9995 declines for insufficient funds; any other number declines."""
    if card_number.endswith("4242"):
        return PaymentOutcome.APPROVED
    if card_number.endswith("9995"):
        return PaymentOutcome.INSUFFICIENT_FUNDS
    return PaymentOutcome.DECLINED


def check_recharge_allowed(*, born: dt.date, region: str, today: dt.date, catalog: Catalog) -> None:
    """Recharge needs 18+ and a region where it is available (standing is checked atomically)."""
    if age_on(born, today) < ADULT_AGE:
        raise Underage("buying coins needs an account aged 18 or over")
    if region not in catalog.recharge_regions:
        raise RegionUnavailable(f"buying coins is not available in region {region}")


# --- gifts and spending caps -------------------------------------------------


def check_gift_allowed(*, sender_id: str, creator_id: str) -> None:
    """A creator cannot gift their own live: it would only turn their coins into
    diamonds. `Forbidden` if they try."""
    if sender_id == creator_id:
        raise Forbidden("you cannot send gifts to your own live")


def gift_total(gift: Gift, count: int) -> int:
    if not 1 <= count <= MAX_COMBO:
        raise BadRequest(f"count must be 1 to {MAX_COMBO}")
    return gift.coins * count


def diamonds_for(coins: int, diamonds_per_coin: int) -> int:
    return coins * diamonds_per_coin


def spending_periods(now: dt.datetime) -> tuple[str, str]:
    """The UTC day and month a spend at `now` counts towards: ("20261125", "202611")."""
    utc = now.astimezone(dt.UTC)
    return utc.strftime("%Y%m%d"), utc.strftime("%Y%m")


def validate_spending_limit(period: object, coins: object) -> tuple[str, int | None]:
    if period not in ("daily", "monthly"):
        raise BadRequest('period must be "daily" or "monthly"')
    if coins is not None and (
        not isinstance(coins, int) or isinstance(coins, bool) or not 0 <= coins <= MAX_AMOUNT
    ):
        raise BadRequest("coins must be a whole number of coins from 0, or null to remove the cap")
    return str(period), coins


# --- cash-out ---------------------------------------------------------------


def usd_cents_for(diamonds: int) -> int:
    return diamonds * MICRO_USD_PER_DIAMOND // MICRO_USD_PER_CENT


def check_cashout_allowed(*, born: dt.date, today: dt.date, diamonds: int, minimum: int) -> None:
    """The rules of a cash-out that depend on no stored state: age and minimum. Standing,
    identity, payout method, daily limit and balance are checked atomically by the store
    (request_cashout.lua), and only there."""
    if age_on(born, today) < ADULT_AGE:
        raise Underage("cashing out needs an account aged 18 or over")
    if diamonds < minimum:
        raise BelowMinimum(f"the minimum cash-out is {minimum} diamonds")


def payout_succeeds(method: dict[str, str]) -> bool:
    """The simulated payout processor: an account number ending in 0002, or a PayPal
    address starting with "fail", is rejected by the bank."""
    if method.get("type") == "bank":
        return not method.get("account_number", "").endswith("0002")
    return not method.get("email", "").startswith("fail")


def validate_payout_method(body: dict[str, object]) -> dict[str, str]:
    kind = body.get("type")
    if kind == "bank":
        account, routing = body.get("account_number"), body.get("routing_number")
        if set(body) != {"type", "account_number", "routing_number"}:
            raise BadRequest(
                "a bank payout method has exactly type, account_number, routing_number"
            )
        if not (isinstance(account, str) and ascii_digits(account) and 4 <= len(account) <= 17):
            raise BadRequest("account_number must be 4 to 17 digits (0-9)")
        if not (isinstance(routing, str) and ascii_digits(routing) and len(routing) == 9):
            raise BadRequest("routing_number must be 9 digits (0-9)")
        return {"type": "bank", "account_number": account, "routing_number": routing}
    if kind == "paypal":
        email = body.get("email")
        if set(body) != {"type", "email"}:
            raise BadRequest("a paypal payout method has exactly type and email")
        if not (
            isinstance(email, str)
            and len(email) <= 254
            and re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email)
            and not has_control_characters(email)
        ):
            raise BadRequest("email is not an email address")
        return {"type": "paypal", "email": email}
    raise BadRequest('type must be "bank" or "paypal"')


def mask_payout_method(method: dict[str, str]) -> dict[str, str]:
    """What the API shows of a payout method: never the whole account number."""
    if method.get("type") == "bank":
        return {"type": "bank", "account_last4": method["account_number"][-4:]}
    email = method.get("email", "")
    local, _, domain = email.partition("@")
    return {"type": "paypal", "email": f"{local[:1]}***@{domain}"}


# --- keys -------------------------------------------------------------------


def wallet_bucket(user_id: str, buckets: int) -> int:
    """DESIGN section 3: bucket = crc32(user_id) % WALLET_BUCKETS."""
    return zlib.crc32(user_id.encode()) % buckets
