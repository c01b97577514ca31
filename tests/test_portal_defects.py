# ruff: noqa: F811 - the portal fixtures are imported from test_portal_api
"""Issue 19.5, the portal defects a walkthrough found, each reproduced through the pages or the API: a resubmitted
request makes no duplicate, an unknown event type is warned about, the disabled mail states the deliverer's
reason, the approval mail says what was narrowed, narrowing keeps a pending wider request, Re-enable follows the
state without a reload (the form is in the page, shown by state)."""

from __future__ import annotations

import pytest

from portal.tables import Integration
from tests.mailbox import body
from tests.test_portal_api import (  # noqa: F401 - fixtures
    COURSE_A,
    COURSE_B,
    admin,
    app,
    mailbox,
    make_token,
    new_consumer,
    post,
    request_access,
    settings,
)
from tests.test_portal_ops import flash_of


@pytest.fixture(scope="module", autouse=True)
def local_receivers(app):
    app.state.settings.allowed_networks = ["127.0.0.1/32"]


FORM = {"name": "Dup engine", "protocol": "xapi", "delivery": "webhook", "url": "https://hooks.example.org/dup",
        "sites": "default", "courses": COURSE_A, "reason": "r"}


async def test_a_resubmitted_request_makes_no_duplicate(app):
    consumer = await new_consumer(app)
    first = await post(consumer, "/integrations", FORM)
    key = str(first.url).rsplit("/", 1)[1]
    again = await post(consumer, "/integrations", FORM)  # Back + submit: a fresh form token, the same request
    assert str(again.url).endswith(f"/integrations/{key}") and "already asked for exactly this" in again.text
    token = await make_token(consumer)
    api = await consumer.post("/api/v1/integrations", headers={"Authorization": f"Bearer {token}"},
                              json={k: v for k, v in FORM.items()})
    assert api.status_code == 409 and key in api.json()["error"]
    rows = await Integration.objects().where(Integration.name == "Dup engine")
    assert len([r for r in rows if r.owner == rows[0].owner]) == 1
    other = await post(consumer, "/integrations", FORM | {"courses": COURSE_B})  # a different scope is a new request
    assert not str(other.url).endswith(key)


async def test_unknown_event_types_are_warned_about(app):
    consumer = await new_consumer(app)
    page = await post(consumer, "/integrations", FORM | {"name": "Video engine", "event_types": "edx.video.play, play_video"})
    assert "does not translate edx.video.play to xapi" in page.text and "play_video" not in page.text.split(
        "does not translate", 1)[1].split(".", 2)[0]
    token = await make_token(consumer)
    api = await consumer.post("/api/v1/integrations", headers={"Authorization": f"Bearer {token}"},
                              json=FORM | {"name": "Video engine 2", "event_types": ["edx.video.play"]})
    assert api.status_code == 201 and "edx.video.play" in api.json()["warnings"]["event_types"]


async def test_approval_mail_says_what_was_narrowed(app, admin, mailbox):
    consumer = await new_consumer(app)
    key = await request_access(consumer, courses=f"{COURSE_A}, {COURSE_B}")
    await post(admin, f"/admin/integrations/{key}/approve", {"narrow": "1", "sites": "default", "courses": COURSE_A})
    text = body(await mailbox.wait(consumer.email, "approved"))
    assert "narrowed the scope" in text and f"you asked for {COURSE_A}, {COURSE_B}; granted {COURSE_A}" in text
    plain = await new_consumer(app)
    key2 = await request_access(plain)
    await post(admin, f"/admin/integrations/{key2}/approve")
    assert "narrowed" not in body(await mailbox.wait(plain.email, "approved"))


async def test_disabled_mail_states_the_deliverers_reason(app, admin, mailbox, js):
    from hub.core.grants import Target
    from tests.test_portal_api import read_target

    consumer = await new_consumer(app)
    key = await request_access(consumer)
    await post(admin, f"/admin/integrations/{key}/approve")
    portal = app.state.portal
    row = await portal.get(key)
    target: Target = await read_target(app, js, key)
    reason = "endpoint answered 410 Gone at 2026-12-04T12:00:00Z"
    target.enabled, target.disabled_reason = False, reason
    await portal.put_target(target)  # as the deliverer does on a 410
    await portal.status(row)
    text = body(await mailbox.wait(consumer.email, "switched off"))
    assert f"Reason: {reason}" in text and "kept failing" not in text and "Re-enable" in text
    page = (await consumer.get(f"/integrations/{key}")).text
    assert 'id="reenable-form" data-show-in-state="disabled"' in page and "hidden" not in page.split(
        'id="reenable-form"', 1)[1].split(">", 1)[0]


async def test_narrowing_keeps_a_pending_wider_request(app, admin):
    consumer = await new_consumer(app)
    key = await request_access(consumer, courses=COURSE_A)
    await post(admin, f"/admin/integrations/{key}/approve")
    wider = await post(consumer, f"/integrations/{key}/ops/scope",
                       {"scope_sites_present": "1", "sites": "default", "courses": f"{COURSE_A}, {COURSE_B}"})
    assert "administrator will review" in flash_of(wider.text)
    narrowed = await post(consumer, f"/integrations/{key}/ops/scope",
                          {"scope_sites_present": "1", "sites": "default", "courses": COURSE_A, "event_types": "play_video"})
    assert "still pending" in flash_of(narrowed.text)
    row = await Integration.objects().get(Integration.key == key)
    assert row.scope_change is True
    pending = (await admin.get("/admin/")).text
    assert key in pending
    approved = await post(admin, f"/admin/integrations/{key}/approve")
    assert approved.status_code == 200
    row = await Integration.objects().get(Integration.key == key)
    assert not row.scope_change and COURSE_B in row.granted


async def test_event_catalog_page_and_api(app):
    """Issue 24: the event catalog from the translators (tracking events) and the Open edX events catalog, with
    an example payload per protocol; the request form offers its names."""
    import json

    from hub.translate import supported

    consumer = await new_consumer(app)
    token = await make_token(consumer)
    got = await consumer.get("/api/v1/event-types", headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 200
    rows = {r["name"]: r for r in got.json()}
    assert set(supported("xapi")) | set(supported("caliper")) <= set(rows)
    play = rows["play_video"]
    assert play["protocols"][:2] == ["xapi", "caliper"] and "played a video" in play["description"]
    assert json.loads(play["examples"]["xapi"])["verb"]["id"].endswith("/played")
    assert json.loads(play["examples"]["caliper"])["type"] == "MediaEvent"
    assert rows["org.openedx.learning.course.enrollment.created.v1"]["source"] == "openedx-events"
    caliper = await consumer.get("/api/v1/event-types?protocol=caliper", headers={"Authorization": f"Bearer {token}"})
    assert {r["name"] for r in caliper.json()} == {n for n, r in rows.items() if "caliper" in r["protocols"]}
    page = (await consumer.get("/event-types")).text
    assert "<code>play_video</code>" in page and "played a video" in page
    form = (await consumer.get("/integrations/new")).text
    assert 'list="event-type-names"' in form and '<option value="problem_check">' in form
    assert (await consumer.get("/api/v1/event-types")).status_code == 401  # the API wants a token
