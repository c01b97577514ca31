"""Where delivery state lives in NATS, declared once and created idempotently.

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

import datetime as dt

import msgspec
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from hub.core.streams import DAY, DEAD_LETTER_STREAM
from hub.deliver.settings import DeliverSettings, seconds

LOG_STREAM = "DELIVERY_LOG"
REDRIVE_STREAM = "REDRIVE"
STATE_BUCKET = "rthub_delivery"
DEAD_LETTER_STREAM_NAME = DEAD_LETTER_STREAM

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


def stream_configs(s: DeliverSettings) -> list[StreamConfig]:
    return [
        StreamConfig(name=LOG_STREAM, subjects=["attempts.>"], retention=RetentionPolicy.LIMITS,
                     max_age=seconds(s.attempt_log_retention), storage=StorageType.FILE,
                     num_replicas=s.stream_replicas, discard=DiscardPolicy.OLD,
                     description="delivery attempts: attempts.<integration>"),
        StreamConfig(name=REDRIVE_STREAM, subjects=["redrive.>"], retention=RetentionPolicy.LIMITS,
                     max_age=s.protocol_max_age_days * DAY, storage=StorageType.FILE,
                     num_replicas=s.stream_replicas, discard=DiscardPolicy.OLD,
                     description="dead letters sent back for delivery: redrive.<integration>"),
    ]


async def ensure_delivery(js: JetStreamContext, s: DeliverSettings) -> None:
    """Create or update the delivery streams and the state bucket (idempotent)."""
    for want in stream_configs(s):
        try:
            have = (await js.stream_info(want.name)).config
        except NotFoundError:
            await js.add_stream(want)
            continue
        if (have.max_age, have.subjects, have.num_replicas) != (want.max_age, want.subjects, want.num_replicas):
            await js.update_stream(want)
    if s.partitions > 0:
        from hub.deliver.partitions import PARTS_STREAM, parts_stream_config

        want = parts_stream_config(s.partitions, s.stream_replicas, s.protocol_max_age_days,
                                   start=dt.datetime.now(dt.UTC))  # from now on, not the history
        try:
            have = (await js.stream_info(PARTS_STREAM)).config
            def shape(c: StreamConfig) -> list:
                return [(x.name, [t.dest for t in x.subject_transforms or []]) for x in c.sources or []]

            if (shape(have), have.num_replicas) != (shape(want), want.num_replicas):
                await js.update_stream(want)
        except NotFoundError:
            await js.add_stream(want)
    try:
        await js.key_value(STATE_BUCKET)
    except Exception:  # noqa: BLE001 - BucketNotFoundError or NotFoundError by nats-py version
        await js.create_key_value(bucket=STATE_BUCKET, history=1, replicas=s.stream_replicas)


def attempts_subject(grant_id: str) -> str:
    return f"attempts.{grant_id}"


def redrive_subject(grant_id: str) -> str:
    return f"redrive.{grant_id}"


def dlq_subject(grant_id: str) -> str:
    return f"dlq.{grant_id}"


def header_text(text: str, limit: int) -> str:
    """A header-safe excerpt: one line, printable, bounded."""
    flat = " ".join(text.split())
    return flat[:limit]
