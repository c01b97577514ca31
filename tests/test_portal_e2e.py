"""Issue 10 in real Chromium against a running system: nats-server in operator mode, `rthub portal serve` and
`rthub deliver` with their own least-privilege credentials, a real HTTP receiver on 127.0.0.1. The pages run
under a strict Content-Security-Policy (no inline script) and are checked with axe-core at 1280 and 390 px."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import msgspec
import pytest

from hub.auth import AuthStore
from hub.core.grants import Target
from hub.core.subjects import TARGETS_BUCKET, subject
from hub.ops.natsserver import free_port, wait_port
from tests.deliver_receivers import Receiver
from tests.helpers import rthub, rthub_env, rthub_popen, unique, wait_for
from tests.mailbox import Mailbox, link
from tests.operator_kit import operator_fixtures
from tests.test_portal_browser import ARGS, BROWSER_MARKS, CHROMIUM

COURSE = "course-v1:DemoX+Demo1+2024_T1"
PASSWORD = "e2e test password!"
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

pytestmark = BROWSER_MARKS


class Switch:
    def __init__(self):
        self.status = 200

    def __call__(self, req):
        return self.status, {}, (b"ok" if self.status < 300 else b'{"error": "receiver down"}')


data_dir, op_server, admin_nc = operator_fixtures("portal-e2e")


@pytest.fixture(scope="module")
def mailbox():
    box = Mailbox().start()
    yield box
    box.stop()


@pytest.fixture(scope="module")
def system(op_server, data_dir, admin_nc, mailbox):
    """The portal and the deliverer as processes, each with its own service credentials; mail to ``mailbox``."""
    auth = AuthStore.ensure(data_dir)
    port = free_port()
    common = {"RTHUB_DATA_DIR": str(data_dir), "RTHUB_ALLOWED_NETWORKS": "127.0.0.1/32"}
    portal_env = rthub_env(op_server.url, **common, RTHUB_NATS_CREDS=str(auth.service_creds("portal")),
                           RTHUB_PORTAL_PORT=str(port), RTHUB_SITES=json.dumps({"default": "http://localhost:18000"}),
                           RTHUB_PUBLIC_URL=f"http://127.0.0.1:{port}", **mailbox.env())
    made = rthub("portal", "create-admin", "--email", "admin@example.org", "--password-stdin", env=portal_env,
                 input=(PASSWORD + "\n").encode())
    assert made.returncode == 0, made.stderr.decode()
    deliver_env = rthub_env(op_server.url, **common, RTHUB_NATS_CREDS=str(auth.service_creds("deliverer")),
                            RTHUB_RETRY_SCHEDULE="0.05s,20s", RTHUB_RETRY_JITTER="0", RTHUB_METRICS_PORT="-1",
                            RTHUB_ACK_WAIT="2s", RTHUB_LEASE_TTL="1s")
    portal = rthub_popen("portal", "serve", env=portal_env)
    deliver = rthub_popen("deliver", env=deliver_env)
    try:
        wait_port(port, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        for proc in (portal, deliver):
            proc.terminate()
        logs = b"".join(b"".join(p.communicate(timeout=15)) for p in (portal, deliver))
        assert b"Traceback" not in logs, logs.decode()[-3000:]
        assert b"whsec_" not in logs and PASSWORD.encode() not in logs


async def strict_csp(context, violations: list[str]) -> None:
    """Serve every page with a strict CSP, and record what the browser refuses because of it."""
    async def add_csp(route):
        response = await route.fetch(max_redirects=0)  # the browser follows redirects itself
        await route.fulfill(response=response, headers={**response.headers, "content-security-policy": CSP})

    await context.route("**/*", add_csp)

    def on_console(msg):
        if "Content Security Policy" in msg.text or "Refused to" in msg.text:
            violations.append(msg.text)

    context.on("page", lambda p: p.on("console", on_console))


async def strict_page(browser, violations: list[str]):
    """A 1280x900 page under the strict CSP (see :func:`strict_csp`) that accepts every confirm dialog."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    await strict_csp(context, violations)
    page = await context.new_page()
    page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
    return page


async def axe(page, label: str) -> None:
    """axe-core on the current page: no violation of any impact (WCAG 2.1 A/AA and best practices)."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.evaluate(AXE.read_text())  # run by the test driver (DevTools), so the page's CSP stays strict
    result = await page.evaluate("async () => (await axe.run(document)).violations.map(v => ({id: v.id, "
                                 "impact: v.impact, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 3)}))")
    assert result == [], f"{label}: {json.dumps(result, indent=1)}"


async def shows(page, selector: str, text: str) -> bool:
    return (await page.inner_text(selector)).strip() == text


async def _contains(page, selector: str, text: str) -> bool:
    return text in await page.inner_text(selector)


async def submit(page, selector: str = "button[type=submit]"):
    async with page.expect_navigation():
        await page.click(selector)


async def test_consumer_runs_an_integration_from_the_portal(system, admin_nc, mailbox, tmp_path):
    from playwright.async_api import async_playwright

    switch = Switch()
    receiver = await Receiver(switch).start()
    admin_js = admin_nc.jetstream()
    email = f"{unique('e')}@example.org"
    violations: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            # CSP on the context (without bypass) so the page script must come from /static
            page = await strict_page(browser, violations)
            await page.goto(system + "/signup")
            await axe(page, "signup")
            await page.fill("#f-email", email)
            await page.fill("#f-name", "E2E consumer")
            await page.fill("#f-password", PASSWORD)
            await submit(page)
            await axe(page, "mail sent")
            await page.goto(link(await mailbox.wait(email, "Confirm your e-mail"), "/verify"))
            await axe(page, "confirm address")
            await page.fill("input[name=password]", PASSWORD)
            await submit(page, "#confirm")

            # skip link first in the tab order
            await page.keyboard.press("Tab")
            assert await page.evaluate("document.activeElement.className") == "skip"

            # the request form: a failed submit focuses the error summary; fields follow the delivery
            await page.goto(system + "/integrations/new")
            await axe(page, "request form")
            await submit(page)
            assert await page.evaluate("document.activeElement.id") == "error-summary"
            assert await page.get_attribute("#f-name", "aria-invalid") == "true"
            assert await page.get_attribute("#f-name", "aria-describedby") == "err-name"
            await axe(page, "request form with errors")
            await page.select_option("#f-delivery", "direct")
            assert not await page.is_visible("#f-url") and not await page.is_visible("#f-bearer")
            await page.select_option("#f-delivery", "lrs")
            assert await page.is_visible("#f-url") and await page.is_visible("#f-basic_auth")
            await page.select_option("#f-delivery", "webhook")
            assert await page.is_visible("#f-url") and not await page.is_visible("#f-basic_auth")
            await page.fill("#f-name", "E2E hook")
            await page.check("input[name=protocol][value=xapi]")
            await page.check("input[name=sites][value=default]")
            await page.fill("#f-url", receiver.url + "/hook")
            await page.fill("#f-courses", COURSE)
            await submit(page)
            assert "/integrations/i" in page.url, page.url
            key = page.url.split("/integrations/")[1]
            assert await page.inner_text("#status") == "pending"

            admin = await (await browser.new_context()).new_page()
            await admin.goto(system + "/login")
            await admin.fill("#f-email", "admin@example.org")
            await admin.fill("#f-password", PASSWORD)
            await submit(admin)
            await admin.goto(system + f"/admin/integrations/{key}")
            await axe(admin, "admin integration")
            await submit(admin, "#approve")
            assert await admin.inner_text("#status") == "approved"
            await admin.goto(system + "/admin?status=approved")
            assert key in await admin.content()
            await axe(admin, "admin list")

            # the state refreshes in place (no reload) once a statement is delivered
            await page.reload()
            assert (await page.inner_text("#secret")).startswith("whsec_")
            await page.evaluate("window.notReloaded = true")
            sid = str(uuid.uuid4())
            await admin_js.publish(subject("xapi", "default", "DemoX", COURSE, "problem_check"),
                                   json.dumps({"id": sid, "verb": {"id": "v"}}).encode())
            await wait_for(lambda: shows(page, "#state", "delivering"), 20, "state refreshed to delivering")
            assert await page.evaluate("window.notReloaded === true")
            assert sid in [r.json().get("id") for r in receiver.requests]
            await axe(page, "integration page")

            # a double click on rotate rotates once (the once-token and the script both stop the second)
            await page.dblclick("#rotate")
            await page.wait_for_selector("#secret")
            kv = await admin_js.key_value(TARGETS_BUCKET)

            async def secrets() -> int:
                return len(msgspec.json.decode((await kv.get(key)).value, type=Target).secrets)

            assert await secrets() == 2
            assert "until" in await page.inner_text("#overlap")

            # delivery log and operations
            await page.click("#deliveries-link")
            await page.wait_for_selector("#attempts")
            assert sid in await page.inner_text("#attempts")
            assert await page.locator("svg.chart").count() == 3  # delivered, lag, end-to-end latency
            await axe(page, "deliveries page")
            await submit(page, "#op-test-event")
            assert "Test event" in await page.inner_text("main")
            switch.status = 500
            failing = str(uuid.uuid4())
            await admin_js.publish(subject("xapi", "default", "DemoX", COURSE, "problem_check"),
                                   json.dumps({"id": failing}).encode())
            await wait_for(lambda: shows(page, "#state", "failing"), 20, "state refreshed to failing")
            await page.reload()
            switch.status = 200
            await submit(page, "#op-retry-now")
            assert "tried again now" in await page.inner_text("main")
            await wait_for(lambda: failing in [r.json().get("id") for r in receiver.requests], 10,
                           "delivered by retry now, not after the 20 s backoff")
            await page.reload()
            await submit(page, "button.resend")
            assert "queued to be sent again" in await page.inner_text("main")

            # a dead letter (retry now while still failing ends the schedule), then redrive it
            switch.status = 502
            dead = str(uuid.uuid4())
            await admin_js.publish(subject("xapi", "default", "DemoX", COURSE, "problem_check"),
                                   json.dumps({"id": dead}).encode())
            await wait_for(lambda: shows(page, "#state", "failing"), 20, "failing again")
            await page.reload()
            await submit(page, "#op-retry-now")
            await wait_for(lambda: shows(page, "#dead-letters", "1"), 20, "one dead letter")
            switch.status = 200
            await page.reload()
            await submit(page, "#op-redrive-all")
            assert "1 dead letter(s) sent back" in await page.inner_text("main")
            await wait_for(lambda: dead in [r.json().get("id") for r in receiver.requests[-5:]], 10, "redriven")

            # replay since 1 h: the same statement ids again
            before = len(receiver.requests)
            await page.fill("#f-replay-since", "1h")
            await submit(page, "#op-replay")
            assert "Replaying" in await page.inner_text("main")
            await wait_for(lambda: sid in [r.json().get("id") for r in receiver.requests[before:]], 10, "replayed")

            # 410 disables the endpoint; the page says why; re-enable delivers the kept backlog
            switch.status = 410
            gone = str(uuid.uuid4())
            await admin_js.publish(subject("xapi", "default", "DemoX", COURSE, "problem_check"),
                                   json.dumps({"id": gone}).encode())
            await wait_for(lambda: shows(page, "#state", "disabled"), 20, "disabled")
            await wait_for(lambda: _contains(page, "#state-reason", "410 Gone"), 10, "the reason, refreshed in place")
            switch.status = 200
            await page.reload()
            await submit(page, "#op-reenable")
            assert "re-enabled" in await page.inner_text("main")
            await wait_for(lambda: gone in [r.json().get("id") for r in receiver.requests[-5:]], 10, "backlog sent")

            # phones: tables stack, nothing scrolls sideways, and axe still passes
            await page.set_viewport_size({"width": 390, "height": 844})
            await page.reload()
            assert await page.evaluate("document.documentElement.scrollWidth") <= 390
            display = await page.evaluate("getComputedStyle(document.querySelector('#attempts td')).display")
            assert display == "grid"
            await axe(page, "deliveries page at 390 px")
            await page.goto(system + "/tokens")
            await axe(page, "tokens")
            await page.goto(system + "/integrations/i0000000000000000")
            assert "Not found" in await page.title()
            await axe(page, "error page")
            assert violations == [], violations
        finally:
            await browser.close()
            await receiver.stop()


async def login_page(browser, system: str, email: str, password: str):
    page = await (await browser.new_context(accept_downloads=True)).new_page()
    page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
    await page.goto(system + "/login")
    await page.fill("#f-email", email)
    await page.fill("#f-password", password)
    await submit(page)
    return page


async def test_narrowing_a_direct_subscription_cuts_off_its_old_credentials(system, admin_nc, op_server, tmp_path):
    """Operator mode: the owner (here the administrator's own integration, so no sign-up is needed) narrows two
    courses to one; the .creds issued before stop working, new ones read only the remaining course."""
    import nats
    from playwright.async_api import async_playwright

    from hub.core.creds import creds_inbox_prefix
    from hub.core.grants import consumer_name

    other = "course-v1:OpenU+Demo2+2024_T1"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = admin = await login_page(browser, system, "admin@example.org", PASSWORD)
            await page.goto(system + "/integrations/new")
            await page.fill("#f-name", "Two courses")
            await page.check("input[name=protocol][value=xapi]")
            await page.select_option("#f-delivery", "direct")
            await page.check("input[name=sites][value=default]")
            await page.fill("#f-courses", f"{COURSE}, {other}")
            await submit(page)
            key = page.url.split("/integrations/")[1]
            await admin.goto(system + f"/admin/integrations/{key}")
            await submit(admin, "#approve")

            async def download(name: str) -> Path:
                await page.goto(system + f"/integrations/{key}")
                async with page.expect_download() as info:
                    await page.click("#download-creds")
                path = tmp_path / name
                await (await info.value).save_as(path)
                return path

            old_creds = await download("old.creds")
            await page.goto(system + f"/integrations/{key}")
            await page.click("#change-scope summary")
            await page.fill("#f-scope-courses", COURSE)
            await submit(page, "#save-scope")
            assert "Narrower scope applied" in await page.inner_text("main")

            with pytest.raises(Exception):  # noqa: B017 - nats-py raises several error types for a refused user
                refused = await nats.connect(servers=[op_server.url], user_credentials=str(old_creds),
                                             inbox_prefix=creds_inbox_prefix(old_creds), connect_timeout=2,
                                             max_reconnect_attempts=0, allow_reconnect=False)
                await refused.close()

            new_creds = await download("new.creds")
            nc = await nats.connect(servers=[op_server.url], user_credentials=str(new_creds),
                                    inbox_prefix=creds_inbox_prefix(new_creds), connect_timeout=3)
            try:
                sub = await nc.jetstream().pull_subscribe_bind(durable=consumer_name(key), stream="XAPI")
                admin_js = admin_nc.jetstream()
                await admin_js.publish(subject("xapi", "default", "OpenU", other, "problem_check"), b'{"id": "gone"}')
                await admin_js.publish(subject("xapi", "default", "DemoX", COURSE, "problem_check"), b'{"id": "kept"}')
                msgs = await sub.fetch(5, timeout=5)
                assert [json.loads(m.data)["id"] for m in msgs] == ["kept"]
            finally:
                await nc.close()
            audit = await admin.goto(system + "/admin/audit")
            assert audit.ok and "scope.narrow" in await admin.inner_text("#audit")
        finally:
            await browser.close()
