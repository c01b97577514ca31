# ruff: noqa: F811 - the portal fixtures are imported from test_portal_api
"""Issue 10 operations end to end through the portal pages and API (Litestar app in process), with a real
deliverer and real HTTP receivers on 127.0.0.1: endpoint state, retry now, dead letters and redrive, resend,
test event, replay, disable (410) and re-enable, endpoint edit with the SSRF rules, scope changes, the delivery
log with filters and paging, the signing-secret overlap; owner and administrator alike, nobody else."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid

import msgspec
import pytest

from hub.core.grants import decode_grant
from hub.core.subjects import GRANTS_BUCKET, subject
from hub.deliver.state.integration_status import integration_status
from hub.deliver.transport import signing
from portal.services import endpoints
from portal.tables import Integration
from tests.deliver_kit import deliverer
from tests.deliver_receivers import Receiver
from tests.helpers import wait_for
from tests.test_portal_api import (  # noqa: F401 - fixtures
    COURSE_A,
    COURSE_B,
    admin,
    app,
    kv_get,
    mailbox,
    make_token,
    new_consumer,
    post,
    read_target,
    request_access,
    settings,
)


@pytest.fixture(scope="module", autouse=True)
def local_receivers(app):
    """The receivers of this module listen on 127.0.0.1: allow it, as RTHUB_ALLOWED_NETWORKS does in tests."""
    app.state.settings.allowed_networks = ["127.0.0.1/32"]


class Switch:
    """A receiver whose answer the test flips: ``status`` for every request."""

    def __init__(self):
        self.status = 200

    def __call__(self, req):
        return self.status, {}, b'{"ok": false, "detail": "receiver says %d"}' % self.status if self.status >= 300 else b"ok"


def statement() -> dict:
    return {"id": str(uuid.uuid4()), "timestamp": "2026-05-01T10:00:00Z",
            "actor": {"objectType": "Agent", "account": {"homePage": "http://lms", "name": "u1"}},
            "verb": {"id": "http://adlnet.gov/expapi/verbs/experienced", "display": {"en": "experienced"}},
            "object": {"objectType": "Activity", "id": "http://lms/x"}}


# This module's own course: statements other modules publish to COURSE_A on the session's server would be
# counted by this module's replays and logs.
OPS_COURSE = f"course-v1:Ops+{uuid.uuid4().hex[:8]}+run"


async def publish(js, body: dict, course: str = OPS_COURSE) -> str:
    await js.publish(subject("xapi", "default", "edX", course, "play_video"), msgspec.json.encode(body),
                     headers={"Nats-Msg-Id": body["id"]})
    return body["id"]


def ids_received(receiver: Receiver) -> list[str]:
    out = []
    for r in receiver.requests:
        try:
            body = r.json()
        except ValueError:
            continue
        for item in body if isinstance(body, list) else [body]:
            if isinstance(item, dict):
                out.append(item.get("id") or (item.get("data") or {}).get("id"))
    return out


def flash_of(html: str) -> str:
    found = re.findall(r'<p class="(?:flash|error)" role="(?:status|alert)">([^<]*)</p>', html)
    return " | ".join(found)


async def state(client, key: str) -> dict:
    return (await client.get(f"/integrations/{key}/state.json")).json()


async def test_operations_end_to_end(app, admin, js, nc, nats_server):
    switch = Switch()
    other_switch = Switch()
    receiver, other = await Receiver(switch).start(), await Receiver(other_switch).start()
    try:
        async with deliverer(nc, nats_server.url, retry_schedule=["0.05s", "20s"], data_dir=app.state.settings.data_dir):
            consumer = await new_consumer(app)
            key = await request_access(consumer, url=receiver.url + "/hook", courses=OPS_COURSE)
            await post(admin, f"/admin/integrations/{key}/approve")
            await consumer.get(f"/integrations/{key}")  # the secret, shown once

            # failing: two attempts, then a 20 s backoff; the page says failing since T, next retry at T2
            switch.status = 500
            s1 = await publish(js, statement())
            await wait_for(lambda: len(receiver.requests) >= 2, 10, "two failed attempts")
            await _wait_state(consumer, key, "failing", "next_retry")
            failing = await state(consumer, key)
            assert failing["since"] and failing["next_retry"] and "500" in failing["last_error"]
            page = (await consumer.get(f"/integrations/{key}")).text
            assert 'id="state">failing' in page and 'id="next-retry"' in page

            # retry now (still failing): the third attempt ends the schedule -> one dead letter
            done = await post(consumer, f"/integrations/{key}/ops/retry-now", {"back": "deliveries"})
            assert "tried again now" in flash_of(done.text)
            await wait_for(lambda: _dead(js, key, 1), 10, "one dead letter")
            log = (await consumer.get(f"/integrations/{key}/deliveries")).text
            assert s1 in log and "receiver says 500" in log and 'id="dead-letters-table"' in log

            # the endpoint is fixed: redrive all dead letters
            switch.status = 200
            before = len(receiver.requests)
            done = await post(consumer, f"/integrations/{key}/ops/redrive", {"back": "deliveries"})
            assert "1 dead letter(s) sent back" in flash_of(done.text)
            await wait_for(lambda: s1 in ids_received(receiver)[before:], 10, "s1 redriven and delivered")
            await _wait_state(consumer, key, "delivering")
            assert (await state(consumer, key))["error_resolved"] is True

            # resend one delivered statement (same id) from its log row
            s2 = await publish(js, statement())
            await wait_for(lambda: s2 in ids_received(receiver), 10, "s2 delivered")
            rows: list[str] = []

            async def logged() -> bool:  # the attempt log is published in batches (every 0.2 s)
                log = (await consumer.get(f"/integrations/{key}/deliveries?outcome=delivered")).text
                rows[:] = [r for r in log.split("<tr") if s2 in r]
                return bool(rows)

            await wait_for(logged, 10, "s2's delivery in the log")
            row = rows[0]
            seq = re.search(r'name="seqs" value="(\d+)"', row).group(1)
            done = await post(consumer, f"/integrations/{key}/ops/resend", {"seq": seq, "back": "deliveries"})
            assert f"Statement {s2} queued" in flash_of(done.text)
            await wait_for(lambda: ids_received(receiver).count(s2) == 2, 10, "s2 sent again")

            # a test event
            done = await post(consumer, f"/integrations/{key}/ops/test-event", {"back": "deliveries"})
            test_id = re.search(r"Test event (\S+) queued", flash_of(done.text)).group(1)
            await wait_for(lambda: test_id in ids_received(receiver), 10, "test event received")

            # replay since 1 h: s1 and s2 again, same ids
            counts = {s: ids_received(receiver).count(s) for s in (s1, s2)}
            done = await post(consumer, f"/integrations/{key}/ops/replay", {"since": "1h", "back": "deliveries"})
            assert "Replaying 2 statement(s)" in flash_of(done.text)
            await wait_for(lambda: all(ids_received(receiver).count(s) > counts[s] for s in (s1, s2)), 10, "replayed")
            # the replay ends once its consumer is empty (until then it also carries new statements: two lanes)
            await wait_for(lambda: _replay_over(js, key), 15, "replay finished")

            # retry now while failing then fixed: delivered long before the 20 s backoff ends
            switch.status = 503
            n = len(receiver.requests)
            s3 = await publish(js, statement())
            await wait_for(lambda: len(receiver.requests) >= n + 2, 10, "two failed attempts of s3")
            switch.status = 200
            await post(consumer, f"/integrations/{key}/ops/retry-now")
            await wait_for(lambda: s3 in ids_received(receiver)[n + 2:], 5, "s3 delivered by retry now")

            # 410 disables; the page says why and when; re-enable delivers the kept backlog
            switch.status = 410
            await publish(js, statement())
            await _wait_state(consumer, key, "disabled", "since")
            disabled = await state(consumer, key)
            assert "410" in disabled["reason"] and disabled["since"]
            switch.status = 200
            s5 = await publish(js, statement())
            done = await post(consumer, f"/integrations/{key}/ops/reenable")
            assert "re-enabled" in flash_of(done.text)
            try:  # the runner stopped by the disable hands its messages back first (a few seconds under load)
                await wait_for(lambda: s5 in ids_received(receiver), 30, "backlog delivered after re-enable")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; delivery status: {await integration_status(js, key)}") from None

            # the log filters, newest first and paged
            log = (await consumer.get(f"/integrations/{key}/deliveries?status=500")).text
            rows = [r for r in log.split('<tr class="outcome-')[1:]]
            assert rows and all(">500<" in r for r in rows)
            page1 = (await consumer.get(f"/integrations/{key}/deliveries?limit=2")).text
            older = re.search(r'id="older" href="\?([^"]+)"', page1).group(1).replace("&amp;", "&")
            page2 = (await consumer.get(f"/integrations/{key}/deliveries?{older}")).text
            t1 = [t.strip() for t in re.findall(r'data-label="Time"><a class="attempt-link"[^>]*>([^<]+)', page1)]
            t2 = [t.strip() for t in re.findall(r'data-label="Time"><a class="attempt-link"[^>]*>([^<]+)', page2)]
            assert len(t1) == 2 and t1 == sorted(t1, reverse=True) and t2 and t2[0] <= t1[-1]
            bad = await consumer.get(f"/integrations/{key}/deliveries?status=abc&since=yesterday-ish")
            assert 'aria-describedby="err-status"' in bad.text and 'aria-describedby="err-since"' in bad.text

            # edit the endpoint URL: deliveries go to the new one; a metadata address is refused
            done = await post(consumer, f"/integrations/{key}/ops/endpoint", {"url": other.url + "/new"})
            assert "Endpoint updated (url)" in flash_of(done.text)
            s6 = await publish(js, statement())
            await wait_for(lambda: s6 in ids_received(other), 10, "delivered to the new URL")
            refused = await post(consumer, f"/integrations/{key}/ops/endpoint", {"url": "http://169.254.169.254/latest"})
            assert "Check the endpoint fields" in flash_of(refused.text)  # refused, whatever the wording
            target = await read_target(app, js, key)
            assert target.url == other.url + "/new" and target.enabled

            # the administrator sees the same page and can run the same operations
            async def admin_sees_s6() -> bool:
                admin_log = await admin.get(f"/integrations/{key}/deliveries")
                assert admin_log.status_code == 200
                return s6 in admin_log.text

            await wait_for(admin_sees_s6, 10, "s6 in the administrator's view of the log")
            done = await post(admin, f"/integrations/{key}/ops/test-event", {"back": "deliveries"})
            assert "Test event" in flash_of(done.text)

            # the JSON API: owner and admin tokens; another consumer sees nothing
            owner_h = {"Authorization": f"Bearer {await make_token(consumer)}"}
            admin_h = {"Authorization": f"Bearer {await make_token(admin)}"}
            st = await consumer.get(f"/api/v1/integrations/{key}/state", headers=owner_h)
            assert st.status_code == 200 and st.json()["state"] == "delivering"
            page = (await consumer.get(f"/api/v1/integrations/{key}/deliveries?outcome=delivered&limit=3",
                                       headers=owner_h)).json()
            assert len(page["items"]) == 3 and all(a["outcome"] == "delivered" for a in page["items"])
            assert page["next_before"] and page["items"][0]["seq"] > page["items"][-1]["seq"]
            sent = await consumer.post(f"/api/v1/integrations/{key}/test-event", headers=admin_h)
            assert sent.status_code == 200 and sent.json()["action"] == "test-event"
            resent = await consumer.post(f"/api/v1/integrations/{key}/resend", headers=owner_h, json={"seq": int(seq)})
            assert resent.json()["statement_id"] == s2
            assert (await consumer.get(f"/api/v1/integrations/{key}/dead-letters", headers=owner_h)).json() == []
            # two dead letters, then redrive one by its sequence and the other by time, through the API
            await wait_for(lambda: sent.json()["statement_id"] in ids_received(other)
                           and s2 in ids_received(other), 10, "earlier test event and resend delivered")
            other_switch.status = 500
            d1, d2 = await publish(js, statement()), await publish(js, statement())
            # one course, one lane: retry now until both have used up their schedule (a replay still catching
            # up may deliver a new statement a second time, with the same id: more dead letters are fine)
            async def both_dead() -> bool:
                listed = await consumer.get(f"/api/v1/integrations/{key}/dead-letters", headers=owner_h)
                if {d1, d2} <= {d["statement_id"] for d in listed.json()}:
                    return True
                await consumer.post(f"/api/v1/integrations/{key}/retry-now", headers=owner_h)
                return False

            await wait_for(both_dead, 15, "both dead-lettered", interval=0.3)
            dead = (await consumer.get(f"/api/v1/integrations/{key}/dead-letters", headers=owner_h)).json()
            assert all(d["last_status"] == 500 and d["statement_id"] in (d1, d2) for d in dead)
            other_switch.status = 200
            one = await consumer.post(f"/api/v1/integrations/{key}/redrive", headers=admin_h,
                                      json={"seqs": [dead[0]["seq"]]})
            assert one.json()["count"] == 1
            await wait_for(lambda: dead[0]["statement_id"] in ids_received(other), 10, "the one redriven")
            none = await consumer.post(f"/api/v1/integrations/{key}/redrive", headers=owner_h,
                                       json={"since": "2999-01-01T00:00:00Z"})
            assert none.status_code == 400 and "future" in none.json()["error"]
            rest = await consumer.post(f"/api/v1/integrations/{key}/redrive", headers=owner_h, json={"since": "1h"})
            assert rest.json()["count"] == len(dead) - 1
            await wait_for(lambda: dead[1]["statement_id"] in ids_received(other), 10, "the other redriven")
            replay = await consumer.post(f"/api/v1/integrations/{key}/replay", headers=owner_h, json={"since": "soon"})
            assert replay.status_code == 400 and "since" in replay.json()["errors"]
            mallory = await new_consumer(app)
            mh = {"Authorization": f"Bearer {await make_token(mallory)}"}
            for path in ("state", "deliveries", "dead-letters"):
                assert (await mallory.get(f"/api/v1/integrations/{key}/{path}", headers=mh)).status_code == 404
            for op in ("test-event", "retry-now", "reenable"):
                assert (await mallory.post(f"/api/v1/integrations/{key}/{op}", headers=mh)).status_code == 404
            assert (await post(mallory, f"/integrations/{key}/ops/test-event")).status_code == 404
            assert (await mallory.get(f"/integrations/{key}/deliveries")).status_code == 404
            # resending a message of another integration's course by guessing its sequence is refused
            foreign = await js.publish(subject("xapi", "default", "edX", COURSE_B, "x"), json.dumps(statement()).encode())
            stolen = await consumer.post(f"/api/v1/integrations/{key}/resend", headers=owner_h, json={"seq": foreign.seq})
            assert stolen.status_code == 409 and "not one of" in stolen.json()["error"]
    finally:
        await receiver.stop()
        await other.stop()


async def _wait_state(client, key: str, name: str, *fields: str, timeout: float = 10) -> None:
    """Wait until the endpoint state is ``name`` with ``fields`` set; a timeout shows the last state seen."""
    seen: dict = {}

    async def reached() -> bool:
        seen.clear()
        seen.update(await state(client, key))
        return seen["state"] == name and all(seen.get(f) for f in fields)

    try:
        await wait_for(reached, timeout, f"state {name} with {fields}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last state seen: {seen}") from None


async def _replay_over(js, key: str) -> bool:
    return (await integration_status(js, key))["replay_since"] is None


async def _dead(js, key: str, n: int) -> bool:
    return (await integration_status(js, key))["dead_letters"] == n


async def test_rotation_overlap_is_shown_and_ends(app, admin, js):
    consumer = await new_consumer(app)
    key = await request_access(consumer)
    await post(admin, f"/admin/integrations/{key}/approve")
    await consumer.get(f"/integrations/{key}")
    rotated = await post(consumer, f"/integrations/{key}/rotate")
    assert "still accepted until" in rotated.text and re.search(r'id="overlap">.*until <strong>20\d\d-', rotated.text)
    assert len((await read_target(app, js, key)).secrets) == 2
    row = await Integration.objects().get(Integration.key == key)
    await Integration.update({Integration.old_secret_until: dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)}
                             ).where(Integration.id == row.id)
    assert await endpoints.retire_expired(app.state.portal) >= 1
    assert len((await read_target(app, js, key)).secrets) == 1
    assert "secret.retire" in (await admin.get(f"/admin/integrations/{key}")).text


async def test_scope_narrowing_applies_and_widening_waits_for_an_admin(app, admin, js):
    consumer = await new_consumer(app)
    key = await request_access(consumer, courses=f"{COURSE_A}, {COURSE_B}")
    await post(admin, f"/admin/integrations/{key}/approve")
    narrowed = await post(consumer, f"/integrations/{key}/ops/scope",
                          {"scope_sites_present": "1", "sites": "default", "courses": COURSE_A})
    assert "Narrower scope applied" in flash_of(narrowed.text)
    assert decode_grant(await kv_get(js, GRANTS_BUCKET, key)).courses == [COURSE_A]
    wider = await post(consumer, f"/integrations/{key}/ops/scope",
                       {"scope_sites_present": "1", "sites": ["default", "campus"], "courses": COURSE_A})
    assert "administrator will review" in flash_of(wider.text)
    assert decode_grant(await kv_get(js, GRANTS_BUCKET, key)).sites == ["default"]
    assert "scope change" in (await admin.get("/admin")).text
    await post(admin, f"/admin/integrations/{key}/approve", {"sites": ["default", "campus"], "courses": COURSE_A})
    assert decode_grant(await kv_get(js, GRANTS_BUCKET, key)).sites == ["default", "campus"]
    assert not (await Integration.objects().get(Integration.key == key)).scope_change


async def test_lrs_credentials_are_replaced_never_shown(app, admin, js):
    consumer = await new_consumer(app)
    key = await request_access(consumer, delivery="lrs", url="https://lrs.example.org/xapi", basic_auth="old:secret-1")
    await post(admin, f"/admin/integrations/{key}/approve")
    page = (await consumer.get(f"/integrations/{key}")).text
    assert "secret-1" not in page and 'id="edit-endpoint"' in page
    bad = await post(consumer, f"/integrations/{key}/ops/endpoint", {"basic_auth": "no-colon"})
    assert "USER:PASSWORD" in flash_of(bad.text)
    done = await post(consumer, f"/integrations/{key}/ops/endpoint", {"url": "https://lrs.example.org/xapi",
                                                                     "basic_auth": "new:secret-2"})
    assert "Endpoint updated (credentials)" in flash_of(done.text) and "secret-2" not in done.text
    target = await read_target(app, js, key)
    assert target.basic_auth == "new:secret-2" and target.url == "https://lrs.example.org/xapi"
    audit = (await admin.get(f"/admin/integrations/{key}")).text
    assert "endpoint.edit" in audit and "secret-2" not in audit


def test_subject_matching_for_resend():
    from hub.core.subjects import subject_matches

    assert subject_matches("xapi.default.*.c1.>", "xapi.default.edX.c1.play")
    assert subject_matches("xapi.default.*.*.*", "xapi.default.edX.c1.play")
    assert not subject_matches("xapi.default.*.c1.>", "xapi.default.edX.c2.play")
    assert not subject_matches("xapi.default.*.c1.>", "xapi.default.edX.c1")
    assert not subject_matches("xapi.default.*.*.*", "xapi.default.edX.c1.play.more")
    assert not subject_matches("xapi.other.>", "xapi.default.edX.c1.play")


async def test_batched_webhook_chosen_in_the_portal(app, admin, js, nc, nats_server):
    """Issue 14: a consumer chooses batching in the request form; one signed POST carries an array of up to
    ``batch_size`` statements, in publish order; bad values are refused by field; the owner can change it."""
    consumer = await new_consumer(app)
    refused = await post(consumer, "/integrations", {
        "name": "Bulk", "protocol": "xapi", "delivery": "webhook", "url": "https://hooks.example.org/in",
        "sites": "default", "courses": COURSE_A, "batch_size": "5000", "batch_wait_ms": "-3"})
    assert 'aria-describedby="err-batch_size"' in refused.text and 'aria-describedby="err-batch_wait_ms"' in refused.text
    assert "from 1 (one statement per request) to 500" in refused.text

    receiver = await Receiver(lambda req: (200, {}, b"ok")).start()
    try:
        async with deliverer(nc, nats_server.url, data_dir=app.state.settings.data_dir):
            key = await request_access(consumer, url=receiver.url + "/bulk", courses=OPS_COURSE,
                                       batch_size="25", batch_wait_ms="100")
            await post(admin, f"/admin/integrations/{key}/approve")
            page = (await consumer.get(f"/integrations/{key}")).text  # the secret, shown once
            secret = re.search(r"(whsec_[A-Za-z0-9+/=]+)", page).group(1)
            assert "batched: up to 25 statements per POST, waiting at most 100 ms" in page
            target = await read_target(app, js, key)
            assert (target.batch_size, target.batch_wait_ms) == (25, 100)
            api = (await consumer.get(f"/api/v1/integrations/{key}",
                                      headers={"Authorization": f"Bearer {await make_token(consumer)}"})).json()
            assert (api["batch_size"], api["batch_wait_ms"]) == (25, 100)

            sent = [await publish(js, statement()) for _ in range(60)]
            await wait_for(lambda: len(ids_received(receiver)) >= 60, 15, "60 statements in batches")
            assert ids_received(receiver) == sent  # one course: publish order, nothing twice
            bodies = [r.json() for r in receiver.requests]
            assert all(isinstance(b, list) and 1 <= len(b) <= 25 for b in bodies) and len(bodies) < 60
            for r in receiver.requests:  # the Standard Webhooks signature covers the whole array
                h = {k.lower(): v for k, v in r.headers.items()}
                want = signing.signature(secret, h["webhook-id"], int(h["webhook-timestamp"]), r.body)
                assert want in h["webhook-signature"].split(" ")

            # back to one statement per POST, from the endpoint form
            done = await post(consumer, f"/integrations/{key}/ops/endpoint", {"url": receiver.url + "/bulk",
                                                                           "batch_size": "1"})
            assert "Endpoint updated (batching)" in flash_of(done.text)
            assert (await read_target(app, js, key)).batch_size == 1
            n = len(receiver.requests)
            one = await publish(js, statement())
            await wait_for(lambda: one in ids_received(receiver), 10, "a single statement after the change")
            assert receiver.requests[-1].json()["id"] == one and len(receiver.requests) == n + 1
    finally:
        await receiver.stop()
