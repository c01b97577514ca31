"""What the portal's integration status page shows: ``await integration_status(js, grant_id)``."""

from __future__ import annotations

import time

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from hub.core.grants import Target, consumer_name, decode_grant
from hub.core.subjects import (
    DEAD_LETTER_STREAM,
    DELIVERY_STATE_BUCKET,
    GRANTS_BUCKET,
    PROTOCOL_STREAMS,
    TARGETS_BUCKET,
    dlq_subject,
)
from hub.deliver.state.records import Stats


async def _value(js: JetStreamContext, bucket: str, key: str) -> bytes | None:
    try:
        kv = await js.key_value(bucket)
        entry = await kv.get(key)
    except Exception:  # noqa: BLE001 - no bucket or no key
        return None
    return entry.value or None


async def integration_status(js: JetStreamContext, grant_id: str, recent: int = 20) -> dict:
    """Delivery state of one integration, summed over every deliverer process.

    Keys: ``integration``, ``kind``, ``url``, ``enabled``, ``disabled_reason``, ``disabled_at``, ``delivered``, ``attempts``,
    ``failures``, ``lag`` (``num_pending`` + ``num_ack_pending`` of its consumer, None if it has none yet),
    ``pending``, ``ack_pending``, ``last_success``, ``last_error``, ``last_error_at`` (epoch seconds),
    ``failing_since``, ``behind_since`` (the endpoint answers but cannot keep up: lag not coming down for
    ``RTHUB_BEHIND_WINDOW``; None otherwise), ``dead_letters`` (count in the dead-letter stream), ``replay_since`` and ``recent``
    (newest first: ``t``, ``ids``, ``attempt``, ``outcome``, ``status``, ``latency_ms``, ``error``,
    ``excerpt``, ``source``).
    """
    out: dict = {"integration": grant_id, "kind": None, "url": None, "enabled": None, "disabled_reason": None,
                 "disabled_at": None, "delivered": 0, "attempts": 0, "failures": 0, "dead_lettered": 0, "lag": None, "pending": None,
                 "ack_pending": None, "last_success": None, "last_error": None, "last_error_at": None,
                 "failing_since": None, "behind_since": None, "dead_letters": 0, "replay_since": None, "recent": []}
    raw_grant = await _value(js, GRANTS_BUCKET, grant_id)
    raw_target = await _value(js, TARGETS_BUCKET, grant_id)
    if raw_target:
        target = msgspec.json.decode(raw_target, type=Target)
        out.update(kind=target.kind, url=target.url, enabled=target.enabled, disabled_reason=target.disabled_reason,
                   disabled_at=target.disabled_at)
    if raw_grant:
        grant = decode_grant(raw_grant)
        try:
            info = await js.consumer_info(PROTOCOL_STREAMS[grant.protocol], consumer_name(grant_id))
            out.update(pending=info.num_pending, ack_pending=info.num_ack_pending,
                       lag=(info.num_pending or 0) + (info.num_ack_pending or 0))
        except NotFoundError:
            await _partitioned_lag(js, grant_id, out)
    try:
        info = await js.stream_info(DEAD_LETTER_STREAM, subjects_filter=dlq_subject(grant_id))
        out["dead_letters"] = sum((info.state.subjects or {}).values())
    except NotFoundError:
        pass
    attempts = []
    try:
        state = await js.key_value(DELIVERY_STATE_BUCKET)
        prefix = f"$KV.{DELIVERY_STATE_BUCKET}."
        info = await js.stream_info(f"KV_{DELIVERY_STATE_BUCKET}", subjects_filter=f"{prefix}stats.{grant_id}.*")
        keys = [subj[len(prefix):] for subj in (info.state.subjects or {})]
        for key in keys:
            try:
                entry = await state.get(key)
            except Exception:  # noqa: BLE001 - deleted meanwhile
                continue
            if not entry.value:
                continue
            stats = msgspec.json.decode(entry.value, type=Stats)
            for field in ("delivered", "attempts", "failures", "dead_lettered"):
                out[field] += getattr(stats, field)
            if stats.last_success and (out["last_success"] or 0) < stats.last_success:
                out["last_success"] = stats.last_success
            if stats.behind_since and (stats.updated or 0) > time.time() - 30:  # a live process says so
                out["behind_since"] = min(out["behind_since"] or stats.behind_since, stats.behind_since)
            if stats.last_error_at and (out["last_error_at"] or 0) < stats.last_error_at:
                out.update(last_error=stats.last_error, last_error_at=stats.last_error_at)
            attempts.extend(stats.recent)
        failing = await _value(js, DELIVERY_STATE_BUCKET, f"failing.{grant_id}")
        out["failing_since"] = float(failing.decode()) if failing else None
        replay = await _value(js, DELIVERY_STATE_BUCKET, f"replay.{grant_id}")
        out["replay_since"] = replay.decode() if replay else None
    except Exception:  # noqa: BLE001 - deliverer never ran: no state bucket yet
        pass
    attempts.sort(key=lambda a: a.t, reverse=True)
    out["recent"] = [msgspec.to_builtins(a) for a in attempts[:recent]]
    return out


async def _partitioned_lag(js: JetStreamContext, grant_id: str, out: dict) -> None:
    """An integration in course partitions: its backlog is summed over its partition consumers."""
    from hub.core.subjects import PARTS_STREAM

    prefix = consumer_name(grant_id) + "_p"
    try:
        infos = [i for i in await js.consumers_info(PARTS_STREAM)
                 if i.name.startswith(prefix) and i.name[len(prefix):].isdigit()]
    except (NotFoundError, TimeoutError, nats.errors.Error):  # no partitions here, or not allowed to look
        return
    if infos:
        pending, ack_pending = sum(i.num_pending or 0 for i in infos), sum(i.num_ack_pending or 0 for i in infos)
        out.update(pending=pending, ack_pending=ack_pending, lag=pending + ack_pending)
