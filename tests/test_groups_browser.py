# ruff: noqa: F811 - the portal fixtures are imported from test_portal_e2e
"""The learner group admin pages in Chromium, served by the portal process of tests/test_portal_e2e.py's system:
under a strict Content-Security-Policy and checked with axe-core (list, group page, a refused change)."""

from __future__ import annotations

from tests.helpers import unique
from tests.test_portal_browser import ARGS, BROWSER_MARKS, CHROMIUM
from tests.test_portal_e2e import (  # noqa: F401 - fixtures
    PASSWORD,
    admin_nc,
    axe,
    data_dir,
    mailbox,
    op_server,
    strict_page,
    submit,
    system,
)

pytestmark = BROWSER_MARKS


async def test_admin_groups_pages_in_the_browser(system):
    from playwright.async_api import async_playwright

    violations: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await strict_page(browser, violations)
            await page.goto(system + "/login")
            await page.fill("#f-email", "admin@example.org")
            await page.fill("#f-password", PASSWORD)
            await submit(page)
            await page.goto(system + "/admin/groups")
            await axe(page, "groups list")
            name = unique("ent-")
            await page.fill("#f-name", name)
            await page.select_option("#f-site", "default")
            await page.fill("#f-users", "7, 8")
            await submit(page, "#create-group")
            assert page.url.endswith(f"/admin/groups/{name}"), page.url
            assert await page.inner_text("#group-size") == "2"
            await axe(page, "group page")
            await page.fill("#f-add", "9")
            await submit(page, "#save-members")
            assert await page.inner_text("#group-size") == "3"
            await page.fill("#f-add", "bob")
            await submit(page, "#save-members")
            assert "not an LMS user id" in await page.inner_text("#err-users")
            await axe(page, "group page with an error")
            await page.goto(system + "/admin/groups")
            assert name in await page.inner_text("#groups")
            await page.set_viewport_size({"width": 390, "height": 800})
            await axe(page, "groups list at 390 px")
        finally:
            await browser.close()
    assert violations == []
