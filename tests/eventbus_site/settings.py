"""A minimal Django project for the event bus tests: openedx-events, the NATS backend, one receiving app.

The tests set the connection and the per-test topic prefix through the environment (consumer processes) or
by assigning these settings (the test process)."""

import os
import tempfile

SECRET_KEY = "event-bus-tests"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.eventbus_site.urls"
INSTALLED_APPS = ["openedx_events", "lms_publisher.event_bus", "tests.eventbus_site"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EVENTBUS_DB", os.path.join(tempfile.gettempdir(), "eventbus.db")),
    }
}
LOGGING_CONFIG = None
SERVICE_VARIANT = "lms"  # as edx-platform sets it: the events' source is openedx/lms/web

EVENT_BUS_PRODUCER = "lms_publisher.event_bus.create_producer"
EVENT_BUS_CONSUMER = "lms_publisher.event_bus.NatsEventConsumer"
EVENT_BUS_NATS_URL = os.environ.get("EVENT_BUS_NATS_URL", "nats://127.0.0.1:1")
EVENT_BUS_NATS_SPOOL_DIR = os.environ.get(
    "EVENT_BUS_NATS_SPOOL_DIR", os.path.join(tempfile.gettempdir(), "eb-spool")
)
EVENT_BUS_NATS_CREDS = os.environ.get("EVENT_BUS_NATS_CREDS")
EVENT_BUS_NATS_SITE = os.environ.get("EVENT_BUS_NATS_SITE", "default")
EVENT_BUS_NATS_MAX_DELIVERIES = int(os.environ.get("EVENT_BUS_NATS_MAX_DELIVERIES", "3"))
EVENT_BUS_NATS_RETRY_DELAY_S = 0.05
EVENT_BUS_NATS_RETRY_MAX_DELAY_S = 0.2
EVENT_BUS_NATS_FETCH_TIMEOUT_S = 0.5
EVENT_BUS_NATS_ACK_WAIT_S = float(os.environ.get("EVENT_BUS_NATS_ACK_WAIT_S", "60"))
EVENT_BUS_TOPIC_PREFIX = os.environ.get("EVENT_BUS_TOPIC_PREFIX", "test")

TOPIC = "learning-course-enrollment-lifecycle"
EVENT_BUS_PRODUCER_CONFIG = {
    "org.openedx.learning.course.enrollment.created.v1": {
        TOPIC: {"event_key_field": "enrollment.course.course_key", "enabled": True}
    },
    "org.openedx.learning.course.unenrollment.completed.v1": {
        TOPIC: {"event_key_field": "enrollment.course.course_key", "enabled": True}
    },
}
