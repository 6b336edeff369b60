"""The demo web client in a real headless Chromium (Debian's, driven by Playwright; no
downloaded browser): two users on their own pages, a conversation created in the UI, messages
sent over the HTTP API appearing live for the other user, a network drop that loses nothing,
a typing indicator, a thread in the side panel, a search in the search box that jumps to
the message found, and attachments: a real JPEG and a real PDF uploaded from the page straight
to the S3 server, the photo's thumbnail appearing live for both users, and both files
downloaded back byte for byte, then the same from the thread panel's reply box. The
screenshots are saved to artifacts/ (demo.png, demo-alice.png, demo-attachments.png).
"""

from __future__ import annotations

import asyncio
import pathlib
import re
from typing import Any

import pytest
from chat_devtools.ports import candidate_port, retry_on_port_in_use
from chat_devtools.services import Api, Gateway, Relay
from playwright.async_api import Page, async_playwright, expect

from tests.attachment_helpers import pdf_document, photo_jpeg
from tests.conftest import ROOT
from tests.support.ws_stack import base_env

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
SCREENSHOT = ROOT / "artifacts" / "demo.png"


@pytest.fixture
async def demo(db_source: str, redis_addr: str, s3: Any, tmp_path: pathlib.Path):
    # A short typing window: the page shows each signal; the window itself is tested elsewhere.
    # The S3 server as ./dev run starts it: the page uploads to it and downloads from it.
    env = base_env(db_source, redis_addr, RATE_LIMIT_TYPING_INTERVAL="0.3", **s3.env())
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


async def signed_in(browser: Any, url: str, errors: list[str],
                    failed: list[str] | None = None) -> tuple[Page, Page]:
    """Alice's and Bob's pages, each in its own context, signed in; page errors (and, with
    ``failed``, every answer of 400 or more, from any origin) are collected."""
    pages = []
    for user in ("alice", "bob"):
        ctx = await browser.new_context(viewport={"width": 1100, "height": 800},
                                        accept_downloads=True)
        page = await ctx.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        if failed is not None:
            page.on("response", lambda r: failed.append(f"{r.status} {r.url}")
                    if r.status >= 400 else None)
        await sign_in(page, url, user)
        pages.append(page)
    return pages[0], pages[1]


async def open_together(alice: Page, bob: Page, members: str, title: str, first: str) -> None:
    """Alice creates a conversation in the UI and writes ``first`` in it; Bob opens it."""
    await alice.get_by_label("Members (comma-separated user ids)").fill(members)
    await alice.get_by_label("Title (optional)").fill(title)
    await alice.get_by_role("button", name="Create").click()
    await expect(alice.locator("#conv-title")).to_have_text(title)
    await send(alice, first)
    await bob.locator("#conv-list button", has_text=title).click(timeout=20_000)
    await expect(bob.locator("#messages li .content")).to_have_text([first], timeout=20_000)


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
            errors: list[str] = []
            alice, bob = await signed_in(browser, demo.url, errors)
            await open_together(alice, bob, "bob, carol", "Team room", "first draft")

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


async def test_an_image_and_a_pdf_attached_previewed_and_downloaded_in_chromium(
        demo: Gateway, tmp_path: pathlib.Path):
    photo, pdf = photo_jpeg(1600, 1200), pdf_document("quarterly plan")
    reply_photo, reply_pdf = photo_jpeg(800, 600), pdf_document("meeting notes")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            errors: list[str] = []
            failed: list[str] = []  # any answer >= 400: the gateway's, the API's, the store's
            alice, bob = await signed_in(browser, demo.url, errors, failed)
            await open_together(alice, bob, "bob", "Files", "files coming")

            # The photo with a caption, then the PDF alone (a message of a file, no text):
            # both users have the conversation open, so each sees them, and the thumbnail,
            # arrive live.
            await alice.locator("#attach").set_input_files(
                [{"name": "beach.jpg", "mimeType": "image/jpeg", "buffer": photo}])
            await expect(alice.locator("#attach-list")).to_contain_text("beach.jpg")
            await send(alice, "from the trip")
            await expect(alice.locator("#messages > li")).to_have_count(2, timeout=20_000)
            await alice.locator("#attach").set_input_files(
                [{"name": "plan.pdf", "mimeType": "application/pdf", "buffer": pdf}])
            await alice.get_by_role("button", name="Send").click()
            await expect(alice.locator("#messages > li")).to_have_count(3, timeout=20_000)
            await expect(alice.locator("#attach-list")).to_have_text("")

            for page in (alice, bob):
                items = page.locator("#messages > li")
                await expect(items.locator(".content")).to_have_text(
                    ["files coming", "from the trip", ""], timeout=20_000)
                await expect(items.nth(1).locator(".attachments .file")).to_contain_text(
                    "beach.jpg")
                await expect(items.nth(2).locator(".attachments .file")).to_contain_text(
                    "plan.pdf")
                # The thumbnail arrives with message.updated and is shown from the store.
                thumb = items.nth(1).locator("img.thumb")
                await expect(thumb).to_be_visible(timeout=30_000)
                await expect(thumb).to_have_attribute("alt", "beach.jpg")
                await expect(thumb).to_have_attribute("src", re.compile(r"^http://127\.0\.0\.1:"))
                await expect(thumb).to_have_js_property("complete", True)
                assert await thumb.evaluate("img => [img.naturalWidth, img.naturalHeight]") \
                    == [320, 240]
                await expect(items.nth(2).locator("img")).to_have_count(0)

            # Bob downloads both: the bytes Alice uploaded, under their names.
            for name, data in (("beach.jpg", photo), ("plan.pdf", pdf)):
                async with bob.expect_download(timeout=20_000) as info:
                    await bob.get_by_role("button", name=f"Download {name}").click()
                download = await info.value
                assert download.suggested_filename == name
                saved = tmp_path / f"bob-{name}"
                await download.save_as(saved)
                assert saved.read_bytes() == data, name

            # The thread's reply box attaches files too: Bob answers the photo in its thread
            # with another photo and a caption, then with a PDF alone (a reply of a file, no
            # text); Alice, with the thread open, sees both live, the thumbnail too, and
            # downloads them from the panel.
            await bob.locator("#messages > li", has_text="from the trip").get_by_role(
                "button", name="Reply").click()
            await expect(bob.locator("#thread-root .content")).to_have_text("from the trip")
            await bob.locator("#thread-attach").set_input_files(
                [{"name": "sunset.jpg", "mimeType": "image/jpeg", "buffer": reply_photo}])
            await expect(bob.locator("#thread-attach-list")).to_contain_text("sunset.jpg")
            reply_box = bob.get_by_label("Reply in thread", exact=True)
            await reply_box.fill("and the sunset")
            await reply_box.press("Enter")
            await expect(bob.locator("#thread-messages > li")).to_have_count(1, timeout=20_000)
            await expect(bob.locator("#thread-attach-list")).to_have_text("")
            await bob.locator("#thread-attach").set_input_files(
                [{"name": "notes.pdf", "mimeType": "application/pdf", "buffer": reply_pdf}])
            await bob.locator("#thread-send").click()
            await expect(bob.locator("#thread-messages > li")).to_have_count(2, timeout=20_000)

            root = alice.locator("#messages > li", has_text="from the trip")
            await root.get_by_role("button", name="2 replies").click(timeout=20_000)
            for page in (alice, bob):
                replies = page.locator("#thread-messages > li")
                await expect(replies.locator(".content")).to_have_text(
                    ["and the sunset", ""], timeout=20_000)
                await expect(replies.nth(0).locator(".attachments .file")).to_contain_text(
                    "sunset.jpg")
                await expect(replies.nth(1).locator(".attachments .file")).to_contain_text(
                    "notes.pdf")
                thumb = replies.nth(0).locator("img.thumb")
                await expect(thumb).to_be_visible(timeout=30_000)
                await expect(thumb).to_have_attribute("alt", "sunset.jpg")
                await expect(thumb).to_have_js_property("complete", True)
                assert await thumb.evaluate("img => [img.naturalWidth, img.naturalHeight]") \
                    == [320, 240]
                await expect(replies.nth(1).locator("img")).to_have_count(0)
                # The replies stay in the thread: the main list keeps its three messages.
                await expect(page.locator("#messages > li")).to_have_count(3)
            for name, data in (("sunset.jpg", reply_photo), ("notes.pdf", reply_pdf)):
                async with alice.expect_download(timeout=20_000) as info:
                    await alice.locator("#thread-messages").get_by_role(
                        "button", name=f"Download {name}").click()
                download = await info.value
                assert download.suggested_filename == name
                saved = tmp_path / f"alice-{name}"
                await download.save_as(saved)
                assert saved.read_bytes() == data, name
            assert errors == []
            assert failed == [], failed
            SCREENSHOT.parent.mkdir(exist_ok=True)
            await bob.screenshot(path=str(SCREENSHOT.with_name("demo-attachments.png")),
                                 full_page=True)
        finally:
            await browser.close()
