"""The deliverer: one :class:`~hub.deliver.engine.runner.Runner` per enabled push integration.

It watches grants, targets, replay and "retry now" requests, starts, restarts and stops runners, converges
after faults, and owns what runners share: the attempt log, the counters' flush, the lag gauges. What a runner
may use of it is the :class:`~hub.deliver.engine.context.Context` it is given.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import os
import time
import uuid
from collections.abc import Callable

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from hub.core.api import consumer_lags
from hub.core.delivery_kinds import PUSH
from hub.core.grants import (
    Grant,
    GrantWatcher,
    Target,
    consumer_name,
    part_name,
    redrive_name,
    replay_name,
    size_refusal,
)
from hub.core.groups import IdentityIndex, decode_learner, parse_learner_key
from hub.core.kv import KVMirror
from hub.core.metrics import Metrics
from hub.core.publish import AckedPublisher
from hub.core.secretbox import SecretBox, SecretError
from hub.core.subjects import (
    DELIVERY_STATE_BUCKET,
    LEARNERS_BUCKET,
    PARTS_STREAM,
    PROTOCOL_STREAMS,
    REDRIVE_STREAM,
    TARGETS_BUCKET,
    attempts_subject,
)
from hub.deliver.engine.context import Context
from hub.deliver.engine.partitioned_runner import PartitionedRunner
from hub.deliver.engine.runner import Runner, takeover_after
from hub.deliver.engine.watch import Watch
from hub.deliver.settings import DeliverSettings, seconds
from hub.deliver.state.lease import LeaseBook
from hub.deliver.state.records import Attempt, pack
from hub.deliver.transport import ssrf
from hub.translate import ExternalIds

__all__ = ["Deliverer", "Runner", "hot_swappable", "takeover_after"]

log = logging.getLogger("rthub.deliver")
FULL_SCAN_EVERY = 20  # converge rounds (0.5 s each) between two scans of every integration when all looks well
FREEZE_MIN = 50  # runners below which no gc.freeze() is worth a full collection
STOP_ROUNDS = 10  # seconds a stop waits for its background tasks to end, cancelling them each second

ATTEMPT_FLUSH = 0.2  # seconds between two publishes of the attempt log
ANNOUNCE = 1.0  # seconds between two announcements of this process (``alive.<process>``: its leases stay its own)
STARTS = 32  # runner start-ups at once
SWEEP_EVERY = 30  # announcements between two sweeps of leases a failed release left behind

HOT_FIELDS = ("secrets", "url", "basic_auth", "bearer", "rate_limit_per_s", "retry_schedule", "disabled_reason",
              "disabled_at", "custom_headers", "payload_filter")


def hot_swappable(old: Target, new: Target) -> bool:
    """True when ``new`` differs from ``old`` only in what a running delivery can take over in place."""
    return old != new and msgspec.structs.replace(old, **{f: getattr(new, f) for f in HOT_FIELDS}) == new


class Deliverer:
    """Watches grants, targets and replay requests; keeps one :class:`Runner` per enabled push integration."""

    def __init__(self, nc: NATS, settings: DeliverSettings, metrics: Metrics | None = None):
        self.nc, self.js, self.settings = nc, nc.jetstream(), settings
        self.metrics = metrics or Metrics("deliver")
        self.schedule = [seconds(x) for x in settings.retry_schedule]
        self.max_retry_after = seconds(settings.max_retry_after)
        self.disable_after = seconds(settings.disable_after)
        self.allowed = ssrf.networks(settings.allowed_networks)
        self.box = SecretBox.from_settings(settings)
        self.process_id = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.grants: dict[str, Grant] = {}
        self.targets: dict[str, Target] = {}
        self.runners: dict[str, Runner] = {}
        self.locks: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self.pending: set[asyncio.Task] = set()
        self.background: list[asyncio.Task] = []
        self.watchers: list[KVMirror] = []
        self.state = None
        self.targets_kv = None
        self.on_change: Callable[[str], None] | None = None
        self.backoff: dict[str, tuple[int, float]] = {}  # grant id -> (failed starts in a row, next try)
        self.unsettled = asyncio.Event()  # a runner broke: the converge loop looks at once
        self.frozen_at = 0  # runners when gc.freeze() last ran
        self.alive: dict[str, float] = {}  # deliverer process -> when it last announced itself
        self.attempt_log: dict[str, list[Attempt]] = {}  # grant id -> attempts not yet published

    async def start(self) -> Deliverer:
        s = self.settings
        ids = ExternalIds.from_settings(ExternalIds.deployment_secret(s.id_secret, s.data_dir), s.external_ids_file)
        self.identities = IdentityIndex(ids.get, PROTOCOL_STREAMS)
        self.state = await self.js.key_value(DELIVERY_STATE_BUCKET)
        self.targets_kv = await self.js.key_value(TARGETS_BUCKET)
        self.leases = await LeaseBook(self.js, self.state, DELIVERY_STATE_BUCKET, self.process_id,
                                      takeover_after(self.settings)).start()
        await self._announce()  # before any lease is taken
        self.watch = await Watch(self.nc, [*PROTOCOL_STREAMS, "redrive"]).start()
        self.context = Context(
            nc=self.nc, js=self.js, state=self.state, settings=self.settings, metrics=self.metrics,
            process_id=self.process_id, schedule=self.schedule, max_retry_after=self.max_retry_after,
            disable_after=self.disable_after, allowed=self.allowed, spawn=self._spawn,
            restart=lambda gid, runner: self.restart(gid, runner), disable=self.disable,
            log_attempt=self.log_attempt, peers=self.peers, publisher=await AckedPublisher(self.nc).start(),
            leases=self.leases, watch=self.watch, starts=asyncio.Semaphore(STARTS), identities=self.identities,
            broke=self.unsettled.set)
        self.grant_watcher = await GrantWatcher(self.js, on_change=self._grant_changed).start()
        targets = KVMirror(self.js, TARGETS_BUCKET, self._open_target, on_change=lambda gid, _: self._schedule(gid))
        self.targets, self.alive = targets.values, self.leases.alive.values
        self.watchers = [targets,
                         KVMirror(self.js, LEARNERS_BUCKET, decode_learner, on_change=self.identities.apply,
                                  key=parse_learner_key),
                         KVMirror(self.js, DELIVERY_STATE_BUCKET, bytes, on_change=self._replay_entry, keys="replay.*"),
                         KVMirror(self.js, DELIVERY_STATE_BUCKET, bytes, on_change=self._retry_entry, keys="retry.*")]
        for mirror in self.watchers:
            await mirror.start()  # ready: the bucket's content is read
        self.background.append(asyncio.create_task(self._announce_loop()))
        self.background.append(asyncio.create_task(self._flush_loop()))
        self.background.append(asyncio.create_task(self._attempt_loop()))
        self.background.append(asyncio.create_task(self._converge_loop()))
        self.background.append(asyncio.create_task(self._lag_loop()))
        self.metrics.gauges["integrations_delivering"] = lambda: sum(not r.broken() for r in self.runners.values())
        return self

    async def _lag_loop(self) -> None:
        """Every ``lag_poll``: gauge ``integration_lag`` (``num_pending + num_ack_pending``) of each integration
        this process runs, and whether it keeps up (gauge ``integration_behind``, ``behind_since`` in the status):
        see :meth:`Runner.observe_lag`."""
        interval, window = seconds(self.settings.lag_poll), seconds(self.settings.behind_window)
        self.metrics.help.setdefault("integration_lag", "statements not yet delivered (consumer pending + unacked)")
        self.metrics.help.setdefault("integration_behind", "1 while the endpoint answers but cannot keep up")
        while True:
            keep = set()
            lags = await self._consumer_lags()
            for gid, runner in list(self.runners.items()):
                consumers = runner.consumers()
                if any(c not in lags for c in consumers):  # NATS away or consumer gone: keep the last values
                    keep.add((("integration", gid),))
                    continue
                lag = sum(lags[c] for c in consumers)
                runner.observe_lag(time.time(), lag, window)
                self.metrics.set("integration_lag", lag, integration=gid)
                self.metrics.set("integration_behind", int(runner.stats.behind_since is not None), integration=gid)
                keep.add((("integration", gid),))
            self.metrics.retain("integration_lag", keep)
            self.metrics.retain("integration_behind", keep)
            await asyncio.sleep(interval)

    async def _consumer_lags(self) -> dict[tuple[str, str], int]:
        """``num_pending + num_ack_pending`` of every consumer of the streams runners read, from one listing per
        stream (a ``consumer_info`` per integration cost a request each per poll, growing with the tenants)."""
        streams = {stream for runner in list(self.runners.values()) for stream, _ in runner.consumers()}
        out: dict[tuple[str, str], int] = {}
        for stream in streams:
            try:
                lags = await consumer_lags(self.nc, stream)
            except Exception:  # noqa: BLE001 - NATS away: those lags keep their last values
                continue
            out.update(((stream, name), lag) for name, lag in lags.items())
        return out

    def not_delivering(self) -> list[str]:
        """Active push integrations this process should run but does not (a start failed, a runner broke)."""
        out = []
        for gid in self.grants:
            runner = self.runners.get(gid)
            if self.wanted(gid) is not None and (runner is None or runner.broken()):
                out.append(gid)
        return out

    def healthy(self) -> bool:
        """``/health``: connected, and every active integration has a working runner (delivering or standing by)."""
        return self.nc.is_connected and not self.not_delivering()

    async def _converge_loop(self) -> None:
        """Retry what a fault left undone, with backoff, until it works: a wanted integration without a working
        runner is (re)started, so an outage of any length ends in delivery without restarting the process."""
        rounds = 0
        while True:
            await asyncio.sleep(0.5)
            rounds += 1
            # a scan of every integration (~15 ms at 5,000) only when something may be undone: a start that
            # failed (backoff), a runner that broke (Context.broke), else every FULL_SCAN_EVERY rounds
            if not (self.backoff or self.unsettled.is_set() or rounds % FULL_SCAN_EVERY == 0):
                continue
            self.unsettled.clear()
            now = time.monotonic()
            for gid in self.not_delivering():
                _, at = self.backoff.get(gid, (0, 0.0))
                if now >= at and not self.locks[gid].locked():
                    runner = self.runners.get(gid)
                    if runner is not None:
                        log.warning("delivery of %s stopped working; restarting it", gid)
                    self._spawn(self.reconcile(gid, restart=runner is not None, expected=runner))

    def _grant_changed(self, grant_id: str, grant: Grant | None) -> None:
        if grant is None:
            self.grants.pop(grant_id, None)
            self._schedule(grant_id, revoked=True)
        else:
            self.grants[grant_id] = grant
            self._schedule(grant_id)

    def _open_target(self, value: bytes) -> Target:
        """Secrets are sealed at rest (hub.core.secretbox); only this process's memory holds them open."""
        try:
            return self.box.open_target(msgspec.json.decode(value, type=Target))
        except SecretError as exc:
            raise ValueError(f"sealed secrets: {exc}") from None

    def _replay_entry(self, key: str, value: bytes | None) -> None:
        grant_id = key.split(".", 1)[1]
        if value is not None and grant_id in self.runners:
            self._spawn(self.runners[grant_id].maybe_replay())

    def _retry_entry(self, key: str, value: bytes | None) -> None:
        runner = self.runners.get(key.split(".", 1)[1])
        if value is not None and runner is not None:
            runner.retry_now()

    def peers(self) -> list[str]:
        """Deliverer processes alive now (announced within ``takeover_after``), this one included."""
        fresh = time.time() - takeover_after(self.settings)
        return sorted({p for p, t in self.alive.items() if t >= fresh} | {self.process_id})

    async def _announce(self) -> None:
        failing = self.leases.announce_failed
        try:
            await self.leases.announce()
        except Exception as exc:  # noqa: BLE001 - NATS away: the others count this process gone after a while
            if not failing:  # one line per change, not one a second
                log.warning("could not announce this deliverer (its leases are kept for lease_ttl): %s", exc)
            return
        if failing:
            log.info("this deliverer announces itself again")

    async def _announce_loop(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(ANNOUNCE)
            await self._announce()
            rounds += 1
            if rounds % SWEEP_EVERY == 0:  # reads every lease record: ~6% of an idle deliverer's CPU at 5,000 each second
                await self.leases.sweep()
            self._freeze_when_settled(hourly=rounds % 3600 == 0)

    def _freeze_when_settled(self, hourly: bool = False) -> None:
        """Once the runners have started (again when their number moved by a tenth, and hourly if it moved at
        all), unfreeze, collect, then ``gc.freeze()`` what exists: the runners' long-lived objects leave the
        collector's view. Without it a full collection walked them all: 100-200 ms pauses every few seconds at
        1,000 integrations, the p99 of first delivery in bench/tenants.py (measured with gc.callbacks). The
        unfreeze first lets the cycles of runners stopped since then be collected."""
        n = len(self.runners)
        moved = abs(n - self.frozen_at)
        if self.pending or n < FREEZE_MIN or not moved or (moved < self.frozen_at * 0.1 and not hourly):
            return
        self.frozen_at = n
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    def _schedule(self, grant_id: str, revoked: bool = False) -> None:
        self._spawn(self.reconcile(grant_id, revoked))

    def restart(self, grant_id: str, runner: Runner | None = None) -> None:
        self._spawn(self.reconcile(grant_id, restart=True, expected=runner))

    def wanted(self, grant_id: str) -> tuple[Grant, Target] | None:
        grant, target = self.grants.get(grant_id), self.targets.get(grant_id)
        if grant is None or target is None or not grant.active or grant.delivery not in PUSH:
            return None
        if not target.enabled:
            return None
        return grant, target

    async def reconcile(self, grant_id: str, revoked: bool = False, restart: bool = False,
                        expected: Runner | None = None) -> None:
        """Bring this process in line with the grant and target of ``grant_id`` (start, restart or stop).

        ``restart`` with ``expected`` restarts only that runner (a newer one is left alone). A failed start is
        retried by :meth:`_converge_loop` after a backoff of 0.5 s doubling up to ``converge_backoff_max``.
        """
        async with self.locks[grant_id]:
            want = self.wanted(grant_id)
            runner = self.runners.get(grant_id)
            if restart and expected is not None and runner is not expected:
                return
            if runner is not None and want is not None and (runner.grant, runner.target) == want and not restart:
                return
            if (runner is not None and want is not None and not restart and runner.grant == want[0]
                    and hot_swappable(runner.target, want[1])):
                runner.retarget(want[1])
                log.info("integration %s: new endpoint settings applied to the running delivery", grant_id)
                if self.on_change:
                    self.on_change(grant_id)
                return
            if runner is not None:
                del self.runners[grant_id]
                await runner.stop()
                log.info("stopped delivering %s", grant_id)
            if revoked and grant_id not in self.grants:
                await self._drop_consumers(grant_id)
            if want is not None:
                grant, target = want
                refusal = size_refusal(grant.filter_count(), grant.delivery)
                if refusal:  # stored before the limit existed, or written around the portal: never sent to NATS
                    await self.disable(grant_id, refusal)
                    return
                partitions = self.settings.partitions
                runner = (PartitionedRunner(self.context, grant, target, partitions)
                          if partitions > 0 and not target.parallel else Runner(self.context, grant, target))
                try:
                    await runner.start()
                except Exception as exc:  # noqa: BLE001 - NATS down, bad config: retried with backoff
                    failures = self.backoff.get(grant_id, (0, 0.0))[0] + 1
                    delay = min(seconds(self.settings.converge_backoff_max), 0.5 * 2 ** (failures - 1))
                    self.backoff[grant_id] = (failures, time.monotonic() + delay)
                    log.error("cannot deliver %s (%d failed start(s); next try in %.1f s): %s", grant_id, failures,
                              delay, exc or type(exc).__name__)
                    await runner.stop()
                    return
                self.backoff.pop(grant_id, None)
                self.runners[grant_id] = runner
            if self.on_change:
                self.on_change(grant_id)

    async def _drop_consumers(self, grant_id: str) -> None:
        """A revoked integration's backlog is no longer anyone's: drop its consumers."""
        for stream in PROTOCOL_STREAMS.values():
            for name in (consumer_name(grant_id), replay_name(grant_id)):
                try:
                    await self.js.delete_consumer(stream, name)
                except Exception:  # noqa: BLE001 - not there
                    pass
        try:
            await self.js.delete_consumer(REDRIVE_STREAM, redrive_name(grant_id))
        except Exception:  # noqa: BLE001
            pass
        for k in range(self.settings.partitions):  # with interest retention, a left-over one would keep messages
            try:
                await self.js.delete_consumer(PARTS_STREAM, part_name(grant_id, k))
            except Exception:  # noqa: BLE001 - not there
                pass

    async def disable(self, grant_id: str, reason: str) -> None:
        """Switch the target off with a reason the portal shows; its backlog stays in the consumer."""
        log.warning("disabling integration %s: %s", grant_id, reason)
        self.metrics.inc("integrations_disabled", integration=grant_id)
        try:
            entry = await self.targets_kv.get(grant_id)
            target = msgspec.json.decode(entry.value, type=Target)
            if not target.enabled:
                return
            target.enabled, target.disabled_reason, target.disabled_at = False, reason, time.time()
            await self.targets_kv.update(grant_id, msgspec.json.encode(target), last=entry.revision)
        except Exception as exc:  # noqa: BLE001 - changed concurrently: the newest config wins
            log.warning("could not disable %s: %s", grant_id, exc)

    def log_attempt(self, grant_id: str, entry: Attempt) -> None:
        """Queued; :meth:`_attempt_loop` publishes every ``ATTEMPT_FLUSH`` seconds (packed, see ``pack``)."""
        self.attempt_log.setdefault(grant_id, []).append(entry)

    async def flush_attempts(self) -> None:
        queued, self.attempt_log = self.attempt_log, {}
        for grant_id, entries in queued.items():
            for data in pack(entries):
                try:
                    await self.nc.publish(attempts_subject(grant_id), data)
                except nats.errors.Error:  # the attempt log is best effort; counters still count
                    pass

    async def _attempt_loop(self) -> None:
        while True:
            await asyncio.sleep(ATTEMPT_FLUSH)
            await self.flush_attempts()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for runner in [r for r in self.runners.values() if r.recorder.dirty]:  # not an await per integration
                await runner.flush_stats()

    async def stop(self) -> None:
        for task in self.background:
            task.cancel()
        await self.grant_watcher.stop()
        for mirror in self.watchers:
            await mirror.stop()
        left = {*self.pending, *self.background}
        for _ in range(STOP_ROUNDS):  # cancelled again until done: on 3.11 a wait_for ending as it is cancelled
            if not left:  # drops the cancel; bounded, so one task that ignores cancellation cannot hold the stop
                break
            for task in left:
                task.cancel()
            _, left = await asyncio.wait(left, timeout=1.0)
        if left:
            log.error("stopping: %d task(s) ignored cancellation for %d s: %s", len(left), STOP_ROUNDS,
                      ", ".join(sorted(t.get_name() for t in left)))
        await asyncio.gather(*(runner.stop() for runner in self.runners.values()), return_exceptions=True)
        self.runners.clear()
        await self.flush_attempts()
        await self.context.publisher.close()
        await self.watch.stop()
        try:
            await self.leases.withdraw()  # the others take its share of the partitions at once
        except Exception:  # noqa: BLE001 - NATS away: they count it gone after a while
            pass
        await self.leases.stop()
