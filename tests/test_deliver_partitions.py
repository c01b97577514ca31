"""One ordered integration spread over several deliverers through course partitions (issue 14).

Real nats-server (the session's), real HTTP receiver; the partition stream is the server's subject transform.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from hub.core.grants import Grant
from hub.core.natsconn import connect
from hub.core.settings import NatsSettings
from hub.core.subjects import DELIVERY_STATE_BUCKET
from hub.deliver.engine.partitions import fair_share, original_subject, part_filters, preference
from hub.deliver.service import Deliverer
from hub.deliver.state.setup import ensure_delivery
from tests.deliver_kit import integration, publish, remove, settings, statement
from tests.deliver_receivers import Receiver
from tests.helpers import rthub_env, wait_for

PARTS = 4


def test_partition_subjects_and_shares():
    g = Grant(id="g", consumer="c", protocol="xapi", sites=["s1", "s2"])
    assert part_filters(g, 3) == ["part.xapi.3.s1.*.*.*", "part.xapi.3.s2.*.*.*"]
    assert original_subject("part.caliper.0.s.o.c.e") == "caliper.s.o.c.e"
    assert original_subject("xapi.s.o.c.e") == "xapi.s.o.c.e"
    assert fair_share(8, [], "a") == 8 and fair_share(8, ["a", "b"], "b") == 4
    assert [fair_share(4, ["a", "b", "c"], x) for x in "abc"] == [2, 1, 1]
    assert [fair_share(2, ["a", "b", "c"], x) for x in "abc"] == [1, 1, 0]
    assert sorted(preference(5, "host-12-abc")) == list(range(5))


def _course(request) -> str:
    return request.json()["object"]["id"].split("/")[-2]


def _first_arrivals_in_order(rx: Receiver, sent: dict[str, list[str]]) -> None:
    for course, ids in sent.items():
        firsts = list(dict.fromkeys(r.headers["webhook-id"] for r in rx.requests if _course(r) == course))
        assert firsts == ids, f"course {course} out of order"


async def _owners(js, gid: str) -> dict[int, str]:
    state = await js.key_value(DELIVERY_STATE_BUCKET)
    out = {}
    for k in range(PARTS):
        try:
            entry = await state.get(f"lease.{gid}.p{k}")
        except Exception:  # noqa: BLE001 - not held
            continue
        if entry.value:
            out[k] = json.loads(entry.value)["owner"]
    return out


async def test_deliverers_share_the_partitions_of_one_ordered_integration_and_hand_them_over(nc, js, nats_server):
    """Two deliverers each hold half the partitions and both deliver; a third joining takes its share; one stopping
    hands its share over; every statement arrives, each course's first arrivals in publish order."""
    s = settings(nats_server.url, partitions=PARTS)
    await ensure_delivery(js, s)
    rx = await Receiver().start()
    gid, site = await integration(js, "webhook", rx.url)
    conns = [await connect(NatsSettings(nats_url=nats_server.url), f"d{i}") for i in range(3)]
    ds: list[Deliverer] = []
    courses = [f"c{i}" for i in range(12)]
    sent: dict[str, list[str]] = {c: [] for c in courses}

    async def send(n: int) -> None:
        for i in range(n):
            c = courses[i % len(courses)]
            st = statement(i, c)
            await publish(js, site, c, st)
            sent[c].append(st["id"])

    def held(d: Deliverer) -> list[int]:
        return d.runners[gid].held_parts() if gid in d.runners else []

    try:
        ds.append(await Deliverer(conns[0], s).start())
        ds.append(await Deliverer(conns[1], s).start())
        await wait_for(lambda: [len(held(d)) for d in ds] == [2, 2], 15, "two deliverers, two partitions each")
        await send(240)
        await wait_for(lambda: len({r.headers["webhook-id"] for r in rx.requests}) >= 240, 15, "first 240")
        assert all(d.runners[gid].stats.delivered > 0 for d in ds), "both deliverers deliver"
        ds.append(await Deliverer(conns[2], s).start())
        sending = asyncio.create_task(send(240))
        await wait_for(lambda: sorted(len(held(d)) for d in ds) == [1, 1, 2], 15, "the third takes its share")
        await sending
        await ds[0].stop()  # hands its partitions over in order
        await send(120)
        await wait_for(lambda: sorted(len(held(d)) for d in ds[1:]) == [2, 2], 15, "the other two take them")
        total = sum(len(v) for v in sent.values())
        await wait_for(lambda: len({r.headers["webhook-id"] for r in rx.requests}) >= total, 20, "all delivered")
        assert {r.headers["webhook-id"] for r in rx.requests} == {i for v in sent.values() for i in v}
        _first_arrivals_in_order(rx, sent)
        assert set((await _owners(js, gid)).values()) == {ds[1].process_id, ds[2].process_id}
    finally:
        for d in ds:
            await d.stop()
        for c in conns:
            await c.close()
        await remove(js, gid)
        await rx.stop()


@pytest.mark.slow
async def test_two_deliverer_processes_one_killed_mid_flow_lose_nothing_and_keep_course_order(js, nats_server,
                                                                                              tmp_path):
    """Two ``rthub deliver`` processes share one ordered integration's partitions; the one holding partition 0 is
    SIGKILLed while statements flow: the other takes every partition, nothing is lost, and each course's
    statements first arrive in publish order."""
    s = settings(nats_server.url, partitions=PARTS)
    await ensure_delivery(js, s)
    rx = await Receiver().start()
    gid, site = await integration(js, "webhook", rx.url)
    env = rthub_env(nats_server.url, RTHUB_ALLOWED_NETWORKS="127.0.0.1/32", RTHUB_PARTITIONS=str(PARTS),
                    RTHUB_ACK_WAIT="2s", RTHUB_LEASE_TTL="1s")
    procs = [subprocess.Popen([sys.executable, "-m", "hub.cli", "deliver", "--metrics-port", "-1"], env=env,
                              stdout=open(tmp_path / f"d{i}.log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
             for i in range(2)]
    courses = [f"c{i}" for i in range(12)]
    sent: dict[str, list[str]] = {c: [] for c in courses}
    stop_flow = asyncio.Event()

    async def flow() -> None:
        i = 0
        while not stop_flow.is_set():
            c = courses[i % len(courses)]
            st = statement(i, c)
            await publish(js, site, c, st)
            sent[c].append(st["id"])
            i += 1
            await asyncio.sleep(0.01)  # 100 statements/s

    def pid_of(owner: str) -> int:
        return int(owner.rsplit("-", 2)[1])

    async def both_hold() -> bool:
        owners = await _owners(js, gid)
        return len(owners) == PARTS and len(set(owners.values())) == 2

    flowing = None
    try:
        await wait_for(both_hold, 30, "both processes hold partitions")
        flowing = asyncio.create_task(flow())
        await wait_for(lambda: len(rx.requests) >= 200, 20, "webhooks flowing")
        victim = pid_of((await _owners(js, gid))[0])
        survivor = next(p for p in procs if p.pid != victim)
        next(p for p in procs if p.pid == victim).kill()

        async def survivor_holds_all() -> bool:
            owners = await _owners(js, gid)
            return len(owners) == PARTS and {pid_of(o) for o in owners.values()} == {survivor.pid}

        await wait_for(survivor_holds_all, 20, "the survivor holds every partition")
        taken_over_at = sum(len(v) for v in sent.values())  # the flow goes on after the take-over for a while
        await wait_for(lambda: sum(len(v) for v in sent.values()) >= taken_over_at + 100, 10, "100 more sent")
        stop_flow.set()
        await flowing
        total = sum(len(v) for v in sent.values())
        await wait_for(lambda: len({r.headers["webhook-id"] for r in rx.requests}) >= total, 30, "all delivered")
        assert {r.headers["webhook-id"] for r in rx.requests} == {i for v in sent.values() for i in v}
        _first_arrivals_in_order(rx, sent)
    finally:
        stop_flow.set()
        if flowing:
            await asyncio.gather(flowing, return_exceptions=True)
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        await remove(js, gid)
        await rx.stop()


async def test_switching_to_partitions_delivers_the_single_consumers_backlog(nc, js, nats_server):
    """A backlog left in the integration's single consumer is delivered by the partitioned deliverer, which
    then deletes that consumer."""
    from hub.core.grants import consumer_name
    from hub.core.subjects import PARTS_STREAM
    from tests.deliver_kit import deliverer, delivering

    rx = await Receiver().start()
    gid, site = await integration(js, "webhook", rx.url)
    try:
        async with deliverer(nc, nats_server.url) as d:
            await delivering(d, gid)
        sts = [statement(i, "c1") for i in range(30)]
        for st in sts:
            await publish(js, site, "c1", st)
        async with deliverer(nc, nats_server.url, partitions=PARTS) as d:
            await wait_for(lambda: gid in d.runners and len(d.runners[gid].held_parts()) == PARTS, 10, "partitions")
            later = statement(30, "c2")
            await publish(js, site, "c2", later)
            want = {s["id"] for s in sts} | {later["id"]}
            await wait_for(lambda: want <= {r.headers["webhook-id"] for r in rx.requests}, 10, "backlog delivered")
            assert [r.headers["webhook-id"] for r in rx.requests if _course(r) == "c1"] == [s["id"] for s in sts]

            async def single_consumer_gone() -> bool:
                try:
                    await js.consumer_info("XAPI", consumer_name(gid))
                except Exception:  # noqa: BLE001 - NotFoundError
                    return True
                return False

            await wait_for(single_consumer_gone, 10, "the single consumer deleted once drained")
            assert any(i.name.startswith(consumer_name(gid) + "_p") for i in await js.consumers_info(PARTS_STREAM))
    finally:
        await remove(js, gid)
        await rx.stop()
