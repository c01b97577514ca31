"""Open edX Events (OEP-41) on NATS: the wire names shared by the LMS-side event bus and the hub, and the
catalog of the event types the hub carries (name, description, protocols, or the reason it refuses one).

Pure constants and functions, no Django and no openedx-events import: the LMS side
(:mod:`lms_publisher.event_bus`), the hub (:mod:`hub.route.openedx`), the translators and the event catalog of
the portal and ``rthub event-types`` all read them from here.

Wire format (compatible with the Kafka backend): the body is the event data serialised by openedx-events' own
Avro serializer (schemaless, the schema is derived from the signal); the metadata travels in headers named as
the Kafka backend names them (:data:`HEADERS`), plus the event key and the site.
"""

from __future__ import annotations

from typing import NamedTuple

from hub.core.subjects import OPENEDX_DLQ_PREFIX as DLQ_PREFIX
from hub.core.subjects import OPENEDX_DLQ_STREAM as DLQ_STREAM
from hub.core.subjects import OPENEDX_PREFIX as PREFIX
from hub.core.subjects import OPENEDX_STREAM as STREAM
from hub.core.subjects import encode_token

__all__ = ["DLQ_PREFIX", "DLQ_STREAM", "PREFIX", "STREAM"]  # the names, kept in hub.core.subjects

# CloudEvents attributes as Kafka message headers (edx-event-bus-kafka's names), and the EventsMetadata field
# each one carries.
HEADERS = {
    "ce_id": "id",
    "ce_type": "event_type",
    "ce_source": "source",
    "ce_specversion": "specversion",
    "ce_time": "time",
    "ce_minorversion": "minorversion",
    "sourcehost": "sourcehost",
    "sourcelib": "sourcelib",
}
KEY_HEADER = "event_key"  # the value of the producer's event_key_field (Kafka: the message key)
SITE_HEADER = "Rthub-Site"  # which LMS (an RTHUB_SITES name) sent it; EVENT_BUS_NATS_SITE on the LMS
ERROR_HEADER = "Rthub-Error"  # dead letters: the receivers' error
DELIVERIES_HEADER = "Rthub-Deliveries"
ORIGIN_HEADER = "Rthub-Subject"
SEQ_HEADER = "Rthub-Stream-Seq"


def full_topic(topic: str, prefix: str = "") -> str:
    """``<prefix>-<topic>`` as the Kafka and Redis backends name it (EVENT_BUS_TOPIC_PREFIX)."""
    return f"{prefix}-{topic}" if prefix else topic


def topic_subject(full: str) -> str:
    return f"{PREFIX}.{encode_token(full)}"


def dlq_subject(group: str, full: str) -> str:
    return f"{DLQ_PREFIX}.{encode_token(group)}.{encode_token(full)}"


def durable_name(group: str, full: str) -> str:
    """The JetStream durable consumer of a consumer group on a topic (a name may not hold ``.``, ``*``, ``>``)."""

    def clean(value: str) -> str:
        return "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in value)

    return f"{clean(group)}__{clean(full)}"[:200]


class EventType(NamedTuple):
    """One entry of the event catalog. ``protocols`` empty = carried nowhere; ``refused`` says why."""

    name: str
    description: str
    protocols: tuple[str, ...]
    refused: str = ""  # why xAPI/Caliper have no statement for it (it is still available as cloudevents)
    source: str = "openedx-events"


_BOTH = ("xapi", "caliper", "cloudevents")
_RAW = ("cloudevents",)
_L = "org.openedx.learning."

# The Open edX event types the hub knows. Mapped ones follow event-routing-backends' statements for the
# equivalent tracking event (docs/event-bus.md has the table); the others are refused for xAPI and Caliper
# with the reason given, and remain available to consumers of the ``cloudevents`` protocol.
CATALOG: dict[str, EventType] = {
    e.name: e
    for e in (
        EventType(
            _L + "course.enrollment.created.v1",
            "a learner enrolled in a course (xAPI registered, Caliper Enrolled)",
            _BOTH,
        ),
        EventType(
            _L + "course.unenrollment.completed.v1",
            "a learner left a course (xAPI unregistered, Caliper Unenrolled)",
            _BOTH,
        ),
        EventType(
            _L + "certificate.created.v1", "a certificate was issued (xAPI earned, Caliper Completed)", _BOTH
        ),
        EventType(
            _L + "course.passing.status.updated.v1",
            "a learner's grade crossed the passing threshold (xAPI passed/failed, Caliper Graded)",
            _BOTH,
        ),
        EventType(
            _L + "course.enrollment.changed.v1",
            "an enrollment's mode or state changed",
            _RAW,
            "a mode change has no xAPI verb or Caliper action; activation and deactivation come as "
            "enrollment.created / unenrollment.completed",
        ),
        EventType(
            _L + "certificate.changed.v1",
            "a certificate's status changed",
            _RAW,
            "a status change is not a learning experience; issued certificates come as certificate.created",
        ),
        EventType(
            _L + "certificate.revoked.v1",
            "a certificate was revoked",
            _RAW,
            "xAPI and the Caliper profile have no verb or action for revoking an achievement",
        ),
        EventType(
            _L + "student.registration.completed.v1",
            "a user account was created",
            _RAW,
            "account creation is not course activity (event-routing-backends translates none either)",
        ),
        EventType(
            _L + "course.persistent_grade_summary.changed.v1",
            "a learner's persisted course grade changed",
            _RAW,
            "carries only the numeric user id (no username to anonymise) and repeats the grade at every "
            "change; passing and failing come as passing.status.updated",
        ),
        EventType(
            _L + "auth.session.login.completed.v1",
            "a user logged in",
            _RAW,
            "a login is not course activity and names no course",
        ),
        EventType(
            _L + "program.certificate.awarded.v1",
            "a program certificate was awarded",
            _RAW,
            "names a program, no course: the hub's grants are by site, org and course",
        ),
    )
}


def catalog() -> list[EventType]:
    return sorted(CATALOG.values(), key=lambda e: e.name)


def translated(protocol: str) -> frozenset[str]:
    """The Open edX event types ``protocol`` has statements for."""
    return frozenset(e.name for e in CATALOG.values() if protocol in e.protocols)
