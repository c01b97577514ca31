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
