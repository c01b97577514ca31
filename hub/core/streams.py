"""Every JetStream stream and KV bucket the system uses, declared once and created idempotently."""

from __future__ import annotations

import logging

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from hub.core import openedx
from hub.core.protocols import PROTOCOLS
from hub.core.settings import StreamSettings

log = logging.getLogger("rthub.streams")

DAY = 86400.0
RAW_STREAM = "LMS_RAW"
QUARANTINE_STREAM = "QUARANTINE"
DEAD_LETTER_STREAM = "DEAD_LETTER"
PROTOCOL_STREAMS = {p.name: p.stream for p in PROTOCOLS.values()}

GRANTS_BUCKET = "rthub_grants"
TARGETS_BUCKET = "rthub_targets"
COURSES_BUCKET = "rthub_courses"
BUCKETS = (GRANTS_BUCKET, TARGETS_BUCKET, COURSES_BUCKET)


def stream_configs(s: StreamSettings) -> list[StreamConfig]:
    """The stream definitions; the raw stream's bounded age is what keeps personal data short-lived."""

    def cfg(name: str, subjects: list[str], days: float, description: str) -> StreamConfig:
        return StreamConfig(
            name=name, description=description, subjects=subjects, retention=RetentionPolicy.LIMITS,
            max_age=days * DAY, storage=StorageType.FILE, num_replicas=s.stream_replicas,
            discard=DiscardPolicy.OLD, duplicate_window=s.duplicate_window_s,
        )

    return [
        cfg(RAW_STREAM, ["lms.>"], s.raw_max_age_days, "raw Open edX tracking events: lms.<site>.<org>.<course>.<event>"),
        *(cfg(p.stream, [f"{p.prefix}.>"], s.protocol_max_age_days, p.description) for p in PROTOCOLS.values()),
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


_COMPARED = ("subjects", "max_age", "num_replicas", "duplicate_window", "description", "discard", "retention")


async def ensure_streams(js: JetStreamContext, s: StreamSettings) -> dict[str, str]:
    """Create missing streams and buckets, update changed ones; returns ``{name: created|updated|unchanged}``."""
    result: dict[str, str] = {}
    for want in stream_configs(s):
        try:
            have = (await js.stream_info(want.name)).config
        except NotFoundError:
            await js.add_stream(want)
            result[want.name] = "created"
            continue
        if (have.num_replicas or 1) > (want.num_replicas or 1):
            # A service started without RTHUB_STREAM_REPLICAS must not shrink a clustered stream to one copy
            # (it would lose the stream with its node); lowering replicas is an operator's explicit act.
            log.warning("stream %s keeps %s replicas (settings ask for %s)", want.name, have.num_replicas,
                        want.num_replicas)
            want.num_replicas = have.num_replicas
        if any(getattr(have, f) != getattr(want, f) for f in _COMPARED):
            await js.update_stream(want)
            result[want.name] = "updated"
            log.info("stream %s updated", want.name)
        else:
            result[want.name] = "unchanged"
    for bucket in BUCKETS:
        try:
            await js.key_value(bucket)
            result["KV_" + bucket] = "unchanged"
        except NotFoundError:  # BucketNotFoundError (a NotFoundError)
            # Targets hold (sealed) endpoint secrets: keep no earlier revision of them (portal also rolls up).
            await js.create_key_value(bucket=bucket, history=1 if bucket == TARGETS_BUCKET else 5,
                                      replicas=s.stream_replicas)
        # (an existing bucket keeps its replicas: buckets are never shrunk or changed here)
            result["KV_" + bucket] = "created"
    return result



async def ensure_all(timeout: float) -> None:
    """Every stream and bucket (the hub's and the deliverer's), retried until the cluster answers: a deployment's
    one-shot init step, so services never race to create R3 streams while the meta leader is being elected."""
    import asyncio
    import time

    from hub.core.natsconn import connect
    from hub.core.settings import from_env
    from hub.deliver.settings import DeliverSettings
    from hub.deliver.store import ensure_delivery

    settings = from_env(DeliverSettings)
    deadline = time.monotonic() + timeout
    nc = await connect(settings, "rthub-streams")
    try:
        js = nc.jetstream()
        while True:
            try:
                await ensure_streams(js, settings)
                await ensure_delivery(js, settings)
                return
            except (nats.errors.Error, TimeoutError) as exc:  # no meta leader yet / stream leaders being elected
                if time.monotonic() > deadline:
                    raise
                log.warning("streams not ready yet (%s: %s); retrying", type(exc).__name__, exc)
                await asyncio.sleep(1)
    finally:
        await nc.close()


def add_parser(sub) -> None:
    p = sub.add_parser("streams", help="create or update every stream and bucket, waiting for the cluster "
                                       "(compose's streams-init)")
    p.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")

    def run(args) -> int:
        import asyncio

        asyncio.run(ensure_all(args.timeout))
        print("streams and buckets ready")
        return 0

    p.set_defaults(func=run)
