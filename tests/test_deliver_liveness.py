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
