"""Open edX Events through the hub: the pure translator, and end to end (Django sends COURSE_ENROLLMENT_CREATED
through the NATS event bus -> the hub -> the deliverer -> signed webhooks)."""

from __future__ import annotations

import asyncio
import json
import os

import msgspec
import pytest

pytest.importorskip("openedx_events")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.eventbus_site.settings")

import django  # noqa: E402

django.setup()

from standardwebhooks.webhooks import Webhook  # noqa: E402

from hub.core.grants import Grant, Target, put_grant  # noqa: E402
from hub.core.natsconn import connect  # noqa: E402
from hub.core.openedx import CATALOG, translated  # noqa: E402
from hub.core.settings import HubSettings  # noqa: E402
from hub.core.streams import ensure_streams  # noqa: E402
from hub.core.subjects import OPENEDX_STREAM, TARGETS_BUCKET  # noqa: E402
from hub.deliver.transport.signing import new_secret  # noqa: E402
from hub.ops.natsserver import NatsServer, free_port  # noqa: E402
from hub.route.service import serve  # noqa: E402
from hub.translate import ExternalIds, TranslateContext, translate  # noqa: E402
from hub.translate import openedx as tr  # noqa: E402
from tests.deliver_kit import deliverer, delivering  # noqa: E402
from tests.deliver_receivers import Receiver  # noqa: E402
from tests.eventbus_site import events  # noqa: E402
from tests.helpers import consumer_settled, wait_for  # noqa: E402
from tests.test_event_bus import TOPIC, Bus  # noqa: E402
from tests.xapi_validator import problems  # noqa: E402

COURSE = "course-v1:edX+DemoX+Demo_Course"
OTHER = "course-v1:MITx+6.00x+2024"
LMS = "http://localhost:18000"
CTX = TranslateContext(lms_url=LMS, ids=ExternalIds(b"secret"), courses={COURSE: "Demonstration Course"})
META = {
    "id": "5e3a4f1c-0000-11f0-8000-000000000001",
    "time": "2025-03-04T05:06:07.890000+00:00",
    "source": "openedx/lms/web",
    "minorversion": "0",
    "sourcehost": "lms-1",
    "sourcelib": "10.5.0",
}


def enrollment_data(active: bool = True) -> dict:
    """The Avro record dict of an enrollment (what the hub decodes from the bus)."""
    return {
        "enrollment": {
            "user": {
                "id": 3,
                "is_active": True,
                "pii": {"username": "edx", "email": "edx@example.org", "name": "Ed X"},
            },
            "course": {
                "course_key": COURSE,
                "display_name": "Demonstration Course",
                "start": None,
                "end": None,
            },
            "mode": "audit",
            "is_active": active,
            "creation_date": META["time"],
            "created_by": None,
        }
    }


def tracking(name: str, **data) -> dict:
    """The tracking event the LMS logs for the same moment (the shape of ../shared/events/raw)."""
    return {
        "name": name,
        "timestamp": META["time"],
        "context": {"course_id": COURSE, "org_id": "edX", "user_id": 3, "username": "edx"},
        "data": {"course_id": COURSE, "user_id": 3, **data},
    }


def test_enrollment_created_is_the_reference_registered_statement():
    [st] = tr.translate("xapi", tr.ENROLLED, enrollment_data(), META, CTX)
    # exactly what the tracking translator (the reference's statements) says for edx.course.enrollment.activated
    [ref] = translate("xapi", tracking("edx.course.enrollment.activated", mode="audit"), CTX)
    assert st == ref
    assert st["verb"]["id"] == "http://adlnet.gov/expapi/verbs/registered"
    assert st["object"]["id"] == f"{LMS}/course/{COURSE}"
    assert st["actor"]["account"]["name"] == CTX.ids.get("xapi", "3", "edx")  # anonymized, never the username
    assert "edx@example.org" not in json.dumps(st) and '"edx"' not in json.dumps(st)
    assert problems(st) == []
    [cal] = tr.translate("caliper", tr.ENROLLED, enrollment_data(), META, CTX)
    assert cal["action"] == "Activated" and cal["object"]["id"].endswith(COURSE)


def test_unenrollment_certificate_and_passing_status():
    [st] = tr.translate("xapi", tr.UNENROLLED, enrollment_data(False), META, CTX)
    assert st["verb"]["display"]["en"] == "unregistered" and problems(st) == []
    [cal] = tr.translate("caliper", tr.UNENROLLED, enrollment_data(False), META, CTX)
    assert cal["action"] == "Deactivated"

    cert = {
        "certificate": {
            **enrollment_data()["enrollment"],
            "grade": "0.9",
            "download_url": "",
            "name": "Ed X",
            "current_status": "downloadable",
            "previous_status": "",
        }
    }
    [st] = tr.translate("xapi", tr.CERTIFICATE, cert, META, CTX)
    assert st["verb"]["id"] == "http://id.tincanapi.com/verb/earned" and st["result"] == {
        "completion": True,
        "success": True,
    }
    assert st["object"]["id"] == f"{LMS}/course/{COURSE}" and problems(st) == []
    [cal] = tr.translate("caliper", tr.CERTIFICATE, cert, META, CTX)
    assert cal["action"] == "Completed"

    base = enrollment_data()["enrollment"]
    passing = {"course_passing_status": {"is_passing": True, "course": base["course"], "user": base["user"]}}
    [st] = tr.translate("xapi", tr.PASSING, passing, META, CTX)
    assert st == translate("xapi", tracking("edx.course.grade.now_passed"), CTX)[0]
    assert st["verb"]["display"]["en"] == "passed"
    failing = {"course_passing_status": {**passing["course_passing_status"], "is_passing": False}}
    [st] = tr.translate("xapi", tr.PASSING, failing, META, CTX)
    assert st["verb"]["display"]["en"] == "failed" and problems(st) == []
    assert tr.translate("caliper", tr.PASSING, failing, META, CTX) == []  # Caliper has no "failed a course"


def test_refused_types_say_why_and_stay_available_as_cloudevents():
    refused = [e for e in CATALOG.values() if "xapi" not in e.protocols]
    assert refused and all(e.refused and e.protocols == ("cloudevents",) for e in refused)
    for e in refused:
        assert tr.translate("xapi", e.name, enrollment_data(), META, CTX) == []
    assert translated("xapi") == {tr.ENROLLED, tr.UNENROLLED, tr.CERTIFICATE, tr.PASSING}


def test_cloudevent_is_structured_and_anonymized():
    [ce] = tr.translate("cloudevents", tr.ENROLLED, enrollment_data(), META, CTX)
    assert {
        k: ce[k] for k in ("specversion", "id", "type", "source", "time", "datacontenttype", "subject")
    } == {
        "specversion": "1.0",
        "id": META["id"],
        "type": tr.ENROLLED,
        "source": "openedx/lms/web",
        "time": META["time"],
        "datacontenttype": "application/json",
        "subject": COURSE,
    }
    assert ce["minorversion"] == "0" and ce["sourcehost"] == "lms-1"
    user = ce["data"]["enrollment"]["user"]
    assert "pii" not in user and user["external_id"] == CTX.ids.get("cloudevents", "3", "edx")
    assert "edx@example.org" not in json.dumps(ce)
    assert ce["data"]["enrollment"]["mode"] == "audit"


async def test_enrollment_from_django_reaches_granted_webhooks_only(tmp_path):
    server = NatsServer(free_port(), tmp_path / "nats", name="oe2e").start()
    bus = Bus(server.url, tmp_path)
    settings = HubSettings(
        nats_url=server.url,
        data_dir=str(tmp_path / "data"),
        id_secret="s3cret",
        metrics_port=-1,
        openedx_topics=[bus.full_topic],
    )
    nc = await connect(settings, "test")
    js = nc.jetstream()
    await ensure_streams(js, settings)
    rx = await Receiver().start()
    secrets = {p: new_secret() for p in ("xapi", "cloudevents")}
    kv = await js.key_value(TARGETS_BUCKET)
    for protocol, secret in secrets.items():
        gid = f"oe-{protocol}"
        await kv.put(
            gid,
            msgspec.json.encode(Target(id=gid, kind="webhook", url=f"{rx.url}/{protocol}", secrets=[secret])),
        )
        await put_grant(
            js, Grant(id=gid, consumer="acme", protocol=protocol, courses=[COURSE], delivery="webhook")
        )
    stop = asyncio.Event()
    hubs = []
    hub_task = asyncio.create_task(serve(settings, stop, ready=hubs.append))
    try:
        await wait_for(lambda: hubs, 15, "hub start")
        async with deliverer(nc, server.url) as d:
            for protocol in secrets:
                await delivering(d, f"oe-{protocol}")
            direct = []  # a direct subscriber of the cloudevents grant (plain nats-py, as in the README)

            async def got(msg) -> None:
                direct.append(msg)

            sub = await nc.subscribe(f"cloudevents.*.edX.{COURSE}.>", cb=got)
            events.enrollment_created("outsider", OTHER, user_id=41)  # a course no grant covers
            events.enrollment_created("edx", COURSE, user_id=3)
            await wait_for(lambda: len(rx.requests) >= 2, 30, "an xAPI and a CloudEvents webhook")
            await wait_for(
                lambda: consumer_settled(js, OPENEDX_STREAM, settings.openedx_consumer),
                15,
                "the hub handled both events",
            )
            by_path = {r.path: r for r in rx.requests}
            assert sorted(by_path) == ["/cloudevents", "/xapi"]
            st = Webhook(secrets["xapi"]).verify(by_path["/xapi"].body, by_path["/xapi"].headers)
            assert st["verb"]["id"] == "http://adlnet.gov/expapi/verbs/registered" and problems(st) == []
            assert st["object"]["id"] == f"http://localhost:18000/course/{COURSE}"
            ce = Webhook(secrets["cloudevents"]).verify(
                by_path["/cloudevents"].body, by_path["/cloudevents"].headers
            )
            assert by_path["/cloudevents"].headers["content-type"] == "application/cloudevents+json"
            assert (
                ce["type"] == "org.openedx.learning.course.enrollment.created.v1" and ce["subject"] == COURSE
            )
            assert ce["specversion"] == "1.0" and "pii" not in ce["data"]["enrollment"]["user"]
            for protocol in secrets:  # the ungranted course produced nothing anywhere
                stream = {"xapi": "XAPI", "cloudevents": "CLOUDEVENTS"}[protocol]
                assert (await js.stream_info(stream)).state.messages == 1
            assert len(rx.requests) == 2
            await wait_for(lambda: direct, 10, "the direct subscriber's CloudEvent")
            assert [json.loads(m.data)["id"] for m in direct] == [ce["id"]]
            await sub.unsubscribe()
            assert TOPIC in bus.full_topic
    finally:
        stop.set()
        await asyncio.wait_for(hub_task, 20)
        bus.close()
        await rx.stop()
        await nc.close()
        server.stop()


def test_rthub_event_types_lists_tracking_and_open_edx_events():
    from tests.helpers import rthub, rthub_env

    out = rthub("event-types", "--json", env=rthub_env("nats://127.0.0.1:1"))
    rows = {e["name"]: e for e in map(json.loads, out.stdout.decode().splitlines())}
    assert (
        rows["play_video"]["protocols"] == ["xapi", "caliper"] and rows["play_video"]["source"] == "tracking"
    )
    created = rows["org.openedx.learning.course.enrollment.created.v1"]
    assert (
        created["protocols"] == ["xapi", "caliper", "cloudevents"] and created["source"] == "openedx-events"
    )
    login = rows["org.openedx.learning.auth.session.login.completed.v1"]
    assert login["protocols"] == ["cloudevents"] and "not course activity" in login["refused"]
    only = rthub(
        "event-types", "--protocol", "cloudevents", env=rthub_env("nats://127.0.0.1:1")
    ).stdout.decode()
    assert "play_video" not in only and "enrollment.created.v1" in only


async def test_unusable_bus_message_is_quarantined_with_its_reason_and_the_next_flows(tmp_path):
    from hub.core.openedx import topic_subject
    from hub.core.subjects import QUARANTINE_STREAM

    server = NatsServer(free_port(), tmp_path / "nats", name="oeq").start()
    topic = "t-learning-course-enrollment-lifecycle"
    settings = HubSettings(
        nats_url=server.url,
        data_dir=str(tmp_path / "data"),
        id_secret="s3cret",
        metrics_port=-1,
        openedx_topics=[topic],
    )
    nc = await connect(settings, "test")
    js = nc.jetstream()
    await ensure_streams(js, settings)
    await put_grant(js, Grant(id="q1", consumer="acme", protocol="xapi", courses=[COURSE]))
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    try:
        base = {
            "ce_type": tr.ENROLLED,
            "ce_time": META["time"],
            "ce_source": "openedx/lms/web",
            "ce_specversion": "1.0",
            "ce_minorversion": "0",
        }
        await js.publish(topic_subject(topic), b"\xff\x00not avro", headers={**base, "ce_id": "bad-1"})
        from openedx_events.event_bus.avro.serializer import serialize_event_data_to_bytes
        from openedx_events.learning.signals import COURSE_ENROLLMENT_CREATED

        good = serialize_event_data_to_bytes(
            {"enrollment": events.enrollment("edx", COURSE, user_id=3)}, COURSE_ENROLLMENT_CREATED
        )
        await js.publish(topic_subject(topic), good, headers={**base, "ce_id": META["id"]})

        async def counts() -> bool:
            return (await js.stream_info("XAPI")).state.messages == 1 and (
                await js.stream_info(QUARANTINE_STREAM)
            ).state.messages == 1

        await wait_for(counts, 20, "one statement and one quarantined message")
        q = await js.get_msg(QUARANTINE_STREAM, 1)
        assert "unreadable Avro" in q.headers["Rthub-Reason"] and q.data == b"\xff\x00not avro"
        st = json.loads((await js.get_msg("XAPI", 1)).data)
        assert st["verb"]["display"]["en"] == "registered" and st["timestamp"].startswith(
            "2025-03-04T05:06:07"
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await nc.close()
        server.stop()


def test_portal_catalog_knows_open_edx_event_types():
    from portal.catalog import unknown_event_types

    assert unknown_event_types("cloudevents", [tr.ENROLLED, "play_video"]) == ["play_video"]
    assert unknown_event_types("xapi", [tr.ENROLLED, "play_video"]) == []
    assert unknown_event_types("xapi", ["org.openedx.learning.auth.session.login.completed.v1"])  # refused


async def test_learner_group_grant_gets_only_its_members_open_edx_events(tmp_path):
    from openedx_events.event_bus.avro.serializer import serialize_event_data_to_bytes
    from openedx_events.learning.signals import COURSE_ENROLLMENT_CREATED

    from hub.core.groups import Group, change_members, put_group
    from hub.core.openedx import topic_subject

    server = NatsServer(free_port(), tmp_path / "nats", name="oeg").start()
    topic = "t-learning-course-enrollment-lifecycle"
    settings = HubSettings(
        nats_url=server.url,
        data_dir=str(tmp_path / "data"),
        id_secret="s3cret",
        metrics_port=-1,
        openedx_topics=[topic],
    )
    nc = await connect(settings, "test")
    js = nc.jetstream()
    await ensure_streams(js, settings)
    group = Group(name="cohort1", site="default")
    await put_group(js, group)
    await change_members(js, group, add=["3"])
    await put_grant(
        js, Grant(id="g1", consumer="acme", protocol="xapi", courses=[COURSE], learner_groups=["cohort1"])
    )
    stop = asyncio.Event()
    hubs = []
    task = asyncio.create_task(serve(settings, stop, ready=hubs.append))
    try:
        await wait_for(lambda: hubs, 15, "hub start")
        for n, (user, uid) in enumerate((("outsider", 41), ("edx", 3))):
            data = serialize_event_data_to_bytes(
                {"enrollment": events.enrollment(user, COURSE, user_id=uid)}, COURSE_ENROLLMENT_CREATED
            )
            headers = {
                "ce_type": tr.ENROLLED,
                "ce_time": META["time"],
                "ce_id": f"{n}-{uid}",
                "ce_source": "openedx/lms/web",
                "ce_specversion": "1.0",
            }
            await js.publish(topic_subject(topic), data, headers=headers)
        await wait_for(
            lambda: consumer_settled(js, OPENEDX_STREAM, settings.openedx_consumer), 20, "both handled"
        )
        info = await js.stream_info("XAPI")
        assert info.state.messages == 1  # the member's statement only, as the group copy
        msg = await js.get_msg("XAPI", 1)
        assert msg.subject.endswith(".cohort1")
        assert json.loads(msg.data)["actor"]["account"]["name"] == ExternalIds(b"s3cret").get(
            "xapi", "3", "edx"
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await nc.close()
        server.stop()
