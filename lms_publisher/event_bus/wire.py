"""Event <-> NATS message: metadata as Kafka-named headers, the Avro body, and the spooled form of both.

The Avro (de)serialisation is openedx-events' own, so a message is readable by anything that reads the Kafka
backend's messages given these headers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from hub.core.openedx import HEADERS, KEY_HEADER, SITE_HEADER
from lms_publisher.codec import Record


class Spooled(msgspec.Struct, array_like=True):
    """What the backend's queue and spool hold for one event: headers and the Avro bytes (base64 in JSON, so
    a spool line never holds a newline)."""

    headers: dict[str, str]
    data: bytes


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Spooled).decode


def headers_from_metadata(metadata: Any, key: str | None, site: str) -> dict[str, str]:
    """The Kafka backend's header values: ids and times as text, sourcelib as dotted version."""
    out = {}
    for header, field in HEADERS.items():
        value = "1.0" if field == "specversion" else getattr(metadata, field)  # CloudEvents spec version
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, tuple):
            value = ".".join(map(str, value))
        out[header] = str(value)
    if key is not None:
        out[KEY_HEADER] = key
    out[SITE_HEADER] = site
    return out


def metadata_from_headers(headers: dict[str, str]):
    """The EventsMetadata of a message (``ce_specversion`` is fixed by openedx-events)."""
    from openedx_events.data import EventsMetadata

    return EventsMetadata(
        event_type=headers["ce_type"],
        id=UUID(headers["ce_id"]),
        minorversion=int(headers.get("ce_minorversion") or 0),
        source=headers.get("ce_source"),
        sourcehost=headers.get("sourcehost"),
        time=datetime.fromisoformat(headers["ce_time"]) if headers.get("ce_time") else None,
        sourcelib=tuple(map(int, headers["sourcelib"].split("."))) if headers.get("sourcelib") else None,
    )


def event_key(event_data: dict, field: str | None) -> str | None:
    """The value at the period-delimited ``event_key_field`` (e.g. ``enrollment.course.course_key``)."""
    if not field:
        return None
    value: Any = event_data
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        if value is None:
            return None
    return str(value)


def to_record(subject: str, headers: dict[str, str], data: bytes) -> Record:
    return Record(subject, headers["ce_id"], _encode(Spooled(headers, data)))


def from_record(record: Record) -> tuple[dict[str, str], bytes]:
    s = _decode(record.payload)
    return s.headers, s.data
