"""Delivering one lane's items until they are settled: the retry schedule, early tries once the endpoint
answers again, split on reject, dead letters, the failure streak, and what a bug one message meets costs."""

from __future__ import annotations

import logging
import time

import nats.errors

from hub.core.errors import JetStreamError
from hub.deliver.engine import retry
from hub.deliver.engine.circuit import Circuit
from hub.deliver.engine.context import Context
from hub.deliver.engine.counters import Recorder
from hub.deliver.engine.dead_letters import dead_letter
from hub.deliver.engine.endpoint import Endpoint
from hub.deliver.engine.held import Held
from hub.deliver.engine.items import Item
from hub.deliver.engine.schedules import Schedules
from hub.deliver.engine.streak import Streak, iso
from hub.deliver.settings import seconds
from hub.deliver.state.records import header_text
from hub.deliver.transport.request import Result

log = logging.getLogger("rthub.deliver")


class Delivery:
    def __init__(self, ctx: Context, grant_id: str, endpoint: Endpoint, held: Held, recorder: Recorder,
                 streak: Streak, circuit: Circuit, schedules: Schedules):
        self.ctx, self.grant_id, self.endpoint, self.held = ctx, grant_id, endpoint, held
        self.recorder, self.streak, self.circuit, self.schedules = recorder, streak, circuit, schedules
        self.probe_min, self.probe_max = seconds(ctx.settings.probe_min), seconds(ctx.settings.probe_max)

    async def guarded(self, items: list[Item]) -> None:
        """:meth:`deliver`, where an exception neither wedges the lane nor loops: a NATS failure hands the
        items back to JetStream; any other (a bug one message meets) dead-letters that message with the
        exception as its reason; a batch is retried one by one first, to find the message."""
        try:
            await self.deliver(items)
        except Exception as exc:  # noqa: BLE001
            log.exception("delivery of %d item(s) to %s failed", len(items), self.grant_id)
            left = [i for i in items if not i.settled]
            if isinstance(exc, nats.errors.Error | JetStreamError | OSError | TimeoutError) or not left:
                for item in left:
                    await self.held.settle(item, "nak")
            elif len(left) > 1:
                for item in left:
                    await self.guarded([item])
            else:
                error = header_text(f"internal error: {type(exc).__name__}: {exc}", 1000)
                try:
                    await self.dead_letter(left, error, Result(error=error), 0)
                except (nats.errors.Error, JetStreamError, TimeoutError) as again:  # JetStream redelivers it
                    log.warning("could not dead-letter %s: %s", left[0].id, again)
                    await self.held.settle(left[0], "nak")

    async def dead_letter(self, items: list[Item], reason: str, result: Result, attempts: int) -> None:
        await dead_letter(self.ctx, self.held, self.grant_id, items, reason, result, attempts)
        self.recorder.dead_lettered(len(items))

    async def send(self, items: list[Item]) -> Result:
        result = await self.endpoint.send(items)
        self.recorder.stats.attempts += 1
        return result

    async def deliver(self, items: list[Item]) -> None:
        """Deliver ``items`` (one POST) until delivered, rejected, dead-lettered or the integration stops.

        The retry schedule decides when to give up: ``attempt`` counts scheduled attempts, and it and the time of
        the next one are kept in ``schedule.<id>.<stream>.<seq>`` of the state bucket, so a restarted deliverer
        continues the schedule. Recovery is detected sooner than the schedule (circuit-breaker style): one
        waiting lane per integration probes with its head every ``probe_min`` doubling to ``probe_max``, and a
        success anywhere wakes every waiting lane (each tries early at most at its own capped backoff, so one
        message the endpoint keeps refusing does not retry at the traffic's rate). Early tries do not advance
        the schedule; a ``Retry-After`` is honoured (no early tries before it).
        """
        s, circuit, record = self.ctx.settings, self.circuit, self.recorder.record
        schedule = self.endpoint.schedule()
        attempt, tries, due = await self.schedules.restore(items[0])
        token = object()
        early_at, early_delay = 0.0, self.probe_min
        try:
            if due is not None:  # restored: the endpoint was failing when the schedule was saved
                circuit.opened()
                early_at = time.time() + early_delay
                wake = circuit.wake
                await circuit.pause(token, due, early_at, wake)
                if wake.is_set():  # "retry now" is the scheduled attempt, brought forward
                    due = time.time()
            while True:
                gone = [i for i in items if self.endpoint.no_longer_member(i)]
                if gone:  # membership is checked again at every attempt: a removed learner's statements stop
                    for item in gone:
                        await self.held.settle(item, "ack")
                    self.ctx.metrics.inc("not_member", len(gone))
                    items = [i for i in items if i not in gone]
                    if not items:
                        return
                scheduled = due is None or time.time() >= due
                tries += 1
                # "retry now" (``retry.<grant id>`` in the state bucket) sets this event: it ends the coming wait
                # even when it arrives while this attempt is still in flight.
                wake = circuit.wake
                result = await self.send(items)
                kind = self.endpoint.target.kind
                outcome = "retry" if result.status is None else retry.classify(kind, result.status, len(items))
                if outcome == "delivered":
                    record(items, tries, "delivered", result)
                    circuit.closed()
                    self.recorder.delivered(len(items))  # counted before the acks go (saved before they are sent)
                    for item in items:
                        await self.held.settle(item, "ack")
                    await self.streak.over()
                    return
                if outcome == "disable":
                    record(items, tries, "disabled", result)
                    await self.ctx.disable(self.grant_id, f"endpoint answered 410 Gone at {iso(time.time())}")
                    return
                if outcome == "reject":
                    circuit.closed()  # the endpoint answers
                    if len(items) > 1:
                        record(items, tries, "split", result)
                        half = len(items) // 2
                        await self.deliver(items[:half])
                        await self.deliver(items[half:])
                        return
                    record(items, tries, "dead", result)
                    await self.dead_letter(items, "rejected by the LRS as malformed", result, tries)
                    return
                circuit.opened()
                asked = retry.retry_after(result.retry_after) if result.status in (429, 503) else None
                if scheduled:
                    attempt += 1
                    delay = retry.next_delay(schedule, attempt, s.retry_jitter, result.status, asked,
                                             self.ctx.max_retry_after)
                    record(items, tries, "retry" if delay is not None else "dead", result)
                    if await self.streak.failing(self.recorder.stats.last_error):
                        return
                    if delay is None:
                        await self.dead_letter(items, f"failed after {tries} attempts", result, tries)
                        return
                    due = time.time() + delay
                    await self.schedules.remember(items[0], attempt, tries, due)
                else:
                    record(items, tries, "retry", result)
                    if await self.streak.failing(self.recorder.stats.last_error):
                        return
                    circuit.probe_failed(token)
                    early_delay = min(self.probe_max, early_delay * 2)
                early_at = due if asked is not None else time.time() + early_delay
                await circuit.pause(token, due, early_at, wake)
                if wake.is_set():  # "retry now" is the scheduled attempt, brought forward
                    due = time.time()
        finally:
            circuit.release(token)
