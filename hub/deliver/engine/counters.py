"""What one process did for one integration: counters, the latest attempts, the attempt log, "cannot keep up".

Written to ``stats.<id>.<process>`` of the state bucket every second (``integration_status`` sums them).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

import msgspec

from hub.deliver.engine import lagtrend
from hub.deliver.engine.context import Context
from hub.deliver.engine.items import Item, seq
from hub.deliver.state.records import Attempt, Stats, event_time
from hub.deliver.transport.request import Result, response_headers

log = logging.getLogger("rthub.deliver")

RECENT = 20
BODY_KB = 1024  # bytes of the response body an attempt record keeps


class Recorder:
    def __init__(self, ctx: Context, grant_id: str):
        self.ctx, self.grant_id = ctx, grant_id
        self.key = f"stats.{grant_id}.{ctx.process_id}"
        self.stats = Stats()
        self.dirty = False
        self.save_failing = False
        self.saving = asyncio.Lock()
        self.lag_samples: collections.deque[tuple[float, int]] = collections.deque()

    async def load(self) -> None:
        """A restart (rotation, edit, re-enable, a NATS outage) continues this process's counters: from memory
        (the previous runner's, whose last save may have failed), else from the state bucket."""
        known = self.ctx.stats.get(self.grant_id)
        if known is not None:
            self.stats, self.dirty = known, True
            return
        try:
            entry = await self.ctx.state.get(self.key)
            if entry.value:
                self.stats = msgspec.json.decode(entry.value, type=Stats)
        except Exception:  # noqa: BLE001 - first run of this integration in this process
            pass
        self.ctx.stats[self.grant_id] = self.stats

    async def flush(self) -> None:
        """Save the counters if they changed. Also called before each batch of acks is sent
        (:class:`hub.deliver.engine.held.Acker`), so a SIGKILL cannot lose a count whose message was acked:
        at worst a message counted and not yet acked is delivered and counted again (a real second delivery)."""
        if not self.dirty:
            return
        async with self.saving:  # one put at a time: an older snapshot must not land after a newer one
            await self._save()

    async def _save(self) -> None:
        if not self.dirty:
            return
        self.dirty = False
        self.stats.updated = time.time()
        del self.stats.recent[:-RECENT]
        try:
            await self.ctx.state.put(self.key, msgspec.json.encode(self.stats))
        except Exception as exc:  # noqa: BLE001
            self.dirty = True
            if not self.save_failing:  # one line per outage: this is tried every second and before each ack batch
                self.save_failing = True
                log.warning("could not save delivery stats of %s: %s (retrying)", self.grant_id, exc)
            return
        if self.save_failing:
            self.save_failing = False
            log.info("delivery stats of %s saved again", self.grant_id)

    def record(self, items: list[Item], attempt: int, outcome: str, result: Result) -> None:
        now = time.time()
        lms = event_time(items[0].msg.data) if outcome == "delivered" else None
        entry = Attempt(t=now, ids=[i.id for i in items], attempt=attempt, outcome=outcome,
                        e2e_ms=round((now - lms) * 1000, 1) if lms else None,
                        status=result.status, latency_ms=result.latency_ms, error=result.error,
                        excerpt=result.excerpt[:200] or None, source=items[0].source, seqs=[seq(i) for i in items],
                        url=result.url, trace=(items[0].msg.headers or {}).get("traceparent"),
                        request_headers=result.sent, response_headers=response_headers(result.headers),
                        response_body=result.body[:BODY_KB].decode("utf-8", "replace") if result.body else None)
        metrics, stats = self.ctx.metrics, self.stats
        if outcome != "delivered":
            stats.failures += 1
            stats.last_error = result.error or f"HTTP {result.status}: {result.excerpt[:200]}"
            stats.last_error_at = entry.t
            metrics.inc("delivery_failures", integration=self.grant_id)
            log.info("integration %s: %s attempt %d of %d item(s): %s", self.grant_id, outcome, attempt,
                     len(items), stats.last_error)
        else:
            stats.last_success = entry.t
        recent = stats.recent
        recent.append(msgspec.structs.replace(entry, request_headers={}, response_headers={}, response_body=None))
        if len(recent) > 2 * RECENT:  # trimmed now and then, not rebuilt per attempt
            del recent[:-RECENT]
        self.dirty = True
        metrics.inc("delivery_attempts", integration=self.grant_id)
        self.ctx.log_attempt(self.grant_id, entry)

    def delivered(self, n: int) -> None:
        self.stats.delivered += n
        self.ctx.metrics.inc("delivered", n, integration=self.grant_id)

    def dead_lettered(self, n: int) -> None:
        self.stats.dead_lettered += n
        self.ctx.metrics.inc("dead_lettered", n, integration=self.grant_id)

    def observe_lag(self, now: float, lag: int, window: float, delivering: bool, answering: bool) -> None:
        """Cannot keep up: this process delivers, the endpoint answers (a success within ``window``, no failure
        streak), yet the lag over ``window`` grows by more than noise or a backlog does not come down (judged on
        every sample in the window, :mod:`hub.deliver.engine.lagtrend`). An endpoint that fails is "failing",
        not behind. One warning when it starts (what is behind, by how much, how fast), one line when it ends."""
        samples = self.lag_samples
        samples.append((now, lag))
        while len(samples) > 1 and samples[1][0] <= now - window:  # the oldest: the last one a window ago
            samples.popleft()
        if lag == 0 and self.stats.behind_since is None:
            return  # nothing waits: not behind, and nothing to end (the common case, every poll per integration)
        t = lagtrend.trend(samples)
        reason = None
        if delivering and answering and (self.stats.last_success or 0) >= now - window:
            reason = lagtrend.behind(t, window)
        if reason and self.stats.behind_since is None:
            self.stats.behind_since, self.dirty = now, True
            log.warning("integration %s cannot keep up: %s", self.grant_id, reason,
                        extra={"fields": {"integration": self.grant_id, "lag": lag,
                                          "lag_growth_per_s": round(t.slope_per_s, 2)}})
        elif self.stats.behind_since is not None and not reason and (
                not delivering or lag == 0 or (t is not None and t.slope_per_s <= 0)):
            log.info("integration %s keeps up again: lag %d (behind for %.0f s)", self.grant_id, lag,
                     now - self.stats.behind_since)
            self.stats.behind_since, self.dirty = None, True
