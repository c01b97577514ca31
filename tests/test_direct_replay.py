"""Issue 19, item 3: a direct subscriber can pull its replay, on a real operator-mode nats-server.

A replay (``rthub integration replay`` / the portal's Replay) creates ``rthub_<id>_replay`` in the data account.
A direct subscriber lives in its own account, which earlier imported only the main durable: the replay could
not be pulled by its owner. Also here: the portal starts with an unreadable stored target (issue 19, item 1:
an overwritten target key made it refuse to start), skipping and auditing it.
"""

from __future__ import annotations

import datetime as dt
import json

import nats
from nats.aio.client import RawCredentials

from hub.auth import AuthStore, ensure_consumer
from hub.core.creds import creds_inbox_prefix
from hub.core.grants import Grant, consumer_name, put_grant, replay_name
from hub.core.subjects import TARGETS_BUCKET, subject
from hub.deliver import actions
from hub.deliver.settings import DeliverSettings
from hub.deliver.state.setup import ensure_delivery
from tests.helpers import unique
from tests.operator_kit import operator_fixtures

data_dir, op_server, admin_nc = operator_fixtures("replay")
SITE = "s1"
COURSE = "course-v1:Org+Replay+1"


async def test_a_direct_subscriber_pulls_and_acks_its_replay(op_server, data_dir, admin_nc):
    js = admin_nc.jetstream()
    await ensure_delivery(js, DeliverSettings(nats_url=op_server.url))
    auth = AuthStore.ensure(data_dir)
    grant = Grant(id=unique("r"), consumer="c", protocol="xapi", sites=[SITE], courses=[COURSE])
    await put_grant(js, grant)
    await auth.activate_consumer(admin_nc, grant)
    await ensure_consumer(js, grant)
    text, _ = auth.consumer_creds(grant)
    sub = await nats.connect(
        op_server.url,
        user_credentials=RawCredentials(text),
        inbox_prefix=creds_inbox_prefix(text),
        allow_reconnect=False,
    )
    try:
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        ids = [unique("st") for _ in range(3)]
        for ident in ids:
            await js.publish(
                subject("xapi", SITE, "Org", COURSE, "played"), json.dumps({"id": ident}).encode()
            )
        main = await sub.jetstream().pull_subscribe_bind(durable=consumer_name(grant.id), stream="XAPI")
        for msg in await main.fetch(3, timeout=5):
            await msg.ack_sync()

        info = await actions.request_replay(js, grant.id, since)
        assert info["consumer"] == replay_name(grant.id) and info["statements"] == 3
        replay = await sub.jetstream().pull_subscribe_bind(durable=replay_name(grant.id), stream="XAPI")
        got = await replay.fetch(3, timeout=5)
        assert [json.loads(m.data)["id"] for m in got] == ids
        for msg in got:
            await msg.ack_sync()  # the ack goes through the imported replay ack subject
        state = await js.consumer_info("XAPI", replay_name(grant.id))
        assert state.ack_floor.stream_seq == state.delivered.stream_seq and state.num_ack_pending == 0
    finally:
        await sub.close()


async def test_the_portal_starts_with_an_unreadable_stored_target(op_server, data_dir, admin_nc):
    from portal import db
    from portal.services import Portal
    from portal.settings import PortalSettings
    from portal.validation import IntegrationSpec, Scope

    auth = AuthStore.ensure(data_dir)
    settings = PortalSettings(
        nats_url=op_server.url,
        data_dir=str(data_dir),
        database_url="",
        sites={SITE: ""},
        nats_creds=str(auth.service_creds("portal")),
    )
    engine = await db.migrate(settings)
    portal = Portal(settings)
    try:
        root = await portal.set_admin(f"{unique('root')}@example.org", "a long enough password")
        spec = IntegrationSpec(
            name="hook",
            protocol="xapi",
            delivery="webhook",
            url="https://hooks.example.org/in",
            scope=Scope(sites=[SITE]),
        )
        row = await portal.create_integration(root, spec, approved_by=root)
        kv = await admin_nc.jetstream().key_value(TARGETS_BUCKET)
        await kv.put(row.key, b'{"id": 5, "kind": "webhook"}')  # what a PubAck written there looked like
        assert await portal.seal_stored_secrets() == 0
        audited = [e for e in await portal.audit_log(20, key=row.key) if e.action == "target.invalid"]
        assert audited and "Expected `str`" in audited[0].detail
    finally:
        await portal.close()
        await db.close(engine)
