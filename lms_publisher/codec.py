"""One raw event -> (subject, stable id, bytes): shared by backfill, the demo and the in-LMS backend.

The id is a digest of the site and the canonical JSON (keys sorted), so publishing the same event twice gives
the same ``Nats-Msg-Id`` and JetStream drops the second copy inside its duplicate window.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any, NamedTuple

import msgspec

from hub.core import trace
from hub.core.events import DEFAULT_LIMITS, InvalidEvent, Limits, depth_reason, dimensions
from hub.core.subjects import RAW_PREFIX, subject


class Record(NamedTuple):
    subject: str
    msg_id: str
    payload: bytes
    trace: str = ""  # the W3C traceparent sent as a header (hub.core.trace)


def _fallback(obj: Any) -> Any:
    """Anything msgspec cannot encode natively (Decimal subclasses, lazy strings, ...) becomes its text."""
    return str(obj)


_encoder = msgspec.json.Encoder(enc_hook=_fallback, order="deterministic")


def message_id(site: str, payload: bytes) -> str:
    return hashlib.sha256(site.encode() + b"\0" + payload).hexdigest()[:40]


def to_record(event: dict[str, Any], site: str, limits: Limits = DEFAULT_LIMITS) -> Record:
    """Encode a backend-shape event; a ``datetime`` timestamp is written as the LMS writes it (isoformat).

    Raises :class:`InvalidEvent` for an event over the size or depth limits, with the reason the hub would
    quarantine it for: what cannot be translated is refused where it is published."""
    timestamp = event.get("timestamp")
    if isinstance(timestamp, dt.datetime):
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=dt.UTC)
        event = {**event, "timestamp": timestamp.astimezone(dt.UTC).isoformat()}
    name = event.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidEvent("missing name")
    org, course, name = dimensions(event)
    try:
        payload = _encoder.encode(event)
    except RecursionError:
        raise InvalidEvent(depth_reason(limits.max_depth)) from None
    limits.check(payload)
    return Record(subject(RAW_PREFIX, site, org, course, name), message_id(site, payload), payload,
                  trace.of_event(event))


def raw_record(data: bytes, site: str) -> Record:
    """Bytes sent as they are (to exercise the hub's quarantine): subject from the event if it parses."""
    org = course = None
    name = "unparsed"
    try:
        DEFAULT_LIMITS.check(data)  # never hand the decoder what could exhaust its stack
        obj = msgspec.json.decode(data)
        if isinstance(obj, dict):
            from hub.core.events import normalize

            org, course, name = dimensions(normalize(obj))
    except (msgspec.DecodeError, InvalidEvent, TypeError, AttributeError):
        pass
    return Record(subject(RAW_PREFIX, site, org, course, name), message_id(site, data), data)
