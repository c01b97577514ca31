"""The deliverer's streams (attempt log, redrive, course partitions) and its state bucket, created idempotently."""

from __future__ import annotations

import datetime as dt

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from hub.core.streams import DAY
from hub.core.subjects import DELIVERY_LOG_STREAM, DELIVERY_STATE_BUCKET, PARTS_STREAM, REDRIVE_STREAM
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
        ),
    ]


async def ensure_delivery(js: JetStreamContext, s: DeliverSettings) -> None:
    """Create or update the delivery streams and the state bucket (idempotent)."""
    for want in stream_configs(s):
        try:
            have = (await js.stream_info(want.name)).config
        except NotFoundError:
            await js.add_stream(want)
            continue
        if (have.max_age, have.subjects, have.num_replicas) != (
            want.max_age,
            want.subjects,
            want.num_replicas,
        ):
            await js.update_stream(want)
    if s.partitions > 0:
        want = parts_stream_config(
            s.partitions, s.stream_replicas, s.protocol_max_age_days, start=dt.datetime.now(dt.UTC)
        )  # from now on, not the history
        try:
            have = (await js.stream_info(PARTS_STREAM)).config

            def shape(c: StreamConfig) -> list:
                return [(x.name, [t.dest for t in x.subject_transforms or []]) for x in c.sources or []]

            if (shape(have), have.num_replicas) != (shape(want), want.num_replicas):
                await js.update_stream(want)
        except NotFoundError:
            await js.add_stream(want)
    try:
        await js.key_value(DELIVERY_STATE_BUCKET)
    except Exception:  # noqa: BLE001 - BucketNotFoundError or NotFoundError by nats-py version
        await js.create_key_value(bucket=DELIVERY_STATE_BUCKET, history=1, replicas=s.stream_replicas)
