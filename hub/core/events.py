"""The two shapes of an Open edX tracking event, made one.

Inside the LMS an event-tracking backend receives ``{name, timestamp, data, context}``; tracking-log files
store ``{event_type, name?, time, event, context, username, session, ip, agent, host, referer, page}`` where a
browser event's ``event`` is a JSON *string*. :func:`normalize` turns either into the first shape, keeping the
log-only fields, so the rest of the system sees one shape.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any, NamedTuple

_OLD_KEY = re.compile(r"^([^/+:]+)/([^/]+)/([^/]+)$")
_LOG_FIELDS = ("username", "session", "ip", "agent", "host", "referer", "page", "accept_language", "event_source")

# The limits of one raw event, shared by every publisher (``rthub publish``, the LMS backend, the demo) and the
# hub, so an event is refused where it is published, with the reason the hub would quarantine it for.
MAX_EVENT_BYTES = 1 << 20
MAX_EVENT_DEPTH = 64  # real tracking events nest < 15 levels; decoders recurse, so depth must be bounded


class InvalidEvent(ValueError):
    """The input is no usable tracking event; ``str()`` is the reason."""


def size_reason(size: int, limit: int) -> str:
    return f"event is {size} bytes, over the {limit} byte limit"


def depth_reason(limit: int) -> str:
    return f"event is nested deeper than {limit} levels"


# A JSON string (escapes included), or an unterminated one running to the end: possessive, so every opening
# quote matches at once and hostile input cannot make the scan quadratic.
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.S)
_BRACKETS = bytes(range(256)).translate(None, b"[]{}")  # every other byte: deleted
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes


def nesting_depth(data: bytes) -> int:
    """How deep brackets nest in JSON text, without decoding it (strings skipped): a pre-scan, because every
    JSON decoder recurses and ``[[[[...`` raises RecursionError. Never less than the depth a decoder reaches."""
    steps = _STRING.sub(b"", data).translate(_STEPS, _BRACKETS)
    return max(itertools.accumulate(memoryview(steps).cast("b"), initial=0))


class Limits(NamedTuple):
    """Size, then nesting depth: both checked on the bytes before anything decodes them."""

    max_bytes: int = MAX_EVENT_BYTES
    max_depth: int = MAX_EVENT_DEPTH

    def check(self, data: bytes) -> None:
        """Raise :class:`InvalidEvent` with the reason if ``data`` is over a limit."""
        if len(data) > self.max_bytes:
            raise InvalidEvent(size_reason(len(data), self.max_bytes))
        # fast path: with no more brackets than the limit in all, nothing can nest deeper (most events)
        if data.count(b"[") + data.count(b"{") > self.max_depth and nesting_depth(data) > self.max_depth:
            raise InvalidEvent(depth_reason(self.max_depth))


DEFAULT_LIMITS = Limits()


def normalize(obj: Any, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The backend shape of a raw event of either shape; raises :class:`InvalidEvent` with a reason.

    A browser event's ``event`` string is JSON text decoded here, so it is held to ``limits`` first."""
    if not isinstance(obj, dict):
        raise InvalidEvent(f"event is a JSON {type(obj).__name__}, not an object")
    name = obj.get("name") or obj.get("event_type")
    if not isinstance(name, str) or not name:
        raise InvalidEvent("missing name (or event_type)")
    timestamp = obj.get("timestamp") or obj.get("time")
    if not isinstance(timestamp, str) or not timestamp:
        raise InvalidEvent("missing timestamp (or time)")
    context = obj.get("context")
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise InvalidEvent("context is not an object")
    if "data" in obj:
        data = obj["data"]
    else:
        data = obj.get("event")
        if isinstance(data, str) and data[:1] in "{[":
            limits.check(data.encode(errors="surrogatepass"))
            try:
                data = json.loads(data)
            except ValueError:
                pass
    if "data" in obj and "event_type" not in obj:
        event = obj
        if event.get("name") is not name or event.get("timestamp") is not timestamp:
            event = {**obj, "name": name, "timestamp": timestamp}
        return event
    event = {"name": name, "timestamp": timestamp, "data": {} if data is None else data, "context": context}
    for field in _LOG_FIELDS:
        value = obj.get(field)
        if value not in (None, ""):
            event[field] = value
    if obj.get("event_type") and obj.get("event_type") != name:
        event["event_type"] = obj["event_type"]
    return event


def course_key(event: dict[str, Any]) -> str | None:
    """The course an event belongs to: its context, else its data (some server events carry it there)."""
    context = event.get("context") or {}
    course = context.get("course_id") if isinstance(context, dict) else None
    if not course:
        data = event.get("data")
        course = data.get("course_id") if isinstance(data, dict) else None
    return course if isinstance(course, str) and course else None


def org_of(event: dict[str, Any], course: str | None) -> str | None:
    """The org: ``context.org_id``, else parsed from the course key (``course-v1:Org+...``, ``Org/C/R``)."""
    context = event.get("context") or {}
    org = context.get("org_id") if isinstance(context, dict) else None
    if isinstance(org, str) and org:
        return org
    if course:
        if ":" in course:
            body = course.split(":", 1)[1]
            org = body.split("+", 1)[0]
            return org or None
        m = _OLD_KEY.match(course)
        if m:
            return m.group(1)
    return None


def dimensions(event: dict[str, Any]) -> tuple[str | None, str | None, str]:
    """``(org, course, name)`` of a normalized event: what goes into its subject."""
    course = course_key(event)
    return org_of(event, course), course, event["name"]
