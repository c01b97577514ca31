"""The hub's JetStream streams and KV buckets (names in :mod:`hub.core.subjects`), created idempotently.

The deliverer's own are declared in :mod:`hub.deliver.state.setup`; :mod:`hub.ops.streams` creates them all."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, BadRequestError, NotFoundError

from hub.core import openedx
from hub.core.protocols import PROTOCOLS
from hub.core.settings import StreamSettings
from hub.core.subjects import (
    BUCKETS,
    DEAD_LETTER_STREAM,
    LEARNERS_BUCKET,
    QUARANTINE_STREAM,
    RAW_STREAM,
    TARGETS_BUCKET,
)

log = logging.getLogger("rthub.streams")

DAY = 86400.0
# Streams whose consumers are per integration (protocol streams, redrive, course partitions): a stream without a
# limit of its own gets nats-server's 1,000 consumers, and the 1,001st integration could not start (issue 20).
MAX_CONSUMERS = 1_000_000
# No earlier revision kept: targets hold (sealed) endpoint secrets, learners identity fields that retirement
# must leave nowhere.
ONE_REVISION = (TARGETS_BUCKET, LEARNERS_BUCKET)


def stream_configs(s: StreamSettings) -> list[StreamConfig]:
    """The stream definitions; the raw stream's bounded age is what keeps personal data short-lived."""

    def cfg(name: str, subjects: list[str], days: float, description: str, consumers: int | None = None) -> StreamConfig:
        return StreamConfig(
            name=name, description=description, subjects=subjects, retention=RetentionPolicy.LIMITS,
            max_age=days * DAY, storage=StorageType.FILE, num_replicas=s.stream_replicas,
            discard=DiscardPolicy.OLD, duplicate_window=s.duplicate_window_s, max_consumers=consumers,
        )

    return [
        cfg(RAW_STREAM, ["lms.>"], s.raw_max_age_days, "raw Open edX tracking events: lms.<site>.<org>.<course>.<event>"),
        *(cfg(p.stream, [f"{p.prefix}.>"], s.protocol_max_age_days, p.description, MAX_CONSUMERS)
          for p in PROTOCOLS.values()),
        cfg(QUARANTINE_STREAM, ["quarantine.>"], s.quarantine_max_age_days,
            "events the hub could not process; reason in the Rthub-Reason header"),
        cfg(DEAD_LETTER_STREAM, ["dlq.>"], s.protocol_max_age_days,
            "deliveries that failed after the last retry: dlq.<integration>"),
        # Open edX Events (the event bus, lms_publisher.event_bus): personal data like the raw stream, so its age
        cfg(openedx.STREAM, [f"{openedx.PREFIX}.>"], s.raw_max_age_days,
            "Open edX Events (OEP-41), Avro, Kafka-named headers: openedx.<topic>"),
        cfg(openedx.DLQ_STREAM, [f"{openedx.DLQ_PREFIX}.>"], s.raw_max_age_days,
            "Open edX Events whose receivers kept failing: openedx_dlq.<group>.<topic>"),
    ]


# What makes two definitions of a stream differ, when the wanted one sets it. Start times of sources are not
# in it: every process builds its config with "from now on", and a config that differs only in when it was
# built is the same stream (two deliverers started together both crashed on that, issue 20).
_COMPARED = ("subjects", "retention", "max_age", "storage", "num_replicas", "discard", "duplicate_window",
             "description", "sources", "max_consumers")
ALREADY_IN_USE = 10058  # JetStream: stream name already in use with a different configuration


def _source_shape(sources) -> list | None:
    if sources is None:
        return None
    return [(x.name, x.filter_subject, [(t.src, t.dest) for t in x.subject_transforms or []]) for x in sources]


def differences(have: StreamConfig, want: StreamConfig) -> list[str]:
    """The fields ``want`` sets that ``have`` holds otherwise (pure; source start times ignored)."""
    out = []
    for f in _COMPARED:
        w, h = getattr(want, f), getattr(have, f)
        if f == "sources":
            w, h = _source_shape(w), _source_shape(h)
        if w is not None and not (f == "duplicate_window" and not w) and w != h:  # 0: the server's default
            out.append(f)
    return out


def _settle(have: StreamConfig, want: StreamConfig) -> StreamConfig:
    """``want`` as it may be applied over ``have``: replicas never lowered, sources keep their start times."""
    want = dataclasses.replace(want)
    if (have.num_replicas or 1) > (want.num_replicas or 1):
        # A service started without RTHUB_STREAM_REPLICAS must not shrink a clustered stream to one copy
        # (it would lose the stream with its node); lowering replicas is an operator's explicit act.
        log.warning("stream %s keeps %s replicas (settings ask for %s)", want.name, have.num_replicas,
                    want.num_replicas)
        want.num_replicas = have.num_replicas
    if want.sources:
        started = {x.name: x.opt_start_time for x in have.sources or []}
        want.sources = [dataclasses.replace(x, opt_start_time=started.get(x.name, x.opt_start_time))
                        for x in want.sources]
    return want


async def ensure_stream(js: JetStreamContext, want: StreamConfig) -> str:
    """Create ``want`` or bring the stream to it; ``created``, ``updated`` or ``unchanged``. Idempotent under
    concurrent calls: a create that loses the race (10058) re-reads what the winner made and compares."""
    for _ in range(5):
        try:
            have = (await js.stream_info(want.name)).config
        except NotFoundError:
            try:
                await js.add_stream(want)
                return "created"
            except BadRequestError as exc:
                if exc.err_code != ALREADY_IN_USE:
                    raise
                continue  # created by another process in between: compare with theirs
        settled = _settle(have, want)
        if not differences(have, settled):
            return "unchanged"
        await js.update_stream(settled)
        log.info("stream %s updated (%s)", want.name, ", ".join(differences(have, settled)))
        return "updated"
    raise RuntimeError(f"stream {want.name} kept changing while it was being created")


async def ensure_bucket(js: JetStreamContext, bucket: str, history: int, replicas: int) -> str:
    """Create a KV bucket if missing (``created``/``unchanged``); an existing one is never changed here (its
    replicas and history are an operator's). Idempotent under concurrent calls like :func:`ensure_stream`."""
    for _ in range(5):
        try:
            await js.key_value(bucket)
            return "unchanged"
        except NotFoundError:  # BucketNotFoundError (a NotFoundError)
            pass
        try:
            await js.create_key_value(bucket=bucket, history=history, replicas=replicas)
            return "created"
        except BadRequestError as exc:
            if exc.err_code != ALREADY_IN_USE:
                raise
    raise RuntimeError(f"bucket {bucket} kept changing while it was being created")


async def ensure_streams(js: JetStreamContext, s: StreamSettings) -> dict[str, str]:
    """Create missing streams and buckets, update changed ones; returns ``{name: created|updated|unchanged}``."""
    result = {want.name: await ensure_stream(js, want) for want in stream_configs(s)}
    for bucket in BUCKETS:
        # Targets and learners keep no earlier revision (portal also rolls targets up).
        result["KV_" + bucket] = await ensure_bucket(js, bucket, 1 if bucket in ONE_REVISION else 5,
                                                     s.stream_replicas)
    return result


async def ensure_streams_when_ready(js: JetStreamContext, s: StreamSettings, timeout: float = 120.0) -> dict[str, str]:
    """``ensure_streams``, retried while JetStream does not answer yet (a cluster electing its meta or stream
    leaders, a server still starting): a service started beside its server waits instead of exiting."""
    deadline = time.monotonic() + timeout
    warned = False
    while True:
        try:
            return await ensure_streams(js, s)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError, APIError) as exc:
            if isinstance(exc, APIError) and exc.code != 503:  # a real refusal, not "not ready yet"
                raise
            if time.monotonic() > deadline:
                raise
            if not warned:
                log.warning("JetStream not ready (%s: %s); retrying for up to %.0f s", type(exc).__name__, exc,
                            timeout)
                warned = True
            await asyncio.sleep(1)
