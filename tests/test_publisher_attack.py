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
