"""Realistic demo activity: a few courses, a handful of learners enrolling, watching videos, answering
problems (browser and server events), getting grades, navigating and posting in forums.

:func:`generate` is pure apart from the clock (pass ``clock`` for reproducible output); :func:`run_demo`
publishes at a steady rate until stopped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import nats.errors

from hub.core.creds import creds_allow
from hub.core.natsconn import connect
from hub.core.publish import AckedPublisher
from hub.core.settings import StreamSettings, from_env
from hub.core.streams import ensure_streams
from hub.core.subjects import RAW_STREAM
from lms_publisher.codec import Record, to_record
from lms_publisher.publish import publish_records
from lms_publisher.settings import PublisherSettings

log = logging.getLogger("rthub.demo")
LMS_HOST = "localhost:18000"
AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
ORGS = ("DemoX", "OpenU", "edX")
NAMES = ("ada", "grace", "alan", "edsger", "barbara", "donald", "frances", "john", "radia", "ken", "margaret")


def demo_courses(k: int) -> list[str]:
    return [f"course-v1:{ORGS[i % len(ORGS)]}+Demo{i + 1}+2024_T1" for i in range(k)]


def _block(course: str, kind: str, n: int) -> str:
    body = course.split(":", 1)[1]
    return f"block-v1:{body}+type@{kind}+block@{uuid.uuid5(uuid.NAMESPACE_URL, f'{course}/{kind}/{n}').hex}"


class _Clock:
    """Strictly increasing timestamps, so no two events of one learner share one (statement ids use it)."""

    def __init__(self, now: Callable[[], dt.datetime]):
        self.now = now
        self.last = dt.datetime.min.replace(tzinfo=dt.UTC)

    def __call__(self) -> str:
        t = max(self.now(), self.last + dt.timedelta(microseconds=1))
        self.last = t
        return t.isoformat()


def generate(courses: int = 3, users: int = 6, seed: int | None = None,
             clock: Callable[[], dt.datetime] | None = None) -> Iterator[dict[str, Any]]:
    """An endless stream of backend-shape events (``name, timestamp, data, context``)."""
    rng = random.Random(seed)
    tick = _Clock(clock or (lambda: dt.datetime.now(dt.UTC)))
    course_ids = demo_courses(courses)
    learners = [(i + 3, f"{NAMES[i % len(NAMES)]}{i // len(NAMES) or ''}") for i in range(users)]
    enrolled: set[tuple[int, str]] = set()
    sessions = {uid: uuid.UUID(int=rng.getrandbits(128)).hex for uid, _ in learners}
    passed: set[tuple[int, str]] = set()

    def ctx(uid: int, username: str, course: str, source: str, path: str, **extra: Any) -> dict[str, Any]:
        org = course.split(":", 1)[1].split("+", 1)[0]
        page = f"http://{LMS_HOST}/courses/{course}/courseware/"
        return {"accept_language": "en-US,en;q=0.9", "agent": AGENT, "course_id": course, "org_id": org,
                "event_source": source, "host": LMS_HOST, "ip": f"10.0.0.{uid}", "path": path,
                "page": page, "referer": page, "session": sessions[uid], "user_id": uid, "username": username,
                **extra}

    def ev(name: str, data: Any, context: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "timestamp": tick(), "data": data, "context": context}

    def video(uid: int, user: str, course: str) -> Iterator[dict[str, Any]]:
        c = ctx(uid, user, course, "browser", "/event")
        vid = _block(course, "video", rng.randrange(4)).rsplit("@", 1)[1]
        base = {"code": "b7xgknqkQk8", "duration": 195, "id": vid}
        yield ev("load_video", base, c)
        t = 0.0
        yield ev("play_video", {**base, "currentTime": t}, c)
        for _ in range(rng.randrange(1, 4)):
            t = min(t + rng.uniform(5, 60), 195.0)
            if rng.random() < 0.4:
                new = round(rng.uniform(0, 195), 3)
                yield ev("seek_video", {**base, "old_time": round(t, 3), "new_time": new, "type": "onSlideSeek"}, c)
                t = new
            else:
                yield ev("pause_video", {**base, "currentTime": round(t, 3)}, c)
                yield ev("play_video", {**base, "currentTime": round(t, 3)}, c)
        if rng.random() < 0.5:
            yield ev("complete_video", base, c)
        yield ev("stop_video", {**base, "currentTime": 195 if rng.random() < 0.5 else round(t, 3)}, c)

    def problem(uid: int, user: str, course: str) -> Iterator[dict[str, Any]]:
        n = rng.randrange(5)
        usage = _block(course, "problem", n)
        short = usage.rsplit("@", 1)[1]
        choice = rng.randrange(4)
        correct = choice == n % 4
        yield ev("problem_check", f"input_{short}_2_1=choice_{choice}", ctx(uid, user, course, "browser", "/event"))
        module = {"display_name": f"Question {n + 1}", "usage_key": usage}
        server = ctx(uid, user, course, "server", f"/courses/{course}/xblock/{usage}/handler/xmodule_handler/problem_check",
                     module=module)
        answer_id = f"{short}_2_1"
        status = "correct" if correct else "incorrect"
        yield ev("problem_check", {
            "answers": {answer_id: f"choice_{choice}"}, "attempts": rng.randrange(1, 4),
            "correct_map": {answer_id: {"correctness": status, "hint": "", "hintmode": None, "msg": "",
                                        "npoints": None, "queuestate": None}},
            "grade": int(correct), "max_grade": 1, "problem_id": usage, "success": status,
            "state": {"done": True, "seed": 1, "student_answers": {}},
            "submission": {answer_id: {"answer": f"Option {choice + 1}", "correct": correct, "group_label": "",
                                       "input_type": "choicegroup", "question": f"Question {n + 1}?",
                                       "response_type": "multiplechoiceresponse", "variant": ""}},
        }, server)
        yield ev("edx.grades.problem.submitted", {
            "course_id": course, "problem_id": usage, "user_id": str(uid), "weighted_earned": int(correct),
            "weighted_possible": 1, "event_transaction_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "event_transaction_type": "edx.grades.problem.submitted"}, server)
        if correct and (uid, course) not in passed and rng.random() < 0.3:
            passed.add((uid, course))
            yield ev("edx.course.grade.passed.first_time", {"course_id": course, "user_id": uid}, server)

    def navigate(uid: int, user: str, course: str) -> Iterator[dict[str, Any]]:
        c = ctx(uid, user, course, "browser", "/event")
        seq = _block(course, "sequential", rng.randrange(6))
        if rng.random() < 0.5:
            tab = rng.randrange(1, 9)
            yield ev("edx.ui.lms.sequence.next_selected",
                     {"current_tab": tab, "id": seq, "tab_count": 10, "widget_placement": "top"}, c)
        else:
            yield ev("edx.ui.lms.outline.selected", {"target_name": "Introduction", "target_url":
                     f"http://{LMS_HOST}/courses/{course}/jump_to/{seq}", "widget_placement": "accordion"}, c)

    def forum(uid: int, user: str, course: str) -> Iterator[dict[str, Any]]:
        c = ctx(uid, user, course, "server", "/api/discussion/v1/threads/")
        yield ev("edx.forum.thread.created", {
            "commentable_id": "course", "group_id": None, "thread_type": "discussion", "anonymous": False,
            "anonymous_to_peers": False, "options": {"followed": True}, "title": "How do I start?",
            "title_truncated": False, "truncated": False, "body": "<p>Where is week 1?</p>",
            "id": uuid.UUID(int=rng.getrandbits(128)).hex[:24], "url": f"http://{LMS_HOST}/courses/{course}/discussion",
            "user_forums_roles": ["Student"], "user_course_roles": []}, c)

    activities = ((video, 5), (problem, 4), (navigate, 3), (forum, 1))
    while True:
        uid, user = rng.choice(learners)
        course = rng.choice(course_ids)
        if (uid, course) not in enrolled:
            enrolled.add((uid, course))
            yield ev("edx.course.enrollment.activated", {"course_id": course, "mode": "audit", "user_id": uid},
                     ctx(uid, user, course, "server", "/change_enrollment"))
            continue
        activity = rng.choices([a for a, _ in activities], weights=[w for _, w in activities])[0]
        yield from activity(uid, user, course)


async def run_demo(settings: PublisherSettings, rate: float, count: int = 0,
                   stop: asyncio.Event | None = None, on_batch: Callable[[int], None] | None = None) -> int:
    """Publish demo events at ``rate`` per second until ``count`` (0 = forever) or ``stop``; returns the count."""
    stop = stop or asyncio.Event()
    nc = await connect(settings, "rthub-demo")
    pub = await AckedPublisher(nc).start()
    try:
        js = nc.jetstream()
        if creds_allow(settings.nats_creds, f"$JS.API.STREAM.INFO.{RAW_STREAM}"):  # not a per-site publisher
            await ensure_streams(js, from_env(StreamSettings))
        events = generate(settings.demo_courses, settings.demo_users)
        sent = 0
        started = time.monotonic()
        tick = 0.1 if rate > 0 else 0.0
        while not stop.is_set() and (count == 0 or sent < count):
            due = int(rate * (time.monotonic() - started)) + 1 if rate > 0 else 1000
            n = max(1, min(due - sent, 5000))
            if count:
                n = min(n, count - sent)
            if due > sent or rate <= 0:
                batch: list[Record] = [to_record(next(events), settings.site) for _ in range(n)]
                if not await publish_patiently(pub, batch, settings.publish_ack_timeout_s, stop):
                    break
                sent += len(batch)
                if on_batch:
                    on_batch(sent)
            try:
                await asyncio.wait_for(stop.wait(), tick)
            except TimeoutError:
                pass
        return sent
    finally:
        await nc.close()


async def publish_patiently(pub: AckedPublisher, batch: list[Record], ack_timeout: float, stop: asyncio.Event,
                            max_delay: float = 10.0) -> bool:
    """Publish ``batch`` until acknowledged, waiting out a NATS outage of any length as the LMS backend does
    (the same message ids: JetStream drops what a retry sends twice); False if ``stop`` came first."""
    delay = 0.5
    while True:
        try:
            await publish_records(pub, batch, ack_timeout)
            return True
        except (ConnectionError, nats.errors.Error) as exc:  # timeouts, no responders, disconnected: "not yet"
            log.warning("demo: %d event(s) not acknowledged (%s); retrying in %.1f s", len(batch),
                        exc or type(exc).__name__, delay)
        try:
            await asyncio.wait_for(stop.wait(), delay)
            return False
        except TimeoutError:
            delay = min(max_delay, delay * 2)


def main(args) -> int:
    settings = from_env(PublisherSettings, site=args.site, demo_courses=args.courses, demo_users=args.users,
                        demo_rate=args.rate)

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        last = [time.monotonic()]

        def report(sent: int) -> None:
            if time.monotonic() - last[0] >= 5:
                last[0] = time.monotonic()
                log.info("demo: %d events published", sent)

        sent = await run_demo(settings, settings.demo_rate, args.count, stop, report)
        print(f"published={sent}")
        return 0

    return asyncio.run(go())
