# ruff: noqa: F811 - the portal fixtures are imported from test_portal_api
"""Issue 10 bugs 1, 2, 4-7 through the portal's pages (Litestar app, real nats-server, real SQLite): status
filters, redirect after every POST, once-only forms, server-side flash, typed narrowing, clear errors, and a
session that expires in the middle of typing a request."""

from __future__ import annotations

import re

from hub.core.grants import decode_grant
from hub.core.subjects import GRANTS_BUCKET
from portal.deliveries import endpoint_state
from portal.tables import ApiToken, WebSession
from tests.helpers import wait_for
from tests.test_portal_api import (  # noqa: F401 - fixtures
    COURSE_A,
    COURSE_B,
    PASSWORD,
    Client,
    admin,
    app,
    csrf,
    kv_get,
    login,
    mailbox,
    new_consumer,
    post,
    read_target,
    request_access,
    settings,
)


def once_of(html: str, action: str) -> str:
    form = re.search(rf'<form[^>]*action="{re.escape(action)}"[^>]*>(.*?)</form>', html, re.S).group(1)
    return re.search(r'name="_once" value="([^"]+)"', form).group(1)


async def approved_webhook(app, admin, **fields):
    consumer = await new_consumer(app)
    key = await request_access(consumer, **fields)
    await post(admin, f"/admin/integrations/{key}/approve")
    return consumer, key


async def test_admin_status_filters_answer(app, admin):
    consumer = await new_consumer(app)
    key = await request_access(consumer, name="Filter me")
    for status in ("pending", "approved", "suspended", "denied", "revoked", "nonsense"):
        page = await admin.get(f"/admin?status={status}")
        assert page.status_code == 200, (status, page.text[:300])
    assert key in (await admin.get("/admin?status=pending")).text
    assert f'href="/admin/integrations/{key}"' not in (await admin.get("/admin?status=approved")).text.split('id="all"')[1]


async def test_rotate_redirects_shows_once_and_a_double_click_rotates_once(app, admin, js):
    consumer, key = await approved_webhook(app, admin)
    first = (await consumer.get(f"/integrations/{key}")).text  # shows the approval secret once
    once = once_of(first, f"/integrations/{key}/rotate")
    token = await csrf(consumer)
    r1 = await consumer.post(f"/integrations/{key}/rotate", data={"_csrf_token": token, "_once": once},
                             follow_redirects=False)
    assert r1.status_code == 303 and r1.headers["location"] == f"/integrations/{key}"
    r2 = await consumer.post(f"/integrations/{key}/rotate", data={"_csrf_token": token, "_once": once},
                             follow_redirects=False)
    assert r2.status_code == 303
    target = await read_target(app, js, key)
    assert len(target.secrets) == 2, "the second click rotated again"
    shown = await consumer.get(f"/integrations/{key}")
    assert target.secrets[0] in shown.text and "already sent" in shown.text
    again = await consumer.get(f"/integrations/{key}")  # a reload repeats nothing and shows nothing secret
    assert "whsec_" not in again.text
    assert (await read_target(app, js, key)).secrets == target.secrets


async def test_token_creation_redirects_and_is_created_once(app):
    consumer = await new_consumer(app)
    page = (await consumer.get("/tokens")).text
    data = {"_csrf_token": await csrf(consumer), "_once": once_of(page, "/tokens"), "name": "ci"}
    first = await consumer.post("/tokens", data=data, follow_redirects=False)
    assert first.status_code == 303
    await consumer.post("/tokens", data=data, follow_redirects=False)
    shown = await consumer.get("/tokens")
    token = re.search(r'<pre id="new-token">(rth_[^<]+)</pre>', shown.text).group(1)
    assert 'id="new-token"' not in (await consumer.get("/tokens")).text  # shown once, a reload repeats nothing
    mine = await ApiToken.objects().where(ApiToken.prefix == token[:10])
    assert len(mine) == 1
    assert len(await ApiToken.objects().where(ApiToken.account == mine[0].account)) == 1, "created twice"


async def test_flash_cannot_be_spoofed_by_a_link(app):
    consumer = await new_consumer(app)
    page = await consumer.get("/integrations?msg=Your+account+is+locked%2C+call+Zorglub+support")
    assert page.status_code == 200 and "locked" not in page.text and "Zorglub" not in page.text


async def test_typed_narrower_scope_is_granted(app, admin, js):
    consumer = await new_consumer(app)
    key = await request_access(consumer)  # asks for COURSE_A and COURSE_B
    form = (await admin.get(f"/admin/integrations/{key}")).text
    assert 'name="narrow"' not in form and COURSE_B in form
    await post(admin, f"/admin/integrations/{key}/approve", {"sites": "default", "courses": COURSE_A})
    grant = decode_grant(await kv_get(js, GRANTS_BUCKET, key))
    assert grant.courses == [COURSE_A]


async def test_clear_errors_and_titles(app, admin):
    consumer = await new_consumer(app)
    spaced = await post(consumer, "/integrations", {"name": "x", "protocol": "xapi", "delivery": "direct",
                                                    "sites": "default", "courses": "course-v1:edX+Demo X+2024"})
    assert spaced.status_code == 400 and "contains a space" in spaced.text and "Not a valid course key" not in spaced.text
    assert "<title>Error: Request access" in spaced.text
    assert 'aria-invalid="true" aria-describedby="err-courses"' in spaced.text and 'id="error-summary"' in spaced.text
    key = await request_access(consumer, delivery="direct", url="")
    denied = await post(admin, f"/admin/integrations/{key}/deny", {"reason": ""})
    assert denied.status_code == 400
    assert denied.text.count("A reason is required.") == 1 and "Give the requester a reason" not in denied.text
    missing = await consumer.get("/integrations/i0000000000000000")
    assert missing.status_code == 404 and "<title>Not found (404)" in missing.text
    forged = await consumer.post("/tokens", data={"name": "x", "_csrf_token": "forged"})
    assert forged.status_code == 403 and "expired" in forged.text
    assert consumer.email in forged.text and 'href="/login"' not in forged.text  # the logged-in navigation


async def test_session_expiry_keeps_the_typed_form_and_returns_to_it(app):
    consumer = await new_consumer(app)
    form = (await consumer.get("/integrations/new")).text
    from portal.tables import Account

    me = await Account.objects().get(Account.email == consumer.email)
    await WebSession.delete().where(WebSession.account == me.id)  # this consumer's session expires
    data = {"_csrf_token": await csrf(consumer), "_once": once_of(form, "/integrations"), "name": "Typed before expiry",
            "protocol": "caliper", "delivery": "webhook", "url": "https://hooks.example.org/typed",
            "sites": "default", "courses": COURSE_B, "reason": "long reason typed slowly", "bearer": "secret-token"}
    sent = await consumer.post("/integrations", data=data, follow_redirects=False)  # no Referer (no-referrer)
    assert sent.status_code == 303 and sent.headers["location"] == "/login?next=/integrations/new"
    login_page = await consumer.get(sent.headers["location"])
    assert "session has expired" in login_page.text and 'name="next" value="/integrations/new"' in login_page.text
    back = await post(consumer, "/login", {"email": consumer.email, "password": PASSWORD, "next": "/integrations/new"})
    assert str(back.url).endswith("/integrations/new")
    for typed in ("Typed before expiry", "https://hooks.example.org/typed", COURSE_B, "long reason typed slowly"):
        assert typed in back.text
    assert "secret-token" not in back.text
    evil = await post(consumer, "/login", {"email": consumer.email, "password": PASSWORD, "next": "//evil.example/x"})
    assert str(evil.url).startswith("http://testserver.local/")


async def test_anonymous_visits_store_nothing(app):
    from portal.tables import FlashEntry

    before = await FlashEntry.count()
    async with Client(app) as anon:
        for _ in range(20):
            r = await anon.get("/integrations/new", follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"] == "/login?next=/integrations/new"
        assert "Log in to continue" in (await anon.get("/integrations/new")).text
    assert await FlashEntry.count() == before


def test_last_error_is_timed_and_marked_resolved():
    stats = {"enabled": True, "delivered": 5, "last_error": "HTTP 500: oops", "last_error_at": 100.0,
             "last_success": 200.0, "failing_since": None, "recent": []}
    state = endpoint_state("approved", "webhook", "", None, stats)
    assert state.state == "delivering" and state.error_resolved and state.last_error_at == 100.0
    failing = endpoint_state("approved", "webhook", "", None, {**stats, "last_success": 50.0, "failing_since": 90.0,
                             "recent": [{"t": 100.0, "attempt": 2, "outcome": "retry"}]}, schedule=[5.0, 300.0])
    assert failing.state == "failing" and failing.since == 90.0 and failing.next_retry == 400.0
    assert not failing.error_resolved
    disabled = endpoint_state("approved", "webhook", "", None, {**stats, "enabled": False,
                              "disabled_reason": "endpoint answered 410 Gone",
                              "recent": [{"t": 150.0, "attempt": 1, "outcome": "disabled"}]})
    assert disabled.state == "disabled" and disabled.since == 150.0 and "410" in disabled.reason
    # the target's own time wins: it is there even when the "disabled" attempt fell out of the recent list
    disabled = endpoint_state("approved", "webhook", "", None, {**stats, "enabled": False, "disabled_at": 160.0,
                              "disabled_reason": "endpoint answered 410 Gone", "recent": []})
    assert disabled.state == "disabled" and disabled.since == 160.0
    assert endpoint_state("suspended", "webhook", "abuse", None, stats).reason == "abuse"
    behind = endpoint_state("approved", "webhook", "", None, {**stats, "behind_since": 180.0})
    assert behind.state == "behind" and behind.since == 180.0 and "cannot keep up" in behind.headline


async def test_delivered_count_survives_a_secret_rotation(nc, js, nats_server):
    """Bug 4: a target change that restarts the integration's runner (a rotation applies in place since issue 10
    bug 3; with a concurrency change it restarts) keeps its counters instead of zeroing them."""
    from hub.deliver.state.integration_status import integration_status
    from tests.deliver_kit import (
        deliverer,
        delivering,
        get_target,
        integration,
        publish,
        put_target,
        statement,
    )
    from tests.deliver_receivers import Receiver

    receiver = await Receiver().start()
    try:
        async with deliverer(nc, nats_server.url) as d:
            gid, site = await integration(js, "webhook", receiver.url + "/hook", secrets=["whsec_" + "A" * 44])
            await delivering(d, gid)
            for n in range(3):
                await publish(js, site, "c1", statement(n))

            async def delivered(n):
                return (await integration_status(js, gid))["delivered"] >= n

            await wait_for(lambda: delivered(3), 10, "3 delivered")
            runner = d.runners[gid]
            target = await get_target(js, gid)
            target.secrets = ["whsec_" + "B" * 44, *target.secrets]
            target.max_concurrency = 2  # not applicable in place: the runner restarts
            await put_target(js, target)
            # a stopping runner drains its pull requests first (up to ~2.5 s), more on a loaded machine
            await wait_for(lambda: gid in d.runners and d.runners[gid] is not runner, 15, "runner restarted")
            await delivering(d, gid)
            await publish(js, site, "c1", statement(9))
            await wait_for(lambda: delivered(4), 10, "4 delivered after the rotation (not 1)")
    finally:
        await receiver.stop()


async def test_request_form_checks_urls_with_the_deliverers_rules(app):
    consumer = await new_consumer(app)
    headers = {"Authorization": f"Bearer {await _token(consumer)}"}
    for url in ("http://169.254.169.254/latest/meta-data", "http://127.0.0.1:8080/hook", "http://10.1.2.3/x",
                "http://[::1]/x", "http://0x7f000001/x", "http://127.1/x", "http://localhost:9/x",
                "http://metadata.google.internal/computeMetadata/v1/"):
        page = await post(consumer, "/integrations", {"name": "x", "protocol": "xapi", "delivery": "webhook",
                                                      "url": url, "sites": "default", "courses": COURSE_A})
        assert page.status_code == 400 and 'aria-describedby="err-url"' in page.text, url
        api = await consumer.post("/api/v1/integrations", headers=headers, json={
            "name": "x", "protocol": "xapi", "delivery": "webhook", "url": url, "courses": [COURSE_A]})
        assert api.status_code == 400 and "url" in api.json()["errors"], url


async def test_known_courses_are_offered_and_unknown_keys_warned(app, js):
    from hub.core.subjects import RAW_STREAM, subject
    from hub.translate.cli import put_course_name
    from portal import courses

    seen = "course-v1:SeenX+Raw1+2026"
    named = "course-v1:NamedX+Kv1+2026"
    await js.publish(subject("lms", "default", "SeenX", seen, "problem_check"), b"{}", stream=RAW_STREAM)
    await put_course_name(js, named, "A named course")
    courses.forget()
    consumer = await new_consumer(app)
    form = (await consumer.get("/integrations/new")).text
    assert f'<option value="{seen}">' in form and f'<option value="{named}">' in form
    made = await post(consumer, "/integrations", {"name": "x", "protocol": "xapi", "delivery": "direct",
                                                   "sites": "default", "courses": f"{seen}, course-v1:Typo+X+1"})
    assert made.status_code == 200 and "No events were seen yet for course-v1:Typo+X+1" in made.text
    assert seen not in made.text.split('class="warning"')[1].split("</p>")[0]
    headers = {"Authorization": f"Bearer {await _token(consumer)}"}
    api = await consumer.post("/api/v1/integrations", headers=headers, json={
        "name": "x", "protocol": "xapi", "delivery": "direct", "sites": ["default"], "courses": [named, "course-v1:A+B+C"]})
    assert api.status_code == 201 and "course-v1:A+B+C" in api.json()["warnings"]["courses"]


def test_form_placeholders_exist_in_the_demo_and_all_fields_work_without_js():
    from pathlib import Path

    from lms_publisher.demo import generate

    html = (Path(__file__).parent.parent / "portal" / "templates" / "integration_new.html").read_text()
    holders = dict(re.findall(r'name="(orgs|courses|event_types)"[^>]*placeholder="([^"]+)"', html))
    events = generate(courses=3, users=6, seed=1)
    seen = {"orgs": set(), "courses": set(), "event_types": set()}
    for _, event in zip(range(3000), events, strict=False):
        course = (event.get("context") or {}).get("course_id") or ""
        seen["courses"].add(course)
        seen["orgs"].add((event.get("context") or {}).get("org_id") or course.split(":")[-1].split("+")[0])
        seen["event_types"].add(event.get("name"))
    for field, text in holders.items():
        for example in (x.strip() for x in text.split(",")):
            assert example in seen[field], (field, example)
    # without JavaScript every delivery's fields are present and visible (the script only hides others)
    assert ' hidden' not in html.split('id="request-form"')[1]


async def _token(client) -> str:
    from tests.test_portal_api import make_token

    return await make_token(client)


def test_charts_are_valid_svg_with_failures_marked():
    import xml.etree.ElementTree as ET

    from portal.charts import DAY_MIN, svg_chart

    delivered = [0] * DAY_MIN
    failed = [0] * DAY_MIN
    delivered[100], delivered[1439], failed[500], failed[501] = 7, 3, 1, 2
    svg = svg_chart("Delivered per minute, last 24 h", delivered, failed, now=1_800_000_000.0)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.get("role") == "img" and "3 failed attempt(s)" in root.get("aria-label")
    assert len([e for e in root.iter(f"{ns}line") if e.get("class") == "fail"]) == 2
    points = root.find(f"{ns}polyline").get("points").split()
    assert len(points) == DAY_MIN and min(float(p.split(",")[1]) for p in points) == 28.0  # the peak at the top
    lag = svg_chart("Lag", [None] * (DAY_MIN - 2) + [4, 2], None, now=1_800_000_000.0, unit=" waiting")
    assert "latest 2" in ET.fromstring(lag).get("aria-label")
    assert "<script" not in svg + lag


async def test_openapi_documents_the_new_operations_with_typed_schemas(app):
    async with Client(app) as client:
        schema = (await client.get("/schema/openapi.json")).json()
    paths, components = schema["paths"], schema["components"]["schemas"]
    for path in ("state", "deliveries", "dead-letters", "reenable", "endpoint", "scope", "retry-now", "resend",
                 "redrive", "replay", "test-event"):
        assert f"/api/v1/integrations/{{key}}/{path}" in paths, path
    names = " ".join(components)
    for struct in ("ActionResult", "AttemptPage", "AttemptView", "EndpointState", "EndpointEdit", "ScopeChange",
                   "ResendRequest", "RedriveRequest", "ReplayRequest", "DeadLetterView", "IntegrationView",
                   "RotatedSecret"):
        assert struct in names, struct
    attempt = next(v for k, v in components.items() if k.endswith("AttemptView"))
    assert {"t", "ids", "outcome", "status", "latency_ms", "excerpt"} <= set(attempt["properties"])


async def test_a_double_submitted_request_creates_one_integration(app):
    from portal.tables import Integration

    consumer = await new_consumer(app)
    form = (await consumer.get("/integrations/new")).text
    data = {"_csrf_token": await csrf(consumer), "_once": once_of(form, "/integrations"), "name": "Twice clicked",
            "protocol": "xapi", "delivery": "direct", "sites": "default", "courses": COURSE_A}
    first = await consumer.post("/integrations", data=data, follow_redirects=False)
    second = await consumer.post("/integrations", data=data, follow_redirects=False)
    assert first.status_code == second.status_code == 303 and first.headers["location"] == second.headers["location"]
    assert len(await Integration.objects().where(Integration.name == "Twice clicked")) == 1


async def test_admin_page_refreshes_from_a_route_that_exists(app, admin):
    consumer, key = await approved_webhook(app, admin)
    got = await admin.get(f"/admin/integrations/{key}")
    assert got.status_code == 200, got.text[-2000:]
    page = got.text
    url = re.search(r'data-refresh="([^"]+)"', page).group(1)
    polled = await admin.get(url)
    assert polled.status_code == 200 and polled.json()["state"] in ("idle", "delivering")


def test_return_paths_after_login_stay_on_the_site():
    from portal.web import form_page_of, safe_back

    assert form_page_of("/integrations", {}) == "/integrations/new"
    assert form_page_of("/integrations/i1/ops/redrive", {"back": "deliveries"}) == "/integrations/i1/deliveries"
    assert form_page_of("/integrations/i1/rotate", {}) == "/integrations/i1"
    assert form_page_of("/admin/integrations/i1/deny", {}) == "/admin/integrations/i1"
    assert form_page_of("/tokens/3/revoke", {}) == "/tokens" and form_page_of("/logout", {}) == "/"

    assert safe_back("/integrations/new?x=1") == "/integrations/new?x=1"
    for hostile in ("//evil.example", "/\\evil.example", "/\t/evil.example", "/\r\n/evil.example", "https://evil",
                    "javascript:alert(1)", "/" + "a" * 400, "", None):
        assert safe_back(hostile) == "/", hostile


async def test_names_are_not_resolved_when_typed(app):
    """The form is no oracle for the hub's private DNS: a name is accepted as typed, the deliverer checks it."""
    from portal.services.endpoints import reachable

    settings = app.state.settings
    assert await reachable("https://hooks.example.org/in", settings) is None
    assert await reachable("https://no-such-name.invalid/x", settings) is None
    refused = await reachable("http://10.0.0.7/x", settings)
    assert refused == "The deliverer will not send there: address not allowed (not a public address)."
