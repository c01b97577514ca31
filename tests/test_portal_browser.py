"""The whole portal flow in real headless Chromium against `rthub portal serve` and a nats-server in operator
mode: sign up, request a direct subscription, an administrator approves, the consumer downloads the `.creds`,
a nats-py client with it receives its course's statements and is refused elsewhere; revocation cuts it off."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

import nats
import pytest

from hub.auth import AuthStore
from hub.core.creds import creds_inbox_prefix
from hub.core.grants import consumer_name
from hub.core.subjects import subject
from hub.ops.natsserver import free_port, wait_port
from tests.helpers import rthub, rthub_env, rthub_popen, unique, wait_for
from tests.mailbox import Mailbox, body, link
from tests.operator_kit import operator_fixtures

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
COURSE = "course-v1:edX+DemoX+Demo_Course"
OTHER = "course-v1:edX+Other+2025"
PASSWORD = "browser test password"

# every Chromium test module's marks (the others import them)
BROWSER_MARKS = [pytest.mark.browser,
                 pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (apt-get install chromium)")]
pytestmark = BROWSER_MARKS


data_dir, op_server, admin_nc = operator_fixtures("portal-op")


class Client:
    """A nats-py client that records permission errors and disconnects."""

    def __init__(self):
        self.errors: list[str] = []
        self.disconnected = asyncio.Event()
        self.nc = None

    async def connect(self, url: str, creds: str, **kw) -> Client:
        async def on_error(exc):
            self.errors.append(str(exc))

        async def on_disconnect():
            self.disconnected.set()

        self.nc = await nats.connect(servers=[url], user_credentials=creds, error_cb=on_error,
                                     disconnected_cb=on_disconnect, connect_timeout=3, **kw)
        return self

    def violated(self, text: str) -> bool:
        # nats-py lower-cases the server's error text
        return any("permissions violation" in e.lower() and text.lower() in e.lower() for e in self.errors)


@pytest.fixture(scope="module")
def mailbox():
    box = Mailbox().start()
    yield box
    box.stop()


@pytest.fixture(scope="module")
def portal_url(op_server, data_dir, admin_nc, mailbox):
    auth = AuthStore.ensure(data_dir)
    port = free_port()
    env = rthub_env(op_server.url, RTHUB_DATA_DIR=str(data_dir), RTHUB_NATS_CREDS=str(auth.service_creds("portal")),
                    RTHUB_PORTAL_PORT=str(port), RTHUB_SITES=json.dumps({"default": "http://localhost:18000"}),
                    RTHUB_PUBLIC_URL=f"http://127.0.0.1:{port}", **mailbox.env())
    made = rthub("portal", "create-admin", "--email", "admin@example.org", "--password-stdin", env=env,
                 input=(PASSWORD + "\n").encode())
    assert made.returncode == 0, made.stderr.decode()
    assert b"administrator admin@example.org ready" in made.stdout and PASSWORD.encode() not in made.stdout
    proc = rthub_popen("portal", "serve", env=env)
    try:
        wait_port(port, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=15)
        logs = out + err
        assert b"whsec_" not in logs and b"SUAM" not in logs and PASSWORD.encode() not in logs


async def fill_and_submit(page, fields: dict[str, str], button: str = "button[type=submit]"):
    for name, value in fields.items():
        await page.fill(f"[name={name}]", value)
    async with page.expect_navigation():
        await page.click(button)


async def test_signup_to_live_statements_and_revocation(portal_url, op_server, admin_nc, mailbox, tmp_path):
    from playwright.async_api import async_playwright

    email = f"{unique('b')}@example.org"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            consumer = await (await browser.new_context(accept_downloads=True)).new_page()
            console: list[str] = []
            consumer.on("console", lambda m: console.append(m.text))
            await consumer.goto(portal_url + "/signup")
            await fill_and_submit(consumer, {"email": email, "name": "Adaptive <b>Engine</b>", "password": PASSWORD})
            assert "Check your mail" in await consumer.inner_text("h1")
            # Not confirmed yet: logging in is refused with a clear message.
            await consumer.goto(portal_url + "/login")
            await fill_and_submit(consumer, {"email": email, "password": PASSWORD})
            assert "Confirm your e-mail address first" in await consumer.inner_text("#error")
            mail = await mailbox.wait(email, "Confirm your e-mail")
            assert PASSWORD not in body(mail)
            await consumer.goto(link(mail, "/verify"))
            await fill_and_submit(consumer, {"password": PASSWORD}, "#confirm")
            assert consumer.url.split("?")[0].endswith("/integrations")
            await consumer.click("text=Request access to events")
            await consumer.check("input[name=protocol][value=xapi]")
            await consumer.select_option("select[name=delivery]", "direct")
            await consumer.check("input[name=sites][value=default]")
            await fill_and_submit(consumer, {"name": "Live hints", "courses": COURSE, "reason": "real-time hints"})
            assert await consumer.inner_text("#status") == "pending"
            key = consumer.url.split("/integrations/")[1].split("?")[0]

            admin = await (await browser.new_context()).new_page()
            admin.on("console", lambda m: console.append(m.text))
            asked: list[str] = []

            async def confirm(dialog):
                asked.append(dialog.message)
                await dialog.accept()

            admin.on("dialog", confirm)
            await admin.goto(portal_url + "/login")
            await fill_and_submit(admin, {"email": "admin@example.org", "password": PASSWORD})
            await admin.goto(portal_url + "/admin")
            async with admin.expect_navigation():
                await admin.click(f"a[href='/admin/integrations/{key}']")
            assert "real-time hints" in await admin.inner_text("#reason")
            async with admin.expect_navigation():
                await admin.click("#approve")
            assert await admin.inner_text("#status") == "approved"
            approved_mail = await mailbox.wait(email, "approved")
            assert f"/integrations/{key}" in body(approved_mail)

            await consumer.reload()
            assert await consumer.inner_text("#status") == "approved"
            example = await consumer.inner_text("#example")
            assert consumer_name(key) in example and "pull_subscribe_bind" in example
            async with consumer.expect_download() as info:
                await consumer.click("#download-creds")
            creds = tmp_path / f"{key}.creds"
            await (await info.value).save_as(creds)
            text = creds.read_text()
            assert "BEGIN NATS USER JWT" in text and "BEGIN USER NKEY SEED" in text
            assert "SUAM" not in await consumer.content()
            await consumer.screenshot(path=str(tmp_path / "integration.png"), full_page=True)
            await consumer.reload()  # the page now knows the latest download
            assert re.fullmatch(r"20\d\d-\d\d-\d\d \d\d:\d\d UTC", await consumer.inner_text("#last-creds-expiry"))
            cli = await consumer.inner_text("#cli-example")
            assert f"consumer next XAPI {consumer_name(key)}" in cli and f"--creds {key}.creds" in cli
            assert '"id"' in await consumer.inner_text("#sample") and "Lag" in await consumer.inner_text("#lag-help")

            # the copy-paste example runs as written, from the directory holding the downloaded .creds
            (tmp_path / "example.py").write_text(example)
            runner = subprocess.Popen([sys.executable, "example.py"], cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)

            live = await Client().connect(op_server.url, str(creds), inbox_prefix=creds_inbox_prefix(creds))
            js = live.nc.jetstream()
            sub = await js.pull_subscribe_bind(durable=consumer_name(key), stream="XAPI")
            admin_js = admin_nc.jetstream()
            mine = subject("xapi", "default", "edX", COURSE, "http://adlnet.gov/expapi/verbs/played")
            other = subject("xapi", "default", "edX", OTHER, "http://adlnet.gov/expapi/verbs/played")
            await admin_js.publish(other, b'{"id": "other"}')
            await admin_js.publish(mine, b'{"id": "mine"}')
            try:
                got = [json.loads(m.data)["id"] for m in await sub.fetch(5, timeout=3)]
            except nats.errors.TimeoutError:
                got = []
            # the example program shares the durable consumer: between the two, "mine" arrives exactly once
            line = await asyncio.wait_for(asyncio.to_thread(runner.stdout.readline), 10) if not got else ""
            assert got == ["mine"] or line.split() == [mine, "mine"], (got, line)

            await live.nc.subscribe(other)
            await wait_for(lambda: live.violated(other), 5, "refused on another course subject")
            await live.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.XAPI.{consumer_name('iforeign0000000')}", b"1")
            await wait_for(lambda: live.violated("iforeign"), 5, "refused on another consumer's durable")
            await live.nc.subscribe("_INBOX.>")
            await wait_for(lambda: live.violated("_INBOX.>"), 5, "refused on _INBOX.>")

            await admin.fill("form[action$='/revoke'] input[name=reason]", "end of pilot")
            async with admin.expect_navigation():
                await admin.click("#revoke")
            assert await admin.inner_text("#status") == "revoked"
            assert any(q.startswith("Revoke this integration") for q in asked)
            await asyncio.wait_for(live.disconnected.wait(), 5)
            # the example ends by itself with one line, not a reconnect/traceback loop
            _, err = await asyncio.to_thread(runner.communicate, timeout=30)
            assert "Traceback" not in err and ("access ended" in err or "subscription ended" in err), err
            with pytest.raises(Exception):  # noqa: B017 - nats-py raises several error types for a refused user
                again = await nats.connect(servers=[op_server.url], user_credentials=str(creds),
                                           inbox_prefix=creds_inbox_prefix(creds), connect_timeout=2,
                                           max_reconnect_attempts=0, allow_reconnect=False)
                await again.close()
            await live.nc.close()

            await admin.goto(portal_url + "/admin/audit")
            audit = await admin.inner_text("#audit")
            for action in ("integration.request", "integration.approve", "creds.issue", "integration.revoke",
                           "creds.revoke"):
                assert action in audit
            assert "end of pilot" in audit and "SUAM" not in audit
            await consumer.reload()
            assert await consumer.inner_text("#status") == "revoked"
            assert "Adaptive <b>Engine</b>" in await consumer.inner_text("header")  # shown as text, not markup
            assert not [m for m in console if "Content Security Policy" in m], console
        finally:
            await browser.close()


async def test_forgotten_password_reset_in_the_browser(portal_url, mailbox):
    from playwright.async_api import async_playwright

    email = f"{unique('reset')}@example.org"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await (await browser.new_context()).new_page()
            await page.goto(portal_url + "/signup")
            await fill_and_submit(page, {"email": email, "name": "Forgetful", "password": PASSWORD})
            await page.goto(link(await mailbox.wait(email, "Confirm your e-mail"), "/verify"))
            await fill_and_submit(page, {"password": PASSWORD}, "#confirm")
            await page.click("header form button")  # log out
            await page.wait_for_url("**/login*")
            await page.click("text=Forgot your password?")
            await fill_and_submit(page, {"email": email})
            assert "Check your mail" in await page.inner_text("h1")
            await page.goto(link(await mailbox.wait(email, "Reset your rthub portal password"), "/reset"))
            await fill_and_submit(page, {"password": "a new browser password"}, "#save-password")
            assert "Password changed" in await page.inner_text(".flash")
            await fill_and_submit(page, {"email": email, "password": PASSWORD})
            assert "Wrong e-mail address or password" in await page.inner_text("#error")
            await fill_and_submit(page, {"email": email, "password": "a new browser password"})
            assert page.url.split("?")[0].endswith("/integrations")
            await page.goto(portal_url + "/tokens")
            await page.fill("[name=name]", "dashboard")
            await page.fill("[name=days]", "7")
            await page.check("[name=read_only]")
            async with page.expect_navigation():
                await page.click("text=Create token")
            assert (await page.inner_text("#new-token")).startswith("rth_")
            row = await page.inner_text("tbody tr")
            assert "dashboard" in row and "read-only" in row and "never" not in row
        finally:
            await browser.close()
