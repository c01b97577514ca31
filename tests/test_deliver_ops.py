"""Dead letters and redrive, replay, test events, SSRF refusals, and the ``rthub`` delivery commands."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest

from hub.deliver.actions import list_dead_letters, redrive, request_replay, send_test_event
from hub.deliver.state.integration_status import integration_status
from tests.deliver_kit import deliverer, delivering, integration, publish, remove, statement
from tests.deliver_receivers import Receiver
from tests.helpers import rthub, rthub_env, wait_for

pytestmark = pytest.mark.asyncio


async def _status(js, gid, **want):
    status = await integration_status(js, gid)
    return all(status[k] == v for k, v in want.items())


async def _refused(js, gid):
    status = await integration_status(js, gid)
    return status["dead_letters"] == 1 and status["last_error"] is not None


async def test_always_failing_ends_in_dead_letters_and_redrive_delivers(nc, js, nats_server):
    state = {"up": False}
    rx = await Receiver(lambda r: (200, {}, b"") if state["up"] else (502, {}, b"upstream\nbroken")).start()
    gid, site = await integration(js, "webhook", rx.url)
    try:
        async with deliverer(nc, nats_server.url) as d:
            await delivering(d, gid)
            sts = [statement(i) for i in range(2)]
            for st in sts:
                await publish(js, site, "c1", st)
            await wait_for(lambda: _status(js, gid, dead_letters=2, lag=0), 10, "both dead-lettered")
            assert len(rx.requests) == 2 * 4  # first try + 3 retries of the compressed schedule, each
            dead = await list_dead_letters(js, gid)
            assert [x.statement_id for x in dead] == [s["id"] for s in sts]
            assert dead[0].last_status == 502 and dead[0].response == "upstream broken"
            assert "failed after 4 attempts" in dead[0].reason and dead[0].subject.startswith("xapi.")

            # CLI lists them too
            env = rthub_env(nats_server.url)
            out = await asyncio.to_thread(rthub, "deadletters", "list", gid, "--json", env=env)
            assert out.returncode == 0, out.stderr
            listed = [json.loads(line) for line in out.stdout.decode().splitlines()]
            assert [x["statement_id"] for x in listed] == [s["id"] for s in sts]

            state["up"] = True
            assert await redrive(js, gid, seqs=[dead[1].seq]) == 1
            await wait_for(lambda: any(r.json() == sts[1] for r in rx.requests), 5, "redriven one delivered")
            assert [x.statement_id for x in await list_dead_letters(js, gid)] == [sts[0]["id"]]
            out = await asyncio.to_thread(rthub, "deadletters", "redrive", gid, env=env)
            assert out.returncode == 0 and b"redriven 1" in out.stdout, out
            await wait_for(lambda: any(r.json() == sts[0] for r in rx.requests), 5, "the other one too")
            assert rx.requests[-1].headers["webhook-id"] == sts[0]["id"]
            assert await list_dead_letters(js, gid) == []
    finally:
        await remove(js, gid)
        await rx.stop()


async def test_replay_since_a_time_redelivers_with_the_same_ids(nc, js, nats_server):
    rx = await Receiver().start()
    gid, site = await integration(js, "webhook", rx.url)
    try:
        async with deliverer(nc, nats_server.url) as d:
            await delivering(d, gid)
            old = statement(0)
            await publish(js, site, "c1", old)
            await wait_for(lambda: len(rx.requests) == 1, 5, "first delivery")
            since = dt.datetime.now(dt.UTC)
            await asyncio.sleep(0.01)  # not synchronisation: makes the start time strictly after `old`
            sts = [statement(i) for i in range(1, 4)]
            for st in sts:
                await publish(js, site, "c1", st)
            await wait_for(lambda: len(rx.requests) == 4, 5, "live deliveries")
            info = await request_replay(js, gid, since)
            assert info["statements"] == 3
            await wait_for(lambda: len(rx.requests) == 7, 5, "replayed 3")
            replayed = rx.requests[4:]
            assert [r.headers["webhook-id"] for r in replayed] == [s["id"] for s in sts]
            assert [r.json() for r in replayed] == sts
            await wait_for(lambda: _status(js, gid, replay_since=None), 5, "replay finished and cleaned up")
    finally:
        await remove(js, gid)
        await rx.stop()


async def test_test_event_reaches_the_endpoint(nc, js, nats_server):
    rx = await Receiver().start()
    gid, site = await integration(js, "webhook", rx.url)
    try:
        async with deliverer(nc, nats_server.url) as d:
            await delivering(d, gid)
            sid = await send_test_event(js, gid)
            await wait_for(lambda: len(rx.requests) == 1, 5, "test event")
            assert rx.requests[0].headers["webhook-id"] == sid
            body = rx.requests[0].json()
            assert body["id"] == sid and body["context"]["extensions"]["urn:rthub:test-event"] is True
    finally:
        await remove(js, gid)
        await rx.stop()


async def test_ssrf_refusals(nc, js, nats_server):
    """Loopback not allowed: an IP, a DNS name resolving to it, and a redirect to a private address."""
    rx = await Receiver(lambda r: (302, {"Location": "http://10.0.0.1/internal"}, b"")).start()
    by_ip, site1 = await integration(js, "webhook", rx.url)
    by_name, site2 = await integration(js, "webhook", f"http://localhost:{rx.port}/x")
    private, site3 = await integration(js, "webhook", "http://192.168.1.10/x")
    try:
        async with deliverer(nc, nats_server.url, allowed_networks=[], retry_schedule=["0.05s"]) as d:
            for gid, site in ((by_ip, site1), (by_name, site2), (private, site3)):
                await delivering(d, gid)
                await publish(js, site, "c1", statement())
            for gid in (by_ip, by_name, private):
                await wait_for(lambda g=gid: _refused(js, g), 5, f"{gid} refused")
            assert rx.requests == []
            errors = {gid: (await integration_status(js, gid))["last_error"] for gid in (by_ip, by_name, private)}
            assert "127.0.0.1: address not allowed" in errors[by_ip]
            assert "localhost: address not allowed" in errors[by_name] and "127.0.0.1" not in errors[by_name]
            assert "192.168.1.10: address not allowed" in errors[private]
        # allowed loopback: the receiver is reached, but its redirect to a private address is not followed
        redirected, site4 = await integration(js, "webhook", rx.url)
        async with deliverer(nc, nats_server.url, retry_schedule=["0.05s"]) as d:
            await delivering(d, redirected)
            await publish(js, site4, "c1", statement())
            await wait_for(lambda: _refused(js, redirected), 5, "redirect not followed")
            assert len(rx.requests) == 2 and all(r.path == "/" for r in rx.requests)
            assert "redirect not followed" in (await integration_status(js, redirected))["last_error"]
        await remove(js, redirected)
    finally:
        for gid in (by_ip, by_name, private):
            await remove(js, gid)
        await rx.stop()


async def test_attempt_log_one_reader_for_the_portals_list_and_chart(js, nats_server):
    """The portal's attempt list (newest first, filtered, paged) and its delivery chart read the same records
    through hub.deliver.state.attempt_log."""
    import time

    import msgspec

    from hub.core.subjects import attempts_subject
    from hub.deliver.state.attempt_log import first_record_time
    from hub.deliver.state.records import Attempt
    from hub.deliver.state.setup import ensure_delivery
    from portal.charts import delivery_minutes
    from portal.deliveries import LogFilter, parse_attempt_id, read_attempts
    from tests.deliver_kit import settings
    from tests.helpers import unique

    await ensure_delivery(js, settings(nats_server.url))
    gid = unique("g")
    assert await first_record_time(js, gid) is None
    now = time.time()
    records = [Attempt(t=now - 120, ids=["a", "b"], attempt=1, outcome="delivered", status=200),
               Attempt(t=now - 60, ids=["c"], attempt=1, outcome="retry", status=500),
               Attempt(t=now - 1, ids=["c"], attempt=2, outcome="delivered", status=200)]
    for a in records:
        await js.publish(attempts_subject(gid), msgspec.json.encode(a))
    await js.publish(attempts_subject(unique("other")), msgspec.json.encode(records[0]))  # not this one's
    page = await read_attempts(js, gid, LogFilter(limit=2))
    assert [(a.outcome, a.attempt) for a in page.items] == [("delivered", 2), ("retry", 1)]
    assert page.next_before is not None
    rest = await read_attempts(js, gid, LogFilter(limit=2, before=parse_attempt_id(page.next_before)))
    assert [a.ids for a in rest.items] == [["a", "b"]] and rest.next_before is None
    failed_only = await read_attempts(js, gid, LogFilter(outcome="retry"))
    assert [a.status for a in failed_only.items] == [500]
    delivered, failed = await delivery_minutes(js, gid, now=now)
    assert sum(delivered) == 3 and sum(failed) == 1
