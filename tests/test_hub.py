"""The hub end to end on a real nats-server: filter by grants, translate, route, quarantine, scale, drain."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid

import msgspec
import nats.js.errors
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from hub.core.grants import Grant, delete_grant, put_grant
from hub.core.natsconn import connect
from hub.core.settings import HubSettings
from hub.core.streams import ensure_streams
from hub.core.subjects import subject
from hub.ops.natsserver import NatsServer, free_port
from hub.route.service import Hub, serve
from tests.helpers import consumer_settled, rthub, rthub_env, rthub_popen, wait_for

COURSE = "course-v1:edX+DemoX+Demo_Course"
OTHER = "course-v1:MITx+6.00x+2024"


def video_event(course: str = COURSE, user_id: int = 3, t: str | None = None, name: str = "play_video") -> dict:
    """A self-written play_video event in the backend shape."""
    t = t or f"2024-03-01T10:{uuid.uuid4().int % 60:02d}:{uuid.uuid4().int % 60:02d}.{uuid.uuid4().int % 999999:06d}+00:00"
    org = course.split(":")[1].split("+")[0]
    return {
        "name": name, "timestamp": t,
        "context": {"course_id": course, "org_id": org, "user_id": user_id, "username": f"u{user_id}",
                    "session": "s1", "event_source": "browser", "path": "/event"},
        "data": {"id": "0b9e39477cf34507a7a48f74be381fdd", "code": "html5", "currentTime": 12.5, "duration": 195},
    }


@pytest.fixture
def server(tmp_path):
    srv = NatsServer(free_port(), tmp_path / "nats", name="hubtest").start()
    yield srv
    srv.stop()


@pytest.fixture
def settings(server, tmp_path) -> HubSettings:
    return HubSettings(nats_url=server.url, data_dir=str(tmp_path / "data"), id_secret="s3cret", metrics_port=-1,
                       sites={"default": "http://localhost:18000", "north": "https://lms.north.example"})


@pytest_asyncio.fixture
async def nc(settings):
    client = await connect(settings, "test")
    await ensure_streams(client.jetstream(), settings)
    yield client
    await client.close()


@pytest_asyncio.fixture
def js(nc):
    return nc.jetstream()


@pytest_asyncio.fixture
async def running_hub(settings, js):
    """A hub serving in this event loop; stopped (drained) at the end of the test."""
    stop = asyncio.Event()
    hubs: list[Hub] = []
    task = asyncio.create_task(serve(settings, stop, ready=hubs.append))
    await wait_for(lambda: hubs, 10, "hub start")
    yield hubs[0]
    stop.set()
    assert await asyncio.wait_for(task, 15) == 0


async def publish(js, event: dict | bytes, site: str = "default", course: str | None = COURSE,
                  org: str | None = "edX", name: str = "play_video") -> None:
    data = event if isinstance(event, bytes) else msgspec.json.encode(event)
    if isinstance(event, dict):
        name = event["name"]
    await js.publish(subject("lms", site, org, course, name), data, headers={"Nats-Msg-Id": uuid.uuid4().hex})


class Collector:
    """A plain nats-py core subscriber, as a direct-subscription consumer would use."""

    def __init__(self):
        self.msgs = []

    async def on(self, msg):
        self.msgs.append(msg)

    def ids(self) -> list[str]:
        return [json.loads(m.data)["id"] for m in self.msgs]


async def test_granted_course_flows_other_course_does_not(nc, js, running_hub, settings):
    await put_grant(js, Grant(id="g1", consumer="engine", protocol="xapi", courses=[COURSE]))
    await wait_for(lambda: running_hub.grants.index.grants.get("g1"), 5, "grant seen by hub")
    got = Collector()
    everything = Collector()
    await nc.subscribe(f"xapi.*.edX.{COURSE}.>", cb=got.on)
    await nc.subscribe("xapi.>", cb=everything.on)
    await nc.subscribe("caliper.>", cb=everything.on)
    await nc.flush()
    await publish(js, video_event(OTHER), course=OTHER, org="MITx")
    await publish(js, video_event(COURSE))
    await wait_for(lambda: len(got.msgs) == 1, 10, "statement of the granted course")
    st = json.loads(got.msgs[0].data)
    assert st["verb"]["id"] == "https://w3id.org/xapi/video/verbs/played"
    assert st["actor"]["account"]["homePage"] == "http://localhost:18000"
    assert st["object"]["id"].startswith("http://localhost:18000/xblock/block-v1:edX+DemoX+Demo_Course+type@video")
    assert got.msgs[0].headers["Nats-Msg-Id"] == st["id"]
    # The ungranted course's event was published first; the stream is ordered, so it was processed first and
    # yielded nothing on any protocol subject.
    assert [m.subject for m in everything.msgs] == [got.msgs[0].subject]
    assert running_hub.metrics.get("filtered") == 1
    assert running_hub.metrics.get("translated", protocol="xapi") == 1


async def test_site_sets_the_lms_root_url(nc, js, running_hub):
    await put_grant(js, Grant(id="north", consumer="uni", protocol="caliper", sites=["north"]))
    await wait_for(lambda: "north" in running_hub.grants.index.grants, 5, "grant")
    got = Collector()
    await nc.subscribe("caliper.north.>", cb=got.on)
    await nc.flush()
    await publish(js, video_event(), site="north")
    await wait_for(lambda: got.msgs, 10, "caliper event from site north")
    ev = json.loads(got.msgs[0].data)
    assert ev["actor"]["id"].startswith("https://lms.north.example/user/")
    assert ev["object"]["id"].startswith("https://lms.north.example/xblock/")


async def test_grant_added_and_revoked_while_running(nc, js, running_hub):
    got = Collector()
    await nc.subscribe("xapi.>", cb=got.on)
    await nc.flush()
    await publish(js, video_event(OTHER), course=OTHER, org="MITx")
    await wait_for(lambda: running_hub.metrics.get("filtered") == 1, 10, "first event filtered")
    assert got.msgs == []
    await put_grant(js, Grant(id="late", consumer="c", protocol="xapi", orgs=["MITx"]))
    await wait_for(lambda: "late" in running_hub.grants.index.grants, 1.0, "new grant within a second")
    await publish(js, video_event(OTHER), course=OTHER, org="MITx")
    await wait_for(lambda: len(got.msgs) == 1, 10, "statement after grant")
    await delete_grant(js, "late")
    await wait_for(lambda: "late" not in running_hub.grants.index.grants, 1.0, "revocation within a second")
    await publish(js, video_event(OTHER), course=OTHER, org="MITx")
    await wait_for(lambda: running_hub.metrics.get("filtered") == 2, 10, "event after revocation filtered")
    assert len(got.msgs) == 1


FIVE_MB = b'{"name": "play_video", "timestamp": "2024-01-01T00:00:00Z", "data": "' + b"x" * (5 << 20) + b'"}'


@pytest.mark.parametrize("bad, reason", [
    (b"not json at all", "not JSON"),
    (b"[1, 2, 3]", "not an object"),
    (b'{"timestamp": "2024-01-01T00:00:00Z", "data": {}}', "missing name"),
    (b'{"name": "play_video", "data": {}}', "missing timestamp"),
    (b'{"name": "play_video", "timestamp": 12345}', "missing timestamp"),
    (b'{"name": "play_video", "timestamp": "2024-01-01T00:00:00Z", "context": "x"}', "context"),
    (b'{"name": "play_video", "timestamp": "2024-01-01T00:00:00Z", "data": "' + b"x" * (1 << 20) + b'"}', "byte limit"),
    # hostile input that used to escape the handler (RecursionError) or could: each has its reason
    (b"[" * 5000, "nested deeper than 64 levels"),
    (b'{"a":' * 5000 + b"1" + b"}" * 5000, "nested deeper than 64 levels"),
    (b'{"name": "play_video", "timestamp": "2024-01-01T00:00:00Z", "data": ' + b"[" * 100 + b"]" * 100 + b"}",
     "nested deeper than 64 levels"),
    (b'{"event_type": "play_video", "time": "2024-01-01T00:00:00Z", "event": "' + b"[" * 5000 + b'"}',
     "nested deeper than 64 levels"),  # a browser event's JSON string is decoded too: held to the limit
    (b'{"name": "play_video", "timestamp": "2024-01-01T00:00:00Z", "data": {"x": 1e999999}}', "Number out of range"),
    (b'{"name": "play_video", "timestamp": "2024-01-01T00:00:00Z", "data": {"x": ' + b"9" * 5000 + b"}}",
     "out of range"),
    (b'{"name": "play_video", "timestamp": "2024-01-01T00:00:00Z", "data": "\xff\xfe"}', "not JSON: Invalid UTF-8"),
    (FIVE_MB, f"event is {len(FIVE_MB)} bytes, over the 1048576 byte limit"),
])
async def test_malformed_goes_to_quarantine_and_next_event_flows(nc, js, running_hub, bad, reason):
    await put_grant(js, Grant(id="all", consumer="c", protocol="xapi", sites=["default"]))
    await wait_for(lambda: "all" in running_hub.grants.index.grants, 5, "grant")
    got = Collector()
    await nc.subscribe("xapi.>", cb=got.on)
    await nc.flush()
    quarantine = await js.subscribe("quarantine.>", stream="QUARANTINE")
    await publish(js, bad)
    await publish(js, video_event())
    await wait_for(lambda: len(got.msgs) == 1, 10, "the good event after the bad one")
    q = await quarantine.next_msg(timeout=5)
    assert reason in q.headers["Rthub-Reason"]
    assert q.data == bad
    assert running_hub.metrics.get("quarantined") == 1


async def test_anonymous_event_is_quarantined_with_reason_no_user(js, running_hub):
    await put_grant(js, Grant(id="all", consumer="c", protocol="xapi", sites=["default"]))
    await wait_for(lambda: "all" in running_hub.grants.index.grants, 5, "grant")
    event = video_event()
    del event["context"]["user_id"], event["context"]["username"]
    quarantine = await js.subscribe("quarantine.>", stream="QUARANTINE")
    await publish(js, event)
    q = await quarantine.next_msg(timeout=10)
    assert q.headers["Rthub-Reason"] == "xapi: no user"


async def test_unknown_site_is_quarantined(js, running_hub):
    await put_grant(js, Grant(id="nowhere", consumer="c", protocol="xapi", sites=["nowhere"]))
    quarantine = await js.subscribe("quarantine.>", stream="QUARANTINE")
    await publish(js, video_event(), site="nowhere")
    q = await quarantine.next_msg(timeout=10)
    assert "unknown site 'nowhere'" in q.headers["Rthub-Reason"]


async def stream_ids(js, stream: str) -> list[str]:
    """Every statement id stored on a protocol stream, in order."""
    info = await js.stream_info(stream)
    ids = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        msg = await js.get_msg(stream, seq)
        ids.append(json.loads(msg.data)["id"])
    return ids


async def test_two_hub_processes_share_the_load_without_duplicates(js, settings):
    import httpx

    await put_grant(js, Grant(id="all", consumer="c", protocol="xapi", sites=["default"]))
    n = 1000
    env = rthub_env(settings.nats_url, RTHUB_ID_SECRET="s3cret", RTHUB_BATCH_SIZE="50",
                    RTHUB_DATA_DIR=settings.data_dir)
    ports = [free_port(), free_port()]
    procs = [rthub_popen("hub", "--metrics-port", str(p), env=env) for p in ports]

    def up(port: int) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        except httpx.HTTPError:
            return False

    def received(port: int) -> int:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        lines = [x for x in text.splitlines() if x.startswith("rthub_received_total")]
        return int(float(lines[0].rsplit(" ", 1)[1])) if lines else 0

    try:
        await wait_for(lambda: all(up(p) for p in ports), 30, "both hubs serving")  # both pulling before events flow
        for i in range(n):
            await publish(js, video_event(user_id=1000 + i))
        await wait_for(lambda: _stream_count(js, "XAPI", n), 60, f"{n} statements on XAPI")
        ids = await stream_ids(js, "XAPI")
        assert len(ids) == n and len(set(ids)) == n
        counts = [received(p) for p in ports]
        assert sum(counts) == n
        assert all(c > 0 for c in counts), f"one hub did all the work: {counts}"
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            assert p.wait(20) == 0


async def _stream_count(js, stream: str, n: int) -> bool:
    return (await js.stream_info(stream)).state.messages >= n


async def test_sigterm_mid_stream_loses_nothing(js, settings):
    await put_grant(js, Grant(id="all", consumer="c", protocol="xapi", sites=["default"]))
    n = 3000
    for i in range(n):
        await publish(js, video_event(user_id=5000 + i))
    env = rthub_env(settings.nats_url, RTHUB_ID_SECRET="s3cret", RTHUB_BATCH_SIZE="100",
                    RTHUB_DATA_DIR=settings.data_dir, RTHUB_METRICS_PORT="-1")
    first = rthub_popen("hub", env=env)
    await wait_for(lambda: _stream_count(js, "XAPI", 1), 30, "hub started translating")
    first.send_signal(signal.SIGTERM)
    assert first.wait(20) == 0
    done_by_first = (await js.stream_info("XAPI")).state.messages
    assert done_by_first < n, "the first hub finished before SIGTERM; the test proves nothing"
    second = rthub_popen("hub", env=env)
    try:
        await wait_for(lambda: _stream_count(js, "XAPI", n), 60, f"all {n} statements")
        ids = await stream_ids(js, "XAPI")
        assert len(ids) == n == len(set(ids))
        await wait_for(lambda: consumer_settled(js, "LMS_RAW", "hub"), 10, "raw consumer: all delivered and acked")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0


async def test_rthub_publish_end_to_end(nc, settings, js, running_hub, tmp_path):
    """`rthub publish FILE` of a tracking-log file -> the xAPI statement on the course subject."""
    await put_grant(js, Grant(id="e2e", consumer="c", protocol="xapi", courses=[COURSE]))
    await wait_for(lambda: "e2e" in running_hub.grants.index.grants, 5, "grant")
    got = Collector()
    await nc.subscribe(f"xapi.*.edX.{COURSE}.>", cb=got.on)
    line = {"event_type": "play_video", "name": "play_video", "time": "2020-07-15T06:52:55.057099+00:00",
            "username": "edx", "session": "993110e9c27848a545da74a74114158d", "event_source": "browser",
            "event": json.dumps({"id": "0b9e39477cf34507a7a48f74be381fdd", "currentTime": 0.0327, "duration": 195}),
            "context": {"course_id": COURSE, "org_id": "edX", "user_id": 3, "path": "/event"}}
    log = tmp_path / "tracking.log"
    log.write_text("2023-05-23 13:53:13,461 INFO 20 [tracking] [user None] [ip None] logger.py:41 - "
                   + json.dumps(line) + "\n")
    await nc.flush()
    # in a thread: the hub under test runs in this event loop
    result = await asyncio.to_thread(rthub, "publish", str(log), env=rthub_env(settings.nats_url))
    assert result.returncode == 0, result.stderr.decode()
    await wait_for(lambda: got.msgs, 10, "statement from rthub publish")
    st = json.loads(got.msgs[0].data)
    assert st["verb"]["id"] == "https://w3id.org/xapi/video/verbs/played"
    assert st["timestamp"] == "2020-07-15T06:52:55.057099+00:00"
    assert st["context"]["extensions"]["https://w3id.org/xapi/openedx/extensions/session-id"] == \
        "993110e9c27848a545da74a74114158d"
    # publishing the same file again is deduplicated by the raw stream: no second statement
    assert (await asyncio.to_thread(rthub, "publish", str(log), env=rthub_env(settings.nats_url))).returncode == 0
    raw = await js.stream_info("LMS_RAW")
    assert raw.state.messages == 1


async def test_unexpected_exception_quarantines_that_message_and_the_next_flows(nc, js, running_hub, monkeypatch):
    """A bug one event meets (here a translator raising on it) costs that event only, with the reason."""
    import hub.route.service

    real = hub.route.service.translate_json

    def buggy(protocol, event, ctx):
        if event["data"].get("code") == "trigger":
            raise ZeroDivisionError("division by zero")
        return real(protocol, event, ctx)

    monkeypatch.setattr(hub.route.service, "translate_json", buggy)
    await put_grant(js, Grant(id="all", consumer="c", protocol="xapi", sites=["default"]))
    await wait_for(lambda: "all" in running_hub.grants.index.grants, 5, "grant")
    got = Collector()
    await nc.subscribe("xapi.>", cb=got.on)
    await nc.flush()
    quarantine = await js.subscribe("quarantine.>", stream="QUARANTINE")
    bad = video_event()
    bad["data"]["code"] = "trigger"
    await publish(js, bad)
    await publish(js, video_event(user_id=4))
    await wait_for(lambda: len(got.msgs) == 1, 10, "the good event after the one that met the bug")
    q = await quarantine.next_msg(timeout=5)
    assert q.headers["Rthub-Reason"] == "internal error: ZeroDivisionError: division by zero"
    assert json.loads(q.data) == bad and q.headers["Rthub-Raw-Seq"] == "1"
    assert running_hub.metrics.get("internal_errors") == 1 and running_hub.metrics.get("quarantined") == 1
    assert json.loads(got.msgs[0].data)["actor"]["account"]["name"]  # the good one was translated
    raw = await js.consumer_info("LMS_RAW", "hub")
    assert raw.num_ack_pending == 0 and raw.num_redelivered == 0  # both acked once, nothing loops


async def test_forged_status_header_is_no_pull_status(js, running_hub):
    """A stored message with a ``Status`` header and no body is still a message: quarantined, acked."""
    quarantine = await js.subscribe("quarantine.>", stream="QUARANTINE")
    await js.publish(subject("lms", "default", "edX", COURSE, "play_video"), b"",
                     headers={"Status": "408", "Nats-Msg-Id": uuid.uuid4().hex})
    q = await quarantine.next_msg(timeout=10)
    assert "not JSON" in q.headers["Rthub-Reason"]
    await wait_for(lambda: _acked_all(js), 10, "the forged message acked")


async def _acked_all(js) -> bool:
    info = await js.consumer_info("LMS_RAW", "hub")
    return info.num_ack_pending == 0 and info.num_pending == 0


async def test_message_never_acked_goes_to_quarantine_after_max_deliver(tmp_path, monkeypatch):
    """Even a failure no handler sees (a hang, a crash holding the message: simulated by dropping it unacked)
    cannot loop: after ``hub_max_deliver`` deliveries the server's advisory makes the hub quarantine it. Runs
    in operator mode with the hub's own credentials, so its permissions are proven sufficient and used."""
    from hub.auth import AuthStore
    from tests.helpers import start_operator_nats

    server = start_operator_nats(tmp_path, "maxdeliver")
    auth = AuthStore.ensure(tmp_path)
    settings = HubSettings(nats_url=server.url, nats_creds=str(auth.service_creds("hub")), metrics_port=-1,
                           data_dir=str(tmp_path / "data"), id_secret="s3cret", hub_max_deliver=2,
                           hub_ack_wait_s=1.0)
    real = Hub.process
    dropped: list[int] = []

    async def drops_one(self, msgs):
        keep = [m for m in msgs if b"never-acked" not in m.data]
        dropped.extend(m.metadata.num_delivered for m in msgs if m not in keep)
        await real(self, keep)

    monkeypatch.setattr(Hub, "process", drops_one)
    admin = await connect(HubSettings(nats_url=server.url, nats_creds=str(auth.service_creds("admin"))), "admin")
    stop = asyncio.Event()
    hubs: list[Hub] = []
    task = asyncio.create_task(serve(settings, stop, ready=hubs.append))
    try:
        await wait_for(lambda: hubs, 10, "hub start")
        js = admin.jetstream()
        assert (await js.consumer_info("LMS_RAW", "hub")).config.max_deliver == 2
        await put_grant(js, Grant(id="all", consumer="c", protocol="xapi", sites=["default"]))
        await wait_for(lambda: "all" in hubs[0].grants.index.grants, 5, "grant")
        got = Collector()
        await admin.subscribe("xapi.>", cb=got.on)
        await admin.flush()
        quarantine = await js.subscribe("quarantine.>", stream="QUARANTINE")
        stuck = video_event()
        stuck["data"]["code"] = "never-acked"
        await publish(js, stuck)
        await publish(js, video_event(user_id=4))
        await wait_for(lambda: len(got.msgs) == 1, 10, "the next event flows meanwhile")
        q = await quarantine.next_msg(timeout=15)
        assert q.headers["Rthub-Reason"].startswith("not acknowledged after 2 deliveries")
        assert json.loads(q.data) == stuck and q.headers["Rthub-Raw-Seq"] == "1"
        assert q.headers["Rthub-Subject"] == subject("lms", "default", "edX", COURSE, "play_video")
        assert dropped == [1, 2] and hubs[0].metrics.get("max_deliveries") == 1
        await publish(js, video_event(user_id=5))  # and the hub goes on
        await wait_for(lambda: len(got.msgs) == 2, 10, "events after the quarantine")
        assert dropped == [1, 2]  # never delivered a third time
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 15) == 0
        await admin.close()
        server.stop()


_hostile = st.one_of(
    st.binary(max_size=3000),
    st.text(alphabet='[]{}",:.-+eE0123456789\\\\u \\n', max_size=3000).map(str.encode),
    st.integers(65, 3000).map(lambda n: b'{"name": "play_video", "timestamp": "t", "data": ' + b"[" * n),
)


@hsettings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload=_hostile)
async def test_random_bytes_are_quarantined_and_the_hub_goes_on(nc, js, running_hub, payload):
    """Whatever bytes arrive, each is quarantined with a reason, and the next good event is translated."""
    if "fuzz" not in running_hub.grants.index.grants:
        await put_grant(js, Grant(id="fuzz", consumer="c", protocol="xapi", sites=["default"]))
        await wait_for(lambda: "fuzz" in running_hub.grants.index.grants, 5, "grant")
    course = f"course-v1:edX+Fuzz+{uuid.uuid4().hex[:10]}"  # one course per example: its own subjects
    got = Collector()
    sub = await nc.subscribe(f"xapi.*.edX.{course}.>", cb=got.on)
    await nc.flush()
    try:
        await publish(js, payload, course=course)
        await publish(js, video_event(course), course=course)
        await wait_for(lambda: len(got.msgs) == 1, 10, "the good event after the random one")
        q = await js.get_last_msg("QUARANTINE", subject("quarantine", "default", "edX", course, "play_video"))
        assert (q.data or b"") == payload and q.headers["Rthub-Reason"]  # (an empty body reads as None)
    finally:
        await sub.unsubscribe()


async def test_existing_unbounded_consumer_gets_the_bounded_max_deliver(js, settings):
    """A deployment upgraded from max_deliver=-1: the hub's start applies the bound to the existing consumer."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    await js.add_consumer("LMS_RAW", ConsumerConfig(durable_name="hub", ack_policy=AckPolicy.EXPLICIT,
                                                    deliver_policy=DeliverPolicy.ALL, ack_wait=30,
                                                    max_ack_pending=2000, max_deliver=-1))
    hub = await Hub(settings).start()
    try:
        info = await js.consumer_info("LMS_RAW", "hub")
        assert (info.config.max_deliver, info.config.ack_wait) == (10, 30.0)
    finally:
        await hub.close()


async def test_the_issues_line_stops_no_hub_process(js, settings):
    """The report: ``"[" * 5000`` killed every hub that fetched it. Two `rthub hub` processes now quarantine
    each copy, keep translating, and exit cleanly on SIGTERM."""
    import httpx

    await put_grant(js, Grant(id="all", consumer="c", protocol="xapi", sites=["default"]))
    env = rthub_env(settings.nats_url, RTHUB_ID_SECRET="s3cret", RTHUB_BATCH_SIZE="5",
                    RTHUB_DATA_DIR=settings.data_dir)
    ports = [free_port(), free_port()]
    procs = [rthub_popen("hub", "--metrics-port", str(p), env=env) for p in ports]

    def up(port: int) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        await wait_for(lambda: all(up(p) for p in ports), 30, "both hubs serving")
        for i in range(40):
            await publish(js, b"[" * 5000 + str(i).encode())
            await publish(js, video_event(user_id=100 + i))
        await wait_for(lambda: _stream_count(js, "XAPI", 40), 30, "every good event translated")
        await wait_for(lambda: _stream_count(js, "QUARANTINE", 40), 30, "every bad one quarantined")
        q = await js.get_msg("QUARANTINE", 1)
        assert q.headers["Rthub-Reason"] == "event is nested deeper than 64 levels"
        assert [p.poll() for p in procs] == [None, None] and all(up(p) for p in ports)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            assert p.wait(20) == 0


async def test_quarantined_copy_fits_a_small_max_payload(tmp_path):
    """On a server with a small ``max_payload`` a raw message at the limit plus quarantine headers would be
    refused (the server closes the connection); the copy is cut to fit and says how big the original was."""
    server = NatsServer(free_port(), tmp_path / "nats", config="max_payload: 65536", name="small").start()
    settings = HubSettings(nats_url=server.url, data_dir=str(tmp_path / "data"), id_secret="s3cret", metrics_port=-1)
    nc = await connect(settings, "test")
    js = nc.jetstream()
    stop = asyncio.Event()
    hubs: list[Hub] = []
    task = asyncio.create_task(serve(settings, stop, ready=hubs.append))
    try:
        await wait_for(lambda: hubs, 10, "hub start")
        assert nc.max_payload == 65536
        await put_grant(js, Grant(id="all", consumer="c", protocol="xapi", sites=["default"]))
        await wait_for(lambda: "all" in hubs[0].grants.index.grants, 5, "grant")
        got = Collector()
        await nc.subscribe("xapi.>", cb=got.on)
        await nc.flush()
        quarantine = await js.subscribe("quarantine.>", stream="QUARANTINE")
        bad = b"not json " + b"x" * (65536 - 200)
        await publish(js, bad)
        await publish(js, video_event())
        await wait_for(lambda: len(got.msgs) == 1, 10, "the good event after the big bad one")
        q = await quarantine.next_msg(timeout=5)
        assert q.headers["Rthub-Original-Bytes"] == str(len(bad)) and bad.startswith(q.data)
        assert len(q.data) == 65536 - 4096 and "not JSON" in q.headers["Rthub-Reason"]
        assert hubs[0].nc.is_connected
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 15) == 0
        await nc.close()
        server.stop()


@pytest.mark.parametrize("raw_subject, reason", [
    ("lms.a", "does not have 5 tokens"),
    ("lms.default.edX.c.e.f", "does not have 5 tokens"),
    ("lms.default.~ZZ.c.e", "not an encoded subject token"),
    ("lms.default.~FF~FE.c.e", "can't decode byte 0xff"),
])
async def test_hostile_subject_is_quarantined_and_next_event_flows(nc, js, running_hub, raw_subject, reason):
    await put_grant(js, Grant(id="all", consumer="c", protocol="xapi", sites=["default"]))
    await wait_for(lambda: "all" in running_hub.grants.index.grants, 5, "grant")
    got = Collector()
    await nc.subscribe("xapi.>", cb=got.on)
    await nc.flush()
    quarantine = await js.subscribe("quarantine.>", stream="QUARANTINE")
    await js.publish(raw_subject, msgspec.json.encode(video_event()), headers={"Nats-Msg-Id": uuid.uuid4().hex})
    await publish(js, video_event(user_id=4))
    await wait_for(lambda: len(got.msgs) == 1, 10, "the good event after the bad subject")
    q = await quarantine.next_msg(timeout=5)
    assert reason in q.headers["Rthub-Reason"] and q.headers["Rthub-Subject"] == raw_subject
    assert q.subject == "quarantine." + raw_subject.split(".", 1)[1]


async def test_hub_recreates_its_deleted_consumer_and_goes_on(js, running_hub, settings):
    """The pull stream reports the deletion (409 Consumer Deleted) by name; the hub creates the consumer again."""
    await put_grant(js, Grant(id="gdel", consumer="engine", protocol="xapi", courses=[COURSE]))
    await wait_for(lambda: running_hub.grants.index.grants.get("gdel"), 5, "grant seen by hub")
    got = Collector()
    nc = await connect(settings, "test-sub")
    try:
        await nc.subscribe(f"xapi.*.edX.{COURSE}.>", cb=got.on)
        await nc.flush()
        await js.delete_consumer("LMS_RAW", settings.hub_consumer)
        await wait_for(lambda: consumer_exists(js, settings.hub_consumer), 10, "hub consumer created again")
        await publish(js, video_event(COURSE))
        await wait_for(lambda: len(got.msgs) == 1, 10, "a statement after the consumer came back")
        assert running_hub.healthy()
    finally:
        await nc.close()


async def consumer_exists(js, durable: str) -> bool:
    try:
        await js.consumer_info("LMS_RAW", durable)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def test_output_outage_longer_than_max_deliver_loses_and_quarantines_nothing(server, tmp_path, nc, js):
    """The XAPI stream is gone for longer than max_deliver * ack_wait: the hub holds the batch (in-progress
    acks) and retries the publishes instead of nak'ing, so once the stream is back every event arrives and
    none went to quarantine for an outage that was not its fault."""
    settings = HubSettings(nats_url=server.url, data_dir=str(tmp_path / "data"), id_secret="s3cret", metrics_port=-1,
                           hub_max_deliver=2, hub_ack_wait_s=1.0, hub_publish_timeout_s=0.5)
    stop = asyncio.Event()
    hubs: list[Hub] = []
    task = asyncio.create_task(serve(settings, stop, ready=hubs.append))
    try:
        await wait_for(lambda: hubs, 10, "hub start")
        await put_grant(js, Grant(id="all", consumer="c", protocol="xapi", sites=["default"]))
        await wait_for(lambda: "all" in hubs[0].grants.index.grants, 5, "grant")
        quarantine = await js.subscribe("quarantine.>", stream="QUARANTINE")
        await js.delete_stream("XAPI")
        events = [video_event(user_id=10 + i) for i in range(20)]
        for e in events:
            await publish(js, e)
        await wait_for(lambda: hubs[0].metrics.get("publish_errors") >= 1, 10, "publishes failing")
        await asyncio.sleep(settings.hub_max_deliver * settings.hub_ack_wait_s + 2)  # the outage under test
        info = await js.consumer_info("LMS_RAW", "hub")
        assert info.num_ack_pending == 20 and info.num_redelivered == 0  # held, never redelivered
        await ensure_streams(js, settings)
        await wait_for(lambda: _stored(js, "XAPI", 20), 20, "every statement after the outage")
        await wait_for(lambda: _acked_all(js), 10, "every raw message acked")
        assert hubs[0].metrics.get("max_deliveries") == 0 and hubs[0].metrics.get("quarantined") == 0
        with pytest.raises(nats.errors.TimeoutError):
            await quarantine.next_msg(timeout=0.5)
        users = {json.loads((await js.get_msg("XAPI", seq)).data)["actor"]["account"]["name"] for seq in range(1, 21)}
        assert len(users) == 20
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 15) == 0


@pytest.mark.parametrize("outage", ["stream", "nats-server"])
async def test_hub_resumes_within_a_second_once_the_output_side_is_back(server, tmp_path, nc, js, outage):
    """Issue 20 item 5: after an output outage long enough for the retry backoff to reach 8 s, the held
    statements are published within a second or two of the output coming back (a probe publish every second),
    not when the backoff ends. The outage: the XAPI stream gone, or also the whole nats-server stopped."""
    settings = HubSettings(nats_url=server.url, data_dir=str(tmp_path / "data"), id_secret="s3cret", metrics_port=-1,
                           hub_ack_wait_s=2.0, hub_publish_timeout_s=0.5)
    stop = asyncio.Event()
    hubs: list[Hub] = []
    task = asyncio.create_task(serve(settings, stop, ready=hubs.append))
    try:
        await wait_for(lambda: hubs, 10, "hub start")
        await put_grant(js, Grant(id="all", consumer="c", protocol="xapi", sites=["default"]))
        await wait_for(lambda: "all" in hubs[0].grants.index.grants, 5, "grant")
        await js.delete_stream("XAPI")
        for i in range(20):
            await publish(js, video_event(user_id=100 + i))
        await wait_for(lambda: hubs[0].metrics.get("publish_errors") >= 1, 10, "publishes failing")
        if outage == "nats-server":
            server.stop()
        # The outage under test: retries after 0.5, 1, 2 and 4 s fail, the next backoff (8 s) has begun.
        await asyncio.sleep(9)
        if outage == "nats-server":
            server.start()
            await wait_for(lambda: nc.is_connected, 10, "the test's client reconnected")
        await ensure_streams(js, settings)
        back = time.monotonic()
        await wait_for(lambda: _stored(js, "XAPI", 20), 20, "every statement after the outage")
        took = time.monotonic() - back
        assert took < 2.5, f"resumed {took:.1f} s after the output side was back"
        await wait_for(lambda: _acked_all(js), 10, "every raw message acked")
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 15) == 0


async def _stored(js, stream: str, n: int) -> bool:
    return (await js.stream_info(stream)).state.messages == n
