"""The browser page end to end, in a real headless Chromium driven by Playwright.

Two pages watch the same live room. One signs up on the page, buys coins with the test
card, and sends a gift from the tray; the other sees it arrive. A second test fills a room
with gifts and chat and saves a screenshot of it (the one the README shows).

Needs Debian's `chromium` (or `chromium-browser`) and the `playwright` Python package
(the `dev` extra); Playwright's own browser download is never used. Without either, the
tests skip and say why. Every wait is one of Playwright's auto-waiting assertions with
a generous timeout: the tests assert what the page shows, not how fast.

Screenshot: always written to the test's tmp_path; with GS_UPDATE_SCREENSHOT=1 also
copied to docs/live-room.png in the repository.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.accounts import APPROVED_CARD, funded, sign_up
from tests.room_client import RoomClient, chat, gift


def _find_chromium() -> str | None:
    candidates = ["/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


CHROMIUM = _find_chromium()
if CHROMIUM is None:
    pytest.skip(
        "no Chromium on this machine (/usr/bin/chromium, or chromium / chromium-browser "
        "on PATH): install Debian's `chromium` package to run the browser test",
        allow_module_level=True,
    )

playwright_api = pytest.importorskip(
    "playwright.async_api",
    reason="the `playwright` Python package is not installed (pip install -e '.[dev]')",
)
async_playwright = playwright_api.async_playwright
expect = playwright_api.expect

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000
VIEWPORT = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
REPO = Path(__file__).resolve().parents[1]
README_SCREENSHOT = REPO / "docs" / "live-room.png"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def contexts(browser: Any) -> AsyncIterator[list[Any]]:
    """New browser contexts (separate storage: separate users); closed after the test."""
    opened: list[Any] = []
    yield opened
    for context in opened:
        await context.close()


async def open_room(
    browser: Any, contexts: list[Any], server_url: str, room_id: str, **options: Any
) -> Any:
    context = await browser.new_context(viewport=VIEWPORT, **options)
    contexts.append(context)
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    await page.goto(f"{server_url}/#/room/{room_id}")
    return page


async def connected(page: Any) -> None:
    await expect(page.locator("#conn-status")).to_have_attribute(
        "data-state", "live", timeout=WAIT_MS
    )


async def live_room(http: httpx.AsyncClient, *, creator: str, title: str) -> tuple[Any, str]:
    account = await sign_up(http, name=creator)
    r = await http.post("/api/rooms", json={"title": title}, headers=account.headers)
    assert r.status_code == 201, r.text
    return account, r.json()["room_id"]


def ws_url_of(server_url: str) -> str:
    return "ws" + server_url.removeprefix("http")


async def test_a_gift_sent_on_one_page_appears_on_the_other(
    browser: Any, contexts: list[Any], server_url: str, http: httpx.AsyncClient
) -> None:
    creator, room_id = await live_room(http, creator="Maya", title="Browser test live")
    viewer = await open_room(browser, contexts, server_url, room_id)
    watcher = await open_room(browser, contexts, server_url, room_id)
    for page in (viewer, watcher):
        await connected(page)
        await expect(page.locator("#room-title")).to_have_text("Browser test live")
        await expect(page.locator("#room-creator")).to_have_text("@Maya")
        await expect(
            page.locator("#gift-tray > button.gift-btn[data-gift-id=doughnut]")
        ).to_be_visible()
    # Every gift in the tray is a picture shipped with the page (no emoji font needed).
    await expect_gift_art(viewer.locator("#gift-tray > button.gift-btn"))
    # Both pages watch: nobody else is in this room.
    await expect(watcher.locator("#viewer-count")).to_have_text("2", timeout=WAIT_MS)

    # Sign up on the page: the account panel is a pop-up on a room page.
    await viewer.click("#account-open")
    await expect(viewer.locator("#account-dialog")).to_be_visible()
    await viewer.fill("#signup-name", "Browser Fan")
    await viewer.fill("#signup-birthdate", "1990-05-17")
    await viewer.fill("#signup-region", "US")
    await viewer.click("#signup-submit")
    # Signed up inside a room: the dialog stays open and offers the recharge at once.
    await expect(viewer.locator("#recharge-offer")).to_be_visible(timeout=WAIT_MS)
    await expect(viewer.locator("#recharge-offer")).to_contain_text("Welcome, Browser Fan")
    await expect(viewer.locator("#account-dialog")).to_be_visible()
    await expect(viewer.locator("#signup-section")).to_be_hidden()
    await expect(viewer.locator("#recharge-package")).to_be_focused()
    await expect(viewer.locator("#recharge-later")).to_be_visible()
    await expect(viewer.locator("#signup-error")).to_be_hidden()
    await expect(viewer.locator("#profile-name")).to_have_text("Browser Fan")
    await expect(viewer.locator("#balance")).to_have_text("0")
    user_id = await viewer.evaluate(
        "() => JSON.parse(localStorage.getItem('giftstream.user')).user_id"
    )
    assert isinstance(user_id, str) and user_id
    # The page reconnects as the new user.
    await connected(viewer)

    # Buy 1,000 coins with the approving test card, right in the offer.
    await viewer.select_option("#recharge-package", "p1000")
    await viewer.fill("#recharge-card", APPROVED_CARD)
    await viewer.click("#recharge-submit")
    await expect(viewer.locator("#account-dialog")).to_be_hidden(timeout=WAIT_MS)
    await expect(viewer.locator("#recharge-error")).to_be_hidden()
    await expect(viewer.locator("#balance")).to_have_text("1000", timeout=WAIT_MS)
    await expect(viewer.locator("#balance")).to_have_attribute("data-coins", "1000")
    await expect(viewer.locator("#recharge-offer")).to_be_hidden()

    # A Doughnut (30 coins) from the tray.
    await viewer.click("#gift-tray > button.gift-btn[data-gift-id=doughnut]")
    await expect(viewer.locator("#balance")).to_have_text("970", timeout=WAIT_MS)

    # The other page sees it: in the feed, and its sender tops the gifters.
    arrived = watcher.locator(
        f"#feed > .gift-event[data-gift-id=doughnut][data-user-id='{user_id}']"
    )
    await expect(arrived).to_have_count(1, timeout=WAIT_MS)
    await expect(arrived.locator(".gift-from")).to_have_text("Browser Fan")
    await expect(arrived.locator(".combo")).to_have_text("x1")
    await expect(watcher.locator(f"#top-gifters > li[data-user-id='{user_id}']")).to_be_visible(
        timeout=WAIT_MS
    )
    await expect_gift_art(arrived.locator(".gift-icon"))
    # And so does the sender's own page.
    await expect(
        viewer.locator(f"#feed > .gift-event[data-gift-id=doughnut][data-user-id='{user_id}']")
    ).to_have_count(1, timeout=WAIT_MS)

    # Chat typed on one page shows on the other.
    await viewer.fill("#chat-input", "hello from the browser")
    await viewer.click("#chat-send")
    line = watcher.locator("#chat-log > li.chat-line", has_text="hello from the browser")
    await expect(line).to_have_count(1, timeout=WAIT_MS)

    # The money moved on the server, exactly once.
    r = await http.get("/api/wallet", headers={"Authorization": f"Bearer {await token_of(viewer)}"})
    assert r.status_code == 200, r.text
    assert r.json()["coins"] == 970
    r = await http.get("/api/wallet", headers=creator.headers)
    assert r.json()["diamonds"] == 30
    toasts = watcher.locator("#toast > .toast-item[data-code]")
    assert await toasts.count() == 0, await toasts.all_inner_texts()


async def expect_gift_art(items: Any) -> None:
    """Each item holds a gift picture from /static/gifts/, loaded and drawn."""
    await expect(items.first).to_be_visible()
    arts = await items.evaluate_all(
        """els => els.map(e => {
             const img = e.querySelector("img.gift-art");
             return img && { src: new URL(img.src).pathname, loaded: img.complete,
                             width: img.naturalWidth, shown: img.offsetWidth };
           })"""
    )
    assert arts and all(arts), arts
    for art in arts:
        assert art["src"].startswith("/static/gifts/") and art["src"].endswith(".svg"), art
        assert art["loaded"] and art["width"] > 0 and art["shown"] >= 16, art
    # Every gift of the catalog has a picture of its own (gift.svg is for unknown ids).
    assert not any(a["src"] == "/static/gifts/gift.svg" for a in arts), arts


async def token_of(page: Any) -> str:
    token = await page.evaluate("() => localStorage.getItem('giftstream.token')")
    assert isinstance(token, str) and token
    return token


async def test_screenshot_of_a_lively_room(
    browser: Any,
    contexts: list[Any],
    server_url: str,
    http: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    creator, room_id = await live_room(http, creator="Maya", title="Late-night lo-fi & code")
    fans = [await funded(http, "p10000", name=name) for name in ("Leo", "Priya", "Sam", "Yuki")]
    me = await funded(http, "p5000", name="You")
    # The page is signed in as `me` from the start (the session lives in localStorage).
    page = await open_room(browser, contexts, server_url, room_id)
    await page.evaluate(
        "([token, user]) => { localStorage.setItem('giftstream.token', token);"
        " localStorage.setItem('giftstream.user', JSON.stringify(user)); }",
        [me.token, {"user_id": me.user_id, "name": "You"}],
    )
    await page.reload()
    await connected(page)
    await expect(page.locator("#balance")).to_have_text("5000", timeout=WAIT_MS)

    url = ws_url_of(server_url)
    host = await RoomClient.open(url, room_id, token=creator.token)
    clients = [await RoomClient.open(url, room_id, token=fan.token) for fan in fans]
    leo, priya, sam, yuki = clients
    try:
        await say(host, "welcome in, everyone! tonight: a tiny Redis clone")
        await say(leo, "first! 🎉")
        for _ in range(5):  # a combo: x1 .. x5
            assert (await leo.request(gift("rose")))["type"] == "ack"
        await say(priya, "the lo-fi playlist is perfect")
        assert (await priya.request(gift("doughnut", 3)))["type"] == "ack"
        await say(sam, "how do you handle the AOF rewrite?")
        assert (await yuki.request(gift("finger_heart", 2)))["type"] == "ack"
        await say(host, "great question Sam: fork + rewrite, then swap")
        await say(yuki, "sending love from Osaka")
        # The page's own gifts, from the tray, as a user taps them.
        for _ in range(3):
            await page.click("#gift-tray > button.gift-btn[data-gift-id=heart_me]")
        big = await biggest_affordable_gift(http, 2000)
        assert (await sam.request(gift(big)))["type"] == "ack"
        await say(priya, "WOW Sam 😍")

        await expect(page.locator(f"#feed > .gift-event[data-gift-id='{big}']")).to_have_count(
            1, timeout=WAIT_MS
        )
        await expect(page.locator("#chat-log > li.chat-line")).to_have_count(7, timeout=WAIT_MS)
        await expect(
            page.locator(f"#feed > .gift-event[data-user-id='{me.user_id}']").last.locator(".combo")
        ).to_have_text("x3", timeout=WAIT_MS)
        await expect(page.locator("#top-gifters > li")).to_have_count(5, timeout=WAIT_MS)
        await expect(page.locator("#viewer-count")).to_have_text("6", timeout=WAIT_MS)
        # Let the big gift's burst reach its full size before the picture.
        await asyncio.sleep(0.8)
        shot = tmp_path / "live-room.png"
        await page.screenshot(path=str(shot))
    finally:
        for client in (host, *clients):
            await client.close()

    assert shot.stat().st_size > 10_000
    if os.environ.get("GS_UPDATE_SCREENSHOT") == "1":
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, README_SCREENSHOT)


async def say(client: RoomClient, text: str) -> None:
    """A chat line, once its sender has seen it published (chat has no ack)."""
    await client.send(chat(text))
    while not any(e["kind"] == "chat" and e["text"] == text for e in client.events):
        frame = await client.read()
        assert frame["type"] != "error", frame


async def biggest_affordable_gift(http: httpx.AsyncClient, coins: int) -> str:
    """The priciest gift of a big tier costing at most `coins`, so a burst shows."""
    r = await http.get("/api/gifts")
    assert r.status_code == 200, r.text
    gifts = [g for g in r.json()["gifts"] if g["coins"] <= coins]
    return str(max(gifts, key=lambda g: g["coins"])["id"])


async def test_phone_layout_keeps_status_title_and_chat_in_view(
    browser: Any,
    contexts: list[Any],
    server_url: str,
    http: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    """At 390x844 (a phone): the connection status is not cut off, the title is readable,
    the chat and its input and the first gifts are above the fold, nothing scrolls sideways."""
    _, room_id = await live_room(http, creator="Maya", title="Late-night lo-fi & code")
    me = await funded(http, "p1000", name="Phone Viewer")
    context = await browser.new_context(
        viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2
    )
    contexts.append(context)
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    await page.goto(f"{server_url}/#/room/{room_id}")
    await page.evaluate(
        "([token, user]) => { localStorage.setItem('giftstream.token', token);"
        " localStorage.setItem('giftstream.user', JSON.stringify(user)); }",
        [me.token, {"user_id": me.user_id, "name": "Phone Viewer"}],
    )
    await page.reload()
    await connected(page)
    await expect(page.locator("#balance")).to_have_text("1000", timeout=WAIT_MS)
    await expect(page.locator("#room-title")).to_have_text("Late-night lo-fi & code")
    await expect(page.locator("#gift-tray > button.gift-btn").first).to_be_visible()
    await expect(page.locator("#conn-status")).to_have_text("Connected")

    layout = await page.evaluate(
        """() => {
             const box = (s) => { const r = document.querySelector(s).getBoundingClientRect();
                                  return { left: r.left, right: r.right, top: r.top,
                                           bottom: r.bottom, width: r.width }; };
             const status = document.querySelector("#conn-status");
             return {
               scrollX: window.scrollX, scrollY: window.scrollY,
               pageWidth: document.documentElement.scrollWidth,
               stage: box("#stage"), status: box("#conn-status"),
               statusCut: status.scrollWidth > status.clientWidth,
               title: box("#room-title"), chatLog: box("#chat-log"),
               chatInput: box("#chat-input"), chatSend: box("#chat-send"),
               firstGift: box("#gift-tray > button.gift-btn"),
               topbar: box(".topbar"), account: box("#account-open"),
             };
           }"""
    )
    width, height = PHONE["width"], PHONE["height"]
    assert layout["scrollX"] == 0 and layout["scrollY"] == 0, layout
    assert layout["pageWidth"] <= width, layout
    # The status pill: whole, inside the stage.
    assert not layout["statusCut"], layout
    assert layout["stage"]["left"] <= layout["status"]["left"], layout
    assert layout["status"]["right"] <= layout["stage"]["right"], layout
    # The title: room for a readable part of it (not one letter).
    assert layout["title"]["width"] >= 120, layout
    # The account button stays on screen.
    assert layout["account"]["right"] <= width, layout
    # Above the fold: the chat, its input and send button, and the first gift.
    for part in ("chatLog", "chatInput", "chatSend", "firstGift"):
        assert 0 <= layout[part]["top"] and layout[part]["bottom"] <= height, (part, layout)
    shot = tmp_path / "live-room-phone.png"
    await page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
