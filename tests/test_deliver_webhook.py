"""Webhook delivery against real HTTP receivers on 127.0.0.1 and the session's nats-server."""

from __future__ import annotations

import json

import pytest
from standardwebhooks.webhooks import Webhook

from hub.deliver.state.integration_status import integration_status
from hub.deliver.transport.signing import new_secret
from tests.deliver_kit import deliverer, delivering, integration, publish, remove, statement
from tests.deliver_receivers import Receiver
from tests.helpers import wait_for

pytestmark = pytest.mark.asyncio


async def test_signed_webhook_verified_by_standardwebhooks(nc, js, nats_server):
    old, new = new_secret(), new_secret()
    rx = await Receiver().start()
    gid, site = await integration(js, "webhook", rx.url + "/hook", secrets=[new, old])
    try:
        async with deliverer(nc, nats_server.url) as d:
            await delivering(d, gid)
            sts = [statement(i) for i in range(3)]
            for st in sts:
                await publish(js, site, "c1", st)
            await wait_for(lambda: len(rx.requests) >= 3, 10, "3 webhook posts")
            for req, st in zip(rx.requests, sts, strict=True):
                assert req.headers["webhook-id"] == st["id"]
                assert len(req.headers["webhook-signature"].split(" ")) == 2
                for secret in (old, new):  # either side of a rotation verifies
                    assert Webhook(secret).verify(req.body, req.headers) == st
                with pytest.raises(Exception):  # noqa: B017 - a foreign secret must not verify
                    Webhook(new_secret()).verify(req.body, req.headers)
            await wait_for(lambda: _delivered(js, gid, 3), 5, "status counts 3 delivered")
    finally:
        await remove(js, gid)
        await rx.stop()


async def _delivered(js, gid, n):
    status = await integration_status(js, gid)
    return status["delivered"] == n and status["lag"] == 0 and status["last_success"]


async def test_retry_on_500_then_success_keeps_webhook_id(nc, js, nats_server):
    answers = iter([500, 500])
    rx = await Receiver(lambda r: (next(answers, 200), {}, b"boom")).start()
    gid, site = await integration(js, "webhook", rx.url, secrets=[new_secret()])
    try:
        async with deliverer(nc, nats_server.url) as d:
            await delivering(d, gid)
            st = statement()
            await publish(js, site, "c1", st)
            await wait_for(lambda: len(rx.requests) == 3, 10, "two failures then success")
            assert {r.headers["webhook-id"] for r in rx.requests} == {st["id"]}
            assert rx.requests[-1].json() == st
            status = await integration_status(js, gid)
            await wait_for(lambda: _delivered(js, gid, 1), 5, "delivered once")
            status = await integration_status(js, gid)
            outcomes = [a["outcome"] for a in reversed(status["recent"])]
            assert outcomes == ["retry", "retry", "delivered"]
            assert [a["status"] for a in reversed(status["recent"])] == [500, 500, 200]
    finally:
        await remove(js, gid)
        await rx.stop()


async def test_retry_after_is_honoured(nc, js, nats_server):
    answers = iter([(503, {"Retry-After": "1"}), (429, {"Retry-After": "1"})])

    def handler(_):
        status, headers = next(answers, (200, {}))
        return status, headers, b""

    rx = await Receiver(handler).start()
    gid, site = await integration(js, "webhook", rx.url)
    try:
        async with deliverer(nc, nats_server.url) as d:
            await delivering(d, gid)
            await publish(js, site, "c1", statement())
            await wait_for(lambda: len(rx.requests) == 3, 10, "503, 429, then 200")
            gaps = [b.t - a.t for a, b in zip(rx.requests, rx.requests[1:], strict=False)]
            assert all(g >= 0.95 for g in gaps), gaps  # the schedule alone would retry after 0.05 s
    finally:
        await remove(js, gid)
        await rx.stop()


async def test_410_disables_the_endpoint(nc, js, nats_server):
    from tests.deliver_kit import get_target

    rx = await Receiver(lambda r: (410, {}, b"gone")).start()
    gid, site = await integration(js, "webhook", rx.url)
    try:
        async with deliverer(nc, nats_server.url) as d:
            await delivering(d, gid)
            await publish(js, site, "c1", statement())
            await wait_for(lambda: gid not in d.runners, 5, "runner stopped after 410")
            target = await get_target(js, gid)
            assert target.enabled is False and "410" in target.disabled_reason
            status = await integration_status(js, gid)
            assert status["enabled"] is False and "410" in status["disabled_reason"]
            assert status["lag"] == 1  # kept for when the consumer re-enables the endpoint
            await publish(js, site, "c1", statement())
            with pytest.raises(AssertionError):
                await wait_for(lambda: len(rx.requests) > 1, 0.5, "no more posts")
    finally:
        await remove(js, gid)
        await rx.stop()


async def test_receiver_down_then_gets_everything_in_order(nc, js, nats_server):
    rx = Receiver()
    gid, site = await integration(js, "webhook", rx.url)
    try:
        async with deliverer(nc, nats_server.url, retry_schedule=["0.1s"] * 30) as d:
            await delivering(d, gid)
            sts = {c: [statement(i, c) for i in range(8)] for c in ("c1", "c2", "c3")}
            for i in range(8):
                for c in sts:
                    await publish(js, site, c, sts[c][i])
            await wait_for(lambda: d.runners[gid].stats.failures >= 3, 5, "attempts fail while down")
            await rx.start()
            await wait_for(lambda: len({r.json()["id"] for r in rx.requests}) == 24, 15, "all 24 delivered")
            for c, expected in sts.items():
                got = [r.json()["object"]["id"] for r in rx.requests if f"/{c}/" in r.json()["object"]["id"]]
                assert got == [s["object"]["id"] for s in expected], c
            assert len(rx.requests) == 24  # each once
    finally:
        await remove(js, gid)
        await rx.stop()


async def test_ordering_per_course_with_flaky_receiver(nc, js, nats_server):
    seen: set[str] = set()

    def flaky(req):  # the first attempt of every third statement fails
        body = json.loads(req.body)
        n = body["result"]["extensions"]["urn:n"]
        if n % 3 == 0 and body["id"] not in seen:
            seen.add(body["id"])
            return 500, {}, b"try again"
        return 200, {}, b""

    rx = await Receiver(flaky).start()
    gid, site = await integration(js, "webhook", rx.url, max_concurrency=8)
    try:
        async with deliverer(nc, nats_server.url) as d:
            await delivering(d, gid)
            courses = [f"k{i}" for i in range(4)]
            for n in range(15):
                for c in courses:
                    await publish(js, site, c, statement(n, c))
            await wait_for(lambda: len(rx.requests) >= 80, 15, "60 statements + 20 failed attempts")
            ok = [r.json() for r in rx.requests]
            for c in courses:
                ns = [b["result"]["extensions"]["urn:n"] for b in ok if f"/{c}/" in b["object"]["id"]]
                delivered_order = [n for i, n in enumerate(ns) if n % 3 or ns[:i].count(n)]
                assert delivered_order == list(range(15)), (c, ns)
    finally:
        await remove(js, gid)
        await rx.stop()


async def test_revocation_stops_delivery_within_a_second(nc, js, nats_server):
    from hub.core.grants import delete_grant

    rx = await Receiver().start()
    gid, site = await integration(js, "webhook", rx.url)
    try:
        async with deliverer(nc, nats_server.url) as d:
            await delivering(d, gid)
            await publish(js, site, "c1", statement())
            await wait_for(lambda: len(rx.requests) == 1, 5, "first delivered")
            await delete_grant(js, gid)
            await wait_for(lambda: gid not in d.runners, 1.0, "runner gone within a second")
            await publish(js, site, "c1", statement())
            with pytest.raises(AssertionError):
                await wait_for(lambda: len(rx.requests) > 1, 1.0, "nothing after revocation")
    finally:
        await remove(js, gid)
        await rx.stop()


async def test_continuous_failure_disables_after_the_configured_time(nc, js, nats_server):
    from tests.deliver_kit import get_target

    rx = await Receiver(lambda r: (500, {}, b"down")).start()
    gid, site = await integration(js, "webhook", rx.url)
    try:
        async with deliverer(nc, nats_server.url, retry_schedule=["0.1s"] * 50, disable_after="0.5s") as d:
            await delivering(d, gid)
            await publish(js, site, "c1", statement())
            await wait_for(lambda: gid not in d.runners, 5, "disabled after 0.5 s of failures")
            target = await get_target(js, gid)
            assert target.enabled is False and target.disabled_reason.startswith("failing continuously since")
            assert "HTTP 500" in target.disabled_reason
            assert 3 <= len(rx.requests) <= 10
            assert (await integration_status(js, gid))["dead_letters"] == 0  # kept, not dropped
    finally:
        await remove(js, gid)
        await rx.stop()
