"""The deliverer's streams (attempt log, redrive, course partitions) and its state bucket, created idempotently."""

from __future__ import annotations

import datetime as dt

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from hub.core.streams import DAY, MAX_CONSUMERS, ensure_bucket, ensure_stream
from hub.core.subjects import DELIVERY_LOG_STREAM, DELIVERY_STATE_BUCKET, REDRIVE_STREAM
from hub.deliver.engine.partitions import parts_stream_config
from hub.deliver.settings import DeliverSettings, seconds


def stream_configs(s: DeliverSettings) -> list[StreamConfig]:
    return [
        StreamConfig(
            name=DELIVERY_LOG_STREAM,
            subjects=["attempts.>"],
            retention=RetentionPolicy.LIMITS,
            max_age=seconds(s.attempt_log_retention),
            storage=StorageType.FILE,
            num_replicas=s.stream_replicas,
            discard=DiscardPolicy.OLD,
            description="delivery attempts: attempts.<integration>",
        ),
        StreamConfig(
            name=REDRIVE_STREAM,
            subjects=["redrive.>"],
            retention=RetentionPolicy.LIMITS,
            max_age=s.protocol_max_age_days * DAY,
            storage=StorageType.FILE,
            num_replicas=s.stream_replicas,
            discard=DiscardPolicy.OLD,
            description="dead letters sent back for delivery: redrive.<integration>",
            max_consumers=MAX_CONSUMERS,
        ),
    ]


async def ensure_delivery(js: JetStreamContext, s: DeliverSettings) -> None:
    """Create or update the delivery streams and the state bucket (idempotent, also when processes race)."""
    for want in stream_configs(s):
        await ensure_stream(js, want)
    if s.partitions > 0:
        # Sources from now on, not the history; an existing stream keeps its start (ensure_stream ignores it).
        await ensure_stream(js, parts_stream_config(s.partitions, s.stream_replicas, s.protocol_max_age_days,
                                                    start=dt.datetime.now(dt.UTC)))
    await ensure_bucket(js, DELIVERY_STATE_BUCKET, 1, s.stream_replicas)
