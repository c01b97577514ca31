"""Learner groups end to end in operator mode: a real nats-server with accounts, the hub and the deliverer on their
own service credentials, a real HTTP receiver, and a direct subscriber's .creds used as an attacker would.

Three learners of one site: 7 in ``acme``, 8 in ``beta``, 9 in none. The acme webhook and the acme direct
subscriber must get learner 7's statements and nothing else; membership changes apply within 2 s."""

from __future__ import annotations

import asyncio
import json
import time

import msgspec
import nats
import nats.js.errors
import pytest_asyncio
from nats.aio.client import RawCredentials

from hub.auth import AuthStore, ensure_consumer
from hub.core.creds import creds_inbox_prefix
from hub.core.grants import Grant, Target, consumer_name, put_grant
from hub.core.groups import Group, change_members, put_group
from hub.core.settings import HubSettings
from hub.core.streams import ensure_streams
from hub.core.subjects import TARGETS_BUCKET, subject
from hub.deliver.transport.signing import new_secret
from hub.route.service import serve
from hub.translate import ExternalIds
from tests.deliver_kit import deliverer, delivering
from tests.deliver_receivers import Receiver
from tests.helpers import wait_for
from tests.operator_kit import operator_fixtures
from tests.test_auth_nats import Probe
from tests.test_hub import COURSE, video_event

SITE = "campus"
stack_deliverer: list = []  # the stack's deliverer (module scope)
SECRET = "group-secret"


def actor(user_id: int) -> str:
    """The anonymized xAPI actor name the hub gives an LMS user (HMAC of the deployment secret)."""
    return ExternalIds(SECRET).get("xapi", str(user_id))


data_dir, server, admin_nc = operator_fixtures("groups", server="server")


@pytest_asyncio.fixture(scope="module")
async def stack(server, data_dir):
    """Admin connection, a running hub (hub credentials), a receiver, groups and three grants."""
    auth = AuthStore.ensure(data_dir)
    admin = await nats.connect(server.url, user_credentials=str(auth.service_creds("admin")))
    js = admin.jetstream()
    await ensure_streams(js, HubSettings(nats_url=server.url))
    acme, beta = Group(name="acme", site=SITE), Group(name="beta", site=SITE)
    for group, member in ((acme, "7"), (beta, "8")):
        await put_group(js, group)
        await change_members(js, group, add=[member])
    rx = await Receiver().start()
    hook = Grant(
        id="acmehook",
        consumer="acme",
        protocol="xapi",
        sites=[SITE],
        learner_groups=["acme"],
        delivery="webhook",
    )
    direct = Grant(id="acmedirect", consumer="acme", protocol="xapi", sites=[SITE], learner_groups=["acme"])
    other = Grant(id="betadirect", consumer="beta", protocol="xapi", sites=[SITE], learner_groups=["beta"])
    await (await js.key_value(TARGETS_BUCKET)).put(
        hook.id,
        msgspec.json.encode(Target(id=hook.id, kind="webhook", url=rx.url + "/hook", secrets=[new_secret()])),
    )
    for grant in (hook, direct, other):
        if grant.delivery == "direct":
            await ensure_consumer(js, grant)
        await put_grant(js, grant)
    settings = HubSettings(
        nats_url=server.url,
        nats_creds=str(auth.service_creds("hub")),
        data_dir=str(data_dir / "hub"),
        id_secret=SECRET,
        metrics_port=-1,
        sites={SITE: "https://lms.campus.example"},
    )
    stop, hubs = asyncio.Event(), []
    task = asyncio.create_task(serve(settings, stop, ready=hubs.append))
    await wait_for(lambda: hubs, 10, "hub start")
    hub = hubs[0]
    await wait_for(
        lambda: len(hub.grants.index.grants) == 3 and hub.membership.groups_of(SITE, "8"),
        5,
        "grants and members in the hub",
    )
    dnc = await nats.connect(
        server.url,
        user_credentials=str(auth.service_creds("deliverer")),
        inbox_prefix=creds_inbox_prefix(auth.service_creds("deliverer")),
    )
    async with deliverer(
        dnc, server.url, nats_creds=str(auth.service_creds("deliverer")), id_secret=SECRET
    ) as d:
        await delivering(d, hook.id)
        stack_deliverer[:] = [d]
        yield admin, auth, hub, rx, direct, other
    await dnc.close()
    stop.set()
    assert await asyncio.wait_for(task, 15) == 0
    await rx.stop()
    await admin.close()


async def send(js, user_id: int) -> None:
    await js.publish(
        subject("lms", SITE, "edX", COURSE, "play_video"), msgspec.json.encode(video_event(user_id=user_id))
    )


def actors(bodies) -> list[str]:
    return [b["actor"]["account"]["name"] for b in bodies if "actor" in b]


async def test_only_members_reach_the_webhook_and_the_direct_subscriber_live(stack):
    admin, auth, hub, rx, direct, _ = stack
    js = admin.jetstream()
    text, _ = await auth.issue_consumer_creds(admin, direct, 3600)
    probe = await Probe().connect(
        admin.connected_url.geturl(), RawCredentials(text), creds_inbox_prefix(text), allow_reconnect=False
    )
    live: list[dict] = []

    async def on_live(msg):
        live.append(json.loads(msg.data))

    await probe.nc.subscribe(f"xapi.{SITE}.*.*.*.acme", cb=on_live)
    await probe.nc.flush()

    async def live_ready() -> bool:  # interest crosses the stream import asynchronously
        await send(js, 7)
        return bool(live)

    await wait_for(live_ready, 5, "the acme live feed", interval=0.2)
    await wait_for(lambda: len(actors(rx.bodies())) >= 1, 10, "warm-up on the webhook")
    psub = await probe.nc.jetstream().pull_subscribe_bind(durable=consumer_name(direct.id), stream="XAPI")
    pulled: list[dict] = []

    async def pull_all(n: int) -> None:
        while len(pulled) < n:
            for msg in await psub.fetch(10, timeout=5):
                pulled.append(json.loads(msg.data))
                await msg.ack_sync()

    # the durable consumer has every warm-up statement (the live feed only those after its import was ready)
    async def drained() -> bool:
        info = await admin.jetstream().consumer_info("XAPI", consumer_name(direct.id))
        if info.num_pending:
            await pull_all(len(pulled) + info.num_pending)
        return info.num_pending == 0

    await wait_for(drained, 10, "the warm-up statements pulled")
    base_pull = len(pulled)
    await wait_for(lambda: len(rx.requests) == base_pull, 10, "every warm-up statement on the webhook too")
    assert set(actors(pulled)) == set(actors(live)) == set(actors(rx.bodies())) == {actor(7)}
    # the webhook's id is the statement's id (the group copy's Nats-Msg-Id carries the group too)
    assert {r.headers["webhook-id"] for r in rx.requests} == {b["id"] for b in rx.bodies()}

    base_hook, base_live = len(rx.requests), len(live)
    for user in (8, 9, 7):
        await send(js, user)
    await wait_for(
        lambda: len(rx.requests) == base_hook + 1 and len(live) == base_live + 1, 10, "7's statement"
    )
    await pull_all(base_pull + 1)
    assert (
        actors(rx.bodies()[base_hook:])
        == actors(live[base_live:])
        == actors(pulled[base_pull:])
        == [actor(7)]
    )

    # live: remove 7, add 9 -> within 2 s the next events are 9's only
    started = time.monotonic()
    await change_members(js, Group(name="acme", site=SITE), remove=["7"], add=["9"])
    await wait_for(
        lambda: hub.membership.groups_of(SITE, "9") == {"acme"} and not hub.membership.groups_of(SITE, "7"),
        2,
        "the change in the hub",
    )
    for user in (7, 8, 9):
        await send(js, user)
    await wait_for(
        lambda: len(rx.requests) == base_hook + 2 and len(live) == base_live + 2,
        max(2 - (time.monotonic() - started), 0.1),
        "9's statement within 2 s of the change",
    )
    await pull_all(base_pull + 2)
    assert actors(rx.bodies()[base_hook + 1 :]) == actors(live[base_live + 1 :]) == [actor(9)]
    assert actors(pulled[base_pull + 1 :]) == [actor(9)]
    await change_members(js, Group(name="acme", site=SITE), remove=["9"], add=["7"])
    await probe.close()


async def test_a_direct_subscribers_creds_reach_no_other_group(stack):
    admin, auth, hub, _, direct, other = stack
    js = admin.jetstream()
    text, _ = await auth.issue_consumer_creds(admin, direct, 3600)
    probe = await Probe().connect(
        admin.connected_url.geturl(), RawCredentials(text), creds_inbox_prefix(text), allow_reconnect=False
    )
    nc = probe.nc
    got: list[tuple[str, bytes]] = []

    async def on_any(msg):
        got.append((msg.subject, msg.data))

    refused = [
        f"xapi.{SITE}.*.*.*.beta",
        f"xapi.{SITE}.*.*.*.*",
        f"xapi.{SITE}.*.*.*",
        f"xapi.{SITE}.>",
        "xapi.>",
        "xapi.*.*.*.*.>",
        ">",
        f"xapi.{SITE}.edX.{COURSE}.play_video",
        f"_INBOX_c_{other.id}.>",
        "_INBOX.>",
        "$JS.ACK.>",
        f"$JS.ACK.XAPI.{consumer_name(other.id)}.>",
        "ident.>",
    ]
    for subj in refused:
        await nc.subscribe(subj, cb=on_any)
        await wait_for(lambda s=subj: probe.violated(f'"{s}"'), 5, f"refusal to subscribe {subj}")
    # the other group's consumer, with replies into this subscriber's own inbox: refused, nothing arrives
    inbox = f"{creds_inbox_prefix(text)}.steal"
    await nc.subscribe(inbox, cb=on_any)
    for subj in (
        f"$JS.API.CONSUMER.MSG.NEXT.XAPI.{consumer_name(other.id)}",
        f"$JS.API.CONSUMER.INFO.XAPI.{consumer_name(other.id)}",
        f"$JS.API.CONSUMER.CREATE.XAPI.evil.xapi.{SITE}.*.*.*.beta",
        f"$JS.API.CONSUMER.MSG.NEXT.XAPI.{consumer_name(direct.id)}.beta",
    ):
        await nc.publish(subj, b'{"batch": 10, "expires": 1000000000}', reply=inbox)
        await wait_for(lambda s=subj: probe.violated(s), 5, f"refusal to publish {subj}")
    base = hub.metrics.get("received")
    for user in (8, 8, 9):
        await send(js, user)
    await wait_for(
        lambda: hub.metrics.get("received") == base + 3, 10, "the hub read the other learners' events"
    )
    await nc.flush()
    beta = await js.consumer_info("XAPI", consumer_name(other.id))
    assert beta.num_pending >= 2  # beta's statements exist, in the stream, under beta's subjects
    mine = await js.consumer_info("XAPI", consumer_name(direct.id))
    assert got == [] and mine.num_pending == 0
    await probe.close()


async def test_a_removed_members_queued_statements_are_not_delivered(stack):
    """The deliverer checks membership again at every attempt: a statement made while the learner was a member
    but still undelivered (the endpoint asked to retry later) is not sent once the learner left the group."""
    admin, _, hub, _, _, _ = stack
    js = admin.jetstream()
    answers = iter([(503, {"retry-after": "2"}, b"busy")])
    slow = await Receiver(lambda r: next(answers, (200, {}, b"ok"))).start()
    grant = Grant(id="acmeslow", consumer="acme", protocol="xapi", sites=[SITE], learner_groups=["acme"],
                  delivery="webhook")
    await (await js.key_value(TARGETS_BUCKET)).put(grant.id, msgspec.json.encode(
        Target(id=grant.id, kind="webhook", url=slow.url, secrets=[new_secret()])))
    await put_grant(js, grant)
    acme = Group(name="acme", site=SITE)
    await change_members(js, acme, add=["12"])
    await wait_for(lambda: grant.id in hub.grants.index.grants and hub.membership.groups_of(SITE, "12"), 5, "state")
    deliverer = stack_deliverer[0]
    await delivering(deliverer, grant.id)
    await send(js, 12)
    await wait_for(lambda: len(slow.requests) == 1, 10, "the first attempt, answered 503 Retry-After: 2")
    await change_members(js, acme, remove=["12"])
    await wait_for(lambda: deliverer.identities.learners.get((SITE, "12")) is not None
                   and not deliverer.identities.learners[(SITE, "12")].groups, 2, "the deliverer sees the removal")
    await send(js, 7)  # a member's statement behind it, delivered once the endpoint answers again
    await wait_for(lambda: any(actor(7) in r.body.decode() for r in slow.requests), 15, "the member's statement")
    assert [actor(12) in r.body.decode() for r in slow.requests].count(True) == 1  # never sent again
    assert deliverer.metrics.get("not_member") >= 1
    await slow.stop()


def control(name: str, **data) -> bytes:
    """A membership event as lms_publisher.groups publishes it."""
    return msgspec.json.encode(
        {"name": name, "timestamp": "2026-01-05T10:00:00+00:00", "context": {}, "data": data}
    )


async def stream_bytes(js, stream: str) -> bytes:
    """Every message still stored in ``stream`` (headers and data), concatenated."""
    info = await js.stream_info(stream)
    out = b""
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            continue
        out += (msg.data or b"") + json.dumps(msg.headers or {}).encode()
    return out


IDENT = "urn:rthub:identity"


async def test_identity_only_where_approved_and_gone_at_retirement(stack):
    admin, auth, hub, rx, _, _ = stack
    js = admin.jetstream()
    named = await Receiver().start()
    hook = Grant(
        id="acmenamed",
        consumer="acme",
        protocol="xapi",
        sites=[SITE],
        learner_groups=["acme"],
        delivery="webhook",
        identity=["user_id", "username", "email"],
    )
    direct = Grant(
        id="acmenameddirect",
        consumer="acme",
        protocol="xapi",
        sites=[SITE],
        learner_groups=["acme"],
        identity=["username"],
    )
    await (await js.key_value(TARGETS_BUCKET)).put(
        hook.id,
        msgspec.json.encode(Target(id=hook.id, kind="webhook", url=named.url, secrets=[new_secret()])),
    )
    await ensure_consumer(js, direct)
    for grant in (hook, direct):
        await put_grant(js, grant)
    # learner 11 joins acme through the LMS (lms_publisher.groups), with the e-mail the LMS knows
    await js.publish(
        subject("lms", SITE, None, None, "rthub.group.member_added"),
        control("rthub.group.member_added", group="acme", user_id=11, email="eleven@acme.example"),
    )
    await wait_for(
        lambda: hub.membership.groups_of(SITE, "11") == {"acme"} and hub.grants.index.any_identity,
        5,
        "membership event applied, identity grants seen",
    )
    text, _ = await auth.issue_consumer_creds(admin, direct, 3600)
    probe = await Probe().connect(
        admin.connected_url.geturl(), RawCredentials(text), creds_inbox_prefix(text), allow_reconnect=False
    )
    named_live: list[dict] = []

    async def on_ident(msg):
        named_live.append(json.loads(msg.data))

    await probe.nc.subscribe(f"ident.{direct.id}.>", cb=on_ident)
    await probe.nc.flush()

    async def named_everywhere() -> bool:  # the hub learns the username from the learner's events
        await send(js, 11)  # one more event per check: the hub learns the username from the learner's events
        return any(
            b.get("context", {}).get("extensions", {}).get(IDENT, {}).get("username") == "u11"
            for b in named.bodies()
        ) and any(b["context"]["extensions"][IDENT].get("username") == "u11" for b in named_live)

    await wait_for(
        named_everywhere, 15, "statements of learner 11 with the approved identity fields", interval=0.3
    )
    last = named.bodies()[-1]
    assert last["context"]["extensions"][IDENT] == {
        "user_id": "11",
        "username": "u11",
        "email": "eleven@acme.example",
    }
    assert last["actor"]["account"]["name"] == actor(11)  # still the anonymized actor
    assert named_live[-1]["context"]["extensions"][IDENT] == {"username": "u11"}  # only what was approved
    # the grant without identity approval never carries a username, nor the streams
    assert not any(IDENT in json.dumps(b) or "u11" in json.dumps(b) for b in rx.bodies())
    assert actor(11) in json.dumps(rx.bodies())  # it did get learner 11's statements, anonymized
    stored = await stream_bytes(js, "XAPI")
    assert b"u11" not in stored and b"eleven@" not in stored and IDENT.encode() not in stored

    # retirement, as the LMS publishes it: within a minute (here: the next event) nothing of learner 11 flows
    await js.publish(
        subject("lms", SITE, None, None, "rthub.learner.retired"),
        control("rthub.learner.retired", user_id=11),
    )
    started = time.monotonic()
    await wait_for(lambda: ("campus", "11") not in hub.membership.learners, 60, "the learner forgotten")
    assert time.monotonic() - started < 60
    before_named, before_live, before_rx = len(named.requests), len(named_live), len(rx.requests)
    await send(js, 11)
    await send(js, 7)  # a marker behind it: once 7's statement is delivered, 11's was processed
    await wait_for(lambda: len(rx.requests) > before_rx, 10, "the marker statement")
    await wait_for(lambda: len(named.requests) > before_named, 10, "the marker on the named webhook")
    assert actors(named.bodies()[before_named:]) == [actor(7)] and actors(rx.bodies()[before_rx:]) == [
        actor(7)
    ]
    assert all(b["actor"]["account"]["name"] != actor(11) for b in named_live[before_live:])
    learners = await stream_bytes(js, "KV_rthub_learners")
    assert b"u11" not in learners and b"eleven@" not in learners
    await probe.close()
    await named.stop()
