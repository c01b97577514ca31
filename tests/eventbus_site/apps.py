"""The receiving app: writes each event that came over the bus to ``EVENTBUS_RECEIVED`` (one JSON line), and
fails on purpose as the test asks (``EVENTBUS_FAIL_TIMES`` failures per event before it succeeds; usernames
starting with ``fail-`` fail until the file ``EVENTBUS_FIXED`` exists; ``slow-`` ones take ``EVENTBUS_SLOW_S``)."""

import json
import os
from pathlib import Path

from django.apps import AppConfig


def record(event_type: str, enrollment, metadata, from_event_bus: bool) -> None:
    out = os.environ.get("EVENTBUS_RECEIVED")
    if not out or not from_event_bus:
        return
    event_id = str(metadata.id)
    counts = Path(out + ".attempts")
    counts.mkdir(exist_ok=True)
    attempt_file = counts / event_id
    attempt = int(attempt_file.read_text()) + 1 if attempt_file.exists() else 1
    attempt_file.write_text(str(attempt))
    username = enrollment.user.pii.username
    if attempt <= int(os.environ.get("EVENTBUS_FAIL_TIMES", "0")):
        raise RuntimeError(f"failing on purpose, attempt {attempt}")
    if username.startswith("slow-"):  # a receiver that takes longer than the ack wait (the scenario itself)
        import time

        time.sleep(float(os.environ.get("EVENTBUS_SLOW_S", "2.5")))
    if username.startswith("fail-") and not Path(os.environ.get("EVENTBUS_FIXED", "/nonexistent")).exists():
        raise RuntimeError(f"receiver cannot handle {username}")
    line = {
        "pid": os.getpid(),
        "type": event_type,
        "id": event_id,
        "attempt": attempt,
        "time": metadata.time.isoformat(),
        "source": metadata.source,
        "minorversion": metadata.minorversion,
        "sourcehost": metadata.sourcehost,
        "course": str(enrollment.course.course_key),
        "display_name": enrollment.course.display_name,
        "username": username,
        "email": enrollment.user.pii.email,
        "user_id": enrollment.user.id,
        "mode": enrollment.mode,
        "is_active": enrollment.is_active,
        "created": enrollment.creation_date.isoformat(),
    }
    with open(out, "a") as f:
        f.write(json.dumps(line) + "\n")


class EventBusSiteConfig(AppConfig):
    name = "tests.eventbus_site"
    label = "eventbus_site"

    def ready(self):
        from openedx_events.learning.signals import COURSE_ENROLLMENT_CREATED, COURSE_UNENROLLMENT_COMPLETED

        def created(sender, enrollment, metadata, from_event_bus=False, **kw):
            record("created", enrollment, metadata, from_event_bus)

        def left(sender, enrollment, metadata, from_event_bus=False, **kw):
            record("unenrolled", enrollment, metadata, from_event_bus)

        COURSE_ENROLLMENT_CREATED.connect(created, weak=False)
        COURSE_UNENROLLMENT_COMPLETED.connect(left, weak=False)
