"""Issue 19, item 1: an LMS publisher's .creds, used as an attacker would, against a real operator-mode server.

A JetStream publish names its own reply subject and the server writes the PubAck there. With the publisher a
user of the data account, a raw event published with the reply ``$KV.rthub_grants.<key>`` (or any stream
subject) wrote the PubAck into that bucket or stream on the data account's behalf: 8 of 9 probes landed.
Publishers now live in their site's own account, importing only ``lms.<site>.>``: here every stream subject
and KV key of the data account is tried as the reply subject of a publish, of a request, of a publish the
server answers with an error, and of an ack, and nothing but the site's own raw events may land anywhere.
"""

from __future__ import annotations

import nats
import pytest
from nats.aio.client import RawCredentials
from nats.js.errors import NotFoundError

from hub.auth import AuthStore
from hub.auth import jwt as njwt
from hub.core.creds import creds_inbox_prefix, creds_jwt
from hub.core.subjects import RAW_STREAM, subject
from hub.deliver.settings import DeliverSettings
from hub.deliver.state.setup import ensure_delivery
from tests.helpers import unique
from tests.operator_kit import operator_fixtures
from tests.test_auth_nats import Probe

data_dir, op_server, admin_nc = operator_fixtures("pubattack")
SITE, OTHER = "siteA", "siteB"


def concrete(pattern: str) -> str:
    """A subject a stream with this subject pattern captures (``*`` and ``>`` filled in)."""
    return ".".join("x" if t == "*" else "x.y" if t == ">" else t for t in pattern.split("."))


async def targets(js) -> list[str]:
    """Every subject some stream of the data account captures, KV keys included, plus the JetStream API."""
    out = []
    for info in await js.streams_info():
        for pattern in info.config.subjects or []:
            out.append(concrete(pattern.replace("lms.*", f"lms.{OTHER}")))
    out += [
        f"lms.{OTHER}.Org.c.forged",
        f"$KV.rthub_grants.{SITE}",
        f"$KV.rthub_targets.{SITE}",
        f"$KV.rthub_courses.{SITE}",
        f"xapi.{SITE}.x.y.z",
        f"caliper.{SITE}.x.y.z",
        "dlq.x",
        "quarantine.x",
        f"$JS.API.STREAM.PURGE.{RAW_STREAM}",
        "$JS.API.STREAM.DELETE.XAPI",
    ]
    return sorted(set(out))


async def snapshot(js) -> dict:
    return {i.config.name: (i.state.messages, i.state.last_seq) for i in await js.streams_info()}


async def test_a_publisher_writes_its_own_raw_events_and_nothing_through_any_reply_subject(
    op_server, data_dir, admin_nc
):
    js = admin_nc.jetstream()
    await ensure_delivery(js, DeliverSettings(nats_url=op_server.url))
    for bucket in ("rthub_grants", "rthub_targets", "rthub_courses"):
        await (await js.key_value(bucket)).put("keep", b"{}")
    auth = AuthStore.ensure(data_dir)
    creds = auth.service_creds("publisher", site=SITE)
    await auth.push(admin_nc, [auth.site_jwt(SITE)])
    claims = njwt.decode(creds_jwt(creds.read_text()))
    assert claims["iss"] != auth.hub_pub  # a user of its site's account, not of the data account
    probe = await Probe().connect(op_server.url, str(creds), creds_inbox_prefix(creds))
    pjs = probe.nc.jetstream()
    try:
        assert (await pjs.publish(subject("lms", SITE, "Org", "c", "warmup"), b"{}")).stream == RAW_STREAM
        replies = await targets(js)
        assert len(replies) > 20
        before = await snapshot(js)
        raw = subject("lms", SITE, "Org", "c", "probe")
        sent = 0
        for reply in replies:
            await probe.nc.publish(raw, b'{"p": 1}', reply=reply)  # the PubAck
            await probe.nc.publish(
                raw, b'{"p": 2}', reply=reply, headers={"Nats-Msg-Id": "dup"}
            )  # a duplicate
            await probe.nc.publish(
                raw, b'{"p": 3}', reply=reply, headers={"Nats-Expected-Stream": "NOPE"}
            )  # error
            sent += 1 + (reply == replies[0])  # the first "dup" is stored once; a wrong expected stream never
            await probe.nc.publish("$JS.ACK.LMS_RAW.hub.1.1.1.0.0", b"+ACK", reply=reply)  # an ack: refused
        # Ordered after every probe on this connection: when its PubAck is back, every probe was handled.
        assert (await pjs.publish(raw, b'{"p": "last"}')).stream == RAW_STREAM
        await admin_nc.flush()
        after = await snapshot(js)
        changed = {name: (before[name], after[name]) for name in after if after[name] != before.get(name)}
        assert set(changed) == {RAW_STREAM}, changed
        assert after[RAW_STREAM][0] - before[RAW_STREAM][0] == sent + 1
        for bucket in ("rthub_grants", "rthub_targets", "rthub_courses"):
            kv = await js.key_value(bucket)
            assert sorted(await kv.keys()) == ["keep"]
        assert probe.violated("$JS.ACK.LMS_RAW")
        # The stored raw events are the site's own, each as published (no PubAck among them).
        stored = await js.pull_subscribe(f"lms.{SITE}.>", durable=unique("check"), stream=RAW_STREAM)
        msgs = await stored.fetch(sent + 2, timeout=5)
        assert {m.subject for m in msgs} == {subject("lms", SITE, "Org", "c", "warmup"), raw}
        with pytest.raises(NotFoundError):  # nothing of the other site, whatever the reply subjects
            await js.get_last_msg(RAW_STREAM, f"lms.{OTHER}.>")
    finally:
        await probe.close()


async def test_an_upgrade_revokes_publishers_issued_in_the_data_account(op_server, data_dir, admin_nc):
    """A publisher .creds of an earlier version (a user of the data account) stops working after the upgrade; the
    re-issued one is a user of the site's account."""
    auth = AuthStore.ensure(data_dir)
    legacy_text, legacy_key = auth._user_creds(
        "rthub-publisher", auth.hub_seed, [f"lms.{SITE}.>"], ["_INBOX_svc_publisher.>"]
    )
    path = auth.path / "publisher-legacy.creds"
    path.write_text(legacy_text)
    old = await nats.connect(
        op_server.url, user_credentials=str(path), inbox_prefix="_INBOX_svc_publisher", allow_reconnect=False
    )
    assert (
        await old.jetstream().publish(subject("lms", SITE, "Org", "c", "old"), b"{}")
    ).stream == RAW_STREAM
    await old.close()
    upgraded = AuthStore.ensure(data_dir)
    assert legacy_key in upgraded.revocations() and not path.exists()
    await upgraded.push_account(admin_nc)
    with pytest.raises(Exception):  # noqa: B017 - refused at connect: authorization violation / revoked
        await nats.connect(
            op_server.url,
            user_credentials=RawCredentials(legacy_text),
            inbox_prefix="_INBOX_svc_publisher",
            allow_reconnect=False,
            connect_timeout=3,
            max_reconnect_attempts=0,
        )


async def test_the_event_bus_writes_its_own_topics_and_nothing_through_any_reply_subject(
    op_server, data_dir, admin_nc
):
    """``rthub auth creds event-bus`` (in the LMS too): a user of LMS-BUS, which imports only the bus's topics,
    dead letters, acks and JetStream API calls on its two streams. Every stream subject and KV key of the data
    account is named as the reply of a publish (topic and dead letter), of an API request, of a pull request and
    of an ack: only the bus's own published events and dead letters land, nothing else anywhere."""
    from nats.js.api import AckPolicy, ConsumerConfig

    from hub.core.creds import creds_api_prefix
    from hub.core.settings import StreamSettings
    from hub.core.streams import ensure_streams
    from hub.core.subjects import BUS_API_PREFIX, OPENEDX_DLQ_STREAM, OPENEDX_STREAM

    js = admin_nc.jetstream()
    await ensure_streams(js, StreamSettings())
    await ensure_delivery(js, DeliverSettings(nats_url=op_server.url))
    for bucket in ("rthub_grants", "rthub_targets", "rthub_courses"):
        await (await js.key_value(bucket)).put("keep", b"{}")
    auth = AuthStore.ensure(data_dir)
    creds = auth.service_creds("event-bus")
    await auth.push_account(admin_nc)
    assert njwt.decode(creds_jwt(creds.read_text()))["iss"] != auth.hub_pub  # not a user of the data account
    assert creds_api_prefix(creds) == BUS_API_PREFIX
    probe = await Probe().connect(op_server.url, str(creds), creds_inbox_prefix(creds))
    bjs = probe.nc.jetstream(prefix=BUS_API_PREFIX)
    try:
        topic = "openedx.dev-probe-topic"
        assert (await bjs.publish(topic, b"warmup")).stream == OPENEDX_STREAM
        await bjs.add_consumer(
            OPENEDX_STREAM,
            ConsumerConfig(
                durable_name="attack", filter_subject=topic, ack_policy=AckPolicy.EXPLICIT, ack_wait=60
            ),
        )
        held = (await (await bjs.pull_subscribe_bind("attack", stream=OPENEDX_STREAM)).fetch(1, timeout=5))[0]
        replies = await targets(js)
        assert len(replies) > 20
        before = await snapshot(js)
        api = f"{BUS_API_PREFIX}.CONSUMER.MSG.NEXT.{OPENEDX_STREAM}.attack"
        events = letters = 0
        for i, reply in enumerate(replies):
            await probe.nc.publish(topic, b"p%d" % i, reply=reply)  # the PubAck of a topic event
            await probe.nc.publish(topic, b"dup", reply=reply, headers={"Nats-Msg-Id": "dup"})  # a duplicate
            await probe.nc.publish(
                topic, b"e", reply=reply, headers={"Nats-Expected-Stream": "NOPE"}
            )  # an error
            await probe.nc.publish("openedx_dlq.g.t", b"d%d" % i, reply=reply)  # a dead letter's PubAck
            events += 1 + (i == 0)
            letters += 1
            await probe.nc.publish(f"{BUS_API_PREFIX}.STREAM.INFO.{OPENEDX_STREAM}", b"", reply=reply)  # API
            await probe.nc.publish(api, b'{"batch": 1, "no_wait": true}', reply=reply)  # a pull request
            await probe.nc.publish(held.reply, b"+WPI", reply=reply)  # acks with a reply the server answers
            await probe.nc.publish(held.reply, b"+ACK", reply=reply)
        assert (await bjs.publish(topic, b"last")).stream == OPENEDX_STREAM  # every probe was handled
        await admin_nc.flush()
        after = await snapshot(js)
        changed = {name: (before[name], after[name]) for name in after if after[name] != before.get(name)}
        assert set(changed) == {OPENEDX_STREAM, OPENEDX_DLQ_STREAM}, changed
        assert after[OPENEDX_STREAM][0] - before[OPENEDX_STREAM][0] == events + 1
        assert after[OPENEDX_DLQ_STREAM][0] - before[OPENEDX_DLQ_STREAM][0] == letters
        for bucket in ("rthub_grants", "rthub_targets", "rthub_courses"):
            assert sorted(await (await js.key_value(bucket)).keys()) == ["keep"]
        # What landed is what the bus published, as published (no PubAck, API answer or message among them).
        stored = await js.pull_subscribe("openedx.>", durable=unique("check"), stream=OPENEDX_STREAM)
        bodies = [m.data for m in await stored.fetch(events + 2, timeout=5)]
        assert set(bodies) == {b"warmup", b"dup", b"last", *(b"p%d" % i for i in range(len(replies)))}
    finally:
        await probe.close()


async def test_an_upgrade_revokes_an_event_bus_user_issued_in_the_data_account(op_server, data_dir, admin_nc):
    """An ``event-bus.creds`` of an earlier version (a user of the data account) is revoked at the upgrade; the
    re-issued one is a user of LMS-BUS and publishes a topic event."""
    from hub.core.settings import StreamSettings
    from hub.core.streams import ensure_streams
    from hub.core.subjects import BUS_API_PREFIX, OPENEDX_STREAM

    await ensure_streams(admin_nc.jetstream(), StreamSettings())
    auth = AuthStore.ensure(data_dir)
    legacy_text, legacy_key = auth._user_creds(
        "rthub-event-bus", auth.hub_seed, ["openedx.>"], ["_INBOX_svc_event-bus.>"]
    )
    (auth.path / "event-bus.creds").write_text(legacy_text)
    upgraded = AuthStore.ensure(data_dir)
    assert legacy_key in upgraded.revocations() and not (auth.path / "event-bus.creds").exists()
    await upgraded.push_account(admin_nc)
    with pytest.raises(Exception):  # noqa: B017 - refused at connect: revoked
        await nats.connect(
            op_server.url,
            user_credentials=RawCredentials(legacy_text),
            inbox_prefix="_INBOX_svc_event-bus",
            allow_reconnect=False,
            connect_timeout=3,
            max_reconnect_attempts=0,
        )
    creds = upgraded.service_creds("event-bus")
    assert njwt.decode(creds_jwt(creds.read_text()))["iss"] != upgraded.hub_pub
    nc = await nats.connect(
        op_server.url,
        user_credentials=str(creds),
        inbox_prefix=creds_inbox_prefix(creds),
        allow_reconnect=False,
    )
    try:
        ack = await nc.jetstream(prefix=BUS_API_PREFIX).publish("openedx.dev-upgraded", b"{}")
        assert ack.stream == OPENEDX_STREAM
    finally:
        await nc.close()


async def test_a_push_consumer_of_the_event_bus_cannot_forge_a_server_advisory(op_server, data_dir, admin_nc):
    """The bus may create any consumer on OPENEDX_EVENTS, a push consumer too, whose deliver subject lives in the
    data account: it can deliver its events to the hub's exact max-deliveries advisory subject (measured). The hub
    tells such a delivery from the server's advisory (``hub.core.api.from_the_server``) and ignores it."""
    from nats.js.api import AckPolicy, ConsumerConfig

    from hub.core.api import from_the_server, max_deliveries_advisory
    from hub.core.settings import StreamSettings
    from hub.core.streams import ensure_streams
    from hub.core.subjects import BUS_API_PREFIX, OPENEDX_STREAM
    from tests.helpers import wait_for

    js = admin_nc.jetstream()
    await ensure_streams(js, StreamSettings())
    auth = AuthStore.ensure(data_dir)
    creds = auth.service_creds("event-bus")
    await auth.push_account(admin_nc)
    advisory = max_deliveries_advisory(OPENEDX_STREAM, "victim")
    got: list = []

    async def keep(msg):
        got.append(msg)

    await admin_nc.subscribe(advisory, cb=keep)  # as the hub does (an exact subject of the data account)
    await admin_nc.flush()
    probe = await Probe().connect(op_server.url, str(creds), creds_inbox_prefix(creds))
    bjs = probe.nc.jetstream(prefix=BUS_API_PREFIX)
    try:
        forged = (
            b'{"type":"io.nats.jetstream.advisory.v1.max_deliver","stream":"OPENEDX_EVENTS","stream_seq":1}'
        )
        await bjs.publish("openedx.dev-forged-advisory", forged)
        await bjs.add_consumer(
            OPENEDX_STREAM,
            ConsumerConfig(
                durable_name=unique("push"),
                deliver_subject=advisory,
                filter_subject="openedx.dev-forged-advisory",
                ack_policy=AckPolicy.NONE,
            ),
        )
        # A real one: a message the consumer "victim" delivered once (max_deliver=1) and never saw acked.
        await js.publish("openedx.dev-victim", b"{}")
        await js.add_consumer(
            OPENEDX_STREAM,
            ConsumerConfig(
                durable_name="victim",
                filter_subject="openedx.dev-victim",
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=0.5,
                max_deliver=1,
            ),
        )
        await (await js.pull_subscribe_bind("victim", stream=OPENEDX_STREAM)).fetch(1, timeout=5)

        await wait_for(lambda: len(got) >= 2, 15, "the forged delivery and the server's advisory")
        assert {m.data == forged for m in got} == {True, False}
        assert [from_the_server(m) for m in got if m.data == forged] == [False]
        assert [from_the_server(m) for m in got if m.data != forged] == [True]
    finally:
        await probe.close()
