"""Two small server-rendered SVG charts per integration (no script, no CDN): statements delivered per minute over
the last 24 h with failed attempts marked, and the lag (events waiting) sampled every minute by the portal."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import AsyncIterator
from html import escape

import msgspec

from hub.deliver.state import attempt_log
from hub.deliver.state.records import unpack
from portal.tables import Integration, LagSample

DAY_MIN = 24 * 60
W, H, PAD = 720, 120, 28


async def _records(js, key: str, start: float, max_scan: int) -> AsyncIterator[dict]:
    """Each attempt record logged for ``key`` since ``start`` (at most ``max_scan`` messages; unreadable skipped)."""
    async for msg in attempt_log.scan(js, key, start, max_scan, batch=1000):
        try:
            records = unpack(msg.data)
        except (msgspec.DecodeError, RecursionError):
            continue
        for a in records:
            yield a


async def delivery_minutes(js, key: str, now: float | None = None, max_scan: int = 200_000
                           ) -> tuple[list[int], list[int]]:
    """Per minute of the last 24 h (oldest first): statements delivered, and failed attempts."""
    now = now or time.time()
    start = now - DAY_MIN * 60
    delivered, failed = [0] * DAY_MIN, [0] * DAY_MIN
    if await attempt_log.first_record_time(js, key) is None:
        return delivered, failed
    async for a in _records(js, key, start, max_scan):
        try:
            i = int((float(a["t"]) - start) // 60)
        except (KeyError, TypeError, ValueError):
            continue
        if 0 <= i < DAY_MIN:
            if a.get("outcome") == "delivered":
                delivered[i] += len(a.get("ids") or [])
            else:
                failed[i] += 1
    return delivered, failed


async def lag_minutes(key: str, now: float | None = None) -> list[int | None]:
    now = now or time.time()
    start = now - DAY_MIN * 60
    out: list[int | None] = [None] * DAY_MIN
    rows = await LagSample.select(LagSample.at, LagSample.lag).where(
        (LagSample.integration == key) & (LagSample.at >= dt.datetime.fromtimestamp(start, dt.UTC)))
    for r in rows:
        i = int((r["at"].timestamp() - start) // 60)
        if 0 <= i < DAY_MIN:
            out[i] = r["lag"]
    return out


def _axis(now: float) -> str:
    parts = []
    for h in range(0, 25, 6):
        x = PAD + (W - 2 * PAD) * h / 24
        label = time.strftime("%H:%M", time.gmtime(now - (24 - h) * 3600))
        parts.append(f'<text x="{x:.1f}" y="{H - 4}" text-anchor="middle" class="axis">{label}</text>')
    return "".join(parts)


def svg_chart(title: str, values: list[int | None], marks: list[int] | None = None, now: float | None = None,
              unit: str = "") -> str:
    """A 24 h line/area chart with optional red marks (failures); ``values`` one per minute, oldest first."""
    now = now or time.time()
    known = [v for v in values if v is not None]
    top = max(known + [1])
    span_x, span_y = W - 2 * PAD, H - 2 * PAD
    pts = []
    for i, v in enumerate(values):
        if v is None:
            continue
        x = PAD + span_x * i / (len(values) - 1 or 1)
        y = PAD + span_y * (1 - v / top)
        pts.append(f"{x:.1f},{y:.1f}")
    line = f'<polyline class="line" points="{" ".join(pts)}"/>' if pts else ""
    ticks = ""
    failures = 0
    if marks:
        for i, n in enumerate(marks):
            if n:
                failures += n
                x = PAD + span_x * i / (len(marks) - 1 or 1)
                ticks += f'<line class="fail" x1="{x:.1f}" x2="{x:.1f}" y1="{PAD - 8}" y2="{H - PAD}"/>'
    total = sum(known)
    summary = (f"{title}: peak {top if known else 0}{unit}, total {total}" if unit == "" else
               f"{title}: latest {known[-1] if known else 'no data'}, peak {top if known else 0}")
    if marks is not None:
        summary += f", {failures} failed attempt(s) marked in red"
    label = escape(summary)
    return (f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{label}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{label}</title>'
            f'<line class="base" x1="{PAD}" x2="{W - PAD}" y1="{H - PAD}" y2="{H - PAD}"/>'
            f'<text x="{PAD}" y="{PAD - 12}" class="axis">{escape(title)} (max {top})</text>'
            f"{ticks}{line}{_axis(now)}</svg>")


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by the nearest-rank method; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


class Latency(msgspec.Struct, kw_only=True):
    """End-to-end latency (LMS event time -> the endpoint's answer) of delivered POSTs per hour of the last
    24 h, oldest first: ``hours`` (ISO start of each hour), ``p50_ms``, ``p99_ms`` (null: nothing delivered),
    ``count``; ``p50_ms_24h`` / ``p99_ms_24h`` over the whole day."""

    hours: list[str]
    p50_ms: list[float | None]
    p99_ms: list[float | None]
    count: list[int]
    p50_ms_24h: float | None = None
    p99_ms_24h: float | None = None


async def latency_hours(js, key: str, now: float | None = None, max_scan: int = 200_000) -> Latency:
    """From the attempt log's ``e2e_ms`` (delivered attempts, first try or not, replays left out: their events
    are old on purpose)."""
    now = now or time.time()
    start = (now // 3600 - 23) * 3600
    per: list[list[float]] = [[] for _ in range(24)]
    async for a in _records(js, key, start, max_scan):
        e2e = a.get("e2e_ms")
        if a.get("outcome") != "delivered" or e2e is None or a.get("source") == "replay":
            continue
        i = int((float(a.get("t") or 0) - start) // 3600)
        if 0 <= i < 24:
            per[i].append(float(e2e))
    day = [v for hour in per for v in hour]
    return Latency(hours=[dt.datetime.fromtimestamp(start + 3600 * i, dt.UTC).isoformat() for i in range(24)],
                   p50_ms=[percentile(h, 0.5) for h in per], p99_ms=[percentile(h, 0.99) for h in per],
                   count=[len(h) for h in per], p50_ms_24h=percentile(day, 0.5), p99_ms_24h=percentile(day, 0.99))


def latency_chart(lat: Latency, now: float) -> str:
    """p50 and p99 per hour as two lines of one chart (ms), with the day's figures as its accessible name."""
    top = max([v for v in lat.p99_ms if v is not None] + [1.0])
    span_x, span_y = W - 2 * PAD, H - 2 * PAD

    def line(values: list[float | None], cls: str) -> str:
        pts = [f"{PAD + span_x * i / 23:.1f},{PAD + span_y * (1 - v / top):.1f}"
               for i, v in enumerate(values) if v is not None]
        return f'<polyline class="{cls}" points="{" ".join(pts)}"/>' if pts else ""

    def ms(v: float | None) -> str:
        return "no data" if v is None else f"{v:.0f} ms"

    label = escape(f"End-to-end latency, LMS event to delivery, last 24 h: p50 {ms(lat.p50_ms_24h)}, "
                   f"p99 {ms(lat.p99_ms_24h)} over {sum(lat.count)} delivered request(s)")
    return (f'<svg class="chart" id="latency-chart" viewBox="0 0 {W} {H}" role="img" aria-label="{label}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{label}</title>'
            f'<line class="base" x1="{PAD}" x2="{W - PAD}" y1="{H - PAD}" y2="{H - PAD}"/>'
            f'<text x="{PAD}" y="{PAD - 12}" class="axis">End-to-end latency per hour: p50 (blue), p99 (red), '
            f'max {top:.0f} ms</text>{line(lat.p50_ms, "line")}{line(lat.p99_ms, "line p99")}{_axis(now)}</svg>')


async def integration_charts(js, key: str) -> str:
    now = time.time()
    delivered, failed = await delivery_minutes(js, key, now)
    lag = await lag_minutes(key, now)
    return (svg_chart("Delivered per minute, last 24 h", delivered, failed, now)
            + svg_chart("Lag (events waiting), last 24 h", lag, None, now, unit=" waiting")
            + latency_chart(await latency_hours(js, key, now), now))


async def sample_lag(portal) -> int:
    """Record the lag of every approved integration (called once a minute); drops samples older than 24 h."""
    await LagSample.delete().where(LagSample.at < dt.datetime.now(dt.UTC) - dt.timedelta(hours=25))
    count = 0
    for row in await Integration.objects().where(Integration.status == "approved"):
        stats = await portal.status(row)
        if stats.get("lag") is not None:
            await LagSample(integration=row.key, lag=int(stats["lag"])).save()
            count += 1
    return count
