"""The records of delivery state in NATS (names in :mod:`hub.core.subjects`, created by :mod:`hub.deliver.state.setup`).

- ``DELIVERY_LOG`` stream, ``attempts.<grant id>``: one JSON record per HTTP attempt, packed into arrays per
  flush (:func:`pack`), kept for the configured retention (the attempt log the portal shows).
- ``REDRIVE`` stream, ``redrive.<grant id>``: dead letters sent back for another try; each deliverer runs a
  second consumer per integration on it.
- ``rthub_delivery`` KV bucket: ``stats.<grant id>.<process>`` counters and recent attempts per process,
  ``failing.<grant id>`` (first failure of the current failure streak, for disable-after-N-days),
  ``lease.<grant id>`` (which process delivers an ordered integration), ``replay.<grant id>`` (a replay
  in progress), ``schedule.<grant id>.<stream>.<seq>`` (where a held message is in its retry schedule).
"""

from __future__ import annotations

import datetime as dt
import re

import msgspec

# Headers of dead letters and redriven messages.
H_REASON = "Rthub-Reason"
H_STATUS = "Rthub-Last-Status"
H_RESPONSE = "Rthub-Response"
H_SUBJECT = "Rthub-Subject"
H_STREAM = "Rthub-Stream"
H_SEQ = "Rthub-Stream-Seq"
H_ID = "Rthub-Statement-Id"
H_ATTEMPTS = "Rthub-Attempts"
H_FAILED_AT = "Rthub-Failed-At"
POSITION = (H_SUBJECT, H_ID, H_STREAM, H_SEQ)  # what a redriven copy keeps: where the statement came from


class DeadLetterHeaders(msgspec.Struct, kw_only=True):
    """What a dead letter carries besides the statement, in one place: written by
    :mod:`hub.deliver.engine.dead_letters`, read back by :mod:`hub.deliver.actions`."""

    reason: str = ""
    last_status: int = 0
    response: str = ""
    subject: str = ""
    statement_id: str = ""
    attempts: int = 0
    failed_at: str = ""  # ISO 8601
    stream: str = ""  # the protocol stream and sequence the statement was delivered from
    seq: int = 0

    def to_headers(self) -> dict[str, str]:
        return {name: str(getattr(self, field)) for field, name in _HEADER_OF.items()}

    @classmethod
    def from_headers(cls, headers: dict[str, str] | None) -> DeadLetterHeaders:
        h = headers or {}
        values = {field: h.get(name, "") for field, name in _HEADER_OF.items()}
        for field in ("last_status", "attempts", "seq"):
            values[field] = int(values[field]) if str(values[field]).isdigit() else 0
        return cls(**values)


_HEADER_OF = {"reason": H_REASON, "last_status": H_STATUS, "response": H_RESPONSE, "subject": H_SUBJECT,
              "statement_id": H_ID, "attempts": H_ATTEMPTS, "failed_at": H_FAILED_AT, "stream": H_STREAM,
              "seq": H_SEQ}


class Attempt(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One HTTP attempt (or one refusal before any HTTP) of a delivery."""

    t: float
    ids: list[str]
    attempt: int
    outcome: str
    status: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    excerpt: str | None = None
    source: str = "live"
    seqs: list[int] = []  # protocol-stream sequence of each statement (0: a test event), for "resend"
    url: str | None = None
    trace: str | None = None  # the W3C traceparent the request carried
    request_headers: dict[str, str] = {}  # as sent, signature and credentials redacted
    response_headers: dict[str, str] = {}
    response_body: str | None = None  # the first KB of the response body
    e2e_ms: float | None = None  # delivered: LMS event time of the first statement -> this answer (end to end)


_EVENT_TIME = re.compile(rb'"(?:timestamp|eventTime)"\s*:\s*"([0-9T:.+\-Z]{19,40})"')


def event_time(data: bytes) -> float | None:
    """When the LMS emitted the event a statement (xAPI ``timestamp``) or event (Caliper ``eventTime``) stands
    for, read from its first 4 KiB without decoding it (one regex per POST); ``None`` when absent."""
    m = _EVENT_TIME.search(data, 0, 4096)
    if m is None:
        return None
    try:
        when = dt.datetime.fromisoformat(m[1].decode())
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


PACK_BYTES = 256 * 1024  # one attempt-log message holds the records of one flush up to this size


def pack(entries: list[Attempt], max_bytes: int = PACK_BYTES) -> list[bytes]:
    """The attempt-log messages of one flush: JSON arrays of records, one record per HTTP attempt (never
    merged: the log lists attempts), as few messages as fit ``max_bytes`` each. One message per attempt was a
    third of the deliverer's NATS writes at full load; an array per flush (every 0.2 s) keeps that cost."""
    out: list[bytes] = []
    chunk: list[bytes] = []
    size = 2
    for a in entries:
        one = msgspec.json.encode(a)
        if chunk and size + len(one) + 1 > max_bytes:
            out.append(b"[" + b",".join(chunk) + b"]")
            chunk, size = [], 2
        chunk.append(one)
        size += len(one) + 1
    if chunk:
        out.append(b"[" + b",".join(chunk) + b"]")
    return out


def unpack(data: bytes) -> list[dict]:
    """The records of one attempt-log message: an array (now) or one object (records written before)."""
    value = msgspec.json.decode(data)
    if isinstance(value, dict):
        return [value]
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


class Stats(msgspec.Struct, kw_only=True):
    """Counters of one deliverer process for one integration (summed by ``integration_status``)."""

    delivered: int = 0
    attempts: int = 0
    failures: int = 0
    dead_lettered: int = 0
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    recent: list[Attempt] = []
    behind_since: float | None = None  # the endpoint answers but the lag has not come down (cannot keep up)
    updated: float | None = None  # when this process last wrote these counters


def header_text(text: str, limit: int) -> str:
    """A header-safe excerpt: one line, printable, bounded."""
    flat = " ".join(text.split())
    return flat[:limit]
