"""Stream setup is idempotent: a second run changes nothing, a changed definition is updated in place."""

from hub.core.natsconn import connect
from hub.core.settings import HubSettings
from hub.core.streams import ensure_streams
from hub.core.subjects import PROTOCOL_STREAMS, QUARANTINE_STREAM, RAW_STREAM
from hub.ops.natsserver import NatsServer, free_port


async def test_ensure_streams_idempotent_and_updates(tmp_path):
    server = NatsServer(free_port(), tmp_path, name="streams").start()
    try:
        s = HubSettings(nats_url=server.url, raw_max_age_days=7)
        nc = await connect(s, "test-streams")
        js = nc.jetstream()
        first = await ensure_streams(js, s)
        assert first[RAW_STREAM] == "created"
        assert first["XAPI"] == first["CALIPER"] == first[QUARANTINE_STREAM] == "created"
        second = await ensure_streams(js, s)
        assert set(second.values()) == {"unchanged"}
        names = sorted([info.config.name for info in await js.streams_info()])
        assert names.count(RAW_STREAM) == 1
        raw = await js.stream_info(RAW_STREAM)
        assert raw.config.max_age == 7 * 86400
        assert raw.config.subjects == ["lms.>"]

        changed = HubSettings(nats_url=server.url, raw_max_age_days=2, protocol_max_age_days=60)
        third = await ensure_streams(js, changed)
        assert third[RAW_STREAM] == "updated"
        assert third[PROTOCOL_STREAMS["xapi"]] == "updated"
        assert (await js.stream_info(RAW_STREAM)).config.max_age == 2 * 86400
        assert (await js.stream_info("XAPI")).config.max_age == 60 * 86400
        assert len([i for i in await js.streams_info() if i.config.name == RAW_STREAM]) == 1
        await nc.close()
    finally:
        server.stop()



async def test_rthub_streams_creates_every_stream_and_bucket(tmp_path):
    """`rthub streams` (compose's streams-init) leaves the hub's and the deliverer's streams and buckets in place,
    with the retention the environment asks for."""
    import asyncio

    from hub.deliver.settings import DeliverSettings
    from hub.deliver.state.setup import stream_configs as delivery_streams
    from tests.helpers import rthub, rthub_env

    server = NatsServer(free_port(), tmp_path, name="streams-cli").start()
    try:
        done = await asyncio.to_thread(rthub, "streams", "--timeout", "20",
                                       env=rthub_env(server.url, RTHUB_RAW_MAX_AGE_DAYS="3"))
        assert done.returncode == 0 and b"streams and buckets ready" in done.stdout, done.stderr.decode()
        nc = await connect(HubSettings(nats_url=server.url), "test-streams-cli")
        js = nc.jetstream()
        names = {info.config.name for info in await js.streams_info()}
        want = {RAW_STREAM, QUARANTINE_STREAM, *PROTOCOL_STREAMS.values()}
        want |= {c.name for c in delivery_streams(DeliverSettings(nats_url=server.url))}
        assert want <= names and any(n.startswith("KV_") for n in names), names
        assert (await js.stream_info(RAW_STREAM)).config.max_age == 3 * 86400
        await nc.close()
    finally:
        server.stop()


async def test_twenty_concurrent_ensure_calls_all_succeed_and_agree(tmp_path):
    """Twenty processes' worth of stream setup at once on a fresh server (hub and deliverer, with partitions):
    none fails. Each builds the partition stream "from now on", so their configs differ in start time only,
    which is not a conflict (issue 20: 8 of 20 failed with 10058)."""
    import asyncio
    import dataclasses
    import datetime as dt

    from hub.core.streams import differences, ensure_stream
    from hub.core.subjects import DELIVERY_STATE_BUCKET, PARTS_STREAM
    from hub.deliver.engine.partitions import parts_stream_config
    from hub.deliver.settings import DeliverSettings
    from hub.deliver.state.setup import ensure_delivery

    server = NatsServer(free_port(), tmp_path, name="streams-race").start()
    conns = []
    try:
        s = DeliverSettings(nats_url=server.url, partitions=4)
        conns = [await connect(s, f"race-{i}") for i in range(20)]

        async def setup(nc) -> dict:
            js = nc.jetstream()
            out = await ensure_streams(js, s)
            await ensure_delivery(js, s)
            return out

        results = await asyncio.gather(*(setup(nc) for nc in conns), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert all(r[RAW_STREAM] in ("created", "unchanged") for r in results)
        js = conns[0].jetstream()
        names = [i.config.name for i in await js.streams_info()]
        assert names.count(PARTS_STREAM) == 1 and f"KV_{DELIVERY_STATE_BUCKET}" in names
        have = (await js.stream_info(PARTS_STREAM)).config
        later = parts_stream_config(4, 1, s.protocol_max_age_days, start=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        assert differences(have, later) == []  # a start time alone is no difference
        assert await ensure_stream(js, later) == "unchanged"
        assert (await js.stream_info(PARTS_STREAM)).config.sources[0].opt_start_time == have.sources[0].opt_start_time
        fewer = parts_stream_config(2, 1, s.protocol_max_age_days)  # a real change is still applied
        assert differences(have, fewer) == ["description", "sources"]
        assert await ensure_stream(js, dataclasses.replace(fewer)) == "updated"
    finally:
        for nc in conns:
            await nc.close()
        server.stop()


async def test_two_deliverers_started_together_both_run(tmp_path):
    """Two ``rthub deliver`` processes with partitions, started at the same moment on a fresh server: both
    create the streams, both stay up, and both take partitions of an ordered integration."""
    import json
    import subprocess
    import sys

    from hub.core.subjects import DELIVERY_STATE_BUCKET
    from tests.deliver_kit import integration, remove
    from tests.deliver_receivers import Receiver
    from tests.helpers import rthub_env, wait_for

    server = NatsServer(free_port(), tmp_path, name="two-deliverers").start()
    env = rthub_env(server.url, RTHUB_ALLOWED_NETWORKS="127.0.0.1/32", RTHUB_PARTITIONS="4", RTHUB_LEASE_TTL="1s")
    procs = [subprocess.Popen([sys.executable, "-m", "hub.cli", "deliver", "--metrics-port", "-1"], env=env,
                              stdout=open(tmp_path / f"d{i}.log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
             for i in range(2)]
    rx = await Receiver().start()
    nc = await connect(HubSettings(nats_url=server.url), "two-deliverers")
    try:
        js = nc.jetstream()

        async def state():
            try:
                return await js.key_value(DELIVERY_STATE_BUCKET)
            except Exception:  # noqa: BLE001 - not created yet
                return None

        await wait_for(state, 30, "the deliverers created their state bucket", interval=0.2)
        gid, _site = await integration(js, "webhook", rx.url)

        async def owners() -> set[str]:
            kv = await js.key_value(DELIVERY_STATE_BUCKET)
            held = set()
            for k in range(4):
                try:
                    entry = await kv.get(f"lease.{gid}.p{k}")
                except Exception:  # noqa: BLE001 - not held
                    continue
                if entry.value:
                    held.add(json.loads(entry.value)["owner"])
            return held

        async def both_hold() -> bool:
            assert [p.poll() for p in procs] == [None, None], [(tmp_path / f"d{i}.log").read_text() for i in range(2)]
            return len(await owners()) == 2

        await wait_for(both_hold, 30, "both deliverers hold partitions", interval=0.2)
        assert [p.poll() for p in procs] == [None, None]
        await remove(js, gid)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        await nc.close()
        await rx.stop()
        server.stop()


def test_streams_and_buckets_are_created_in_one_place():
    """Every service creates streams and buckets through hub.core.streams (ensure_stream / ensure_bucket): no
    second routine with its own idea of "the same configuration" (issue 20: two disagreed)."""
    import re

    from tests.helpers import ROOT

    calls = re.compile(r"\.(add_stream|update_stream|create_key_value)\(")
    found = [f"{path.relative_to(ROOT)}:{n}" for package in ("hub", "lms_publisher", "portal")
             for path in (ROOT / package).rglob("*.py") if path != ROOT / "hub" / "core" / "streams.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if calls.search(line)]
    assert found == []


async def test_streams_of_per_integration_consumers_take_more_than_a_thousand(tmp_path):
    """One consumer per integration on the protocol and redrive streams: nats-server gives a stream without a limit
    of its own 1,000 consumers, so the 1,001st integration could not start (issue 20). A deployment whose streams
    were made before gets the limit on its next start."""
    import dataclasses

    from nats.js.api import AckPolicy, ConsumerConfig

    from hub.core.streams import MAX_CONSUMERS
    from hub.core.subjects import REDRIVE_STREAM
    from hub.deliver.settings import DeliverSettings
    from hub.deliver.state.setup import ensure_delivery

    server = NatsServer(free_port(), tmp_path, name="consumers").start()
    try:
        s = DeliverSettings(nats_url=server.url)
        nc = await connect(s, "test-consumers")
        js = nc.jetstream()
        await ensure_streams(js, s)
        await ensure_delivery(js, s)
        old = (await js.stream_info("XAPI")).config
        await js.update_stream(dataclasses.replace(old, max_consumers=-1))  # as made before
        assert (await ensure_streams(js, s))["XAPI"] == "updated"
        for stream in (*PROTOCOL_STREAMS.values(), REDRIVE_STREAM):
            assert (await js.stream_info(stream)).config.max_consumers == MAX_CONSUMERS
        for i in range(1001):
            await js.add_consumer("XAPI", ConsumerConfig(durable_name=f"c{i}", filter_subject=f"xapi.s{i}.>",
                                                         ack_policy=AckPolicy.EXPLICIT))
        assert len(await js.consumers_info("XAPI", offset=1000)) == 1
        await nc.close()
    finally:
        server.stop()
