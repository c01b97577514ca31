"""A direct subscriber's credential, used as an attacker would, against a real operator-mode nats-server.

Each direct subscriber lives in its own NATS account that imports only its consumer's pull/ack subjects and its
granted subjects from the data account. Earlier, with the subscriber inside the data account, a pull request or
ack with a reply subject such as ``$JS.API.STREAM.PURGE.LMS_RAW`` made the server purge the raw stream. Here every
such reply must land in the subscriber's own account and leave every stream, consumer and KV bucket unchanged.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import nats
import pytest
import pytest_asyncio
from nats.aio.client import RawCredentials

from hub.auth import AuthStore, ensure_consumer
from hub.core.creds import creds_inbox_prefix
from hub.core.grants import Grant, consumer_name
from hub.core.settings import HubSettings
from hub.core.streams import ensure_streams
from hub.core.subjects import (
    COURSES_BUCKET,
    DEAD_LETTER_STREAM,
    GRANTS_BUCKET,
    QUARANTINE_STREAM,
    RAW_STREAM,
    TARGETS_BUCKET,
    subject,
)
from tests.helpers import unique, wait_for
from tests.operator_kit import operator_fixtures
from tests.test_auth_nats import Probe

SITE = "s1"
MINE = "course-v1:Org+Mine+1"
OTHER = "course-v1:Org+Other+1"
STREAMS = [RAW_STREAM, "XAPI", "CALIPER", QUARANTINE_STREAM, DEAD_LETTER_STREAM,
           *(f"KV_{b}" for b in (GRANTS_BUCKET, TARGETS_BUCKET, COURSES_BUCKET))]


data_dir, server, admin_nc = operator_fixtures("tenants", server="server")


@pytest_asyncio.fixture(scope="module")
async def admin(server, data_dir):
    auth = AuthStore.ensure(data_dir)
    nc = await nats.connect(server.url, user_credentials=str(auth.service_creds("admin")))
    js = nc.jetstream()
    await ensure_streams(js, HubSettings(nats_url=server.url))
    await js.add_consumer(RAW_STREAM, durable_name="hub", ack_policy="explicit")
    for n in range(3):  # something to lose in every stream and bucket
        await js.publish(subject("lms", SITE, "Org", MINE, "play_video"), b'{"raw": %d}' % n)
        await js.publish(subject("quarantine", SITE, "Org", MINE, "bad"), b"x")
        await js.publish(f"dlq.someone{n}", b"x")
    for bucket in (GRANTS_BUCKET, TARGETS_BUCKET, COURSES_BUCKET):
        await (await js.key_value(bucket)).put("keep", b'{"id": "keep"}')
    yield nc
    await nc.close()


async def snapshot(js) -> dict:
    """Everything an attack could change: each stream's config, counters and consumers; KV revisions."""
    out: dict = {"streams": sorted(i.config.name for i in await js.streams_info())}
    for name in STREAMS:
        info = await js.stream_info(name)
        consumers = sorted(c.name for c in await js.consumers_info(name))
        out[name] = (info.state.messages, info.state.first_seq, info.state.last_seq, info.config.max_age,
                     info.config.subjects, consumers)
    raw = await js.consumer_info(RAW_STREAM, "hub")
    out["raw-consumer"] = (raw.delivered.stream_seq, raw.ack_floor.stream_seq, raw.num_pending)
    for bucket in (GRANTS_BUCKET, TARGETS_BUCKET, COURSES_BUCKET):
        entry = await (await js.key_value(bucket)).get("keep")
        out[bucket] = (entry.revision, entry.value)
    return out


async def statement(js, course: str, ident: str) -> None:
    await js.publish(subject("xapi", SITE, "Org", course, "played"), json.dumps({"id": ident}).encode(),
                     headers={"Nats-Msg-Id": ident})


@pytest_asyncio.fixture
async def tenant(server, data_dir, admin):
    """An approved direct subscription (course MINE) with its credential and an observer user of the same
    account (test-only, may subscribe to everything there) to watch where the server's replies land."""
    auth = AuthStore.ensure(data_dir)
    grant = Grant(id=unique("g"), consumer="acme", protocol="xapi", sites=[SITE], courses=[MINE])
    await ensure_consumer(admin.jetstream(), grant)
    text, user_pub = await auth.issue_consumer_creds(admin, grant, 3600)
    probe = await Probe().connect(server.url, RawCredentials(text), creds_inbox_prefix(text), allow_reconnect=False)
    observer_text, _ = auth._user_creds("observer", auth._tenant_seed(grant.id), None, None)
    observer = await nats.connect(server.url, user_credentials=RawCredentials(observer_text))
    seen: Counter[str] = Counter()

    async def on_any(msg):
        # A pulled statement arrives under its own subject, carrying its ack subject as reply.
        if msg.reply and msg.reply.startswith(f"$JS.ACK.XAPI.{consumer_name(grant.id)}."):
            seen[f"acked-by:{consumer_name(grant.id)}"] += 1
        else:
            seen[msg.subject] += 1

    await observer.subscribe(">", cb=on_any)
    await observer.flush()
    yield grant, probe, seen, auth
    await probe.close()
    await observer.close()


def attack_replies(grant: Grant) -> list[str]:
    """Reply subjects that, executed in the data account, would destroy or leak data."""
    mine = consumer_name(grant.id)
    out = []
    for s in STREAMS:
        out += [f"$JS.API.STREAM.PURGE.{s}", f"$JS.API.STREAM.DELETE.{s}", f"$JS.API.STREAM.UPDATE.{s}",
                f"$JS.API.STREAM.MSG.DELETE.{s}", f"$JS.API.STREAM.SNAPSHOT.{s}", f"$JS.API.STREAM.RESTORE.{s}",
                f"$JS.API.STREAM.LEADER.STEPDOWN.{s}", f"$JS.API.CONSUMER.CREATE.{s}",
                f"$JS.API.CONSUMER.DURABLE.CREATE.{s}.evil", f"$JS.API.DIRECT.GET.{s}", f"$JS.API.STREAM.MSG.GET.{s}"]
    out += ["$JS.API.CONSUMER.DELETE.LMS_RAW.hub", f"$JS.API.CONSUMER.DELETE.XAPI.{mine}",
            "$JS.API.CONSUMER.MSG.NEXT.LMS_RAW.hub", "$JS.API.STREAM.CREATE.EVIL", "$JS.API.ACCOUNT.PURGE",
            "$JS.API.META.LEADER.STEPDOWN", "$JS.ACK.LMS_RAW.hub.1.1.1.0.0", "$JS.FC.LMS_RAW.hub.x",
            f"$KV.{GRANTS_BUCKET}.keep", f"$KV.{TARGETS_BUCKET}.evil", f"$KV.{COURSES_BUCKET}.keep",
            subject("lms", SITE, "Org", MINE, "forged"), subject("xapi", SITE, "Org", OTHER, "forged")]
    return out


async def test_reply_subjects_of_pulls_and_acks_never_act_in_the_data_account(admin, tenant):
    grant, probe, seen, _ = tenant
    js = admin.jetstream()
    mine = consumer_name(grant.id)
    pull = f"$JS.API.CONSUMER.MSG.NEXT.XAPI.{mine}"
    replies = attack_replies(grant)
    before = await snapshot(js)

    # 1. Nothing pending: every pull is answered by a "no messages" status, sent to the reply subject. Each
    #    lands in the subscriber's own account (seen there), or the server refuses the reply outright.
    for reply in replies:
        await probe.nc.publish(pull, b'{"batch": 1, "no_wait": true}', reply=reply)
    await probe.nc.flush()

    def landed_or_refused(r: str) -> bool:
        return bool(seen[r]) or any("with reply of" in e and r.lower() in e for e in probe.errors)

    await wait_for(lambda: all(landed_or_refused(r) for r in replies), 10, "every pull's status, in its own account")
    allowed = [r for r in replies if seen[r]]
    assert len(allowed) >= len(replies) - 2  # only replies the server refuses up front are missing

    # 2. Statements pending: each pull's answer is a statement carrying its ack subject.
    delivered = []
    for n in range(len(allowed)):
        await statement(js, MINE, unique(f"m{n}-"))
    before = await snapshot(js)
    deliveries = seen[f"acked-by:{mine}"]
    for reply in allowed:
        await probe.nc.publish(pull, b'{"batch": 1, "no_wait": true}', reply=reply)
    await probe.nc.flush()
    await wait_for(lambda: seen[f"acked-by:{mine}"] - deliveries == len(allowed), 10,
                   "every statement pulled to a bogus reply, delivered in its own account")

    # 3. Acks with the same replies on statements it really holds: applied to its own consumer, nothing else.
    psub = await probe.nc.jetstream().pull_subscribe_bind(durable=mine, stream="XAPI")
    for n in range(len(allowed)):
        await statement(js, MINE, unique(f"h{n}-"))
    held: list = []
    while len(held) < len(allowed):
        held += await psub.fetch(len(allowed) - len(held), timeout=5)
    for msg, reply in zip(held, allowed, strict=True):
        await probe.nc.publish(msg.reply, b"+ACK", reply=reply)
        delivered.append(msg)
    await probe.nc.flush()

    async def held_acked() -> bool:
        # Left pending: only the statements of step 2, delivered to bogus replies (redelivered after ack wait).
        return (await js.consumer_info("XAPI", mine)).num_ack_pending == len(allowed)

    await wait_for(held_acked, 10, "the acks applied to its own consumer")
    before["XAPI"] = (await js.stream_info("XAPI")).state.messages, *before["XAPI"][1:]
    after = await snapshot(js)
    before_xapi, after_xapi = before.pop("XAPI"), after.pop("XAPI")
    assert after == before
    # XAPI only grew by the statements this test published; nothing purged, deleted or reconfigured.
    assert after_xapi[1] == before_xapi[1] and after_xapi[3:] == before_xapi[3:]
    assert after_xapi[2] == before_xapi[2] + len(allowed)


async def test_everything_else_stays_refused(admin, tenant):
    grant, probe, _, _ = tenant
    nc = probe.nc
    before = await snapshot(admin.jetstream())
    for subj in ("xapi.>", subject("xapi", SITE, "Org", OTHER, "*"), "lms.>", "_INBOX.>", "$KV.>",
                 f"$KV.{GRANTS_BUCKET}.>", "$JS.API.>", "$SYS.>"):
        await nc.subscribe(subj)
        await wait_for(lambda s=subj: probe.violated(f'"{s}"'), 5, f"refusal to subscribe {subj}")
    for subj in (subject("lms", SITE, "Org", MINE, "forged"), subject("xapi", SITE, "Org", MINE, "forged"),
                 "$JS.API.CONSUMER.CREATE.XAPI", f"$JS.API.CONSUMER.CREATE.XAPI.evil.{subject('xapi', SITE, 'Org', OTHER, '*')}",
                 "$JS.API.CONSUMER.DURABLE.CREATE.XAPI.evil", f"$JS.API.CONSUMER.DELETE.XAPI.{consumer_name(grant.id)}",
                 "$JS.API.CONSUMER.LIST.XAPI", "$JS.API.CONSUMER.NAMES.XAPI", "$JS.API.DIRECT.GET.LMS_RAW",
                 "$JS.API.STREAM.MSG.GET.LMS_RAW", "$JS.API.STREAM.PURGE.XAPI", "$JS.API.CONSUMER.MSG.NEXT.LMS_RAW.hub",
                 f"$KV.{GRANTS_BUCKET}.evil", "$SYS.REQ.CLAIMS.UPDATE"):
        await nc.publish(subj, b"{}")
        await wait_for(lambda s=subj: probe.violated(s), 5, f"refusal to publish {subj}")
    with pytest.raises(Exception):  # noqa: B017 - no JetStream in its own account, no KV
        await nc.jetstream().key_value(GRANTS_BUCKET)
    assert await snapshot(admin.jetstream()) == before


async def test_exactly_its_statements_durable_and_live_until_revoked(admin, tenant):
    grant, probe, _, auth = tenant
    js = admin.jetstream()
    live: list[str] = []

    async def on_live(msg):
        live.append(json.loads(msg.data)["id"])

    await probe.nc.subscribe(f"xapi.{SITE}.*.{MINE}.>", cb=on_live)
    await probe.nc.flush()

    async def live_feed_ready() -> bool:  # interest crosses the import asynchronously
        await statement(js, MINE, unique("warmup"))
        return bool(live)

    await wait_for(live_feed_ready, 5, "the live feed through the stream import", interval=0.1)
    live.clear()
    want = [unique("mine") for _ in range(5)]
    for n, ident in enumerate(want):
        await statement(js, MINE, ident)
        await statement(js, OTHER, unique(f"other{n}"))
    psub = await probe.nc.jetstream().pull_subscribe_bind(durable=consumer_name(grant.id), stream="XAPI")
    got: list[str] = []
    while len(got) < len(want):
        for msg in await psub.fetch(10, timeout=5):
            if not json.loads(msg.data)["id"].startswith("warmup"):
                got.append(json.loads(msg.data)["id"])
            await msg.ack_sync()
    assert got == want
    await wait_for(lambda: live == want, 5, "the live feed of exactly the granted course")

    loop = asyncio.get_running_loop()
    started = loop.time()
    await auth.close_consumer(admin, grant.id)
    await asyncio.wait_for(probe.disconnected.wait(), 5)
    assert loop.time() - started < 5
    await statement(js, MINE, unique("after"))
    assert live == want


async def test_portal_moves_existing_direct_subscriptions_into_their_accounts(server, data_dir, admin, tmp_path):
    """An integration approved by an earlier version has no account of its own: the portal's start-up migration
    opens it (approved) or keeps it closed (suspended); suspension, resumption and revocation follow."""
    from portal import db
    from portal.services import Portal
    from portal.settings import PortalSettings
    from portal.validation import IntegrationSpec, Scope

    auth = AuthStore.ensure(data_dir)
    settings = PortalSettings(nats_url=server.url, data_dir=str(data_dir), database_url="",
                              nats_creds=str(auth.service_creds("portal")))
    engine = await db.migrate(settings)
    portal = Portal(settings)
    try:
        root = await portal.set_admin(f"{unique('root')}@example.org", "a long enough password")
        spec = IntegrationSpec(name="engine", protocol="xapi", delivery="direct", scope=Scope(sites=[SITE], courses=[MINE]))
        live_row = await portal.create_integration(root, spec, approved_by=root)
        paused_row = await portal.create_integration(root, spec, approved_by=root)
        await portal.suspend(root, paused_row.key, "paused")
        for key in (live_row.key, paused_row.key):  # as an earlier version left them: no account at all
            (auth.path / "tenants" / f"{key}.jwt").unlink()
            (auth.path / "tenants" / f"{key}.nk").unlink()
        with pytest.raises(Exception, match="not open"):
            await portal.issue_creds(root, live_row)

        assert await portal.migrate_direct_access() == 2
        assert await portal.migrate_direct_access() == 0  # idempotent
        assert auth.tenant_is_open(live_row.key) and not auth.tenant_is_open(paused_row.key)

        text = await portal.issue_creds(root, live_row)
        probe = await Probe().connect(server.url, RawCredentials(text), creds_inbox_prefix(text), allow_reconnect=False)
        ident = unique("migrated")
        await statement(admin.jetstream(), MINE, ident)
        psub = await probe.nc.jetstream().pull_subscribe_bind(durable=consumer_name(live_row.key), stream="XAPI")
        assert [json.loads(m.data)["id"] for m in await psub.fetch(5, timeout=5)] == [ident]

        await portal.suspend(root, live_row.key, "pause")
        await asyncio.wait_for(probe.disconnected.wait(), 5)
        await probe.close()
        await portal.resume(root, live_row.key)
        with pytest.raises(Exception):  # noqa: B017 - the suspended credential stays dead after resumption
            await nats.connect(server.url, user_credentials=RawCredentials(text), allow_reconnect=False,
                               connect_timeout=3, inbox_prefix=creds_inbox_prefix(text))
        fresh = await portal.issue_creds(root, await portal.get(live_row.key))
        again = await Probe().connect(server.url, RawCredentials(fresh), creds_inbox_prefix(fresh), allow_reconnect=False)
        await portal.revoke(root, live_row.key, "done")
        await asyncio.wait_for(again.disconnected.wait(), 5)
        await again.close()
        with pytest.raises(RuntimeError, match="for good"):
            auth.open_tenant(Grant(id=live_row.key, consumer="x", protocol="xapi", courses=[MINE]))
    finally:
        await portal.close()
        await db.close(engine)


async def test_idiomatic_clients_read_their_own_consumer_under_the_api_prefix(admin, tenant):
    """Issue 24: with the JetStream API prefix (``TENANT_API_PREFIX``) a subscriber reads its own consumer's
    info and pulls it the idiomatic way (nats-py ``pull_subscribe``; nats.js ``consumers.get()`` does the same
    requests); another consumer's info stays out of reach."""
    from hub.core.subjects import TENANT_API_PREFIX

    grant, probe, _, _ = tenant
    js = probe.nc.jetstream(prefix=TENANT_API_PREFIX)
    mine = consumer_name(grant.id)
    info = await js.consumer_info("XAPI", mine)
    assert info.name == mine and info.stream_name == "XAPI"
    want = [unique("idiom") for _ in range(3)]
    for ident in want:
        await statement(admin.jetstream(), MINE, ident)
    sub = await js.pull_subscribe(None, durable=mine, stream="XAPI")  # asks CONSUMER.INFO first, then pulls
    got: list[str] = []
    while len(got) < len(want):
        for msg in await sub.fetch(10, timeout=5):
            got.append(json.loads(msg.data)["id"])
            await msg.ack_sync()
    assert [g for g in got if g in want] == want
    other = await ensure_consumer(admin.jetstream(), Grant(id=unique("o"), consumer="other", protocol="xapi",
                                                           sites=[SITE], courses=[OTHER]))
    with pytest.raises(Exception):  # noqa: B017 - no responders / timeout / permissions: never an answer
        await js.consumer_info("XAPI", other, timeout=2)
