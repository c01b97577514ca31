"""Several deliverers sharing integrations, and ``rthub deliver`` as a real process."""

from __future__ import annotations

import asyncio
import signal

import pytest

from hub.core.natsconn import connect
from hub.core.settings import NatsSettings
from hub.deliver.service import Deliverer
from hub.deliver.state.setup import ensure_delivery
from tests.deliver_kit import deliverer, delivering, integration, publish, remove, settings, statement
from tests.deliver_receivers import Receiver
from tests.helpers import rthub_env, rthub_popen, wait_for

pytestmark = pytest.mark.asyncio


async def test_two_deliverers_share_a_parallel_integration_without_duplicates(nc, js, nats_server):
    rx = await Receiver().start()
    gid, site = await integration(js, "webhook", rx.url, parallel=True)
    nc2 = await connect(NatsSettings(nats_url=nats_server.url), "second")
    try:
        async with deliverer(nc, nats_server.url) as d1, deliverer(nc2, nats_server.url) as d2:
            await delivering(d1, gid)
            await delivering(d2, gid)
            sts = [statement(i, f"c{i % 5}") for i in range(200)]
            for st in sts:
                await publish(js, site, f"c{sts.index(st) % 5}", st)
            await wait_for(lambda: len(rx.requests) >= 200, 10, "200 deliveries")
            assert sorted(r.headers["webhook-id"] for r in rx.requests) == sorted(s["id"] for s in sts)
            assert d1.runners[gid].stats.delivered > 0 and d2.runners[gid].stats.delivered > 0
    finally:
        await nc2.close()
        await remove(js, gid)
        await rx.stop()


async def test_ordered_integration_has_one_active_deliverer_and_fails_over(nc, js, nats_server):
    rx = await Receiver().start()
    gid, site = await integration(js, "webhook", rx.url)
    nc2 = await connect(NatsSettings(nats_url=nats_server.url), "second")
    first = await Deliverer(nc, settings(nats_server.url)).start()
    standby = None
    try:
        await delivering(first, gid)
        standby = await Deliverer(nc2, settings(nats_server.url)).start()
        await wait_for(lambda: gid in standby.runners, 5, "the stand-by has a runner")
        for i in range(20):
            await publish(js, site, "c1", statement(i))
        await wait_for(lambda: len(rx.requests) == 20, 5, "first 20")
        assert first.runners[gid].stats.delivered == 20
        assert not standby.runners[gid].leader.is_set() and standby.runners[gid].stats.delivered == 0
        await first.stop()  # releases the lease: the stand-by takes over
        await delivering(standby, gid)
        for i in range(20, 40):
            await publish(js, site, "c1", statement(i))
        await wait_for(lambda: len(rx.requests) == 40, 5, "next 20 via the stand-by")
        assert [r.json()["result"]["extensions"]["urn:n"] for r in rx.requests] == list(range(40))
    finally:
        await first.stop()
        if standby:
            await standby.stop()
        await nc2.close()
        await remove(js, gid)
        await rx.stop()


async def test_rthub_deliver_process_delivers_and_exits_cleanly_on_sigterm(js, nats_server):
    rx = await Receiver().start()
    gid, site = await integration(js, "webhook", rx.url)
    env = rthub_env(nats_server.url, RTHUB_ALLOWED_NETWORKS="127.0.0.1/32", RTHUB_ACK_WAIT="2s")
    proc = rthub_popen("deliver", env=env)
    try:
        from hub.core.grants import consumer_name
        await wait_for(lambda: _has_consumer(js, consumer_name(gid)), 15, "the process creates the consumer")
        sts = [statement(i) for i in range(5)]
        for st in sts:
            await publish(js, site, "c1", st)
        await wait_for(lambda: len(rx.requests) == 5, 10, "5 delivered by the process")
        assert [r.json() for r in rx.requests] == sts
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 15)
        assert code == 0, proc.stderr.read().decode()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await remove(js, gid)
        await rx.stop()


async def _has_consumer(js, name):
    try:
        await js.consumer_info("XAPI", name)
        return True
    except Exception:  # noqa: BLE001
        return False


async def test_a_failed_start_is_retried_until_it_works_and_health_tells_meanwhile(nc, js, nats_server):
    """Issue 13 item 1: ``add_consumer`` failing (here: a push consumer squats the durable name) must not leave the
    integration undelivered for good; /health is false until it is delivered."""
    from nats.js.api import AckPolicy, ConsumerConfig

    from hub.core.grants import Grant, Target, consumer_name, put_grant
    from tests.deliver_kit import put_target
    from tests.helpers import unique

    rx = await Receiver().start()
    gid, site = unique("g"), unique("site")
    await js.add_consumer("XAPI", ConsumerConfig(durable_name=consumer_name(gid), deliver_subject=f"nowhere.{gid}",
                                                 ack_policy=AckPolicy.NONE, filter_subject=f"xapi.{site}.>"))
    await put_target(js, Target(id=gid, kind="webhook", url=rx.url))
    await put_grant(js, Grant(id=gid, consumer="c-" + gid, protocol="xapi", sites=[site], delivery="webhook"))
    try:
        async with deliverer(nc, nats_server.url, converge_backoff_max="1s") as d:
            await wait_for(lambda: d.backoff.get(gid, (0, 0))[0] >= 2, 10, "two failed starts")
            assert gid in d.not_delivering() and not d.healthy()
            assert gid not in d.runners
            await js.delete_consumer("XAPI", consumer_name(gid))  # the fault goes away
            await delivering(d, gid)
            assert gid not in d.not_delivering() and gid not in d.backoff
            st = statement(1)
            await publish(js, site, "c1", st)
            await wait_for(lambda: len(rx.requests) == 1, 10, "delivered after convergence")
            assert rx.requests[0].json() == st
            # a consumer deleted under a running integration: the runner notices and the consumer comes back
            await js.delete_consumer("XAPI", consumer_name(gid))
            await wait_for(lambda: _has_consumer(js, consumer_name(gid)), 15, "consumer recreated")
            await delivering(d, gid)
            st2 = statement(2)
            await publish(js, site, "c1", st2)
            await wait_for(lambda: len(rx.requests) == 2, 10, "delivered after the consumer came back")
            assert rx.requests[1].json() == st2
    finally:
        await remove(js, gid)
        await rx.stop()


async def test_stop_ends_even_if_a_task_ignores_cancellation(nc, js, nats_server, caplog, monkeypatch):
    """A background task that swallows every cancel cannot hold a deliverer's stop (SIGTERM) forever."""
    import hub.deliver.service as service

    monkeypatch.setattr(service, "STOP_ROUNDS", 2)
    s = settings(nats_server.url)
    await ensure_delivery(js, s)
    d = await Deliverer(nc, s).start()
    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn(), name="stubborn")
    d.background.append(task)
    try:
        await asyncio.wait_for(d.stop(), 15)
        assert "ignored cancellation" in caplog.text and "stubborn" in caplog.text
    finally:
        released.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_holder_steps_down_at_once_when_its_lease_is_taken(nc, js, nats_server):
    """A held lease is checked when the book changes it, not on a timer: with lease_ttl 60 s (a check every 20 s
    before) a take-over written by another process stops this one's delivery within moments."""
    import time

    import msgspec

    from hub.core.subjects import DELIVERY_STATE_BUCKET
    from hub.deliver.state.lease import LeaseRecord

    rx = await Receiver().start()
    gid, _ = await integration(js, "webhook", rx.url)
    s = settings(nats_server.url, lease_ttl="60s")
    await ensure_delivery(js, s)
    d = await Deliverer(nc, s).start()
    try:
        await delivering(d, gid)
        kv = await js.key_value(DELIVERY_STATE_BUCKET)
        entry = await kv.get(f"lease.{gid}")
        assert msgspec.json.decode(entry.value, type=LeaseRecord).owner == d.process_id
        await kv.update(f"lease.{gid}", msgspec.json.encode(LeaseRecord("another-process", time.time())),
                        last=entry.revision)
        await wait_for(lambda: gid in d.runners and not d.runners[gid].leader.is_set(), 3,
                       "the holder stepping down")
    finally:
        await d.stop()
        await remove(js, gid)
        await rx.stop()
