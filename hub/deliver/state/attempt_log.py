"""Reading one integration's attempt log (``attempts.<grant id>`` in the ``DELIVERY_LOG`` stream).

One routine for every reader (the portal's attempt list and its delivery chart): a short-lived, unacknowledged,
in-memory consumer filtered on the integration's subject, read forwards from a start time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from hub.core.subjects import DELIVERY_LOG_STREAM, attempts_subject


async def first_record_time(js: JetStreamContext, grant_id: str) -> float | None:
    """When the log's oldest record was written (of the whole stream: a lower bound), ``None`` when this
    integration has no record at all."""
    subject = attempts_subject(grant_id)
    try:
        info = await js.stream_info(DELIVERY_LOG_STREAM, subjects_filter=subject)
    except NotFoundError:
        return None
    if not (info.state.subjects or {}).get(subject):
        return None
    return info.state.first_ts.timestamp() if getattr(info.state, "first_ts", None) else 0.0


async def scan(js: JetStreamContext, grant_id: str, since: float, max_scan: int, batch: int = 500
               ) -> AsyncIterator:
    """The integration's log records written from ``since`` on, oldest first, at most ``max_scan`` of them
    (the messages: ``data`` is a JSON array of :class:`~hub.deliver.state.records.Attempt`, see ``records.unpack``). Close it (``aclosing``)
    when stopping early, so its consumer goes at once."""
    sub = await js.pull_subscribe(attempts_subject(grant_id), stream=DELIVERY_LOG_STREAM, config=ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=dt.datetime.fromtimestamp(since, dt.UTC),
        ack_policy=AckPolicy.NONE, inactive_threshold=5.0, mem_storage=True))
    scanned = 0
    try:
        while scanned < max_scan:
            try:
                msgs = await sub.fetch(min(batch, max_scan - scanned), timeout=1)
            except TimeoutError:
                return
            for msg in msgs:
                scanned += 1
                yield msg
            if msgs and msgs[-1].metadata.num_pending == 0:
                return
    finally:
        await sub.unsubscribe()


async def message_at(js: JetStreamContext, grant_id: str, seq: int):
    """The log message at stream sequence ``seq`` if it is this integration's (another integration's record is
    never returned, whatever sequence is asked for), else ``None``."""
    try:
        sub = await js.pull_subscribe(attempts_subject(grant_id), stream=DELIVERY_LOG_STREAM, config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=seq, ack_policy=AckPolicy.NONE,
            inactive_threshold=5.0, mem_storage=True))
    except NotFoundError:
        return None
    try:
        msgs = await sub.fetch(1, timeout=2)
    except TimeoutError:
        return None
    finally:
        await sub.unsubscribe()
    return msgs[0] if msgs and msgs[0].metadata.sequence.stream == seq else None
