"""Issue 13 items 3 and 4: a restarted deliverer continues a held message's retry schedule, and a receiver that
comes back is noticed by probing (circuit-breaker style), long before the next scheduled retry."""

from __future__ import annotations

import time

import pytest

from hub.deliver.ops import list_dead_letters
from hub.deliver.store import STATE_BUCKET
from tests.deliver_kit import deliverer, delivering, integration, publish, remove, statement
from tests.deliver_receivers import Receiver
from tests.helpers import wait_for

pytestmark = pytest.mark.asyncio


async def _retry_keys(js, gid: str) -> list[str]:
    info = await js.stream_info(f"KV_{STATE_BUCKET}", subjects_filter=f"$KV.{STATE_BUCKET}.schedule.{gid}.>")
    return list(info.state.subjects or {})


async def test_a_restarted_deliverer_continues_a_held_messages_retry_schedule(nc, js, nats_server):
    rx = await Receiver(lambda r: (500, {}, b"down")).start()
    gid, site = await integration(js, "webhook", rx.url)
    over = dict(retry_schedule=["0.05s", "0.05s", "3s"], probe_min="60s", probe_max="60s")
    try:
        async with deliverer(nc, nats_server.url, **over) as d1:
            await delivering(d1, gid)
            await publish(js, site, "c1", statement(1))
            await wait_for(lambda: len(rx.requests) == 3, 5, "three scheduled attempts")
            third = rx.requests[2].t
            await wait_for(lambda: _retry_keys(js, gid), 5, "the schedule's state saved")
        # d1 stopped and handed the message back; d2 gets it redelivered
        async with deliverer(nc, nats_server.url, **over) as d2:
            await delivering(d2, gid)
            await wait_for(lambda: len(rx.requests) == 4, 10, "the fourth and last attempt")
            assert rx.requests[3].t - third >= 2.5  # the 3 s step went on; not a fresh schedule from step 1
            await wait_for(lambda: list_dead_letters(js, gid), 5, "dead-lettered")
            assert [dl.reason for dl in await list_dead_letters(js, gid)] == ["failed after 4 attempts"]
            assert len(rx.requests) == 4
            await wait_for(lambda: _no_keys(js, gid), 5, "the schedule's state forgotten once settled")
    finally:
        await remove(js, gid)
        await rx.stop()


async def _no_keys(js, gid: str) -> bool:
    kv = await js.key_value(STATE_BUCKET)
    for subject in await _retry_keys(js, gid):
        try:
            await kv.get(subject.split(f"$KV.{STATE_BUCKET}.", 1)[1])
            return False
        except Exception:  # noqa: BLE001 - KeyDeletedError: purged
            continue
    return True


async def test_recovery_is_detected_by_probing_long_before_the_schedule(nc, js, nats_server):
    state = {"down": True}
    rx = await Receiver(lambda r: (503 if state["down"] else 200, {}, b"")).start()
    gid, site = await integration(js, "webhook", rx.url)
    courses = [f"c{i}" for i in range(5)]
    sts = {c: [statement(i, c) for i in range(3)] for c in courses}
    try:
        async with deliverer(nc, nats_server.url, retry_schedule=["5m", "5m"], probe_min="0.2s",
                             probe_max="1s") as d:
            await delivering(d, gid)
            for i in range(3):
                for c in courses:
                    await publish(js, site, c, sts[c][i])
            await wait_for(lambda: len(rx.requests) >= 5 + 5, 10, "every lane failed once, then probes")
            failed = list(rx.requests)
            state["down"] = False
            back = time.monotonic()
            ok = lambda: [r for r in rx.requests if r.t >= back]  # noqa: E731
            await wait_for(lambda: len({r.headers["webhook-id"] for r in ok()}) == 15, 10, "all delivered")
            took = max(r.t for r in ok()) - back
            # one lane probes while the endpoint is down: every failure after the first five is the same message
            assert len({r.headers["webhook-id"] for r in failed[5:]}) == 1
            assert len({r.headers["webhook-id"] for r in failed[:5]}) == 5
            assert took < 1.0 + 1.5, took  # probe_max + slack; the schedule would have waited 5 minutes
            for c in courses:  # order per course kept
                got = [r.json()["id"] for r in rx.requests if r.json()["object"]["id"].split("/")[-2] == c]
                firsts = list(dict.fromkeys(got))
                assert firsts == [st["id"] for st in sts[c]]
    finally:
        await remove(js, gid)
        await rx.stop()


async def test_lag_per_integration_is_a_prometheus_gauge(nc, js, nats_server):
    state = {"down": True}
    rx = await Receiver(lambda r: (503 if state["down"] else 200, {}, b"")).start()
    gid, site = await integration(js, "webhook", rx.url)
    try:
        async with deliverer(nc, nats_server.url, lag_poll="0.2s", retry_schedule=["5m"], probe_min="0.2s",
                             probe_max="0.5s") as d:
            await delivering(d, gid)
            for i in range(5):
                await publish(js, site, "c1", statement(i))
            series = f'rthub_integration_lag{{service="deliver",integration="{gid}"}}'
            await wait_for(lambda: f"{series} 5\n" in d.metrics.render(), 5, "lag 5 while the receiver is down")
            assert "# TYPE rthub_integration_lag gauge" in d.metrics.render()
            state["down"] = False
            await wait_for(lambda: f"{series} 0\n" in d.metrics.render(), 10, "lag 0 once delivered")
        assert len({r.headers["webhook-id"] for r in rx.requests if r.t}) == 5
    finally:
        await remove(js, gid)
        await rx.stop()


async def test_hub_lag_is_a_prometheus_gauge(tmp_path):
    """Its own server: raw events published while no hub runs are the hub consumer's lag, 0 once translated."""
    import asyncio

    from hub.natsconn import connect
    from hub.natsserver import NatsServer, free_port
    from hub.service import serve
    from hub.settings import HubSettings
    from hub.streams import ensure_streams
    from hub.subjects import subject

    server = NatsServer(free_port(), tmp_path / "nats", name="hublag").start()
    settings = HubSettings(nats_url=server.url, metrics_port=-1, lag_poll_s=0.2, id_secret="s",
                           data_dir=str(tmp_path))
    nc = await connect(settings, "test")
    stop, hubs = asyncio.Event(), []
    task = None
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings)
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        await js.add_consumer("LMS_RAW", ConsumerConfig(  # the hub's durable, created before the hub runs
            durable_name=settings.hub_consumer, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL))
        for i in range(7):
            await js.publish(subject("lms", "default", "edX", "course-v1:edX+L+1", "play_video"), b"{not json",
                             headers={"Nats-Msg-Id": f"lag-{i}"})
        task = asyncio.create_task(serve(settings, stop, ready=hubs.append))
        await wait_for(lambda: hubs, 10, "hub start")
        series = f'rthub_hub_lag{{service="hub",consumer="{settings.hub_consumer}"}}'
        await wait_for(lambda: f"{series} 0\n" in hubs[0].metrics.render(), 30, "lag 0 once all are handled")
    finally:
        stop.set()
        if task:
            await asyncio.wait_for(task, 15)
        await nc.close()
        server.stop()
