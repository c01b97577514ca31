"""Open edX Events (OEP-41) -> xAPI, Caliper and CloudEvents: pure functions over decoded event data.

The input is what the hub decodes from the event bus: the event type, the event data as the Avro record dict
(plain JSON types: opaque keys and times as text) and the metadata (CloudEvents attributes). For xAPI and
Caliper an event is restated as the tracking event the LMS logs at the same moment (enrollment created ->
``edx.course.enrollment.activated``, ...) and translated by the tracking translators, so consumers see one
vocabulary, the reference implementation's, whichever stream the moment came from; the certificate, which has
no tracking translator, is built from the same parts (verb ``earned`` on the course). Which types map, and why
the others are refused: :data:`hub.core.openedx.CATALOG` and docs/event-bus.md.
"""

from __future__ import annotations

from typing import Any

import msgspec

from hub.core.openedx import CATALOG
from hub.translate import caliper, xapi
from hub.translate.base import Rejected, TranslateContext

_L = "org.openedx.learning."
ENROLLED = _L + "course.enrollment.created.v1"
UNENROLLED = _L + "course.unenrollment.completed.v1"
CERTIFICATE = _L + "certificate.created.v1"
PASSING = _L + "course.passing.status.updated.v1"
_encode = msgspec.json.Encoder().encode

# where the learner and the course are in each mapped type's data
_PAYLOAD = {
    ENROLLED: "enrollment",
    UNENROLLED: "enrollment",
    CERTIFICATE: "certificate",
    PASSING: "course_passing_status",
}


def course_key(data: dict) -> str | None:
    """The course an event is about: ``<payload>.course.course_key`` (or a top-level ``course_key``)."""
    for value in data.values():
        if isinstance(value, dict):
            course = value.get("course")
            if isinstance(course, dict) and isinstance(course.get("course_key"), str):
                return course["course_key"]
            if isinstance(value.get("course_key"), str):
                return value["course_key"]
    return None


def org_of(course: str | None) -> str | None:
    """``course-v1:ORG+NUM+RUN`` (and ``ccx-v1:``), or the old ``ORG/NUM/RUN``."""
    if not course:
        return None
    if ":" in course:
        rest = course.split(":", 1)[1]
        return rest.split("+", 1)[0] or None
    return course.split("/", 1)[0] or None


def dimensions(data: dict) -> tuple[str | None, str | None]:
    """``(org, course)`` for grants and subjects."""
    course = course_key(data)
    return org_of(course), course


def user_key(event_type: str, data: dict) -> tuple[str, str | None] | None:
    """``(user id, username)`` of the learner (as :func:`hub.translate.base.user_of` gives for tracking events)."""
    payload = data.get(_PAYLOAD.get(event_type, ""))
    user = payload.get("user") if isinstance(payload, dict) else None
    if not isinstance(user, dict) or user.get("id") is None:
        return None
    pii = user.get("pii") if isinstance(user.get("pii"), dict) else {}
    return str(user["id"]), pii.get("username")


def as_tracking(event_type: str, data: dict, meta: dict) -> dict:
    """The tracking event the LMS logs for the same moment (normalized shape); raises :class:`Rejected`."""
    payload = data.get(_PAYLOAD[event_type])
    if not isinstance(payload, dict):
        raise Rejected(f"{event_type} without its data")
    user = user_key(event_type, data)
    course = course_key(data)
    if user is None or course is None:
        raise Rejected("no learner or no course")
    user_id, username = user
    if event_type == PASSING:
        name = "edx.course.grade.now_passed" if payload.get("is_passing") else "edx.course.grade.now_failed"
    else:
        name = {
            ENROLLED: "edx.course.enrollment.activated",
            UNENROLLED: "edx.course.enrollment.deactivated",
            CERTIFICATE: "edx.certificate.created",
        }[event_type]
    event_data: dict[str, Any] = {
        "course_id": course,
        "user_id": int(user_id) if user_id.isdigit() else user_id,
    }
    if "mode" in payload:
        event_data["mode"] = payload["mode"]
    context = {"course_id": course, "org_id": org_of(course), "user_id": event_data["user_id"]}
    if username:
        context["username"] = username
    return {
        "name": name,
        "timestamp": meta["time"],
        "data": event_data,
        "context": context,
        "event_source": "server",
    }


def _certificate_xapi(tracking: dict, ctx: TranslateContext) -> list[dict]:
    """``earned`` on the course (the verb the reference uses for course achievements), result completed."""
    ev = xapi.Ev(tracking, ctx)
    context = {"extensions": xapi._base_extensions(ev)}
    result = {"completion": True, "success": True}
    return [xapi._statement(ev, "earned", xapi.course_object(ev), xapi._actor_of(ev), context, result)]


def cloudevent(event_type: str, data: dict, meta: dict, external_id: str | None) -> dict:
    """A CloudEvents 1.0 structured event: the Open edX event itself, its data as JSON. The learner's personal
    fields (``pii``: username, email, name) are replaced by the anonymized id, as in the other protocols."""
    out = {
        "specversion": "1.0",
        "id": meta["id"],
        "source": meta.get("source") or "openedx",
        "type": event_type,
        "time": meta["time"],
        "datacontenttype": "application/json",
    }
    course = course_key(data)
    if course:
        out["subject"] = course
    for ext in ("minorversion", "sourcehost", "sourcelib"):
        if meta.get(ext) not in (None, ""):
            out[ext] = str(meta[ext])
    out["data"] = _without_pii(data, external_id)
    return out


def _without_pii(value: Any, external_id: str | None) -> Any:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "pii":
                out["external_id"] = external_id
            else:
                out[k] = _without_pii(v, external_id)
        return out
    if isinstance(value, list):
        return [_without_pii(v, external_id) for v in value]
    return value


def translate(protocol: str, event_type: str, data: dict, meta: dict, ctx: TranslateContext) -> list[dict]:
    """The statements (xAPI), events (Caliper) or the CloudEvent of one Open edX event; ``[]`` when the
    protocol has nothing for it (:func:`supported`). Raises :class:`Rejected` for data it cannot use."""
    entry = CATALOG.get(event_type)
    if entry is None or protocol not in entry.protocols:
        return []
    if protocol == "cloudevents":
        user = user_key(event_type, data)
        external = ctx.ids.get("cloudevents", user[0], user[1]) if user else None
        return [cloudevent(event_type, data, meta, external)]
    tracking = as_tracking(event_type, data, meta)
    if event_type == CERTIFICATE:
        if protocol == "xapi":
            return _certificate_xapi(tracking, ctx)
        tracking = {**tracking, "name": "edx.course.grade.passed.first_time"}  # Caliper: Completed the course
    if protocol == "caliper":
        if tracking["name"] == "edx.course.grade.now_failed":
            return []  # Caliper's profile has no action for failing a course
        if tracking["name"] == "edx.course.grade.now_passed":
            tracking = {**tracking, "name": "edx.course.grade.passed.first_time"}
        return caliper.translate(tracking, ctx)
    return xapi.translate(tracking, ctx)


def supported(protocol: str) -> frozenset[str]:
    return frozenset(name for name, e in CATALOG.items() if protocol in e.protocols)


def translate_json(
    protocol: str, event_type: str, data: dict, meta: dict, ctx: TranslateContext
) -> list[tuple[str, bytes]]:
    """``(id, JSON bytes)`` pairs, what the hub publishes (the id as Nats-Msg-Id)."""
    try:
        return [(s["id"], _encode(s)) for s in translate(protocol, event_type, data, meta, ctx)]
    except Rejected:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed data of any shape becomes a rejection with a reason
        raise Rejected(f"malformed {event_type} ({type(exc).__name__}: {str(exc)[:80]})") from None
