"""An ordered integration delivered by several processes at once: one lease per course partition
(see ``partitions.py`` for the stream and subjects). Each process holds about its fair share of the
partitions, hands extra ones over when another process joins (stop pulling, let the pull run out, nak what it
holds in stream order, release the lease: the same hand-over as a stopping runner), and takes free or stale
ones when a process has gone (its leases go stale after ``takeover_after``, as a single lease does).
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from hub.core.grants import Grant, Target, consumer_name, part_name, redrive_name
from hub.core.subjects import PARTS_STREAM, REDRIVE_STREAM, redrive_subject
from hub.deliver.engine.context import Context
from hub.deliver.engine.feed import PULL_EXPIRES
from hub.deliver.engine.partitions import fair_share, part_filters, preference
from hub.deliver.engine.runner import Runner
from hub.deliver.settings import seconds
from hub.deliver.state.lease import Lease, NotAnnounced

log = logging.getLogger("rthub.deliver")


class Part:
    """One course partition of the integration, as this process sees it."""

    def __init__(self, k: int, lease: Lease):
        self.k, self.lease = k, lease
        self.leader = asyncio.Event()  # this process holds the partition
        self.stop = asyncio.Event()  # set while being handed over: its pull stops
        self.task: asyncio.Task | None = None
        self.handover: asyncio.Task | None = None
        self.last_ok = 0.0


class PartitionedRunner(Runner):
    def __init__(self, ctx: Context, grant: Grant, target: Target, partitions: int):
        super().__init__(ctx, grant, target)
        self.lease = None
        self.parts = [Part(k, ctx.leases.lease(f"lease.{grant.id}.p{k}")) for k in range(partitions)]
        self.leader = self.parts[0].leader  # redrive and replay are pulled by partition 0's holder

    def consumers(self) -> list[tuple[str, str]]:
        return [(PARTS_STREAM, part_name(self.grant.id, p.k)) for p in self.parts]

    def held_parts(self) -> list[int]:
        return [p.k for p in self.parts if p.leader.is_set()]

    async def _add_consumers(self) -> None:
        g, s, js = self.grant, self.ctx.settings, self.ctx.js
        for p in self.parts:
            name = part_name(g.id, p.k)
            await js.add_consumer(PARTS_STREAM, ConsumerConfig(
                name=name, durable_name=name, filter_subjects=part_filters(g, p.k),
                deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.EXPLICIT, ack_wait=seconds(s.ack_wait),
                max_ack_pending=s.max_in_flight,
                description=f"push delivery of {g.id} ({self.target.kind}), course partition {p.k}"))
        await js.add_consumer(REDRIVE_STREAM, ConsumerConfig(
            name=redrive_name(g.id), durable_name=redrive_name(g.id),
            filter_subject=redrive_subject(g.id), deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT, ack_wait=seconds(s.ack_wait), max_ack_pending=s.max_in_flight))

    async def start(self) -> None:
        await super().start()
        await self._drain_single_consumer()

    async def _drain_single_consumer(self) -> None:
        """An integration switched to partitions may still have a backlog in its single consumer: partition 0's
        holder delivers it (live lanes; a course's order is kept again once it is empty), then deletes it."""
        durable = consumer_name(self.grant.id)
        try:
            await self.ctx.js.consumer_info(self.stream, durable)
        except NotFoundError:
            return

        async def drained() -> bool:
            try:
                info = await self.ctx.js.consumer_info(self.stream, durable)
            except NotFoundError:
                return True
            if info.num_pending or info.num_ack_pending:
                return False
            try:
                await self.ctx.js.delete_consumer(self.stream, durable)
            except NotFoundError:
                pass
            log.info("integration %s: the backlog of its single consumer is delivered", self.grant.id)
            return True

        task = asyncio.create_task(self._pull(self.stream, durable, "live", done=drained))
        self.pulls.append(task)
        self.tasks.append(task)

    def _start_pulling(self) -> None:
        g = self.grant
        # The partitions' pulls keep requests open instead of dozing: a partition's copy is stored by the
        # stream's sourcing after the publish the watch sees, so a wake could find it not there yet and doze
        # past it. Partitioned integrations are the busy few; dozing is for the many idle ones.
        self.tasks.append(asyncio.create_task(self._balance()))
        redrive = asyncio.create_task(self._pull(REDRIVE_STREAM, redrive_name(g.id), "redrive",
                                                 wake=self._wake_on([redrive_subject(g.id)])))
        self.pulls.append(redrive)
        self.tasks.append(redrive)
        period = max(0.2, seconds(self.ctx.settings.ack_wait) / 3)
        self.tasks.append(asyncio.create_task(self.held.keep_alive(period)))

    def broken(self) -> bool:
        return super().broken() or any(
            p.leader.is_set() and not p.stop.is_set() and p.task is not None and p.task.done() for p in self.parts)

    async def _balance(self) -> None:
        """Every ``lease_ttl / 3``: renew the partitions held (a lost or unrenewable one is handed back), hand
        over those above the fair share, take free or stale ones below it."""
        ttl = seconds(self.ctx.settings.lease_ttl)
        period = max(0.2, ttl / 3)
        order = preference(len(self.parts), self.ctx.process_id)
        while True:
            for p in self.parts:  # renewed until released, also while being handed over (its naks come first)
                if p.leader.is_set() and not await self._renew(p, ttl) and p.handover is None:
                    log.warning("lost partition %d of %s; handing it back", p.k, self.grant.id)
                    self._start_hand_over(p)
            share = fair_share(len(self.parts), self.ctx.peers(), self.ctx.process_id)
            mine = [self.parts[k] for k in order if self.parts[k].leader.is_set() and self.parts[k].handover is None]
            for p in reversed(mine[share:]):
                log.info("handing partition %d of %s over (fair share %d)", p.k, self.grant.id, share)
                self._start_hand_over(p)
            count = sum(p.leader.is_set() for p in self.parts)
            for k in order:
                if count >= share:
                    break
                p = self.parts[k]
                if p.leader.is_set():
                    continue
                try:
                    taken = await p.lease.try_hold()
                except Exception as exc:  # noqa: BLE001 - NATS unreachable: try again next round
                    if not isinstance(exc, NotAnnounced):
                        log.warning("lease %s.p%d: %s", self.grant.id, p.k, exc)
                    break
                if taken:
                    self._take(p)
                    count += 1
            await asyncio.sleep(period)

    async def _renew(self, p: Part, ttl: float) -> bool:
        try:
            held = await p.lease.try_hold()
            p.last_ok = time.monotonic()
            return held
        except Exception as exc:  # noqa: BLE001 - NATS unreachable: keep the lease while it is surely ours
            if not isinstance(exc, NotAnnounced):
                log.warning("lease %s.p%d: %s", self.grant.id, p.k, exc)
            return time.monotonic() - p.last_ok < ttl

    def _take(self, p: Part) -> None:
        log.info("this process now delivers partition %d of %s", p.k, self.grant.id)
        p.last_ok = time.monotonic()
        p.leader.set()
        p.task = asyncio.create_task(self._pull(
            PARTS_STREAM, part_name(self.grant.id, p.k), "live", leader=p.leader, part=p.k,
            stop=p.stop))
        self.pulls.append(p.task)

    def _start_hand_over(self, p: Part) -> None:
        """Hand-overs run beside the balancing loop, which keeps renewing every lease meanwhile (a drain takes
        up to ``PULL_EXPIRES`` + 0.5 s; the other partitions' leases must not go stale during it)."""
        p.handover = asyncio.create_task(self._hand_over(p))
        self.tasks.append(p.handover)

    async def _hand_over(self, p: Part) -> None:
        """Stop delivering one partition without reordering its courses: cancel its lanes, let its pull requests
        run out keeping what arrives, nak what it holds in stream order, then release its lease."""
        p.stop.set()
        try:
            await self.lanes.stop_part(p.k)
            if p.task is not None:
                _, late = await asyncio.wait([p.task], timeout=PULL_EXPIRES + 2)
                for task in late:
                    task.cancel()
                await asyncio.gather(p.task, return_exceptions=True)
                if p.task in self.pulls:
                    self.pulls.remove(p.task)
            await self.held.hand_back(lambda item: item.part == p.k)
            await p.lease.release()
        finally:
            p.leader.clear()
            p.task, p.handover = None, None
            p.stop.clear()

    async def _release_leases(self) -> None:
        for p in self.parts:
            if p.leader.is_set():
                await p.lease.release()
                p.leader.clear()
