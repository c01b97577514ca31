"""Learner groups: pure membership and grant subjects, then the hub on a real nats-server publishing group-scoped
subjects only for members of groups some grant uses, live as members come and go."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import pytest_asyncio

from hub.core.grants import Grant, GrantIndex, put_grant
from hub.core.groups import (
    Group,
    Learner,
    Membership,
    change_members,
    learner_key,
    load_membership,
    parse_csv,
    parse_learner_key,
    parse_users,
    put_group,
    retire_learner,
)
from hub.core.natsconn import connect
from hub.core.settings import HubSettings
from hub.core.streams import ensure_streams
from hub.ops.natsserver import NatsServer, free_port
from hub.route.service import Hub, serve
from tests.helpers import wait_for
from tests.test_hub import Collector, publish, video_event


# ------------------------------------------------------------------------------------------------ pure
def test_group_grant_subjects_have_the_group_as_sixth_token():
    g = Grant(id="e1", consumer="acme", protocol="xapi", sites=["north"], learner_groups=["acme", "acme-2"])
    assert g.validate().filter_subjects() == ["xapi.north.*.*.*.acme", "xapi.north.*.*.*.acme-2"]
    plain = Grant(id="p", consumer="u", protocol="caliper", sites=["north"], event_types=["a", "b"])
    assert plain.filter_subjects() == ["caliper.north.*.*.a", "caliper.north.*.*.b"]
    for bad in (["a.b"], ["*"], [">"], [""], ["x" * 65]):
        with pytest.raises(ValueError, match="group name"):
            Grant(id="e", consumer="c", protocol="xapi", sites=["s"], learner_groups=bad).validate()
    with pytest.raises(ValueError, match="identity field"):
        Grant(id="e", consumer="c", protocol="xapi", sites=["s"], identity=["password"]).validate()


def test_index_routes_plain_protocols_apart_from_groups():
    index = GrantIndex(
        [
            Grant(id="u", consumer="uni", protocol="caliper", sites=["north"]),
            Grant(id="e", consumer="acme", protocol="xapi", sites=["north"], learner_groups=["acme"]),
            Grant(id="f", consumer="beta", protocol="xapi", courses=["c1"], learner_groups=["beta"]),
            Grant(
                id="s",
                consumer="gone",
                protocol="xapi",
                sites=["north"],
                learner_groups=["old"],
                status="suspended",
            ),
        ]
    )
    plain, grouped = index.routes_for("north", "o", "c1", "ev")
    assert plain == {"caliper"} and grouped == {"xapi": {"acme", "beta"}}
    assert index.routes_for("north", "o", "c2", "ev") == ({"caliper"}, {"xapi": {"acme"}})
    assert index.protocols_for("south", "o", "c2", "ev") == frozenset()


def test_membership_index():
    m = Membership()
    m.apply(("north", "7"), Learner(groups=["acme", "uni"], username="ada"))
    m.apply(("north", "8"), Learner(groups=["uni"]))
    m.apply(("south", "7"), Learner(groups=["other"]))
    assert m.groups_of("north", "7") == {"acme", "uni"} and m.groups_of("north", "9") == frozenset()
    assert m.members("uni") == [("north", "7"), ("north", "8")]
    assert m.sizes() == {"acme": 1, "uni": 2, "other": 1}
    m.apply(("north", "7"), None)  # retired
    assert m.groups_of("north", "7") == frozenset() and ("north", "7") not in m.learners
    assert parse_learner_key(learner_key("a.b site", "12")) == ("a.b site", "12")


def test_parse_users_and_csv():
    assert parse_users(["7,8", " 9 ", "8"]) == ["7", "8", "9"]
    with pytest.raises(ValueError, match="not an LMS user id"):
        parse_users(["7,bob"])
    assert parse_csv("user_id,username,email\n7,ada,ada@x.example\n8,,\n") == [
        ("7", "ada", "ada@x.example"),
        ("8", None, None),
    ]
    assert parse_csv("7\n8\n") == [("7", None, None), ("8", None, None)]
    with pytest.raises(ValueError, match="row 3"):
        parse_csv("user_id,username\n7,a\n,b\n")


# ------------------------------------------------------------------------------------------------ hub
@pytest.fixture
def server(tmp_path):
    srv = NatsServer(free_port(), tmp_path / "nats", name="groupstest").start()
    yield srv
    srv.stop()


@pytest.fixture
def settings(server, tmp_path) -> HubSettings:
    return HubSettings(
        nats_url=server.url,
        data_dir=str(tmp_path / "data"),
        id_secret="s3cret",
        metrics_port=-1,
        sites={"default": "http://localhost:18000"},
    )


@pytest_asyncio.fixture
async def nc(settings):
    client = await connect(settings, "test")
    await ensure_streams(client.jetstream(), settings)
    yield client
    await client.close()


@pytest_asyncio.fixture
async def running_hub(settings, nc):
    stop = asyncio.Event()
    hubs: list[Hub] = []
    task = asyncio.create_task(serve(settings, stop, ready=hubs.append))
    await wait_for(lambda: hubs, 10, "hub start")
    yield hubs[0]
    stop.set()
    assert await asyncio.wait_for(task, 15) == 0


def users_of(collector: Collector) -> list[str]:
    """The anonymized actor of each statement received (one per learner)."""
    return [json.loads(m.data)["actor"]["account"]["name"] for m in collector.msgs]


async def test_only_members_events_reach_the_group_subject(nc, running_hub):
    js = nc.jetstream()
    acme = Group(name="acme", site="default")
    await put_group(js, acme)
    await change_members(js, acme, add=["7"])
    await put_grant(
        js, Grant(id="ent", consumer="acme", protocol="xapi", sites=["default"], learner_groups=["acme"])
    )
    await wait_for(
        lambda: "ent" in running_hub.grants.index.grants and running_hub.membership.groups_of("default", "7"),
        5,
        "grant and membership seen by the hub",
    )
    group, everything = Collector(), Collector()
    await nc.subscribe("xapi.default.*.*.*.acme", cb=group.on)
    await nc.subscribe("xapi.>", cb=everything.on)
    await nc.flush()
    await publish(js, video_event(user_id=8))  # not a member: nothing at all (no grant covers everyone)
    await publish(js, video_event(user_id=7))
    await wait_for(lambda: len(group.msgs) == 1, 10, "the member's statement")
    assert [m.subject for m in everything.msgs] == [group.msgs[0].subject]
    sid = json.loads(group.msgs[0].data)["id"]
    assert group.msgs[0].headers["Nats-Msg-Id"] == sid + ".acme"
    assert group.msgs[0].headers["Rthub-Statement-Id"] == sid
    assert running_hub.metrics.get("filtered") == 1
    member_actor = users_of(group)[0]

    # removal and addition apply to the next event within 2 s
    t0 = time.monotonic()
    await change_members(js, acme, remove=["7"], add=["8"])
    await wait_for(
        lambda: (
            running_hub.membership.groups_of("default", "8") == {"acme"}
            and not running_hub.membership.groups_of("default", "7")
        ),
        2,
        "membership change in the hub",
    )
    await publish(js, video_event(user_id=7))
    await publish(js, video_event(user_id=8))
    await wait_for(lambda: len(group.msgs) == 2, 2 - (time.monotonic() - t0), "the new member's statement")
    assert users_of(group)[1] != member_actor
    assert running_hub.metrics.get("filtered") == 2  # the removed member's event went nowhere
    assert len(everything.msgs) == 2


async def test_groups_unused_by_any_grant_get_no_subjects(nc, running_hub):
    js = nc.jetstream()
    for name in ("acme", "unused"):
        await put_group(js, Group(name=name, site="default"))
    await change_members(js, Group(name="unused", site="default"), add=["7"])
    await change_members(js, Group(name="acme", site="default"), add=["7"])
    await put_grant(js, Grant(id="all", consumer="lrs", protocol="xapi", sites=["default"]))
    await put_grant(
        js, Grant(id="ent", consumer="acme", protocol="xapi", sites=["default"], learner_groups=["acme"])
    )
    await wait_for(
        lambda: (
            len(running_hub.grants.index.grants) == 2
            and running_hub.membership.groups_of("default", "7") == {"acme", "unused"}
        ),
        5,
        "state in the hub",
    )
    everything = Collector()
    await nc.subscribe("xapi.>", cb=everything.on)
    await nc.flush()
    await publish(js, video_event(user_id=7))
    await wait_for(lambda: len(everything.msgs) == 2, 10, "plain and group statement")
    base = everything.msgs[0].subject
    assert sorted(m.subject for m in everything.msgs) == sorted([base, base + ".acme"])
    assert everything.msgs[0].data == everything.msgs[1].data


async def test_store_round_trip_and_retirement(nc):
    js = nc.jetstream()
    acme = Group(name="acme", site="default")
    await put_group(js, acme)
    await change_members(js, acme, add=["7", "8"], identities={"7": ("ada", "ada@x.example")})
    members = await load_membership(js)
    assert members.members("acme") == [("default", "7"), ("default", "8")]
    assert members.learners[("default", "7")].username == "ada"
    assert await retire_learner(js, "default", "7")
    kv = await js.key_value("rthub_learners")
    status = await kv.status()
    members = await load_membership(js)
    assert ("default", "7") not in members.learners and members.members("acme") == [("default", "8")]
    # nothing of the retired learner is left in the bucket's stream: not even an old revision
    assert status.history == 1
    info = await js.stream_info("KV_rthub_learners", subjects_filter=">")
    assert not any("ada" in str(s) for s in (info.state.subjects or {}))
    raw = await js.get_last_msg("KV_rthub_learners", f"$KV.rthub_learners.{learner_key('default', '7')}")
    assert b"ada" not in (raw.data or b"")


ENTERPRISE_EVENTS = ("edx.course.enrollment.activated", "edx.course.enrollment.deactivated",
                     "edx.course.grade.passed.first_time", "edx.completion.block_completion.changed")


async def test_enrollments_grades_completions_of_members_in_xapi_and_caliper(nc, running_hub):
    """The reference LMS events (../shared/events/raw) of a member and of a non-member: the member's reach the
    group subjects in both protocols wherever the protocol translates the type, the non-member's nowhere."""
    from hub.translate import supported
    from tests.helpers import shared_or_skip

    raw_dir = shared_or_skip("events", "raw")
    js = nc.jetstream()
    acme = Group(name="acme", site="default")
    await put_group(js, acme)
    await change_members(js, acme, add=["7"])
    for protocol in ("xapi", "caliper"):
        await put_grant(js, Grant(id=f"ent-{protocol}", consumer="acme", protocol=protocol, sites=["default"],
                                  event_types=list(ENTERPRISE_EVENTS), learner_groups=["acme"]))
    await wait_for(lambda: len(running_hub.grants.index.grants) == 2 and running_hub.membership.groups_of(
        "default", "7"), 5, "grants and membership in the hub")
    got = Collector()
    await nc.subscribe("xapi.>", cb=got.on)
    await nc.subscribe("caliper.>", cb=got.on)
    await nc.flush()
    for user in (8, 7):
        for name in ENTERPRISE_EVENTS:
            ev = json.loads((raw_dir / f"{name}.json").read_text())
            ev["context"]["user_id"] = user
            if isinstance(ev.get("data"), dict) and "user_id" in ev["data"]:
                ev["data"]["user_id"] = user
            await publish(js, ev, course=ev["context"].get("course_id"), org=ev["context"].get("org_id"))
    want = {(p, n) for p in ("xapi", "caliper") for n in ENTERPRISE_EVENTS if n in supported(p)}
    assert ("caliper", "edx.course.enrollment.deactivated") in want  # the university's unenrollments
    await wait_for(lambda: {(m.subject.split(".")[0], m.subject) for m in got.msgs} and len(
        {(m.subject.split(".")[0], m.subject.split(".")[4]) for m in got.msgs}) >= len(want), 10, "the member's")
    from hub.core.subjects import decode_token

    seen = {(m.subject.split(".")[0], decode_token(m.subject.split(".")[4])) for m in got.msgs}
    assert seen == want
    assert all(m.subject.endswith(".acme") for m in got.msgs)
    anon = {json.loads(m.data)["actor"].get("id") or json.loads(m.data)["actor"]["account"]["name"] for m in got.msgs}
    assert len({a.rsplit("/", 1)[-1] for a in anon}) == 2  # one learner, one id per protocol: the member only
