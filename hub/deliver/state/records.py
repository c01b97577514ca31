"""The records of delivery state in NATS (names in :mod:`hub.core.subjects`, created by :mod:`hub.deliver.state.setup`).

- ``DELIVERY_LOG`` stream, ``attempts.<grant id>``: one JSON record per HTTP attempt (first-try deliveries
  of the same moment summed up in one, see :func:`summarize`), kept for the configured retention (the
  attempt log the portal shows).
- ``REDRIVE`` stream, ``redrive.<grant id>``: dead letters sent back for another try; each deliverer runs a
  second consumer per integration on it.
- ``rthub_delivery`` KV bucket: ``stats.<grant id>.<process>`` counters and recent attempts per process,
  ``failing.<grant id>`` (first failure of the current failure streak, for disable-after-N-days),
  ``lease.<grant id>`` (which process delivers an ordered integration), ``replay.<grant id>`` (a replay
  in progress), ``schedule.<grant id>.<stream>.<seq>`` (where a held message is in its retry schedule).
"""

from __future__ import annotations

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


SUMMARY_IDS = 500  # statements per summary record: ~25 KiB of ids and seqs


def summarize(entries: list[Attempt]) -> list[Attempt]:
    """The attempt-log records of one flush: first-try deliveries (same source and status) are summed up in one
    record per ``SUMMARY_IDS`` statements (``t`` the latest, ``latency_ms`` the slowest, all ``ids``/``seqs``);
    every other attempt (a retry, a failure, a late success) keeps its own record. One log message per
    delivered statement was a third of the deliverer's NATS writes at full load."""
    out: list[Attempt] = []
    groups: dict[tuple[str, int | None], Attempt] = {}
    for a in entries:
        if a.outcome != "delivered" or a.attempt != 1 or a.error:
            out.append(a)
            continue
        key = (a.source, a.status)
        into = groups.get(key)
        if into is None or len(into.ids) >= SUMMARY_IDS:
            into = groups[key] = msgspec.structs.replace(a, ids=list(a.ids), seqs=list(a.seqs))
            out.append(into)
            continue
        into.t = max(into.t, a.t)
        into.latency_ms = max(into.latency_ms or 0.0, a.latency_ms or 0.0)
        into.ids.extend(a.ids)
        into.seqs.extend(a.seqs)
    return out


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
