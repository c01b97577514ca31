"""The hub's JetStream streams and KV buckets (names in :mod:`hub.core.subjects`), created idempotently.

The deliverer's own are declared in :mod:`hub.deliver.state.setup`; :mod:`hub.ops.streams` creates them all."""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

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
# No earlier revision kept: targets hold (sealed) endpoint secrets, learners identity fields that retirement
# must leave nowhere.
ONE_REVISION = (TARGETS_BUCKET, LEARNERS_BUCKET)


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
            # Targets and learners keep no earlier revision (portal also rolls targets up).
            await js.create_key_value(bucket=bucket, history=1 if bucket in ONE_REVISION else 5,
                                      replicas=s.stream_replicas)
        # (an existing bucket keeps its replicas: buckets are never shrunk or changed here)
            result["KV_" + bucket] = "created"
    return result
