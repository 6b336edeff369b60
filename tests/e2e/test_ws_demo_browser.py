"""The demo web client in a real headless Chromium (Debian's, driven by Playwright; no
downloaded browser): two users on their own pages, a conversation created in the UI, messages
sent over the HTTP API appearing live for the other user, a network drop that loses nothing,
a typing indicator, a thread in the side panel, and a search in the search box that jumps to
the message found. The last screenshot is saved to artifacts/demo.png.
"""

from __future__ import annotations

import asyncio
import pathlib

import pytest
from chat_devtools.ports import candidate_port, retry_on_port_in_use
from chat_devtools.services import Api, Gateway, Relay
from playwright.async_api import Page, async_playwright, expect

from tests.conftest import ROOT
from tests.support.ws_stack import base_env

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
SCREENSHOT = ROOT / "artifacts" / "demo.png"


@pytest.fixture
async def demo(db_source: str, redis_addr: str, tmp_path: pathlib.Path):
    # A short typing window: the page shows each signal; the window itself is tested elsewhere.
    env = base_env(db_source, redis_addr, RATE_LIMIT_TYPING_INTERVAL="0.3")
    started: list[Api | Relay | Gateway] = [Relay(env, tmp_path).start()]

    def page_and_api() -> Gateway:
        # Each names the other: the page the API's URL, the API the page's origin (CORS). The
        # gateway binds port 0 first; the API's HTTP port is a candidate, tried again when taken.
        http_port = candidate_port()
        gw = Gateway({**env, "ENVIRONMENT": "development",
                      "API_PUBLIC_URL": f"http://127.0.0.1:{http_port}"}, tmp_path).start()
        api = Api({**env, "CORS_ALLOWED_ORIGINS": gw.url}, tmp_path, http_port=http_port)
        try:
            api.start().wait_ready()
        except BaseException:
            api.stop()
            gw.stop()
            raise
        started.extend((gw, api))
        return gw

    try:
        gw = await asyncio.to_thread(retry_on_port_in_use, page_and_api)
        await asyncio.gather(*(service.ready() for service in started))
        yield gw
    finally:
        for service in reversed(started):
            service.stop()


async def sign_in(page: Page, url: str, user: str) -> None:
    await page.goto(f"{url}/")
    await page.get_by_label("User", exact=True).fill(user)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#status")).to_have_text(f"Connected as {user}", timeout=20_000)


async def send(page: Page, text: str) -> None:
    await page.get_by_label("Message", exact=True).fill(text)
    await page.get_by_label("Message", exact=True).press("Enter")


async def test_two_users_chat_live_in_chromium_and_survive_a_network_drop(demo: Gateway):
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            alice_ctx = await browser.new_context(viewport={"width": 1100, "height": 700})
            bob_ctx = await browser.new_context(viewport={"width": 1100, "height": 700})
            alice, bob = await alice_ctx.new_page(), await bob_ctx.new_page()
            errors: list[str] = []
            failed: list[str] = []  # the gateway's own answers (page, scripts, favicon)
            for page in (alice, bob):
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.on("response", lambda r: failed.append(f"{r.status} {r.url}")
                        if r.url.startswith(demo.url) and r.status >= 400 else None)
            await sign_in(alice, demo.url, "alice")
            await sign_in(bob, demo.url, "bob")

            # Alice creates a conversation in the UI and writes in it.
            await alice.get_by_label("Members (comma-separated user ids)").fill("bob")
            await alice.get_by_label("Title (optional)").fill("Demo day")
            await alice.get_by_role("button", name="Create").click()
            await expect(alice.locator("#conv-title")).to_have_text("Demo day")
            await send(alice, "hello bob")
            await expect(alice.locator("#messages li")).to_have_count(1)

            # Bob's list learns about it live, with an unread badge; opening it shows the text.
            bob_conv = bob.locator("#conv-list button", has_text="Demo day")
            await expect(bob_conv.locator(".badge")).to_have_text("1", timeout=20_000)
            await bob_conv.click()
            await expect(bob.locator("#messages li .content")).to_have_text(["hello bob"])
            await expect(bob_conv.locator(".badge")).to_have_count(0)

            # Bob answers; Alice sees it arrive without reloading.
            await send(bob, "hi alice")
            await expect(alice.locator("#messages li .content")).to_have_text(
                ["hello bob", "hi alice"], timeout=20_000)

            # Bob's network drops; Alice keeps writing; Bob comes back and misses nothing.
            await bob_ctx.set_offline(True)
            await expect(bob.locator("#status")).to_contain_text("Disconnected", timeout=30_000)
            for count, text in enumerate(("while you were away 1", "while you were away 2",
                                          "and 3"), 3):
                # One send at a time: sends in flight together may commit in any order.
                await send(alice, text)
                await expect(alice.locator("#messages li")).to_have_count(count)
            await bob_ctx.set_offline(False)
            await expect(bob.locator("#status")).to_have_text("Connected as bob", timeout=30_000)
            await expect(bob.locator("#messages li .content")).to_have_text(
                ["hello bob", "hi alice", "while you were away 1", "while you were away 2",
                 "and 3"], timeout=20_000)

            # Alice opens a thread on her first message and types: Bob sees her typing.
            first = alice.locator("#messages li", has_text="hello bob")
            await first.get_by_role("button", name="Reply").click()
            await expect(alice.locator("#thread-root .content")).to_have_text("hello bob")
            reply_box = alice.get_by_label("Reply in thread", exact=True)
            for _ in range(40):  # keystrokes until one passes the page's and server's windows
                await reply_box.press("x")
                if await bob.locator("#typing").text_content() == "alice is typing…":
                    break
                await alice.wait_for_timeout(250)
            await expect(bob.locator("#typing")).to_have_text("alice is typing…")
            # Her reply goes to the thread: Bob's timeline keeps its five messages, the root
            # counts one reply, and her typing indicator is gone with her message.
            await reply_box.fill("in a thread")
            await reply_box.press("Enter")
            await expect(alice.locator("#thread-messages li .content")).to_have_text(
                ["in a thread"])
            bob_first = bob.locator("#messages li", has_text="hello bob")
            await expect(bob_first.get_by_role("button", name="1 reply")).to_be_visible(
                timeout=20_000)
            await expect(bob.locator("#typing")).to_have_text("")
            await expect(bob.locator("#messages li")).to_have_count(5)
            # Bob opens the thread and answers in it; Alice's panel and count follow live.
            await bob_first.get_by_role("button", name="1 reply").click()
            await expect(bob.locator("#thread-messages li .content")).to_have_text(
                ["in a thread"])
            await bob.get_by_label("Reply in thread", exact=True).fill("got it")
            await bob.get_by_label("Reply in thread", exact=True).press("Enter")
            await expect(alice.locator("#thread-messages li .content")).to_have_text(
                ["in a thread", "got it"], timeout=20_000)
            await expect(first.get_by_role("button", name="2 replies")).to_be_visible()
            # Bob searches; the hit shows its matched words marked and jumps to the message.
            await bob.get_by_label("Search messages").fill("away 2")
            hit = bob.locator("#search-results button")
            await expect(hit).to_have_count(1, timeout=20_000)
            await expect(hit.locator("mark")).to_have_text(["away", "2"])
            await hit.click()
            await expect(bob.locator("#conv-title")).to_have_text("Demo day")
            await expect(bob.locator("#messages li.found .content")).to_have_text(
                "while you were away 2")
            assert errors == []
            assert failed == [], failed

            SCREENSHOT.parent.mkdir(exist_ok=True)
            await bob.screenshot(path=str(SCREENSHOT), full_page=True)
            await alice.screenshot(path=str(SCREENSHOT.with_name("demo-alice.png")),
                                   full_page=True)
            assert SCREENSHOT.stat().st_size > 10_000
            print(f"\ndemo screenshot: {SCREENSHOT}")
        finally:
            await browser.close()


async def test_members_edits_deletions_and_reactions_in_chromium(demo: Gateway):
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pages = {}
            errors: list[str] = []
            for user in ("alice", "bob"):
                ctx = await browser.new_context(viewport={"width": 1100, "height": 800})
                pages[user] = page = await ctx.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await sign_in(page, demo.url, user)
            alice, bob = pages["alice"], pages["bob"]

            await alice.get_by_label("Members (comma-separated user ids)").fill("bob, carol")
            await alice.get_by_label("Title (optional)").fill("Team room")
            await alice.get_by_role("button", name="Create").click()
            await expect(alice.locator("#conv-title")).to_have_text("Team room")
            await send(alice, "first draft")
            await bob.locator("#conv-list button", has_text="Team room").click(timeout=20_000)
            await expect(bob.locator("#messages li .content")).to_have_text(["first draft"],
                                                                            timeout=20_000)

            # Bob reacts; Alice sees the count live.
            await bob.get_by_role("button", name="React 👍").click()
            await expect(alice.locator("#messages li .reactions button.reaction").first
                         ).to_have_text("👍 1", timeout=20_000)

            # Alice edits her message (the browser's prompt) and Bob sees the new text.
            alice.once("dialog", lambda dialog: asyncio.ensure_future(
                dialog.accept("final text")))
            await alice.get_by_role("button", name="Edit").click()
            await expect(bob.locator("#messages li .content")).to_have_text(["final text"],
                                                                            timeout=20_000)
            await expect(bob.locator("#messages li .meta")).to_contain_text(["edited"])

            # Alice deletes it: a tombstone on both sides, without its text or reactions.
            await alice.get_by_role("button", name="Delete").click()
            await expect(bob.locator("#messages li .content")).to_have_text(
                ["message deleted"], timeout=20_000)
            await expect(bob.locator("#messages li .reactions")).to_have_count(0)

            # The members panel: Alice adds dave and removes carol; Bob's panel follows.
            await alice.locator("#members-panel summary").click()
            await alice.get_by_label("Users to add").fill("dave")
            await alice.get_by_role("button", name="Add", exact=True).click()
            await alice.get_by_role("button", name="Remove carol").click()
            await bob.locator("#members-panel summary").click()
            await expect(bob.locator("#member-list li > span")).to_have_text(
                ["alice", "bob (you)", "dave"], timeout=20_000)
            await expect(bob.locator("#add-member-form")).to_be_hidden()

            # Bob leaves: the conversation is gone from his list, and stays gone for Alice's
            # next events.
            await bob.get_by_role("button", name="Leave conversation").click()
            await expect(bob.locator("#conv-list button", has_text="Team room")).to_have_count(0)
            await expect(alice.locator("#member-list li > span")).to_have_text(
                ["alice (you)", "dave"], timeout=20_000)
            await send(alice, "after bob left")
            await expect(alice.locator("#messages li")).to_have_count(2)
            await expect(bob.locator("#conv-list button", has_text="Team room")).to_have_count(0)
            assert errors == []
        finally:
            await browser.close()
