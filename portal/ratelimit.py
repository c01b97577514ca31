"""Counters in the database, so every portal process shares them and memory stays bounded (one short row per
counted key, pruned when stale): progressive log-in delay and simple attempt rates (sign-up, reset mails).

Keys are SHA-256 digests of what is counted (``login|e-mail|address``): the table never holds an e-mail."""

from __future__ import annotations

import datetime as dt

from portal import security
from portal.tables import Throttle


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def key(*parts: str) -> str:
    return security.sha256("|".join(parts))


def delay_after(failures: int, free: int, base_s: float, max_s: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures: none for the first ``free - 1``, then
    ``base_s`` doubling up to ``max_s`` (a person mistyping waits seconds; a guesser gets ~100 tries a day)."""
    if failures < free:
        return 0.0
    return min(max_s, base_s * 2 ** min(failures - free, 30))


async def blocked_for(k: str) -> float:
    """Seconds until ``k`` may try again (0 when it may)."""
    row = await Throttle.select(Throttle.blocked_until).where(Throttle.key == k).first()
    if not row or row["blocked_until"] is None:
        return 0.0
    return max(0.0, (row["blocked_until"] - _now()).total_seconds())


async def _bump(k: str, window_s: float) -> int:
    """Count one event for ``k`` in its window; returns the count (a stale window starts again at 1)."""
    now = _now()
    fresh = now - dt.timedelta(seconds=window_s)
    # Stale window: restart it (conditional, so two processes restarting at once count both events).
    await Throttle.update({Throttle.hits: 0, Throttle.window_start: now, Throttle.blocked_until: None}).where(
        (Throttle.key == k) & (Throttle.window_start < fresh))
    got = await Throttle.update({Throttle.hits: Throttle.hits + 1}).where(Throttle.key == k).returning(Throttle.hits)
    if got:
        return got[0]["hits"]
    try:
        await Throttle(key=k, hits=1, window_start=now).save()
        return 1
    except Exception:  # noqa: BLE001 - another process inserted it first (unique key): count on its row
        got = await Throttle.update({Throttle.hits: Throttle.hits + 1}).where(Throttle.key == k).returning(Throttle.hits)
        return got[0]["hits"] if got else 1


async def failed(k: str, free: int, base_s: float, max_s: float, window_s: float) -> float:
    """Record a failure of ``k``; returns the delay now imposed on it."""
    hits = await _bump(k, window_s)
    wait = delay_after(hits, free, base_s, max_s)
    if wait:
        await Throttle.update({Throttle.blocked_until: _now() + dt.timedelta(seconds=wait)}).where(Throttle.key == k)
    return wait


async def allow(k: str, limit: int, window_s: float) -> bool:
    """Count an attempt of ``k``; False once more than ``limit`` were made in the window."""
    return await _bump(k, window_s) <= limit


async def clear(k: str) -> None:
    await Throttle.delete().where(Throttle.key == k)


async def prune(window_s: float) -> None:
    """Drop rows whose window is over and that block nothing (keeps the table small)."""
    now = _now()
    await Throttle.delete().where((Throttle.window_start < now - dt.timedelta(seconds=window_s))
                                  & ((Throttle.blocked_until.is_null()) | (Throttle.blocked_until < now)))
