"""xAPI LRS and Caliper delivery: batching, splitting around a bad statement, duplicates, auth, envelopes."""

from __future__ import annotations

import base64

import pytest

from hub.deliver.state.integration_status import integration_status
from tests.deliver_kit import deliverer, delivering, integration, publish, remove, statement
from tests.deliver_receivers import LRS, Receiver
from tests.helpers import wait_for

pytestmark = pytest.mark.asyncio


async def test_lrs_batches_and_splits_around_a_bad_statement(nc, js, nats_server):
    lrs = LRS()
    rx = await Receiver(lrs).start()
    gid, site = await integration(js, "lrs", rx.url + "/xapi/", basic_auth="key:secret", batch_size=8,
                                  batch_wait_ms=300)
    try:
        async with deliverer(nc, nats_server.url) as d:
            await delivering(d, gid)
            sts = [statement(i, bad=(i == 5)) for i in range(8)]
            for st in sts:
                await publish(js, site, "c1", st)
            good = [s["id"] for s in sts if "verb" in s]
            await wait_for(lambda: set(lrs.statements) == set(good), 10, "the 7 good statements stored")
            assert lrs.order == good  # order kept through the split
            first = rx.requests[0]
            assert first.path == "/xapi/statements" and isinstance(first.json(), list) and len(first.json()) == 8
            assert first.headers["x-experience-api-version"] == "1.0.3"
            assert first.headers["authorization"] == "Basic " + base64.b64encode(b"key:secret").decode()
            await wait_for(lambda: _dead(js, gid, 1), 5, "the bad statement dead-lettered")
            await wait_for(lambda: _status_is(js, gid, delivered=7, lag=0), 5, "7 delivered, nothing pending")
            status = await integration_status(js, gid)
            dead = next(a for a in status["recent"] if a["outcome"] == "dead")
            assert dead["ids"] == [sts[5]["id"]] and dead["status"] == 400
    finally:
        await remove(js, gid)
        await rx.stop()


async def _dead(js, gid, n):
    return (await integration_status(js, gid))["dead_letters"] == n


async def test_lrs_already_has_the_id_counts_as_delivered(nc, js, nats_server):
    lrs = LRS()
    rx = await Receiver(lrs).start()
    gid, site = await integration(js, "lrs", rx.url, bearer="tok")
    try:
        known = statement(1)
        lrs.statements[known["id"]] = dict(known, stored="elsewhere")  # same id, other content: 409
        same = statement(2)
        lrs.statements[same["id"]] = same  # same id, same content: 204
        async with deliverer(nc, nats_server.url) as d:
            await delivering(d, gid)
            await publish(js, site, "c1", known)
            await publish(js, site, "c1", same)
            await wait_for(lambda: len(rx.requests) == 2, 5, "two posts")
            await wait_for(lambda: _status_is(js, gid, delivered=2, lag=0), 5, "both count as delivered")
            assert rx.requests[0].headers["authorization"] == "Bearer tok"
            assert (await integration_status(js, gid))["dead_letters"] == 0
    finally:
        await remove(js, gid)
        await rx.stop()


async def _status_is(js, gid, **want):
    status = await integration_status(js, gid)
    return all(status[k] == v for k, v in want.items())


async def test_caliper_endpoint_gets_a_1p2_envelope_with_bearer(nc, js, nats_server):
    rx = await Receiver().start()
    gid, site = await integration(js, "caliper", rx.url + "/caliper", protocol="caliper", bearer="cal-token",
                                  batch_size=5, batch_wait_ms=200)
    try:
        async with deliverer(nc, nats_server.url, caliper_sensor="https://hub.example/sensor") as d:
            await delivering(d, gid)
            events = [{"id": f"urn:uuid:{statement()['id']}", "type": "MediaEvent", "action": "Started"}
                      for _ in range(5)]
            for ev in events:
                await publish(js, site, "c1", ev, protocol="caliper")
            await wait_for(lambda: sum(len(r.json()["data"]) for r in rx.requests) == 5, 5, "5 events")
            env = rx.requests[0].json()
            assert env["dataVersion"] == "http://purl.imsglobal.org/ctx/caliper/v1p2"
            assert env["sensor"] == "https://hub.example/sensor" and env["sendTime"].endswith("Z")
            assert [e for r in rx.requests for e in r.json()["data"]] == events
            assert rx.requests[0].headers["authorization"] == "Bearer cal-token"
    finally:
        await remove(js, gid)
        await rx.stop()


async def test_exception_while_handling_one_message_dead_letters_it_with_the_reason(nc, js, nats_server,
                                                                                    monkeypatch):
    """A bug one statement meets (here the request builder raising on it) costs that statement only: it is
    dead-lettered with the exception as reason, the rest of its batch and course is delivered, nothing loops."""
    import hub.deliver.engine.endpoint

    real = hub.deliver.engine.endpoint.build

    def buggy(target, protocol, bodies, ids, *args):
        if any(b'"urn:n":2}' in b for b in bodies):
            raise ValueError("cannot build this one")
        return real(target, protocol, bodies, ids, *args)

    monkeypatch.setattr(hub.deliver.engine.endpoint, "build", buggy)
    lrs = LRS()
    rx = await Receiver(lrs).start()
    gid, site = await integration(js, "lrs", rx.url + "/xapi/", basic_auth="key:secret", batch_size=4,
                                  batch_wait_ms=300)
    try:
        async with deliverer(nc, nats_server.url) as d:
            await delivering(d, gid)
            sts = [statement(i) for i in range(6)]
            for st in sts:
                await publish(js, site, "c1", st)
            good = [s["id"] for i, s in enumerate(sts) if i != 2]
            await wait_for(lambda: set(lrs.statements) == set(good), 10, "the 5 other statements stored")
            assert lrs.order == good  # the course's order kept around the dead letter
            await wait_for(lambda: _dead(js, gid, 1), 5, "the one statement dead-lettered")
            dead = await js.get_last_msg("DEAD_LETTER", f"dlq.{gid}")
            assert dead.headers["Rthub-Reason"] == "internal error: ValueError: cannot build this one"
            assert dead.headers["Rthub-Statement-Id"] == sts[2]["id"]
            await wait_for(lambda: _status_is(js, gid, delivered=5, lag=0), 5, "nothing pending, nothing looping")
    finally:
        await remove(js, gid)
        await rx.stop()
