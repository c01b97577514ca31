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
