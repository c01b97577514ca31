# ruff: noqa: F811 - the portal fixtures are imported from test_portal_api
"""Issue 24 (endpoint settings a consumer chooses) and issue 19.4 (secret shown again), through the portal API
and pages with a real deliverer and real HTTP receivers on 127.0.0.1: custom headers arrive (reserved names
refused), a filtered payload arrives without the dropped parts and with a valid signature, a rate limit of N/s
is held within 10%, pause keeps events and resume delivers them all in order, the owner can show the secret
again."""

from __future__ import annotations

import datetime as dt
import json
import re

import msgspec
import pytest
from standardwebhooks.webhooks import Webhook

from hub.core.grants import PAUSED_REASON, Target
from hub.core.subjects import PROTOCOL_STREAMS
from hub.deliver.transport.request import build, drop_parts
from hub.deliver.transport.signing import new_secret
from portal.validation import check_custom_headers, check_payload_filter, check_rate_limit
from tests.deliver_kit import deliverer
from tests.deliver_receivers import Receiver
from tests.helpers import unique, wait_for
from tests.test_portal_api import (  # noqa: F401 - fixtures
    admin,
    app,
    mailbox,
    make_token,
    new_consumer,
    post,
    read_target,
    request_access,
    settings,
)
from tests.test_portal_ops import ids_received, publish, statement


@pytest.fixture(scope="module", autouse=True)
def local_receivers(app):
    app.state.settings.allowed_networks = ["127.0.0.1/32"]


# ---- pure parts ---------------------------------------------------------------------------------------------
def test_build_adds_custom_headers_but_never_over_the_hubs_own():
    secret = new_secret()
    target = Target(id="g", kind="webhook", url="https://w/h", secrets=[secret],
                    custom_headers={"X-Tenant": "t1", "Webhook-Signature": "forged", "Content-Type": "text/plain"},
                    payload_filter=["context", "result"])
    st = {"id": "s1", "actor": {"name": "u"}, "verb": {"id": "v"}, "object": {"id": "o"}, "context": {"c": 1},
          "result": {"score": 1}}
    url, headers, body = build(target, "xapi", [msgspec.json.encode(st)], ["s1"], "sensor", False,
                               "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    assert headers["x-tenant"] == "t1" and headers["content-type"] == "application/json"
    assert headers["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert headers["webhook-signature"] != "forged"
    assert msgspec.json.decode(body) == {"id": "s1", "actor": {"name": "u"}, "verb": {"id": "v"}, "object": {"id": "o"}}
    assert Webhook(secret).verify(body, headers)["id"] == "s1"  # signed after filtering


def test_drop_parts_keeps_bytes_when_nothing_to_drop():
    raw = b'{"id":"x","object":{"id":"o"}}'
    assert drop_parts(raw, ["context"]) is raw and drop_parts(b"[1]", ["context"]) == b"[1]"


def test_field_checks_refuse_with_the_field_and_the_limit():
    errors: dict[str, str] = {}
    assert check_custom_headers("X-A: 1\nX-B: two words", errors) == {"X-A": "1", "X-B": "two words"}
    for bad, says in (("Authorization: x", "reserved"), ("traceparent: x", "reserved"), ("Bad Name: x", "valid"),
                      ({"X-A": "a\r\nInjected: 1"}, "one line"), ("X-A: 1\nx-a: 2", "twice"),
                      ("\n".join(f"X-{i}: v" for i in range(11)), "At most 10")):
        errors = {}
        assert check_custom_headers(bad, errors) is None and says in errors["custom_headers"], (bad, errors)
    errors = {}
    assert check_payload_filter("context, result", "xapi", errors) == ["context", "result"] and not errors
    assert check_payload_filter(["actor"], "xapi", errors) is None and "actor" in errors["payload_filter"]
    errors = {}
    assert check_rate_limit("12.5", errors, 100) == 12.5 and not errors
    for bad in ("101", "-1", "fast", "nan", True):
        errors = {}
        check_rate_limit(bad, errors, 100)
        assert "from 0 (no limit) to 100" in errors["rate_limit"], bad


# ---- through the portal, with a real deliverer -------------------------------------------------------------
COURSE = f"course-v1:Portal24+{unique('c')}+run"  # this module's own course: other modules' logs and replays
# (test_portal_ops replays COURSE_A) never see its statements


async def _approved(app, admin, receiver, **fields) -> tuple[object, str, str]:
    """A consumer, its approved webhook integration to ``receiver`` and the secret shown at approval."""
    consumer = await new_consumer(app)
    key = await request_access(consumer, url=receiver.url + "/hook", courses=COURSE, **fields)
    await post(admin, f"/admin/integrations/{key}/approve")
    page = (await consumer.get(f"/integrations/{key}")).text
    secret = re.search(r'<pre id="secret">([^<]+)</pre>', page).group(1)
    return consumer, key, secret


async def test_headers_filter_and_secret_shown_again(app, admin, js, nc, nats_server):
    receiver = await Receiver().start()
    try:
        async with deliverer(nc, nats_server.url, data_dir=app.state.settings.data_dir):
            consumer, key, secret = await _approved(
                app, admin, receiver, custom_headers="X-Tenant: acme\nX-Api-Key: k-123",
                payload_filter=["context", "result"], rate_limit="50")
            target = await read_target(app, js, key)
            assert target.custom_headers == {"X-Tenant": "acme", "X-Api-Key": "k-123"}
            assert target.payload_filter == ["context", "result"] and target.rate_limit_per_s == 50

            st = statement() | {"context": {"platform": "edX"}, "result": {"completion": True}}
            await publish(js, st, COURSE)
            await wait_for(lambda: st["id"] in ids_received(receiver), 10, "the filtered statement delivered")
            req = next(r for r in receiver.requests if r.body and st["id"].encode() in r.body)
            assert req.headers["x-tenant"] == "acme" and req.headers["x-api-key"] == "k-123"
            got = Webhook(secret).verify(req.body, req.headers)
            assert "context" not in got and "result" not in got and got["actor"] == st["actor"]

            # the secret again (issue 19.4): the page's button and the API, audited
            shown = await post(consumer, f"/integrations/{key}/secret")
            assert re.search(r'<pre id="secret">([^<]+)</pre>', shown.text).group(1) == secret
            token = await make_token(consumer)
            api = await consumer.post(f"/api/v1/integrations/{key}/secret", headers={"Authorization": f"Bearer {token}"})
            assert api.status_code == 200 and api.json()["webhook_secret"] == secret
            assert [e.action for e in await app.state.portal.audit_log(50, key)].count("secret.reveal") == 2

            # the API shows and edits the fields; a reserved header and a rate over the maximum are refused
            auth = {"Authorization": f"Bearer {token}"}
            view = (await consumer.get(f"/api/v1/integrations/{key}", headers=auth)).json()
            assert view["custom_headers"] == {"X-Tenant": "acme", "X-Api-Key": "k-123"}
            assert view["payload_filter"] == ["context", "result"] and view["rate_limit"] == 50
            bad = await consumer.post(f"/api/v1/integrations/{key}/endpoint", headers=auth,
                                      json={"custom_headers": {"Webhook-Id": "x"}, "rate_limit": 1000})
            assert bad.status_code == 400
            assert "reserved" in bad.json()["errors"]["custom_headers"] and "100" in bad.json()["errors"]["rate_limit"]
            ok = await consumer.post(f"/api/v1/integrations/{key}/endpoint", headers=auth,
                                     json={"custom_headers": [{"name": "X-Tenant", "value": "beta"}],
                                           "payload_filter": []})
            assert ok.status_code == 200, ok.text
            assert "custom_headers" in ok.json()["message"] and "payload_filter" in ok.json()["message"]
            st2 = statement() | {"context": {"platform": "edX"}}
            await publish(js, st2, COURSE)
            await wait_for(lambda: st2["id"] in ids_received(receiver), 10, "the second statement delivered")
            req = next(r for r in receiver.requests if r.body and st2["id"].encode() in r.body)
            assert req.headers["x-tenant"] == "beta" and "x-api-key" not in req.headers
            assert Webhook(secret).verify(req.body, req.headers)["context"] == {"platform": "edX"}
    finally:
        await receiver.stop()


async def test_rate_limit_is_held_within_ten_percent(app, admin, js, nc, nats_server):
    rate, n = 20, 61
    receiver = await Receiver().start()
    try:
        async with deliverer(nc, nats_server.url, data_dir=app.state.settings.data_dir):
            consumer, key, _ = await _approved(app, admin, receiver, rate_limit=str(rate))
            ids = [await publish(js, statement(), COURSE) for _ in range(n)]
            await wait_for(lambda: set(ids) <= set(ids_received(receiver)), 30, f"{n} statements delivered")
            times = sorted(r.t for r in receiver.requests if r.body and any(i.encode() in r.body for i in ids))
            # the bucket starts full (one burst of `rate`), so measure the requests after the first `rate`
            steady = times[rate:]
            measured = (len(steady) - 1) / (steady[-1] - steady[0])
            print(f"rate_limit_set={rate} rate_limit_measured={measured:.2f} ratio={measured / rate:.3f}")
            assert abs(measured - rate) <= rate * 0.10, measured
    finally:
        await receiver.stop()


async def test_pause_keeps_events_and_resume_delivers_all_in_order(app, admin, js, nc, nats_server):
    receiver = await Receiver().start()
    try:
        async with deliverer(nc, nats_server.url, data_dir=app.state.settings.data_dir):
            consumer, key, _ = await _approved(app, admin, receiver)
            token = await make_token(consumer)
            auth = {"Authorization": f"Bearer {token}"}
            first = await publish(js, statement(), COURSE)
            await wait_for(lambda: first in ids_received(receiver), 10, "delivery runs before the pause")

            paused = await consumer.post(f"/api/v1/integrations/{key}/pause", headers=auth)
            assert paused.status_code == 200, paused.text
            assert paused.json()["until"] and "kept" in paused.json()["message"]
            target = await read_target(app, js, key)
            assert not target.enabled and target.disabled_reason == PAUSED_REASON
            again = await consumer.post(f"/api/v1/integrations/{key}/pause", headers=auth)
            assert again.status_code == 409
            page = (await consumer.get(f"/integrations/{key}")).text
            assert 'id="paused"' in page and 'id="kept-until"' in page and 'id="resume"' in page
            listed = (await consumer.get("/integrations")).text  # the list's health column
            assert '<span class="state-badge paused">paused</span> <span class="health-text">paused since' in listed
            api_list = (await consumer.get("/api/v1/integrations", headers=auth)).json()
            assert next(i for i in api_list if i["id"] == key)["health"]["state"] == "paused"

            before = len(receiver.requests)
            ids = [await publish(js, statement(), COURSE) for _ in range(20)]
            stream = PROTOCOL_STREAMS["xapi"]

            async def kept() -> bool:
                info = await js.consumer_info(stream, f"rthub_{key}")
                return info.num_pending + info.num_ack_pending >= 20

            await wait_for(kept, 10, "20 statements kept in the durable consumer while paused")
            assert len(receiver.requests) == before  # nothing sent while paused

            resumed = await consumer.post(f"/api/v1/integrations/{key}/resume", headers=auth)
            assert resumed.status_code == 200, resumed.text
            await wait_for(lambda: set(ids) <= set(ids_received(receiver)), 30, "all kept statements delivered")
            got = [i for i in ids_received(receiver) if i in ids]
            assert got == ids  # in order (one course)
            assert (await read_target(app, js, key)).enabled
            assert 'id="pause"' in (await consumer.get(f"/integrations/{key}")).text
            listed = (await consumer.get("/integrations")).text
            assert '<span class="health-text">last success' in listed
    finally:
        await receiver.stop()



async def test_attempt_log_lists_posts_and_the_detail_shows_them(app, admin, js, nc, nats_server):
    """Issue 24 attempt detail and issue 19.5: one log row per POST (never merged), the detail of one attempt
    (status, response headers and body, request headers with the signature redacted, payload), Resend of a
    batched POST sends all of its statements again."""
    def answer(req):
        return 201, {"X-Receiver": "rx-1"}, b'{"received": true, "note": "' + b"k" * 2000 + b'"}'

    receiver = await Receiver(answer).start()
    try:
        async with deliverer(nc, nats_server.url, data_dir=app.state.settings.data_dir):
            consumer, key, _ = await _approved(app, admin, receiver)
            auth = {"Authorization": f"Bearer {await make_token(consumer)}"}
            now = dt.datetime.now(dt.UTC).isoformat()  # LMS time = now: the end-to-end latency is the hub's
            ids = [await publish(js, statement() | {"timestamp": now}, COURSE) for _ in range(3)]
            await wait_for(lambda: set(ids) <= set(ids_received(receiver)), 10, "3 statements delivered")
            items: list[dict] = []

            async def logged() -> bool:
                got = await consumer.get(f"/api/v1/integrations/{key}/deliveries", headers=auth)
                items[:] = got.json()["items"]
                return len(items) >= 3

            await wait_for(logged, 10, "3 attempts in the log")
            assert sorted(i["ids"][0] for i in items) == sorted(ids) and all(len(i["ids"]) == 1 for i in items)

            one = next(i for i in items if i["ids"] == [ids[0]])
            detail = await consumer.get(f"/api/v1/integrations/{key}/attempts/{one['id']}", headers=auth)
            assert detail.status_code == 200, detail.text
            d = detail.json()
            a = d["attempt"]
            assert a["status"] == 201 and a["response_headers"]["x-receiver"] == "rx-1"
            assert a["response_body"].startswith('{"received": true') and len(a["response_body"]) == 1024
            assert a["request_headers"]["webhook-id"] == ids[0]
            assert a["request_headers"]["webhook-signature"] == "v1,<redacted>"
            assert a["latency_ms"] > 0 and a["url"] == receiver.url + "/hook"
            assert json.loads(d["payload"][0])["id"] == ids[0] and d["statements"] == 1
            assert 0 < a["e2e_ms"] < 30_000
            lat = (await consumer.get(f"/api/v1/integrations/{key}/latency", headers=auth)).json()
            assert sum(lat["count"]) >= 3 and 0 < lat["p50_ms_24h"] <= lat["p99_ms_24h"] < 30_000
            assert len(lat["hours"]) == 24 and lat["p99_ms"][-1] is not None
            assert 'id="latency-chart"' in (await consumer.get(f"/integrations/{key}/deliveries")).text
            page = (await consumer.get(f"/integrations/{key}/attempts/{one['id']}")).text
            assert 'id="a-status">201<' in page and "rx-1" in page and "v1,&lt;redacted&gt;" in page
            assert ids[0] in page and 'id="resend"' in page

            # not this integration's attempt, nonsense ids, a stranger: 404
            other_consumer, other_key, _ = await _approved(app, admin, receiver)
            assert (await other_consumer.get(f"/api/v1/integrations/{other_key}/attempts/{one['id']}",
                                             headers={"Authorization": f"Bearer {await make_token(other_consumer)}"})
                    ).status_code == 404
            for bad in ("0", "x", "1.2.3", "99999999.0"):
                assert (await consumer.get(f"/api/v1/integrations/{key}/attempts/{bad}", headers=auth)).status_code == 404
            assert (await other_consumer.get(f"/integrations/{key}/attempts/{one['id']}")).status_code == 404

            # a batched POST: one row with 3 statements, and Resend sends all 3 again
            ok = await consumer.post(f"/api/v1/integrations/{key}/endpoint", headers=auth,
                                     json={"batch_size": 3, "batch_wait_ms": 2000})
            assert ok.status_code == 200, ok.text
            batch = [await publish(js, statement(), COURSE) for _ in range(3)]
            await wait_for(lambda: set(batch) <= set(ids_received(receiver)), 15, "the batch delivered")
            await wait_for(logged, 10, "log read")

            async def batch_row() -> bool:
                await logged()
                return any(sorted(i["ids"]) == sorted(batch) for i in items)

            await wait_for(batch_row, 10, "one row for the batched POST")
            row = next(i for i in items if sorted(i["ids"]) == sorted(batch))
            before = {s: ids_received(receiver).count(s) for s in batch}
            resent = await consumer.post(f"/api/v1/integrations/{key}/resend", headers=auth, json={"seqs": row["seqs"]})
            assert resent.status_code == 200 and resent.json()["count"] == 3, resent.text
            await wait_for(lambda: all(ids_received(receiver).count(s) > before[s] for s in batch), 15,
                           "all 3 statements of the POST sent again")
    finally:
        await receiver.stop()


def test_health_text_per_state():
    from portal.deliveries import EndpointState, health_text
    from portal.services.integrations import _epoch

    assert health_text(EndpointState(state="direct", headline="", lag=12, last_ack=0.0)).startswith("12 pending · last ack never")
    assert health_text(EndpointState(state="direct", headline="", lag=3, last_ack=1796391601.0)) == (
        "3 pending · last ack 2026-12-04 13:40:01 UTC")
    assert health_text(EndpointState(state="failing", headline="", since=1796391601.0, lag=40)) == (
        "failing since 2026-12-04 13:40:01 UTC · backlog 40")
    assert health_text(EndpointState(state="disabled", headline="", since=1796391601.0)).startswith("disabled since")
    assert _epoch("2026-12-04T13:40:01.123456789Z") == 1796391601.123456 and _epoch("0001-01-01T00:00:00Z") is None


def test_percentiles_and_event_time():
    from hub.deliver.state.records import event_time
    from portal.charts import percentile

    assert percentile([], 0.5) is None and percentile([5.0], 0.99) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50 and percentile(values, 0.99) == 99
    assert event_time(b'{"id": "x", "timestamp": "2026-05-01T10:00:00.5Z"}') == 1777629600.5
    assert event_time(b'{"eventTime": "2026-05-01T10:00:00+02:00"}') == 1777622400.0 and event_time(b"{}") is None
