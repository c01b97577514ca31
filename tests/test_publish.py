"""`rthub publish` / backfill and `rthub demo`: parsing (pure), then publishing to a real nats-server."""

from __future__ import annotations

import gzip
import json
import signal

import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from hub.core.events import InvalidEvent
from hub.core.subjects import parse_subject
from lms_publisher.codec import raw_record, to_record
from lms_publisher.demo import generate
from lms_publisher.publish import Summary, backfill, prepare, publish_events, publish_raw
from lms_publisher.sources import parse_line, read_items
from tests.helpers import rthub, rthub_env, rthub_popen, shared_or_skip, unique, wait_for

PREFIX = "2023-05-23 13:53:13,461 INFO 20 [tracking] [user None] [ip None] logger.py:41 - "
COURSE = "course-v1:edX+DemoX+Demo_Course"


def log_event(i: int, name: str = "play_video", course: str = COURSE) -> dict:
    return {"event_type": name, "name": name, "time": f"2024-01-01T00:00:{i // 1000:02d}.{i % 1000:06d}+00:00",
            "username": "edx", "event_source": "browser",
            "event": json.dumps({"id": "abc", "currentTime": i, "duration": 195}),
            "context": {"course_id": course, "org_id": "edX", "user_id": 3, "path": "/event"}}


async def raw_messages(js, site: str) -> list:
    """Every message of LMS_RAW published under ``site`` (ephemeral pull consumer from the start)."""
    sub = await js.pull_subscribe(f"lms.{site}.>", stream="LMS_RAW",
                                  config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
    out = []
    try:
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=0.5)
            except TimeoutError:
                break
            out.extend(msgs)
            for m in msgs:
                await m.ack()
            if msgs[-1].metadata.num_pending == 0:  # caught up (the stream may still be growing)
                break
    finally:
        await sub.unsubscribe()
    return out


# ---- pure ------------------------------------------------------------------------------------------------

def test_parse_line_with_and_without_logger_prefix():
    obj = {"name": "x", "time": "t"}
    assert parse_line((PREFIX + json.dumps(obj)).encode()) == obj
    assert parse_line(json.dumps(obj).encode()) == obj
    with pytest.raises(InvalidEvent, match="not JSON"):
        parse_line((PREFIX + '{"name": "cut').encode())
    with pytest.raises(InvalidEvent, match="no JSON object"):
        parse_line(b"2023-05-23 13:53:13,461 INFO just a log line")


def test_record_id_is_stable_and_site_specific():
    event = {"name": "play_video", "timestamp": "2024-01-01T00:00:00+00:00", "data": {"b": 1, "a": 2},
             "context": {"course_id": COURSE}}
    same_keys_other_order = {"context": {"course_id": COURSE}, "data": {"a": 2, "b": 1},
                             "timestamp": "2024-01-01T00:00:00+00:00", "name": "play_video"}
    a, b = to_record(event, "north"), to_record(same_keys_other_order, "north")
    # Same id, subject and bytes; the traceparent is new for every send (a new trace unless the event has one).
    assert (a.subject, a.msg_id, a.payload) == (b.subject, b.msg_id, b.payload)
    assert a.trace != b.trace
    assert to_record(event, "south").msg_id != a.msg_id
    assert parse_subject(a.subject) == ("lms", "north", "edX", COURSE, "play_video")
    changed = to_record({**event, "timestamp": "2024-01-01T00:00:01+00:00"}, "north")
    assert changed.msg_id != a.msg_id


def test_datetime_timestamp_is_written_like_the_lms():
    import datetime as dt

    ts = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    rec = to_record({"name": "n", "timestamp": ts, "data": {}, "context": {}}, "s")
    assert json.loads(rec.payload)["timestamp"] == "2024-05-01T12:00:00.123456+00:00"
    assert parse_subject(rec.subject)[2:] == (None, None, "n")


def test_prepare_counts_rejections_and_allow_list_skips():
    s = Summary()
    allow = frozenset({"play_video"})
    assert prepare(log_event(1), "x", allow, s) is not None
    assert prepare(log_event(2, "edx.bi.something"), "x", allow, s) is None
    assert prepare([1, 2], "x", allow, s) is None
    assert prepare({"name": "play_video"}, "x", allow, s) is None
    assert sum(s.skipped.values()) == 1 and "edx.bi.something" in next(iter(s.skipped))
    assert s.rejected == {"event is a JSON list, not an object": 1, "missing timestamp (or time)": 1}


def test_read_items_whole_document_gzip_and_resume(tmp_path):
    doc = tmp_path / "one.json"
    doc.write_text(json.dumps(log_event(1), indent=2))
    items = list(read_items(doc))
    assert len(items) == 1 and items[0][2]["name"] == "play_video"

    gz = tmp_path / "tracking.log-20240101.gz"
    lines = [PREFIX + json.dumps(log_event(i)) for i in range(5)] + ["", PREFIX + '{"cut']
    gz.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    items = list(read_items(gz))
    assert [i[2]["event"] for i in items[:5]] == [log_event(i)["event"] for i in range(5)]
    assert isinstance(items[5][2], InvalidEvent)
    resumed = list(read_items(gz, start=items[2][0]))
    assert [i[2]["event"] for i in resumed[:2]] == [log_event(3)["event"], log_event(4)["event"]]


def test_raw_record_keeps_bytes():
    rec = raw_record(b"not json at all", "s")
    assert rec.payload == b"not json at all"
    assert parse_subject(rec.subject) == ("lms", "s", None, None, "unparsed")


def test_demo_generates_realistic_activity():
    events = [e for _, e in zip(range(3000), generate(courses=3, users=5, seed=7), strict=False)]
    names = {e["name"] for e in events}
    assert {"edx.course.enrollment.activated", "load_video", "play_video", "pause_video", "seek_video",
            "stop_video", "complete_video", "problem_check", "edx.grades.problem.submitted",
            "edx.ui.lms.sequence.next_selected", "edx.forum.thread.created"} <= names
    sources = {e["context"]["event_source"] for e in events if e["name"] == "problem_check"}
    assert sources == {"browser", "server"}
    assert len({e["context"]["course_id"] for e in events}) == 3
    assert len({e["context"]["username"] for e in events}) == 5
    # each learner's first event in a course is the enrollment
    first: dict = {}
    for e in events:
        first.setdefault((e["context"]["user_id"], e["context"]["course_id"]), e["name"])
    assert set(first.values()) == {"edx.course.enrollment.activated"}
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


# ---- against nats-server -----------------------------------------------------------------------------------

async def test_publish_events_library_dedups(nc, js):
    site = unique("pub")
    events = [log_event(i) for i in range(50)]
    first = await publish_events(nc, events, site=site)
    assert (first.published, first.duplicates) == (50, 0)
    again = await publish_events(nc, events, site=site)
    assert (again.published, again.duplicates) == (0, 50)
    msgs = await raw_messages(js, site)
    assert len(msgs) == 50
    assert len({m.headers["Nats-Msg-Id"] for m in msgs}) == 50
    body = json.loads(msgs[0].data)
    assert body["name"] == "play_video" and body["data"]["currentTime"] == 0  # browser string decoded


async def test_publish_raw_sends_malformed_bytes_as_is(nc, js):
    site = unique("raw")
    summary = await publish_raw(nc, [b"{not json", b"[1,2]", json.dumps(log_event(1)).encode()], site=site)
    assert summary.published == 3
    payloads = sorted(m.data for m in await raw_messages(js, site))
    assert payloads == sorted([b"{not json", b"[1,2]", json.dumps(log_event(1)).encode()])


async def test_backfill_directory_resumes_from_state(nc, js, tmp_path):
    site = unique("bf")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_text("\n".join(PREFIX + json.dumps(log_event(i)) for i in range(30)) + "\n")
    (logs / "b.log.gz").write_bytes(gzip.compress(
        ("\n".join(json.dumps(log_event(100 + i)) for i in range(20)) + "\nnot json\n").encode()))
    state = tmp_path / "state.json"
    allow = frozenset({"play_video"})

    dry = await backfill(None, [str(logs)], site, allow, dry_run=True)
    assert dry.published == 50 and sum(dry.rejected.values()) == 1
    assert await raw_messages(js, site) == []

    first = await backfill(nc, [str(logs)], site, allow, batch_size=7, state_path=state)
    assert first.published == 50
    saved = json.loads(state.read_text())
    assert all(v["done"] for v in saved.values()) and len(saved) == 2

    # the log grows: a resumed run publishes only the new lines, and re-reading nothing else
    with open(logs / "a.log", "a") as f:
        f.write(PREFIX + json.dumps(log_event(999)) + "\n")
    second = await backfill(nc, [str(logs)], site, allow, state_path=state)
    assert (second.published, second.duplicates) == (1, 0)
    assert "already published" in next(iter(second.skipped))
    assert len(await raw_messages(js, site)) == 51


async def test_backfill_rate_limit_is_respected(nc, js, tmp_path):
    import time

    f = tmp_path / "t.log"
    f.write_text("\n".join(json.dumps(log_event(i)) for i in range(40)) + "\n")
    started = time.monotonic()
    s = await backfill(nc, [str(f)], unique("rl"), None, rate=100, batch_size=10)
    assert s.published == 40
    assert time.monotonic() - started >= 0.35  # 40 events at 100/s cannot take less than ~0.4 s


# ---- the command line --------------------------------------------------------------------------------------

async def test_rthub_publish_cli_summary_and_dedup(js, nats_server, tmp_path):
    site = unique("cli")
    f = tmp_path / "tracking.log"
    lines = [PREFIX + json.dumps(log_event(i)) for i in range(10)]
    lines += [PREFIX + json.dumps(log_event(11, "edx.bi.not_translated")), PREFIX + '{"cut', "garbage"]
    f.write_text("\n".join(lines) + "\n")
    env = rthub_env(nats_server.url, RTHUB_ALLOW_EVENTS="play_video,pause_video")
    result = rthub("publish", "--site", site, "--json", str(f), env=env)
    assert result.returncode == 0, result.stderr.decode()
    summary = json.loads(result.stdout)
    assert (summary["published"], summary["skipped"], summary["rejected"]) == (10, 1, 2)
    assert set(summary["rejected_reasons"]) == {"no JSON object on the line", "not JSON (Input data was "
                                                "truncated)"}
    again = json.loads(rthub("publish", "--site", site, "--json", str(f), env=env).stdout)
    assert (again["published"], again["duplicates"]) == (0, 10)
    assert len(await raw_messages(js, site)) == 10


def _over_limit_lines() -> dict[str, bytes]:
    """Log lines the hub would quarantine for its limits, each with the reason it would give."""
    deep_data = {**log_event(1), "event": {"nested": None}}
    text = json.dumps(deep_data).replace("null", "[" * 100 + "]" * 100)
    big = {**log_event(2), "event": json.dumps({"id": "x" * (5 << 20)})}
    inner = {**log_event(3), "event": "[" * 5000}  # a browser event's JSON string
    return {
        "event is nested deeper than 64 levels": [(PREFIX + '{"a":' * 5000).encode(), (PREFIX + text).encode(),
                                                  json.dumps(inner).encode(), b"[{" * 5000],
        "byte limit": [(PREFIX + json.dumps(big)).encode()],
    }


def test_over_limit_lines_are_rejected_with_the_hubs_reason():
    from hub.core.events import depth_reason, nesting_depth, size_reason

    summary = Summary()
    for reason, lines in _over_limit_lines().items():
        for line in lines:
            try:
                item = parse_line(line)
            except InvalidEvent as exc:
                item = exc
            assert prepare(item, "s", None, summary) is None
            assert reason in list(summary.rejected)[-1], line[:80]
    assert depth_reason(64) == "event is nested deeper than 64 levels"  # the text the hub quarantines with
    assert size_reason(5, 4) == "event is 5 bytes, over the 4 byte limit"
    with pytest.raises(InvalidEvent, match="^event is nested deeper than 64 levels$"):
        to_record({"name": "play_video", "timestamp": "t", "data": _nested(70)}, "s")
    with pytest.raises(InvalidEvent, match="^event is nested deeper than 64 levels$"):
        to_record({"name": "play_video", "timestamp": "t", "data": _nested(5000)}, "s")  # encoder recursion
    with pytest.raises(InvalidEvent, match=r"^event is \d+ bytes, over the 1048576 byte limit$"):
        to_record({"name": "play_video", "timestamp": "t", "data": "x" * (1 << 20)}, "s")
    assert to_record({"name": "play_video", "timestamp": "t", "data": _nested(60)}, "s")  # within the limit
    # the pre-scan: strings are skipped (escaped quotes too), unterminated input is bounded, never quadratic
    assert nesting_depth(b'{"a": "[[[[\\"[[", "b": [[1]]}') == 3
    assert nesting_depth(b'"' + b'\\"' * 300_000) == 0 and nesting_depth(b"[" * 10) == 10


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_whole_document_and_raw_lines_are_held_to_the_limits(tmp_path):
    doc = tmp_path / "deep.json"
    doc.write_bytes(b"[\n" + b"[" * 5000 + b"\n")
    items = [item for _, _, item in read_items(doc)]
    assert len(items) == 1 and isinstance(items[0], InvalidEvent)
    first_line = tmp_path / "deep-first.log"
    first_line.write_bytes(b"[" * 5000 + b"\n" + b"{" * 5000 + b"\n")  # looks like a document's start
    assert [str(i) for _, _, i in read_items(first_line)] == ["no JSON object on the line",
                                                            "event is nested deeper than 64 levels"]
    assert raw_record(b"[" * 5000, "s").subject.endswith(".unparsed")  # never decoded


async def test_rthub_publish_rejects_over_limit_lines_with_reason(js, nats_server, tmp_path):
    """`rthub publish` and its --dry-run: no crash, the hub's reason, nothing over the limits on LMS_RAW."""
    site = unique("lim")
    f = tmp_path / "tracking.log"
    bad = [line for lines in _over_limit_lines().values() for line in lines]
    f.write_bytes(b"\n".join([(PREFIX + json.dumps(log_event(1))).encode(), *bad,
                              (PREFIX + json.dumps(log_event(2))).encode()]) + b"\n")
    env = rthub_env(nats_server.url)
    # --raw sends lines undecoded: a browser event's inner JSON string is left to the hub (which checks it)
    for args, deep in ((["--dry-run"], 4), ([], 4), (["--raw"], 3)):
        result = rthub("publish", "--site", site, "--json", *args, str(f), env=env)
        assert result.returncode == 0, result.stderr.decode()
        summary = json.loads(result.stdout)
        reasons = summary["rejected_reasons"]
        assert reasons["event is nested deeper than 64 levels"] == deep, (args, summary)
        assert [r for r in reasons if r.endswith("over the 1048576 byte limit")], reasons
        assert summary["rejected"] == deep + 1
        assert summary["published"] + summary["duplicates"] == len(bad) + 2 - summary["rejected"]
    stored = await raw_messages(js, site)
    assert len(stored) == 5 and all(len(m.data) < 6000 for m in stored)  # 2 normalised + 3 raw lines
    text = rthub("publish", "--site", site, "--dry-run", str(f), env=env).stdout.decode()
    assert "rejected 4: event is nested deeper than 64 levels" in text
    only = tmp_path / "issue.log"  # the line of the issue, alone: its first line looked like a JSON document
    only.write_bytes(b"[" * 5000 + b"\n")
    result = rthub("publish", "--site", site, "--dry-run", str(only), env=env)
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr.decode()
    assert "rejected 1: no JSON object on the line" in result.stdout.decode()


async def test_rthub_publish_shared_tracking_log(js, nats_server):
    path = shared_or_skip("events", "tracking.log")
    site = unique("shared")
    result = rthub("publish", "--all-events", "--site", site, "--json", str(path), env=rthub_env(nats_server.url))
    assert result.returncode == 0, result.stderr.decode()
    summary = json.loads(result.stdout)
    total_lines = sum(1 for line in path.read_text().splitlines() if line.strip())
    assert summary["published"] + summary["rejected"] == total_lines
    assert summary["rejected"] >= 1  # the file holds cut events on purpose
    assert len(await raw_messages(js, site)) == summary["published"]


async def test_rthub_demo_count_and_sigterm(js, nats_server):
    site = unique("demo")
    result = rthub("demo", "--site", site, "--count", "40", "--rate", "0", env=rthub_env(nats_server.url))
    assert result.returncode == 0, result.stderr.decode()
    assert "published=40" in result.stdout.decode()
    msgs = await raw_messages(js, site)
    assert len(msgs) == 40
    assert json.loads(msgs[0].data)["name"] == "edx.course.enrollment.activated"

    site2 = unique("demo")
    proc = rthub_popen("demo", "--site", site2, "--rate", "200", env=rthub_env(nats_server.url))
    try:
        async def some():
            return len(await raw_messages(js, site2)) >= 20

        await wait_for(some, 15, "demo events flowing")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err.decode()
    sent = int(out.decode().split("published=")[1])
    assert sent >= 20 and len(await raw_messages(js, site2)) == sent  # stopped cleanly: every batch acked
