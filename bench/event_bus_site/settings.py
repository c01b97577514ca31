"""Django settings of bench/event_bus.py: one backend at a time (BENCH_BACKEND = nats | redis), same topic."""

import os
import tempfile

SECRET_KEY = "event-bus-bench"
DEBUG = False
USE_TZ = True
SERVICE_VARIANT = "lms"
LOGGING_CONFIG = None
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(tempfile.gettempdir(), "event-bus-bench.db"),
    }
}
BACKEND = os.environ.get("BENCH_BACKEND", "nats")
INSTALLED_APPS = ["openedx_events", "bench.event_bus_site"]
if BACKEND == "redis":
    INSTALLED_APPS.append("edx_event_bus_redis")
    EVENT_BUS_PRODUCER = "edx_event_bus_redis.create_producer"
    EVENT_BUS_CONSUMER = "edx_event_bus_redis.RedisEventConsumer"
    EVENT_BUS_REDIS_CONNECTION_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0")
    EVENT_BUS_REDIS_CONSUMER_POLL_TIMEOUT = 1
    EVENT_BUS_REDIS_AUDIT_LOGGING_ENABLED = False
    EVENT_BUS_REDIS_STREAM_MAX_LEN = 1_000_000
else:
    EVENT_BUS_PRODUCER = "lms_publisher.event_bus.create_producer"
    EVENT_BUS_CONSUMER = "lms_publisher.event_bus.NatsEventConsumer"
    EVENT_BUS_NATS_URL = os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:1")
    EVENT_BUS_NATS_SPOOL_DIR = os.environ.get(
        "BENCH_SPOOL", os.path.join(tempfile.gettempdir(), "eb-bench-spool")
    )
EVENT_BUS_TOPIC_PREFIX = os.environ.get("BENCH_PREFIX", "bench")
TOPIC = "learning-course-enrollment-lifecycle"
EVENT_BUS_PRODUCER_CONFIG = {
    "org.openedx.learning.course.enrollment.created.v1": {
        TOPIC: {"event_key_field": "enrollment.course.course_key", "enabled": True}
    },
}
