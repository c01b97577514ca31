"""The Open edX event bus on NATS: real openedx-events and Django (sqlite), a real nats-server, and
openedx-events' own ``consume_events`` management command in subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytest.importorskip("openedx_events")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.eventbus_site.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from openedx_events.event_bus import get_producer  # noqa: E402
from openedx_events.event_bus.avro.serializer import serialize_event_data_to_bytes  # noqa: E402
from openedx_events.learning.signals import COURSE_ENROLLMENT_CREATED  # noqa: E402

from hub.core.openedx import DLQ_STREAM, STREAM, durable_name, topic_subject  # noqa: E402
from hub.ops.natsserver import NatsServer, free_port  # noqa: E402
from tests.eventbus_site import events  # noqa: E402
from tests.helpers import ROOT, consumer_settled, unique, wait_for, wait_sync  # noqa: E402

TOPIC = "learning-course-enrollment-lifecycle"
COURSE = "course-v1:edX+DemoX+Demo_Course"


class Bus:
    """One test's event bus: its own topic prefix (so tests share the nats-server without seeing each other's
    events), the producer of the test process, and consume_events processes."""

    def __init__(self, url: str, tmp: Path):
        self.url, self.tmp = url, tmp
        self.prefix = unique("p")
        self.received = tmp / "received.jsonl"
        self.procs: list[subprocess.Popen] = []
        settings.EVENT_BUS_NATS_URL = url
        settings.EVENT_BUS_TOPIC_PREFIX = self.prefix
        settings.EVENT_BUS_NATS_SPOOL_DIR = str(tmp / "spool")
        get_producer.cache_clear()

    @property
    def full_topic(self) -> str:
        return f"{self.prefix}-{TOPIC}"

    def consumer(self, group: str, *args: str, **env: str) -> subprocess.Popen:
        e = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.eventbus_site.settings",
            "PYTHONPATH": str(ROOT),
            "EVENT_BUS_NATS_URL": self.url,
            "EVENT_BUS_TOPIC_PREFIX": self.prefix,
            "EVENTBUS_RECEIVED": str(self.received),
            "EVENTBUS_DB": str(self.tmp / "db.sqlite3"),
            **env,
        }
        log = open(self.tmp / f"consumer-{len(self.procs)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "django", "consume_events", "-t", TOPIC, "-g", group, *args],
            env=e,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def lines(self) -> list[dict]:
        if not self.received.exists():
            return []
        return [json.loads(line) for line in self.received.read_text().splitlines() if line.strip()]

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp.glob("consumer-*.log"))
        )

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        producer = get_producer()
        if hasattr(producer, "prepare_for_shutdown"):
            producer.prepare_for_shutdown()
        get_producer.cache_clear()


@pytest.fixture
def bus(nats_server, nc, tmp_path):
    b = Bus(nats_server.url, tmp_path)
    yield b
    b.close()


async def _until_received(bus: Bus, n: int, timeout: float = 30.0) -> list[dict]:
    try:
        await wait_for(lambda: len(bus.lines()) >= n, timeout, f"{n} events received")
    except AssertionError:
        raise AssertionError(f"received {len(bus.lines())} of {n}; consumer logs:\n{bus.logs()}") from None
    return bus.lines()


async def _stopped(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    await wait_for(lambda: proc.poll() is not None, timeout, "the consumer to exit")
    return proc.returncode


async def test_events_arrive_intact_with_kafka_headers(bus, js):
    users = [f"learner{i}" for i in range(3)]
    for i, user in enumerate(users):
        events.enrollment_created(user, f"course-v1:Org{i}+C{i}+R{i}", user_id=100 + i, mode="verified")
    events.unenrolled("learner9", COURSE, user_id=109)
    proc = bus.consumer("grp")
    got = await _until_received(bus, 4)
    assert sorted(g["username"] for g in got) == [*users, "learner9"]
    first = next(g for g in got if g["username"] == "learner1")
    assert first == {
        **first,
        "type": "created",
        "course": "course-v1:Org1+C1+R1",
        "email": "learner1@example.org",
        "user_id": 101,
        "mode": "verified",
        "is_active": True,
        "display_name": "Demonstration Course",
        "created": "2025-03-04T05:06:07.890000+00:00",
        "source": "openedx/lms/web",
        "minorversion": 0,
    }
    assert next(g for g in got if g["username"] == "learner9")["type"] == "unenrolled"

    # the wire: openedx-events' Avro body, the Kafka backend's header names, the event id as Nats-Msg-Id
    msg = await js.get_msg(STREAM, subject=topic_subject(bus.full_topic), seq=1, next=True)
    h = msg.headers
    assert h["Nats-Msg-Id"] == h["ce_id"] == got[[g["id"] for g in got].index(h["ce_id"])]["id"]
    assert h["ce_type"] == "org.openedx.learning.course.enrollment.created.v1"
    assert (
        h["ce_specversion"] == "1.0" and h["ce_source"] == "openedx/lms/web" and h["ce_minorversion"] == "0"
    )
    assert h["event_key"] == "course-v1:Org0+C0+R0" and h["sourcelib"].count(".") >= 2 and h["sourcehost"]
    assert datetime.fromisoformat(h["ce_time"]).tzinfo is not None
    expected = serialize_event_data_to_bytes(
        {"enrollment": events.enrollment("learner0", "course-v1:Org0+C0+R0", user_id=100, mode="verified")},
        COURSE_ENROLLMENT_CREATED,
    )
    assert msg.data == expected
    proc.send_signal(signal.SIGTERM)
    assert await _stopped(proc) == 0


async def test_failing_receiver_gets_the_event_again_then_dead_letters(bus, js, tmp_path):
    fixed = tmp_path / "fixed"
    env = {"EVENTBUS_FAIL_TIMES": "2", "EVENTBUS_FIXED": str(fixed)}
    bus.consumer("retry", **env)
    events.enrollment_created("flaky", COURSE)
    got = await _until_received(bus, 1)
    assert got[0]["username"] == "flaky" and got[0]["attempt"] == 3  # failed twice, NAKed, delivered again

    # a receiver that keeps failing: after EVENT_BUS_NATS_MAX_DELIVERIES (3) the event goes to the dead letters
    events.enrollment_created("fail-always", COURSE)
    events.enrollment_created("after", COURSE)
    await _until_received(bus, 2)  # the next event is not held back by the failing one
    durable = durable_name("retry", bus.full_topic)

    async def dead() -> list:
        from lms_publisher.event_bus.deadletters import dead_letters

        return await dead_letters(js, "retry", bus.full_topic)

    await wait_for(lambda: _len(dead()), 20, "a dead letter")
    letters = await dead()
    assert len(letters) == 1
    assert "receiver cannot handle fail-always" in letters[0].error
    assert letters[0].headers["Rthub-Deliveries"] == "3" and letters[0].headers["ce_type"].endswith(
        "created.v1"
    )
    info = await js.consumer_info(STREAM, durable)
    assert info.num_ack_pending == 0 and info.num_pending == 0  # acked once dead-lettered: nothing is stuck

    # the operator command lists it, replays it once the receiver is fixed, and it arrives
    from io import StringIO

    out = StringIO()
    await asyncio.to_thread(
        call_command, "event_bus_dead_letters", "list", "-g", "retry", "-t", TOPIC, stdout=out
    )
    listed = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [x["seq"] for x in listed] == [letters[0].seq] and "fail-always" in listed[0]["error"]
    fixed.write_text("yes")
    await asyncio.to_thread(
        call_command, "event_bus_dead_letters", "replay", "-g", "retry", "-t", TOPIC, stdout=StringIO()
    )
    got = await _until_received(bus, 3)
    assert got[-1]["username"] == "fail-always"
    assert await dead() == []

    # purge: a dead letter of another group is removed for good
    events.enrollment_created("fail-again", COURSE)
    fixed.unlink()
    await wait_for(lambda: _len(dead()), 20, "a second dead letter")
    await asyncio.to_thread(call_command, "event_bus_dead_letters", "purge", "-g", "retry", stdout=StringIO())
    assert await dead() == []


async def _len(coro) -> bool:
    return len(await coro) > 0


async def test_processes_of_one_group_share_the_events(bus, js):
    procs = [bus.consumer("shared") for _ in range(3)]
    durable = durable_name("shared", bus.full_topic)

    async def all_pulling():  # each process has a pull request waiting on the group's durable
        try:
            return (await js.consumer_info(STREAM, durable)).num_waiting >= 3
        except Exception:  # noqa: BLE001 - not created yet
            return False

    await wait_for(all_pulling, 30, "three processes pulling")
    for i in range(60):
        events.enrollment_created(f"u{i}", COURSE)
    await _until_received(bus, 60)
    await wait_for(lambda: consumer_settled(js, STREAM, durable), 20, "all acked")
    got = bus.lines()
    ids = [g["id"] for g in got]
    assert len(ids) == len(set(ids)) == 60  # each event once between them
    assert len({g["pid"] for g in got}) >= 2  # and the work was shared
    for p in procs:
        p.send_signal(signal.SIGTERM)
    assert [await _stopped(p) for p in procs] == [0, 0, 0]


async def test_restart_resumes_where_it_stopped_and_offset_time_replays(bus, js):
    proc = bus.consumer("resume")
    for i in range(5):
        events.enrollment_created(f"a{i}", COURSE)
    await _until_received(bus, 5)
    proc.send_signal(signal.SIGTERM)
    assert await _stopped(proc) == 0  # SIGTERM drains and exits
    for i in range(5):
        events.enrollment_created(f"b{i}", COURSE)
    bus.consumer("resume")
    got = await _until_received(bus, 10)
    await wait_for(
        lambda: consumer_settled(js, STREAM, durable_name("resume", bus.full_topic)), 20, "all acked"
    )
    names = [g["username"] for g in bus.lines()]
    assert sorted(names) == sorted([f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)])  # none twice

    # --extra offset_time: the group starts over from that time (everything of this test was after it)
    bus.procs[-1].send_signal(signal.SIGTERM)
    assert await _stopped(bus.procs[-1]) == 0
    start = datetime.now(UTC).replace(year=2000).isoformat()
    bus.consumer("resume", "--extra", json.dumps({"offset_time": start}))
    got = await _until_received(bus, 20)
    assert sorted(g["username"] for g in got[10:]) == sorted(names)


async def test_nats_restarted_mid_stream_loses_nothing(tmp_path):
    port = free_port()
    server = NatsServer(port, tmp_path / "nats", name="eb-restart").start()
    bus = Bus(server.url, tmp_path)
    try:
        bus.consumer("restart")
        for i in range(20):
            events.enrollment_created(f"before{i}", COURSE)
        await _until_received(bus, 20)
        server.stop()
        for i in range(20):  # NATS is away: the producer spools them
            events.enrollment_created(f"during{i}", COURSE)
        server.start()
        for i in range(20):
            events.enrollment_created(f"after{i}", COURSE)
        # an ack lost with the connection may deliver an event twice (at least once): count distinct events
        await wait_for(lambda: len({g["username"] for g in bus.lines()}) >= 60, 60, "60 distinct events")
        names = [g["username"] for g in bus.lines()]
        assert len(set(names)) == 60
        assert {n for n in names if n.startswith("during")} == {f"during{i}" for i in range(20)}
    finally:
        bus.close()
        server.stop()


def test_producer_in_a_request_with_nats_down_returns_at_once_and_the_event_arrives_later(tmp_path):
    port = free_port()
    bus = Bus(f"nats://127.0.0.1:{port}", tmp_path)
    server = NatsServer(port, tmp_path / "nats", name="eb-down")
    try:
        client = Client()
        t0 = time.monotonic()
        response = client.get("/enroll", {"user": "offline", "course": COURSE})
        elapsed = time.monotonic() - t0
        assert response.status_code == 200 and response.content == b"enrolled"
        assert elapsed < 0.5, f"the request waited {elapsed:.2f}s for NATS"
        stats = get_producer().stats()
        assert stats["queued"] + stats.get("spooled", 0) == 1
        server.start()
        bus.consumer("later")
        wait_sync(lambda: bool(bus.lines()), 30, "the event sent while NATS was down")
        assert bus.lines()[0]["username"] == "offline"
    finally:
        bus.close()
        server.stop()


def test_dead_letter_stream_exists_with_the_hub_streams():
    from hub.core.settings import StreamSettings
    from hub.core.streams import stream_configs

    names = {c.name: c.subjects for c in stream_configs(StreamSettings())}
    assert names[STREAM] == ["openedx.>"] and names[DLQ_STREAM] == ["openedx_dlq.>"]


async def test_operator_mode_event_bus_credentials(tmp_path):
    """``rthub auth creds event-bus``: enough to produce, consume and dead-letter, nothing of the hub's streams."""
    import nats.errors

    from hub.auth import AuthStore
    from hub.core.natsconn import connect
    from hub.core.settings import NatsSettings, StreamSettings
    from hub.core.streams import ensure_streams
    from tests.helpers import start_operator_nats

    server = start_operator_nats(tmp_path / "auth", "eb-op")
    auth = AuthStore.ensure(tmp_path / "auth")
    creds = str(auth.service_creds("event-bus"))
    admin = await connect(NatsSettings(nats_url=server.url, nats_creds=str(auth.service_creds("admin"))), "t")
    await ensure_streams(admin.jetstream(), StreamSettings())  # the hub's side declares the streams
    bus = Bus(server.url, tmp_path)
    settings.EVENT_BUS_NATS_CREDS = creds
    nc = None
    try:
        bus.consumer("op", EVENT_BUS_NATS_CREDS=creds)
        events.enrollment_created("opuser", COURSE)
        assert (await _until_received(bus, 1))[0]["username"] == "opuser"
        nc = await connect(NatsSettings(nats_url=server.url, nats_creds=creds), "eb-test")
        with pytest.raises((nats.errors.Error, TimeoutError)):
            await nc.jetstream().publish("lms.default.~none.~none.x", b"{}", timeout=2)  # not the raw stream
    finally:
        settings.EVENT_BUS_NATS_CREDS = None
        bus.close()
        if nc is not None:
            await nc.close()
        await admin.close()
        server.stop()


async def test_a_receiver_slower_than_the_ack_wait_runs_once_in_its_group(bus, js):
    """In-progress acks while receivers run: the server does not hand the event to the group's other process."""
    env = {"EVENT_BUS_NATS_ACK_WAIT_S": "1", "EVENTBUS_SLOW_S": "2.5"}
    procs = [bus.consumer("slow", **env) for _ in range(2)]
    durable = durable_name("slow", bus.full_topic)

    async def both_pulling():
        try:
            return (await js.consumer_info(STREAM, durable)).num_waiting >= 2
        except Exception:  # noqa: BLE001 - not created yet
            return False

    await wait_for(both_pulling, 30, "two processes pulling")
    events.enrollment_created("slow-learner", COURSE)
    got = await _until_received(bus, 1)
    await wait_for(lambda: consumer_settled(js, STREAM, durable), 20, "acked")
    attempts = Path(str(bus.received) + ".attempts")
    assert [int(f.read_text()) for f in attempts.iterdir()] == [
        1
    ]  # one delivery to one receiver, 2.5 s > 1 s
    assert len(bus.lines()) == 1 and got[0]["attempt"] == 1
    for p in procs:
        p.send_signal(signal.SIGTERM)
    assert [await _stopped(p) for p in procs] == [0, 0]
