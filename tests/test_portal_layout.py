# ruff: noqa: F811 - the portal fixtures are imported from test_portal_api
"""Issue 24 layout, in real Chromium at 1280 px and 390 px, on the portal served over HTTP: no page scrolls
sideways, table cells at 1280 px never break a word (the attempt table used to), lists stack into label/value
rows at 390 px. Screenshots of every page and width are written for a look by eye (path printed)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import uvicorn

from hub.ops.natsserver import free_port, wait_port
from tests.deliver_kit import deliverer
from tests.deliver_receivers import Receiver
from tests.helpers import unique, wait_for
from tests.test_portal_api import (  # noqa: F401 - fixtures
    PASSWORD,
    admin,
    app,
    mailbox,
    new_consumer,
    post,
    request_access,
    settings,
)
from tests.test_portal_browser import ARGS, BROWSER_MARKS, CHROMIUM
from tests.test_portal_ops import ids_received, publish, statement

pytestmark = BROWSER_MARKS

@pytest.fixture(scope="module", autouse=True)
def local_receivers(app):
    app.state.settings.allowed_networks = ["127.0.0.1/32"]


COURSE = f"course-v1:Layout24+{unique('c')}+run"

# Sideways overflow of the page, words broken inside table cells (a cell narrower than its longest word), and
# table rows that do not stack, measured in the page.
MEASURE = """() => {
  const doc = document.documentElement;
  const broken = [];
  for (const td of document.querySelectorAll('table td')) {
    if (td.querySelector('code, pre, form, details')) continue;  // ids, bodies: may break anywhere
    const longest = Math.max(0, ...td.textContent.split(/\\s+/).map(w => w.length));
    const probe = document.createElement('span');
    probe.style.whiteSpace = 'nowrap'; probe.style.font = getComputedStyle(td).font;
    probe.textContent = td.textContent.split(/\\s+/).reduce((a, b) => b.length > a.length ? b : a, '');
    document.body.appendChild(probe);
    const need = probe.getBoundingClientRect().width;
    probe.remove();
    const style = getComputedStyle(td);
    const room = td.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    if (longest > 1 && need > room + 1 && style.display !== 'grid') broken.push(td.textContent.trim().slice(0, 40));
  }
  const rows = [...document.querySelectorAll('table.stack tbody tr')].map(tr => getComputedStyle(tr).display);
  return {overflow: doc.scrollWidth - window.innerWidth, broken, rows};
}"""


async def test_pages_at_1280_and_390(app, admin, js, nc, nats_server, tmp_path):
    receiver = await Receiver(lambda r: (200, {"X-Long-Header-Name-For-Layout": "v" * 300}, b"ok " * 400)).start()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_port, port, 10)
        async with deliverer(nc, nats_server.url, data_dir=app.state.settings.data_dir):
            consumer = await new_consumer(app)
            key = await request_access(consumer, url=receiver.url + "/a-rather-long-path/for/the/layout/check",
                                       courses=COURSE, name="Layout engine with a long name")
            await post(admin, f"/admin/integrations/{key}/approve")
            await consumer.get(f"/integrations/{key}")
            ids = [await publish(js, statement() | {"id": str(uuid.uuid4())}, COURSE) for _ in range(4)]
            await wait_for(lambda: set(ids) <= set(ids_received(receiver)), 15, "deliveries for the log")
            items: list[dict] = []

            async def logged() -> bool:
                page = (await consumer.get(f"/integrations/{key}/deliveries")).text
                items[:] = [p.split('"', 1)[0] for p in page.split(f"/integrations/{key}/attempts/")[1:]]
                return len(items) >= 4

            await wait_for(logged, 10, "attempts in the log")
            pages = {"list": "/integrations", "integration": f"/integrations/{key}",
                     "deliveries": f"/integrations/{key}/deliveries", "attempt": f"/integrations/{key}/attempts/{items[0]}",
                     "event-types": "/event-types", "request": "/integrations/new"}
            from playwright.async_api import async_playwright

            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                try:
                    context = await browser.new_context(viewport={"width": 1280, "height": 900})
                    page = await context.new_page()
                    await page.goto(base + "/login")
                    await page.fill("#f-email", consumer.email)
                    await page.fill("#f-password", PASSWORD)
                    await page.click("main button")
                    await page.wait_for_url(lambda u: "/login" not in u)
                    for width, height in ((1280, 900), (390, 844)):
                        await page.set_viewport_size({"width": width, "height": height})
                        for name, path in pages.items():
                            await page.goto(base + path)
                            m = await page.evaluate(MEASURE)
                            shot = tmp_path / f"{name}-{width}.png"
                            await page.screenshot(path=str(shot), full_page=True)
                            assert m["overflow"] <= 0, f"{name} at {width} px scrolls sideways by {m['overflow']} px"
                            if width == 1280:
                                assert not m["broken"], f"{name} at 1280 px breaks words in cells: {m['broken']}"
                            else:
                                assert all(d == "block" for d in m["rows"]), f"{name} at 390 px: rows {m['rows']}"
                    print(f"layout screenshots in {tmp_path}")
                finally:
                    await browser.close()
    finally:
        server.should_exit = True
        await serving
        await receiver.stop()
