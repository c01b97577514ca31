"""Issue 13 items 3 and 4: a restarted deliverer continues a held message's retry schedule, and a receiver that
comes back is noticed by probing (circuit-breaker style), long before the next scheduled retry."""

from __future__ import annotations

import time

import pytest

from hub.core.subjects import DELIVERY_STATE_BUCKET
from hub.deliver.actions import list_dead_letters
from tests.deliver_kit import deliverer, delivering, integration, publish, remove, statement
from tests.deliver_receivers import Receiver
from tests.helpers import wait_for

pytestmark = pytest.mark.asyncio


async def _retry_keys(js, gid: str) -> list[str]:
    info = await js.stream_info(f"KV_{DELIVERY_STATE_BUCKET}", subjects_filter=f"$KV.{DELIVERY_STATE_BUCKET}.schedule.{gid}.>")
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
    kv = await js.key_value(DELIVERY_STATE_BUCKET)
    for subject in await _retry_keys(js, gid):
        try:
            await kv.get(subject.split(f"$KV.{DELIVERY_STATE_BUCKET}.", 1)[1])
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
            series = f'rthub_integration_lag{{integration="{gid}",service="deliver"}}'
            await wait_for(lambda: f"{series} 5.0\n" in d.metrics.render(), 5, "lag 5 while the receiver is down")
            assert "# TYPE rthub_integration_lag gauge" in d.metrics.render()
            state["down"] = False
            await wait_for(lambda: f"{series} 0.0\n" in d.metrics.render(), 10, "lag 0 once delivered")
        assert len({r.headers["webhook-id"] for r in rx.requests if r.t}) == 5
    finally:
        await remove(js, gid)
        await rx.stop()


async def test_hub_lag_is_a_prometheus_gauge(tmp_path):
    """Its own server: raw events published while no hub runs are the hub consumer's lag, 0 once translated."""
    import asyncio

    from hub.core.natsconn import connect
    from hub.core.settings import HubSettings
    from hub.core.streams import ensure_streams
    from hub.core.subjects import subject
    from hub.ops.natsserver import NatsServer, free_port
    from hub.route.service import serve

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
        series = f'rthub_hub_lag{{consumer="{settings.hub_consumer}",service="hub"}}'
        await wait_for(lambda: f"{series} 0.0\n" in hubs[0].metrics.render(), 30, "lag 0 once all are handled")
    finally:
        stop.set()
        if task:
            await asyncio.wait_for(task, 15)
        await nc.close()
        server.stop()


async def test_secret_rotation_under_load_takes_effect_at_once_on_every_deliverer(nc, js, nats_server):
    """Issue 10 bug 3: rotate, rotate again at once, retire, while 100 statements/s flow to two deliverers (one
    delivering, one standing by). The receiver switches to each newest secret at once and answers 401 to
    anything else. Within a second of the last change every request verifies with the newest secret, delivery
    never pauses, nothing is lost, and the delivered counter does not start again from zero."""
    import asyncio

    from standardwebhooks.webhooks import Webhook

    from hub.core.grants import Target
    from hub.core.natsconn import connect
    from hub.core.settings import NatsSettings
    from hub.deliver.state.integration_status import integration_status
    from hub.deliver.transport.signing import new_secret
    from tests.deliver_kit import put_target

    s1, s2, s3 = new_secret(), new_secret(), new_secret()
    current = {"secret": s1}

    def verify(req, secret: str) -> bool:
        try:
            Webhook(secret).verify(req.body, req.headers)
            return True
        except Exception:  # noqa: BLE001 - any verification failure
            return False

    rx = await Receiver(lambda r: (200, {}, b"ok") if verify(r, current["secret"]) else (401, {}, b"bad")).start()
    gid, site = await integration(js, "webhook", rx.url, secrets=[s1])
    target = Target(id=gid, kind="webhook", url=rx.url, secrets=[s1])
    nc2 = await connect(NatsSettings(nats_url=nats_server.url), "second")
    over = dict(retry_schedule=["0.2s"] * 30, probe_min="0.1s", probe_max="0.2s")
    courses = [f"c{i}" for i in range(5)]
    sent: list[str] = []
    halt = asyncio.Event()

    async def flow() -> None:
        i = 0
        while not halt.is_set():
            st = statement(i, courses[i % 5])
            await publish(js, site, courses[i % 5], st)
            sent.append(st["id"])
            i += 1
            await asyncio.sleep(0.01)

    try:
        async with deliverer(nc, nats_server.url, **over) as d1, deliverer(nc2, nats_server.url, **over) as d2:
            await wait_for(lambda: any(gid in d.runners and d.runners[gid].leader.is_set() for d in (d1, d2)), 10,
                           "one deliverer delivers")
            flowing = asyncio.create_task(flow())
            await wait_for(lambda: len(rx.requests) >= 100, 10, "load before the rotation")
            await wait_for(lambda: _status_delivered(js, gid, 50), 10, "counters flushed")
            before = (await integration_status(js, gid))["delivered"]
            for secrets in ([s2, s1], [s3, s2], [s3]):  # rotate, rotate again at once, retire
                await put_target(js, msgspec_replace(target, secrets=secrets))
                current["secret"] = secrets[0]
            changed = time.monotonic()
            await wait_for(lambda: len([r for r in rx.requests if r.t > changed + 1.0]) >= 100, 15,
                           "100 requests more than a second after the last change")
            halt.set()
            await flowing
            late = [r for r in rx.requests if r.t > changed + 1.0]
            stale = [r for r in late if not verify(r, s3)]
            assert not stale, f"{len(stale)} of {len(late)} requests signed with superseded secrets"
            await wait_for(lambda: set(sent) <= {r.headers["webhook-id"] for r in rx.requests if r.status == 200},
                           20, "every statement accepted")
            times = sorted(r.t for r in rx.requests if r.t > changed - 1)
            gap = max(b - a for a, b in zip(times, times[1:], strict=False))
            assert gap < 1.5, f"delivery paused {gap:.1f} s around the rotation"
            await wait_for(lambda: _status_delivered(js, gid, before + 100), 10, "counters went on")
    finally:
        halt.set()
        await nc2.close()
        await remove(js, gid)
        await rx.stop()


def msgspec_replace(target, **kw):
    import msgspec

    return msgspec.structs.replace(target, **kw)


async def _status_delivered(js, gid: str, at_least: int) -> bool:
    from hub.deliver.state.integration_status import integration_status

    return (await integration_status(js, gid))["delivered"] >= at_least


async def test_a_stopped_runner_starts_no_replay_pull(nc, js, nats_server):
    """A replay request racing a restart must not leave a pull running on the stopped runner (it would deliver
    with the superseded target, unseen and uncounted)."""
    import datetime as dt

    from hub.deliver.actions import request_replay

    rx = await Receiver().start()
    gid, site = await integration(js, "webhook", rx.url)
    try:
        async with deliverer(nc, nats_server.url) as d:
            await delivering(d, gid)
            await publish(js, site, "c1", statement(1))
            await wait_for(lambda: len(rx.requests) == 1, 5, "one delivered")
            old = d.runners[gid]
            await d.reconcile(gid, restart=True, expected=old)
            assert old.stopping and d.runners[gid] is not old
            await request_replay(js, gid, dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
            await old.maybe_replay()  # what the replay watcher may still call on the runner it saw
            assert all(task.done() for task in old.tasks)
            await wait_for(lambda: len(rx.requests) == 2, 10, "the replay delivered once, by the new runner")
    finally:
        await remove(js, gid)
        await rx.stop()


async def test_batched_ordered_webhook_keeps_up_with_a_slow_receiver(nc, js, nats_server):
    """Issue 13 item 5: one request in flight per course capped a 0.5 s receiver at 2 statements/s per course;
    with ``batch_size`` a webhook gets JSON arrays in publish order, signed, with a stable ``batch_`` id."""
    import asyncio

    from standardwebhooks.webhooks import Webhook

    from hub.deliver.transport.signing import new_secret

    secret = new_secret()
    rx = await Receiver(delay=0.5).start()
    gid, site = await integration(js, "webhook", rx.url, secrets=[secret], batch_size=50, batch_wait_ms=100)
    sts = [statement(i, "c1") for i in range(300)]
    try:
        async with deliverer(nc, nats_server.url) as d:
            await delivering(d, gid)
            started = asyncio.get_running_loop().time()
            for st in sts:
                await publish(js, site, "c1", st)
            got = lambda: [s for r in rx.requests for s in r.json()]  # noqa: E731
            await wait_for(lambda: len({s["id"] for s in got()}) == 300, 20, "300 statements in batches")
            took = asyncio.get_running_loop().time() - started
            assert list(dict.fromkeys(s["id"] for s in got())) == [st["id"] for st in sts]  # publish order
            assert took < 15, took  # one at a time would take 150 s
            assert len(rx.requests) <= 300 // 10
            for r in rx.requests:
                assert r.headers["webhook-id"].startswith("batch_")
                assert Webhook(secret).verify(r.body, r.headers) == r.json()
    finally:
        await remove(js, gid)
        await rx.stop()


async def test_an_integration_that_cannot_keep_up_is_shown(nc, js, nats_server):
    import asyncio

    from hub.deliver.state.integration_status import integration_status

    rx = await Receiver(delay=0.1).start()  # at most ~10 requests/s for one ordered course
    gid, site = await integration(js, "webhook", rx.url)
    halt = asyncio.Event()

    async def flow() -> None:
        i = 0
        while not halt.is_set():
            await publish(js, site, "c1", statement(i, "c1"))
            i += 1
            await asyncio.sleep(1 / 30)

    try:
        async with deliverer(nc, nats_server.url, lag_poll="0.2s", behind_window="1s") as d:
            await delivering(d, gid)
            flowing = asyncio.create_task(flow())
            await wait_for(lambda: _status_has(js, gid, lambda s: s["behind_since"] is not None), 15,
                           "status shows it cannot keep up")
            assert f'rthub_integration_behind{{integration="{gid}",service="deliver"}} 1.0\n' in d.metrics.render()
            assert (await integration_status(js, gid))["failing_since"] is None  # behind, not failing
            halt.set()
            await flowing
            rx.delay = 0
            await wait_for(lambda: _status_has(js, gid, lambda s: s["behind_since"] is None and s["lag"] == 0), 30,
                           "caught up: no longer shown as behind")
    finally:
        halt.set()
        await remove(js, gid)
        await rx.stop()


async def _status_has(js, gid: str, pred) -> bool:
    from hub.deliver.state.integration_status import integration_status

    return pred(await integration_status(js, gid))


async def test_an_integration_has_its_own_retry_schedule(nc, js, nats_server):
    rx = await Receiver(lambda r: (500, {}, b"down")).start()
    gid, site = await integration(js, "webhook", rx.url, retry_schedule=["0.05s"])  # the deliverer's has 3 steps
    try:
        async with deliverer(nc, nats_server.url, probe_min="60s", probe_max="60s") as d:
            await delivering(d, gid)
            await publish(js, site, "c1", statement(1))
            await wait_for(lambda: list_dead_letters(js, gid), 5, "dead-lettered")
            assert [dl.reason for dl in await list_dead_letters(js, gid)] == ["failed after 2 attempts"]
            assert len(rx.requests) == 2
    finally:
        await remove(js, gid)
        await rx.stop()
