"""``rthub translate`` as an operator runs it, and ``rthub courses import`` into a real NATS KV bucket."""

from __future__ import annotations

import json
from pathlib import Path

from hub.core.events import normalize
from hub.core.subjects import COURSES_BUCKET
from hub.route.service import watch_course_names
from hub.translate import CourseNames, ExternalIds, TranslateContext, course_kv_key, translate
from hub.translate.cli import put_course_name
from tests import xapi_validator
from tests.helpers import rthub, rthub_env, shared_or_skip, unique, wait_for

SAMPLES = Path(__file__).parent / "samples"
LMS = "https://lms.rthub.test"


def test_translate_files_stdout_and_rejections(tmp_path, nats_server):
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps({"*": "44444444-4444-4444-8444-444444444444"}))
    courses = tmp_path / "courses.json"
    courses.write_text(json.dumps({"course-v1:RtX+Hub101+2025_Spring": "Hub Basics"}))
    env = rthub_env(nats_server.url)
    proc = rthub("translate", "--protocol", "xapi", "--lms-url", LMS, "--external-ids", str(ids),
                 "--courses", str(courses), str(SAMPLES / "video.jsonl"), str(SAMPLES / "edge_cases.jsonl"), env=env)
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert len(lines) == 10
    assert all(s["actor"]["account"]["name"] == "44444444-4444-4444-8444-444444444444" for s in lines)
    assert all(xapi_validator.problems(s) == [] for s in lines)
    assert lines[1]["context"]["contextActivities"]["parent"][0]["definition"]["name"] == {"en-US": "Hub Basics"}
    stderr = proc.stderr.decode()
    assert f"{SAMPLES / 'edge_cases.jsonl'}:1: rejected: no user" in stderr
    assert "1 skipped" in stderr

    ok = rthub("translate", "--protocol", "caliper", "--lms-url", LMS, "--id-secret", "s",
               input=(SAMPLES / "enrollment.jsonl").read_bytes(), env=env)
    assert ok.returncode == 0, ok.stderr
    events = [json.loads(line) for line in ok.stdout.decode().splitlines()]
    assert [e["action"] for e in events] == ["Activated", "Deactivated", "Completed"]
    assert "2 skipped" in ok.stderr.decode()


def test_translate_single_object_file_and_tracking_log(tmp_path, nats_server):
    env = rthub_env(nats_server.url)
    single = tmp_path / "one.json"
    single.write_text(json.dumps(json.loads((SAMPLES / "video.jsonl").read_text().splitlines()[1]), indent=2))
    log = tmp_path / "tracking.log"
    event = json.loads((SAMPLES / "video.jsonl").read_text().splitlines()[2])
    log.write_text("2025-03-01 09:01:02,000 INFO 20 [tracking] [user 41] [ip 10.0.0.7] logger.py:41 - "
                   + json.dumps(event) + "\n" + "2025-03-01 09:01:03,000 INFO 20 [tracking] logger.py:41 - {\"name\": \"pla\n")
    proc = rthub("translate", "--protocol", "xapi", "--lms-url", LMS, "--id-secret", "s", str(single), str(log),
                 env=env)
    assert proc.returncode == 1
    verbs = [json.loads(line)["verb"]["display"]["en"] for line in proc.stdout.decode().splitlines()]
    assert verbs == ["played", "paused"]
    assert f"{log}:2: rejected: not JSON" in proc.stderr.decode()


def test_translate_shared_tracking_log(nats_server):
    log = shared_or_skip("events", "tracking.log")
    proc = rthub("translate", "--protocol", "xapi", "--lms-url", LMS, "--id-secret", "s", str(log),
                 env=rthub_env(nats_server.url))
    out = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert out and all(xapi_validator.problems(s) == [] for s in out)
    assert "rejected" in proc.stderr.decode()


async def test_courses_import_and_watch(tmp_path, js, nats_server):
    course = f"course-v1:RtX+{unique('C')}+2025"
    names = CourseNames()
    mirror = await watch_course_names(js, names)
    try:
        assert names.get(course) is None
        mapping = tmp_path / "courses.json"
        mapping.write_text(json.dumps({course: "Imported Course"}))
        proc = rthub("courses", "import", str(mapping), env=rthub_env(nats_server.url))
        assert proc.returncode == 0, proc.stderr
        kv = await js.key_value(COURSES_BUCKET)
        assert (await kv.get(course_kv_key(course))).value == b"Imported Course"
        await wait_for(lambda: names.get(course) == "Imported Course", 5, "watched course name")
        ctx = TranslateContext(LMS, ExternalIds(b"k"), names)
        play = normalize({"name": "play_video", "timestamp": "2025-01-01T00:00:00+00:00",
                          "data": {"id": "v1"}, "context": {"course_id": course, "user_id": 5}})
        parent = translate("xapi", play, ctx)[0]["context"]["contextActivities"]["parent"][0]
        assert parent["definition"]["name"] == {"en-US": "Imported Course"}
        await put_course_name(js, course, "Renamed Course")
        await wait_for(lambda: names.get(course) == "Renamed Course", 5, "renamed course")
        await kv.delete(course_kv_key(course))
        await wait_for(lambda: names.get(course) is None, 5, "deleted course name")
    finally:
        await mirror.stop()


def test_translate_rejects_over_limit_lines_with_the_hubs_reason(tmp_path, nats_server):
    """The lines that stopped every hub: the offline translator rejects them too, and goes on."""
    f = tmp_path / "hostile.log"
    f.write_text("[" * 5000 + "\n" + '{"a":' * 5000 + "\n" + (SAMPLES / "video.jsonl").read_text())
    proc = rthub("translate", "--protocol", "xapi", "--lms-url", LMS, "--id-secret", "s", str(f),
                 env=rthub_env(nats_server.url))
    stderr = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr
    assert f"{f}:1: rejected: event is nested deeper than 64 levels" in stderr
    assert f"{f}:2: rejected: event is nested deeper than 64 levels" in stderr
    assert proc.stdout.strip(), "the good events after them are translated"
