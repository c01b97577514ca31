"""Delivery of one integration in this process: sets up its consumers, holds its lease (ordered integrations),
runs its pulls and lanes, and stops without losing or reordering a message. The work itself is in the
modules it composes: ``pull`` (consumers), ``lanes`` (per-course queues and batches), ``delivery`` (retries,
split on reject, dead letters), ``circuit`` (early tries), ``held`` (acks, naks, keep-alive), ``stats``,
``streak``, ``schedules``, ``endpoint`` (HTTP, rate and concurrency limits).
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from hub.core.grants import Grant, Target, consumer_name, redrive_name, replay_name
from hub.core.subjects import PROTOCOL_STREAMS, REDRIVE_STREAM, redrive_subject
from hub.deliver.engine.circuit import Circuit
from hub.deliver.engine.context import Context
from hub.deliver.engine.counters import Recorder
from hub.deliver.engine.delivery import Delivery
from hub.deliver.engine.endpoint import Endpoint
from hub.deliver.engine.feed import PULL_EXPIRES, pull
from hub.deliver.engine.held import Held
from hub.deliver.engine.items import Item
from hub.deliver.engine.lanes import Lanes
from hub.deliver.engine.schedules import Schedules
from hub.deliver.engine.streak import Streak
from hub.deliver.settings import DeliverSettings, seconds
from hub.deliver.state.lease import NotAnnounced
from hub.deliver.state.records import Stats

log = logging.getLogger("rthub.deliver")
HOLD_CHECK = 60.0  # seconds a held lease waits for news before it checks anyway (a safety net)


def takeover_after(s: DeliverSettings) -> float:
    """Age of a lease after which a stand-by takes it: the dead holder's last renewal was at most ``lease_ttl / 3``
    before it died, and its unacked messages are due for redelivery ``ack_wait`` after that at the latest."""
    ttl = seconds(s.lease_ttl)
    return max(ttl, seconds(s.ack_wait) + ttl / 3) + 1


class Runner:
    """Delivery of one integration in this process."""

    def __init__(self, ctx: Context, grant: Grant, target: Target):
        self.ctx, self.grant = ctx, grant
        s = ctx.settings
        self.stream = PROTOCOL_STREAMS[grant.protocol]
        self.endpoint = Endpoint(ctx, grant.protocol, grant.id, target, grant.identity, grant.learner_groups)
        self.schedules = Schedules(ctx.state, grant.id)
        self.held = Held(ctx.nc, self._acked, before_acks=lambda: self.recorder.flush())
        self.recorder = Recorder(ctx, grant.id)
        self.streak = Streak(ctx, grant.id)
        self.circuit = Circuit(seconds(s.probe_min), seconds(s.probe_max))
        self.delivery = Delivery(ctx, grant.id, self.endpoint, self.held, self.recorder, self.streak, self.circuit,
                                 self.schedules)
        self.lanes = Lanes(lambda: self.endpoint.target, self.delivery.guarded)
        self.tasks: list[asyncio.Task] = []
        self.core: list[asyncio.Task] = []
        self.pulls: list[asyncio.Task] = []
        self.replay_task: asyncio.Task | None = None
        self.stopping = False
        self.leader = asyncio.Event()
        self.lease = None if target.parallel else ctx.leases.lease(f"lease.{grant.id}")
        self.wakes: list[asyncio.Event] = []  # set by the watch: a message for a dozing pull loop

    @property
    def target(self) -> Target:
        return self.endpoint.target

    @property
    def stats(self) -> Stats:
        return self.recorder.stats

    # ---- lifecycle -------------------------------------------------------------------------------------
    def consumers(self) -> list[tuple[str, str]]:
        """``(stream, durable)`` of the consumers that hold this integration's backlog (for its lag)."""
        return [(self.stream, consumer_name(self.grant.id))]

    def _wake_on(self, filters: list[str]) -> asyncio.Event:
        event = asyncio.Event()
        self.ctx.watch.add(event, filters)
        self.wakes.append(event)
        return event

    async def start(self) -> None:
        async with self.ctx.starts:
            await self._start()

    async def _start(self) -> None:
        await self._add_consumers()
        await self.streak.load()
        await self.recorder.load()
        self._start_pulling()
        self.core = list(self.tasks)
        for task in self.core:  # broken(): the deliverer hears it now instead of scanning every runner twice a second
            task.add_done_callback(lambda _task: self.ctx.broke())
        await self.maybe_replay()
        g = self.grant
        log.info("delivering %s (%s %s -> %s)", g.id, g.protocol, self.target.kind, self.target.url)

    async def _add_consumers(self) -> None:
        g, s, js = self.grant, self.ctx.settings, self.ctx.js
        await js.add_consumer(self.stream, ConsumerConfig(
            name=consumer_name(g.id), durable_name=consumer_name(g.id), filter_subjects=g.filter_subjects(),
            deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.EXPLICIT, ack_wait=seconds(s.ack_wait),
            max_ack_pending=s.max_in_flight, description=f"push delivery of {g.id} ({self.target.kind})"))
        await js.add_consumer(REDRIVE_STREAM, ConsumerConfig(
            name=redrive_name(g.id), durable_name=redrive_name(g.id),
            filter_subject=redrive_subject(g.id), deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT, ack_wait=seconds(s.ack_wait), max_ack_pending=s.max_in_flight))

    def _start_pulling(self) -> None:
        g = self.grant
        if self.lease is None:
            self.leader.set()
        else:
            self.tasks.append(asyncio.create_task(self._hold_lease()))
        live, redrive = self._wake_on(g.filter_subjects()), self._wake_on([redrive_subject(g.id)])
        self.pulls += [asyncio.create_task(self._pull(self.stream, consumer_name(g.id), "live", wake=live)),
                       asyncio.create_task(self._pull(REDRIVE_STREAM, redrive_name(g.id), "redrive",
                                                      wake=redrive))]
        self.tasks += self.pulls
        period = max(0.2, seconds(self.ctx.settings.ack_wait) / 3)
        self.tasks.append(asyncio.create_task(self.held.keep_alive(period)))

    def _pull(self, stream: str, durable: str, source: str, done=None, leader: asyncio.Event | None = None,
              part: int | None = None, stop: asyncio.Event | None = None, wake: asyncio.Event | None = None):
        s = self.ctx.settings
        return pull(self.ctx.nc, stream, durable, source, fetch_batch=s.fetch_batch, max_in_flight=s.max_in_flight,
                    held=self.held, leader=leader or self.leader, dispatch=self._dispatch, done=done, part=part,
                    stop=stop, wake=wake)

    async def maybe_replay(self) -> None:
        """Run the integration's replay consumer, if a replay was requested and this process delivers.

        Never on a stopping runner: a replay pull started after :meth:`stop` would keep delivering with that
        runner's superseded target (old secrets), unseen and uncounted (issue 10 bug 3)."""
        if self.stopping:
            return
        if self.replay_task is None or self.replay_task.done():
            durable = replay_name(self.grant.id)
            try:
                await self.ctx.js.consumer_info(self.stream, durable)
            except NotFoundError:
                return
            if self.stopping:  # stopped while asking
                return
            self.replay_task = asyncio.create_task(
                self._pull(self.stream, durable, "replay", done=lambda: self._replay_done(durable)))
            self.tasks.append(self.replay_task)
            self.pulls.append(self.replay_task)

    async def _replay_done(self, durable: str) -> bool:
        js = self.ctx.js
        try:
            info = await js.consumer_info(self.stream, durable)
        except NotFoundError:
            return True
        if info.num_pending or info.num_ack_pending:
            return False
        try:
            await js.delete_consumer(self.stream, durable)
            await self.ctx.state.delete(f"replay.{self.grant.id}")
        except Exception:  # noqa: BLE001 - another deliverer finished it first
            pass
        log.info("replay of %s finished", self.grant.id)
        return True

    def retarget(self, target: Target) -> None:
        """New secrets, URL, credentials or rate limit, applied in place: the next request (a retry included) uses
        them. Restarting the runner instead handed every held message back and raced the lease with other
        processes' runners still holding the superseded target (issue 10 bug 3)."""
        self.endpoint.retarget(target)

    def retry_now(self) -> None:
        self.circuit.retry_now()

    def observe_lag(self, now: float, lag: int, window: float) -> None:
        self.recorder.observe_lag(now, lag, window, delivering=self.leader.is_set(),
                                  answering=self.circuit.recovered.is_set() and self.streak.since is None)

    async def flush_stats(self) -> None:
        await self.recorder.flush()

    def broken(self) -> bool:
        """A pulling, lease or keep-alive task has ended (consumer deleted, lease lost, a bug): restart me."""
        return any(task.done() for task in self.core)

    async def stop(self) -> None:
        """Stop sending, stop pulling without leaving a message in flight, hand everything back in stream order.

        Lanes are cancelled first (a revocation stops requests at once). The pulls then run until their pull
        requests are answered or expired (``PULL_EXPIRES`` + 0.5 s at most), keeping what still arrives: a
        message left in flight would be redelivered only after the ack wait, after newer statements of its
        course. Everything held is nak'ed in stream-sequence order, because JetStream redelivers in the order
        of the naks; before, a restart delivered courses out of order (issue 10 bug 8).
        """
        self.stopping = True
        for event in self.wakes:
            self.ctx.watch.remove(event)
        await self.lanes.stop()
        others = [t for t in self.tasks if t not in self.pulls]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self.held.stopping.set()
        self.held.room.set()
        if self.pulls:
            _, late = await asyncio.wait(self.pulls, timeout=PULL_EXPIRES + 2)
            for task in late:
                task.cancel()
            await asyncio.gather(*self.pulls, return_exceptions=True)
        await self.held.hand_back()
        try:
            await self._release_leases()
            await self.endpoint.close()
        finally:  # the last attempts (a "disabled" one, say) reach the portal even if closing fails
            await self.recorder.flush()

    async def _release_leases(self) -> None:
        if self.lease is not None:
            await self.lease.release()

    # ---- pulling ---------------------------------------------------------------------------------------
    async def _hold_lease(self) -> None:
        """Take the lease (standing by, tried every ``lease_ttl / 3``), then check it whenever the book changes it
        or announcements fail; step down when it is lost, or when no announcement has succeeded for ``lease_ttl``
        (an outage: a stand-by elsewhere may take over after ``max(lease_ttl, ack_wait) + 1 s``)."""
        ttl = seconds(self.ctx.settings.lease_ttl)
        period = max(0.2, ttl / 3)
        last_ok = time.monotonic()
        while True:
            try:
                held = await self.lease.try_hold()
                last_ok = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - NATS unreachable: keep the lease while it is surely ours
                if not isinstance(exc, NotAnnounced):
                    log.warning("lease %s: %s", self.grant.id, exc)
                announced = max(last_ok, self.lease.book.announced_at)  # it waited for news, maybe long
                held = self.leader.is_set() and time.monotonic() - announced < ttl
            if held and not self.leader.is_set():
                log.info("this process now delivers ordered integration %s", self.grant.id)
                self.leader.set()
            elif not held and self.leader.is_set():
                log.warning("lost the lease of %s; restarting its delivery", self.grant.id)
                self.leader.clear()
                self.ctx.restart(self.grant.id, self)
                return
            if held and not self.lease.book.announce_failed:
                await self.lease.wait(HOLD_CHECK)  # nothing to check until the book says something changed
            else:
                await asyncio.sleep(period)  # standing by, or announcements fail: the clock decides

    def _dispatch(self, item: Item) -> None:
        if self.stopping:  # handed back: JetStream redelivers it to the runner that replaces this one
            self.ctx.spawn(self.held.settle(item, "nak"))
            return
        self.held.add(item)
        self.lanes.add(item)

    def _acked(self, item: Item) -> None:
        if item.retry_saved:
            self.ctx.spawn(self.schedules.forget(item))
