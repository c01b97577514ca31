"""The in-LMS backend through the real event-tracking ``Tracker``: emit() -> events on LMS_RAW; the spool."""

from __future__ import annotations

import json
import logging

import pytest
from eventtracking.tracker import Tracker

from hub.core.natsconn import connect
from hub.core.settings import HubSettings
from hub.core.streams import ensure_streams
from hub.ops.natsserver import NatsServer, free_port
from lms_publisher.backend import NatsBackend
from lms_publisher.codec import Record
from lms_publisher.spool import Spool
from tests.helpers import unique, wait_for, wait_sync
from tests.test_publish import raw_messages

COURSE = "course-v1:edX+DemoX+Demo_Course"
ALLOW = ["play_video", "pause_video"]


def tracker_with(backend: NatsBackend) -> Tracker:
    tracker = Tracker(backends={"rthub": backend})
    tracker.enter_context("request", {"course_id": COURSE, "org_id": "edX", "user_id": 3, "username": "edx"})
    return tracker


# ---- the spool alone (file I/O only) -----------------------------------------------------------------------

def rec(i: int) -> Record:
    return Record(f"lms.s.edX.c.e{i}", f"id{i}", json.dumps({"i": i, "text": "a b\\nc"}).encode())


def test_spool_replays_in_order_across_restarts(tmp_path):
    spool = Spool(tmp_path, segment_bytes=200)
    assert spool.append([rec(i) for i in range(5)]) == 5
    assert spool.append([rec(i) for i in range(5, 12)]) == 7
    records, token = spool.read(4)
    assert [r.msg_id for r in records] == ["id0", "id1", "id2", "id3"]
    spool.commit(token)
    spool.read(3)  # read but never acknowledged: must come back after a restart
    spool.close()

    again = Spool(tmp_path, segment_bytes=200)
    assert again.dir == spool.dir and again.pending()
    seen = []
    while (chunk := again.read(5)) is not None:
        seen.extend(r.msg_id for r in chunk[0])
        again.commit(chunk[1])
    assert seen == [f"id{i}" for i in range(4, 12)]
    assert not again.pending() and list(again.dir.glob("seg-*")) == []
    assert json.loads(records[0].payload) == {"i": 0, "text": "a b\\nc"}
    again.close()


def test_spool_ignores_torn_last_line_and_bounds_size(tmp_path, caplog):
    spool = Spool(tmp_path, max_bytes=300)
    spool.append([rec(1)])
    with open(next(spool.dir.glob("seg-*")), "ab") as f:
        f.write(b"lms.s.x.y.z torn {\"half")  # killed mid-write
    caplog.set_level(logging.ERROR, "rthub.spool")
    accepted = sum(spool.append([rec(i)]) for i in range(2, 20))
    assert 0 < accepted < 18 and spool.dropped == 18 - accepted
    assert sum("SPOOL FULL" in r.getMessage() for r in caplog.records) == 1  # one clear line, not a flood
    records, _ = spool.read(100)
    assert records[0].msg_id == "id1"
    spool.close()


def test_two_processes_get_their_own_spool_slot(tmp_path):
    a, b = Spool(tmp_path), Spool(tmp_path)
    assert a.dir != b.dir
    a.close()
    c = Spool(tmp_path)
    assert c.dir == a.dir  # a dead owner's slot is taken over (and replayed)
    b.close()
    c.close()


# ---- through the event-tracking Tracker, against nats-server -------------------------------------------

async def test_tracker_emit_arrives_on_raw_stream(js, nats_server, tmp_path):
    site = unique("lms")
    backend = NatsBackend(nats_url=nats_server.url, spool_dir=str(tmp_path), site=site, allow_events=ALLOW)
    try:
        tracker = tracker_with(backend)
        for i in range(100):
            tracker.emit("play_video", {"id": "v1", "currentTime": i})
        tracker.emit("edx.bi.not.translated", {"x": 1})
        await wait_for(lambda: backend.counts["published"] == 100, 10, "100 acks")
        msgs = await raw_messages(js, site)
    finally:
        backend.close()
    assert len(msgs) == 100
    assert [json.loads(m.data)["data"]["currentTime"] for m in msgs] == list(range(100))
    first = json.loads(msgs[0].data)
    assert first["context"]["course_id"] == COURSE and first["name"] == "play_video"
    assert first["timestamp"].endswith("+00:00")
    assert msgs[0].subject == f"lms.{site}.edX.{COURSE}.play_video"
    assert len({m.headers["Nats-Msg-Id"] for m in msgs}) == 100
    assert backend.counts["not_allowed"] == 1 and backend.stats()["spool_bytes"] == 0


async def test_over_limit_events_are_rejected_in_the_lms_with_the_hubs_reason(js, nats_server, tmp_path, caplog):
    """The same limits as the hub's, checked in send(): the LMS never sees an error, the hub never gets it."""
    site = unique("lms")
    backend = NatsBackend(nats_url=nats_server.url, spool_dir=str(tmp_path), site=site, allow_events=ALLOW)
    deep: list = []
    for _ in range(100):
        deep = [deep]
    try:
        tracker = tracker_with(backend)
        with caplog.at_level(logging.WARNING, "rthub.lms"):
            tracker.emit("play_video", {"id": "v1", "nested": deep})
            tracker.emit("play_video", {"id": "v1", "transcript": "x" * (2 << 20)})
            tracker.emit("play_video", {"id": "v1", "currentTime": 1})
        await wait_for(lambda: backend.counts["published"] == 1, 10, "the good event acked")
        msgs = await raw_messages(js, site)
    finally:
        backend.close()
    assert backend.counts["rejected"] == 2 and backend.counts["send_errors"] == 0
    assert [json.loads(m.data)["data"] for m in msgs] == [{"id": "v1", "currentTime": 1}]
    assert "event is nested deeper than 64 levels" in caplog.text and "over the 1048576 byte limit" in caplog.text


def test_default_allow_list_is_what_the_translators_support(tmp_path, nats_server):
    from hub.core.groups import MEMBERSHIP_EVENTS
    from hub.translate import supported

    backend = NatsBackend(nats_url=nats_server.url, spool_dir=str(tmp_path), start=False)
    # and the learner group membership events of lms_publisher.groups, which the hub applies
    assert backend.allow == supported("xapi") | supported("caliper") | MEMBERSHIP_EVENTS
    assert "play_video" in backend.allow and "edx.bi.user.logged_in" not in backend.allow
    backend.spool.close()


def test_send_never_raises(tmp_path, nats_server):
    backend = NatsBackend(nats_url=nats_server.url, spool_dir=str(tmp_path), allow_events=ALLOW, start=False)
    circular: dict = {"name": "play_video", "timestamp": "t", "context": {}}
    circular["data"] = circular
    for bad in (None, 42, {"name": "play_video"}, circular, {"name": "play_video", "timestamp": object(), "data": {}}):
        backend.send(bad)
    assert backend.counts["send_errors"] >= 2
    backend.spool.close()


async def test_nats_down_spools_then_replays_in_order(tmp_path):
    port = free_port()
    server = NatsServer(port, tmp_path / "nats", name="down").start()
    settings = HubSettings(nats_url=server.url)
    nc = await connect(settings, "t")
    await ensure_streams(nc.jetstream(), settings)
    await nc.close()
    backend = NatsBackend(nats_url=server.url, spool_dir=str(tmp_path / "spool"), site="s1", allow_events=ALLOW,
                          queue_size=50, publish_ack_timeout_s=1.0)
    try:
        tracker = tracker_with(backend)
        tracker.emit("play_video", {"currentTime": -1})
        wait_sync(lambda: backend.counts["published"] == 1, 10, "first event acked")
        server.stop()
        wait_sync(lambda: not backend.connected, 10, "disconnect noticed")
        for i in range(300):
            tracker.emit("play_video", {"currentTime": i})
        wait_sync(lambda: backend.counts["spooled"] + backend.counts["overflow"] >= 300, 15, "spooled")
        assert backend.spool.pending()
        assert backend.counts["overflow"] > 0  # the 50-event queue overflowed straight into the spool
        server.start()
        wait_sync(lambda: not backend.spool.pending() and backend.counts["replayed"] >= 300, 30, "replayed")
        nc = await connect(settings, "t")
        msgs = await raw_messages(nc.jetstream(), "s1")
        await nc.close()
    finally:
        backend.close()
        server.stop()
    times = [json.loads(m.data)["data"]["currentTime"] for m in msgs]
    assert sorted(times) == list(range(-1, 300))  # every event exactly once
    assert times == sorted(times)  # and in the order they were emitted


async def test_a_jetstream_outage_logs_the_paused_replay_once(tmp_path, caplog):
    """Issue 20 item 6: the connection stays up but the raw stream is gone, so the spool replay fails twice a
    second: one "paused" line (with what is spooled) and one "resumed" line, not one per try."""
    server = NatsServer(free_port(), tmp_path / "nats", name="jsdown").start()
    settings = HubSettings(nats_url=server.url)
    nc = await connect(settings, "t")
    js = nc.jetstream()
    await ensure_streams(js, settings)
    caplog.set_level(logging.INFO, "rthub.lms")
    backend = NatsBackend(nats_url=server.url, spool_dir=str(tmp_path / "spool"), site="s1", allow_events=ALLOW,
                          publish_ack_timeout_s=0.5)
    try:
        tracker = tracker_with(backend)
        tracker.emit("play_video", {"currentTime": -1})
        await wait_for(lambda: backend.counts["published"] == 1, 10, "first event acked")
        await js.delete_stream("LMS_RAW")
        for i in range(20):
            tracker.emit("play_video", {"currentTime": i})
        await wait_for(lambda: backend.counts["replay_paused"] >= 6, 30, "the replay tried and failed six times")
        assert backend.connected and backend.spool.pending()
        await ensure_streams(js, settings)
        await wait_for(lambda: not backend.spool.pending() and backend.counts["replayed"] >= 20, 30, "replayed")
    finally:
        backend.close()
        await nc.close()
        server.stop()
    said = [r.getMessage() for r in caplog.records if r.name.startswith("rthub.lms")]
    paused = [m for m in said if "replay paused" in m]
    assert len(paused) == 1 and "bytes spooled" in paused[0], said
    resumed = [m for m in said if "replay resumed" in m]
    assert len(resumed) == 1 and "tries failed meanwhile" in resumed[0], said


async def test_close_flushes_what_is_queued(js, nats_server, tmp_path):
    site = unique("close")
    backend = NatsBackend(nats_url=nats_server.url, spool_dir=str(tmp_path), site=site, allow_events=ALLOW)
    tracker = tracker_with(backend)
    for i in range(2000):
        tracker.emit("pause_video", {"currentTime": i})
    backend.close()
    assert backend.stats()["queued"] == 0
    msgs = await raw_messages(js, site)
    assert len(msgs) + backend.counts["spooled"] == 2000
    assert len(msgs) == 2000  # NATS was up: all of it was published, none needed the spool


def test_unknown_option_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="nats_ulr"):
        NatsBackend(nats_ulr="x", spool_dir=str(tmp_path), start=False)
