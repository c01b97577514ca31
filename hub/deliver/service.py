"""The deliverer: one runner per enabled push integration, pulling its durable consumer and POSTing.

Per integration, messages are queued in lanes: one lane per course (``<site>.<org>.<course>`` tokens of the
subject) so a course's statements go out in publish order while other courses proceed; a parallel
integration spreads messages over ``max_concurrency`` lanes instead. A lane holds its head message (and so
the rest of its course) until it is delivered, dead-lettered or the integration stops; held messages are
kept alive with ``in_progress`` so JetStream does not redeliver them meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import time
import uuid
from collections.abc import Callable

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from hub.deliver import retry, ssrf
from hub.deliver.http import Result, Sender, build
from hub.deliver.lease import Lease
from hub.deliver.settings import DeliverSettings, seconds
from hub.deliver.store import (
    H_ATTEMPTS,
    H_FAILED_AT,
    H_ID,
    H_REASON,
    H_RESPONSE,
    H_SEQ,
    H_STATUS,
    H_STREAM,
    H_SUBJECT,
    REDRIVE_STREAM,
    STATE_BUCKET,
    Attempt,
    Stats,
    attempts_subject,
    dlq_subject,
    header_text,
    redrive_subject,
    summarize,
)
from hub.grants import Grant, GrantWatcher, Target, consumer_name
from hub.metrics import Metrics
from hub.secretbox import SecretBox, SecretError
from hub.streams import PROTOCOL_STREAMS, TARGETS_BUCKET

log = logging.getLogger("rthub.deliver")

PUSH = ("webhook", "lrs", "caliper")
NO_MESSAGES, REQUEST_TIMEOUT, CONFLICT = "404", "408", "409"  # JetStream pull status codes
PULL_EXPIRES = 2.0  # seconds a pull request waits; also the longest a stopping runner waits for messages in flight
RECENT = 20
ATTEMPT_FLUSH = 0.2  # seconds between two publishes of the attempt log


def redrive_consumer(grant_id: str) -> str:
    return consumer_name(grant_id) + "_redrive"


def replay_consumer(grant_id: str) -> str:
    return consumer_name(grant_id) + "_replay"


class Item:
    """One message held by a lane until it is settled (acked, dead-lettered or handed back)."""

    __slots__ = ("msg", "id", "subject", "source", "settled", "retry_saved")

    def __init__(self, msg: Msg, source: str):
        self.msg, self.source, self.settled, self.retry_saved = msg, source, False, False
        headers = msg.headers or {}
        self.subject = headers.get(H_SUBJECT, msg.subject)
        self.id = headers.get(H_ID) or headers.get("Nats-Msg-Id") or _body_id(msg.data)

    @property
    def lane_key(self) -> str:
        return ".".join(self.subject.split(".")[1:4])


class RetryState(msgspec.Struct):
    """Where a held message is in its retry schedule (``schedule.<id>.<stream>.<seq>`` in the state bucket)."""

    attempt: int
    tries: int
    due: float


async def _wait_any(events: list[asyncio.Event], timeout: float) -> None:
    """Until one of ``events`` is set or ``timeout`` seconds have passed."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def _stream_order(item: Item) -> tuple[str, int]:
    try:
        meta = item.msg.metadata
        return meta.stream, meta.sequence.stream
    except Exception:  # noqa: BLE001 - not a JetStream message
        return "", 0


def _body_id(data: bytes) -> str:
    try:
        value = msgspec.json.decode(data)
        return str(value.get("id")) if isinstance(value, dict) and value.get("id") else str(uuid.uuid4())
    except (msgspec.DecodeError, RecursionError):  # a body the pull loop cannot read must not end it
        return str(uuid.uuid4())


class TokenBucket:
    """Requests per second for one endpoint; 0 = unlimited."""

    def __init__(self, rate: float):
        self.rate, self.tokens, self.stamp = rate, max(1.0, rate), time.monotonic()

    async def take(self) -> None:
        if self.rate <= 0:
            return
        while True:
            now = time.monotonic()
            self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


class Acker:
    """Acks gathered for ``delay`` seconds and sent together: nats-py writes to its socket once per wake of its
    flusher, and an ack awaited per message woke it for nearly every one (~15% of the deliverer's CPU)."""

    def __init__(self, nc: NATS, delay: float = 0.002):
        self.nc, self.delay = nc, delay
        self.replies: list[str] = []
        self.timer: asyncio.TimerHandle | None = None
        self.sending: set[asyncio.Task] = set()

    def ack(self, msg: Msg) -> None:
        self.replies.append(msg.reply)
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.delay, self._due)

    def _due(self) -> None:
        self.timer = None
        task = asyncio.ensure_future(self._send())
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def _send(self) -> None:
        replies, self.replies = self.replies, []
        for reply in replies:
            try:
                await self.nc.publish(reply)
            except nats.errors.Error as exc:  # JetStream will redeliver; receivers dedupe by id
                log.warning("could not ack %s: %s", reply, exc)

    async def flush(self) -> None:
        """Send what is gathered now (before naks and a lease hand-over)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        await asyncio.gather(*self.sending, return_exceptions=True)
        await self._send()


def takeover_after(s: DeliverSettings) -> float:
    """Age of a lease after which a stand-by takes it: the dead holder's last renewal was at most ``lease_ttl / 3``
    before it died, and its unacked messages are due for redelivery ``ack_wait`` after that at the latest."""
    ttl = seconds(s.lease_ttl)
    return max(ttl, seconds(s.ack_wait) + ttl / 3) + 1


HOT_FIELDS = ("secrets", "url", "basic_auth", "bearer", "rate_limit_per_s", "retry_schedule", "disabled_reason")


def hot_swappable(old: Target, new: Target) -> bool:
    """True when ``new`` differs from ``old`` only in what a running delivery can take over in place."""
    return old != new and msgspec.structs.replace(old, **{f: getattr(new, f) for f in HOT_FIELDS}) == new


class Runner:
    """Delivery of one integration in this process."""

    def __init__(self, svc: Deliverer, grant: Grant, target: Target):
        self.svc, self.grant, self.target = svc, grant, target
        s = svc.settings
        self.stream = PROTOCOL_STREAMS[grant.protocol]
        self.batch = target.batch_size > 1  # webhooks too: a JSON array (xAPI) or one envelope (Caliper)
        self.sender = Sender(seconds(s.connect_timeout), seconds(s.request_timeout), svc.allowed, s.https_only,
                             s.response_excerpt_bytes, max(1, target.max_concurrency))
        self.limit = asyncio.Semaphore(max(1, target.max_concurrency))
        self.bucket = TokenBucket(target.rate_limit_per_s)
        self.lanes: dict[str, collections.deque[Item]] = {}
        self.lane_tasks: dict[str, asyncio.Task] = {}
        self.wakeups: dict[str, asyncio.Event] = {}
        self.held: set[Item] = set()
        self.room = asyncio.Event()
        self.room.set()
        self.tasks: list[asyncio.Task] = []
        self.replay_task: asyncio.Task | None = None
        self.rr = itertools.count()
        self.stats = Stats()
        self.dirty = False
        self.failing_since: float | None = None
        self.wake = asyncio.Event()
        self.recovered = asyncio.Event()  # set = the endpoint answers (circuit closed)
        self.recovered.set()
        self.prober: object | None = None
        self.probe_delay = seconds(s.probe_min)
        self.probe_at = 0.0
        self.stopping = False
        self.leader = asyncio.Event()
        self.core: list[asyncio.Task] = []
        self.pulls: list[asyncio.Task] = []
        self.lag_samples: collections.deque[tuple[float, int]] = collections.deque()
        self.draining = False
        self.acker = Acker(svc.nc)
        self.lease = None if target.parallel else Lease(
            svc.state, f"lease.{grant.id}", svc.process_id, takeover_after(s))

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        g, s = self.grant, self.svc.settings
        await self.svc.js.add_consumer(self.stream, ConsumerConfig(
            name=consumer_name(g.id), durable_name=consumer_name(g.id), filter_subjects=g.filter_subjects(),
            deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.EXPLICIT, ack_wait=seconds(s.ack_wait),
            max_ack_pending=s.max_in_flight, description=f"push delivery of {g.id} ({self.target.kind})"))
        await self.svc.js.add_consumer(REDRIVE_STREAM, ConsumerConfig(
            name=redrive_consumer(g.id), durable_name=redrive_consumer(g.id),
            filter_subject=redrive_subject(g.id), deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT, ack_wait=seconds(s.ack_wait), max_ack_pending=s.max_in_flight))
        try:
            entry = await self.svc.state.get(f"failing.{g.id}")
            self.failing_since = float(entry.value.decode()) if entry.value else None
        except Exception:  # noqa: BLE001 - no failure streak recorded
            self.failing_since = None
        try:  # a restart (rotation, edit, re-enable) continues this process's counters instead of zeroing them
            entry = await self.svc.state.get(f"stats.{g.id}.{self.svc.process_id}")
            if entry.value:
                self.stats = msgspec.json.decode(entry.value, type=Stats)
        except Exception:  # noqa: BLE001 - first run of this integration in this process
            pass
        if self.lease is None:
            self.leader.set()
        else:
            self.tasks.append(asyncio.create_task(self._hold_lease()))
        self.pulls += [asyncio.create_task(self._pull(self.stream, consumer_name(g.id), "live")),
                       asyncio.create_task(self._pull(REDRIVE_STREAM, redrive_consumer(g.id), "redrive"))]
        self.tasks += self.pulls
        self.tasks.append(asyncio.create_task(self._keep_alive()))
        self.core = list(self.tasks)
        await self.maybe_replay()
        log.info("delivering %s (%s %s -> %s)", g.id, g.protocol, self.target.kind, self.target.url)

    async def maybe_replay(self) -> None:
        """Run the integration's replay consumer, if a replay was requested and this process delivers.

        Never on a stopping runner: a replay pull started after :meth:`stop` would keep delivering with that
        runner's superseded target (old secrets), unseen and uncounted (issue 10 bug 3)."""
        if self.stopping:
            return
        if self.replay_task is None or self.replay_task.done():
            try:
                await self.svc.js.consumer_info(self.stream, replay_consumer(self.grant.id))
            except NotFoundError:
                return
            if self.stopping:  # stopped while asking
                return
            self.replay_task = asyncio.create_task(
                self._pull(self.stream, replay_consumer(self.grant.id), "replay", until_empty=True))
            self.tasks.append(self.replay_task)
            self.pulls.append(self.replay_task)

    def schedule(self) -> list[float]:
        """The integration's own retry schedule (``Target.retry_schedule``), else the deliverer's."""
        if self.target.retry_schedule:
            try:
                return [seconds(x) for x in self.target.retry_schedule]
            except ValueError as exc:
                log.error("integration %s: unusable retry schedule, using the default: %s", self.grant.id, exc)
        return self.svc.schedule

    def observe_lag(self, now: float, lag: int, window: float) -> None:
        """Cannot keep up: this process delivers, the endpoint answers (a success within ``window``, no failure
        streak), yet the lag has not come down over ``window``. An endpoint that fails is "failing", not behind."""
        samples = self.lag_samples
        samples.append((now, lag))
        while len(samples) > 1 and samples[1][0] <= now - window:
            samples.popleft()
        then_t, then_lag = samples[0]
        behind = (self.leader.is_set() and now - then_t >= window and lag > 0 and lag >= then_lag
                  and self.recovered.is_set() and self.failing_since is None
                  and (self.stats.last_success or 0) >= now - window)
        if behind and self.stats.behind_since is None:
            self.stats.behind_since, self.dirty = now, True
            log.warning("integration %s cannot keep up: lag %d, was %d %.0f s ago", self.grant.id, lag, then_lag,
                        now - then_t)
        elif not behind and self.stats.behind_since is not None and (lag < then_lag or lag == 0
                                                                     or not self.leader.is_set()):
            self.stats.behind_since, self.dirty = None, True

    def retarget(self, target: Target) -> None:
        """New secrets, URL, credentials or rate limit, applied in place: the next request (a retry included) uses
        them. Restarting the runner instead handed every held message back and raced the lease with other
        processes' runners still holding the superseded target (issue 10 bug 3)."""
        if target.rate_limit_per_s != self.target.rate_limit_per_s:
            self.bucket = TokenBucket(target.rate_limit_per_s)
        self.target = target

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
        others = [*self.lane_tasks.values(), *(t for t in self.tasks if t not in self.pulls)]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self.draining = True
        self.room.set()
        if self.pulls:
            _, late = await asyncio.wait(self.pulls, timeout=PULL_EXPIRES + 2)
            for task in late:
                task.cancel()
            await asyncio.gather(*self.pulls, return_exceptions=True)
        await self.acker.flush()
        for item in sorted(self.held, key=_stream_order):
            await self._settle(item, "nak")
        await self.acker.flush()
        if self.lease is not None:
            await self.lease.release()
        await self.sender.close()
        await self.svc.flush_stats(self)

    # ---- pulling ---------------------------------------------------------------------------------------
    async def _hold_lease(self) -> None:
        """Renew the lease every ``lease_ttl / 3``; step down when it is lost, or when no renewal has succeeded for
        ``lease_ttl`` (an outage: a stand-by elsewhere may take over after ``max(lease_ttl, ack_wait) + 1 s``)."""
        ttl = seconds(self.svc.settings.lease_ttl)
        period = max(0.2, ttl / 3)
        last_ok = time.monotonic()
        while True:
            try:
                held = await self.lease.try_hold()
                last_ok = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - NATS unreachable: keep the lease while it is surely ours
                log.warning("lease %s: %s", self.grant.id, exc)
                held = self.leader.is_set() and time.monotonic() - last_ok < ttl
            if held and not self.leader.is_set():
                log.info("this process now delivers ordered integration %s", self.grant.id)
                self.leader.set()
            elif not held and self.leader.is_set():
                log.warning("lost the lease of %s; restarting its delivery", self.grant.id)
                self.leader.clear()
                self.svc.restart(self.grant.id, self)
                return
            await asyncio.sleep(period)

    async def _pull(self, stream: str, durable: str, source: str, until_empty: bool = False) -> None:
        """Keep pull requests outstanding and dispatch each message as it arrives.

        nats-py's ``fetch(n)`` waits for the whole batch (or its timeout) once traffic trickles in, which
        adds up to the timeout in latency at moderate rates; streaming pull requests do not. Messages are
        handled in the subscription's callback: ``next_msg`` cost a task, a ``wait_for`` task and a uuid4 per
        message (~10% of the deliverer's CPU at full load).
        """
        s = self.svc.settings
        nc = self.svc.nc
        api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        inbox = nc.new_inbox()
        expires = PULL_EXPIRES
        half = s.fetch_batch // 2
        # ``exact``: ``outstanding`` counts every message still owed (no request was reset meanwhile)
        st = {"outstanding": 0, "exact": True, "gone": False, "empty": False, "pause": False}
        signal = asyncio.Event()

        async def on_msg(msg: Msg) -> None:
            status = JetStreamContext.is_status_msg(msg)
            if status:
                if status in (NO_MESSAGES, REQUEST_TIMEOUT, CONFLICT):
                    st["outstanding"], st["exact"] = 0, False  # no messages / expired / consumer gone or limits
                    if status == CONFLICT and "deleted" in (msg.headers or {}).get("Description", "").lower():
                        st["gone"] = True
                    st["empty"] = status == NO_MESSAGES
                    st["pause"] = status in (NO_MESSAGES, CONFLICT)  # do not spin on "no messages" or "limits"
                    signal.set()
                return
            st["outstanding"] -= 1
            if st["outstanding"] <= half:
                signal.set()
            if self.draining:
                self.held.add(Item(msg, source))  # handed back in order by stop()
            elif self.leader.is_set():
                self._dispatch(Item(msg, source))

        sub = await nc.subscribe(inbox, cb=on_msg)
        asked_at = 0.0
        try:
            while not st["gone"]:
                if self.draining:  # stopping: no new requests; wait until nothing more can arrive
                    if (st["exact"] and st["outstanding"] <= 0) or time.monotonic() - asked_at > expires + 0.5:
                        return
                else:
                    await self.leader.wait()
                if st["pause"]:
                    st["pause"] = False
                    await asyncio.sleep(0.05)
                room = s.max_in_flight - len(self.held)
                outstanding = st["outstanding"] = max(0, st["outstanding"])
                if self.draining:
                    pass
                elif outstanding <= half and room > outstanding:
                    n = min(s.fetch_batch, room) - outstanding
                    # earlier requests all expired
                    st["exact"] = st["exact"] or time.monotonic() - asked_at > expires + 0.5
                    signal.clear()
                    await nc.publish(api, msgspec.json.encode({"batch": n, "expires": int(expires * 1e9)}),
                                     reply=inbox)
                    st["outstanding"], asked_at = outstanding + n, time.monotonic()
                elif room <= 0:
                    self.room.clear()
                    await self.room.wait()
                    continue
                signal.clear()
                try:
                    async with asyncio.timeout(1.0):
                        await signal.wait()
                except TimeoutError:
                    if time.monotonic() - asked_at > expires + 1:
                        st["outstanding"], st["exact"] = 0, False  # expired without a status (e.g. reconnect)
                    st["empty"] = True
                if nc.is_closed:
                    return  # the deliverer is shutting down (a reconnect keeps the connection open)
                if st["empty"] and until_empty and not any(i.source == source for i in self.held):
                    if await self._replay_done(durable):
                        return
                st["empty"] = False
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - connection closing
                pass

    async def _replay_done(self, durable: str) -> bool:
        try:
            info = await self.svc.js.consumer_info(self.stream, durable)
        except NotFoundError:
            return True
        if info.num_pending or info.num_ack_pending:
            return False
        try:
            await self.svc.js.delete_consumer(self.stream, durable)
            await self.svc.state.delete(f"replay.{self.grant.id}")
        except Exception:  # noqa: BLE001 - another deliverer finished it first
            pass
        log.info("replay of %s finished", self.grant.id)
        return True

    def _dispatch(self, item: Item) -> None:
        if self.stopping:  # handed back: JetStream redelivers it to the runner that replaces this one
            self.svc._spawn(self._settle(item, "nak"))
            return
        if self.target.parallel:
            key = f"{item.source}:p{next(self.rr) % max(1, self.target.max_concurrency)}"
        else:
            key = f"{item.source}:{item.lane_key}"
        self.held.add(item)
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = collections.deque()
            self.wakeups[key] = asyncio.Event()
            self.lane_tasks[key] = asyncio.create_task(self._lane(key))
        lane.append(item)
        self.wakeups[key].set()

    async def _keep_alive(self) -> None:
        """Tell JetStream the held messages are still being worked on (they may wait hours for a retry)."""
        period = max(0.2, seconds(self.svc.settings.ack_wait) / 3)
        while True:
            await asyncio.sleep(period)
            for item in list(self.held):
                if not item.settled:
                    try:
                        await item.msg.in_progress()
                    except Exception:  # noqa: BLE001 - reconnecting; JetStream redelivers if it must
                        pass

    # ---- lanes -----------------------------------------------------------------------------------------
    async def _lane(self, key: str) -> None:
        lane, wake = self.lanes[key], self.wakeups[key]
        size = self.target.batch_size if self.batch else 1
        wait = self.target.batch_wait_ms / 1000
        try:
            while True:
                if not lane:
                    wake.clear()
                    try:
                        async with asyncio.timeout(30):  # not wait_for: a task per wait on Python 3.11
                            await wake.wait()
                    except TimeoutError:
                        if not lane:
                            return
                    continue
                if len(lane) < size:
                    deadline = time.monotonic() + wait
                    while len(lane) < size and (left := deadline - time.monotonic()) > 0:
                        wake.clear()
                        try:
                            async with asyncio.timeout(left):
                                await wake.wait()
                        except TimeoutError:
                            break
                items = [lane.popleft() for _ in range(min(size, len(lane)))]
                await self._deliver_guarded(items)
        finally:
            if self.lanes.get(key) is lane and (not lane or self.stopping):
                self.lanes.pop(key, None)
                self.wakeups.pop(key, None)
                self.lane_tasks.pop(key, None)

    async def _deliver_guarded(self, items: list[Item]) -> None:
        """:meth:`deliver`, where an exception neither wedges the lane nor loops: a NATS failure hands the
        items back to JetStream; any other (a bug one message meets) dead-letters that message with the
        exception as its reason; a batch is retried one by one first, to find the message."""
        try:
            await self.deliver(items)
        except Exception as exc:  # noqa: BLE001
            log.exception("delivery of %d item(s) to %s failed", len(items), self.grant.id)
            left = [i for i in items if not i.settled]
            if isinstance(exc, nats.errors.Error | OSError | TimeoutError) or not left:
                for item in left:
                    await self._settle(item, "nak")
            elif len(left) > 1:
                for item in left:
                    await self._deliver_guarded([item])
            else:
                error = header_text(f"internal error: {type(exc).__name__}: {exc}", 1000)
                try:
                    await self.dead_letter(left, error, Result(error=error), 0)
                except Exception as again:  # noqa: BLE001 - e.g. NATS down: JetStream redelivers it
                    log.warning("could not dead-letter %s: %s", left[0].id, again)
                    await self._settle(left[0], "nak")

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
        schedule, s = self.schedule(), self.svc.settings
        attempt, tries, due = await self._restore(items[0])
        token = object()
        early_at, early_delay = 0.0, seconds(s.probe_min)
        try:
            if due is not None:  # restored: the endpoint was failing when the schedule was saved
                self._opened()
                early_at = time.time() + early_delay
                wake = self.wake
                await self._pause(token, due, early_at, wake)
                if wake.is_set():  # "retry now" is the scheduled attempt, brought forward
                    due = time.time()
            while True:
                scheduled = due is None or time.time() >= due
                tries += 1
                # "retry now" (``retry.<grant id>`` in the state bucket) sets this event: it ends the coming wait
                # even when it arrives while this attempt is still in flight.
                wake = self.wake
                result = await self.send(items)
                outcome = ("retry" if result.status is None
                           else retry.classify(self.target.kind, result.status, len(items)))
                if outcome == "delivered":
                    self.record(items, tries, "delivered", result)
                    self._closed()
                    for item in items:
                        await self._settle(item, "ack")
                    self.stats.delivered += len(items)
                    self.svc.metrics.inc("delivered", len(items), integration=self.grant.id)
                    await self._streak_over()
                    return
                if outcome == "disable":
                    self.record(items, tries, "disabled", result)
                    await self.svc.disable(self.grant.id, f"endpoint answered 410 Gone at {_iso(time.time())}")
                    return
                if outcome == "reject":
                    self._closed()  # the endpoint answers
                    if len(items) > 1:
                        self.record(items, tries, "split", result)
                        half = len(items) // 2
                        await self.deliver(items[:half])
                        await self.deliver(items[half:])
                        return
                    self.record(items, tries, "dead", result)
                    await self.dead_letter(items, "rejected by the LRS as malformed", result, tries)
                    return
                self._opened()
                asked = retry.retry_after(result.retry_after) if result.status in (429, 503) else None
                if scheduled:
                    attempt += 1
                    delay = retry.next_delay(schedule, attempt, s.retry_jitter, result.status, asked,
                                             self.svc.max_retry_after)
                    self.record(items, tries, "retry" if delay is not None else "dead", result)
                    if await self._streak_failing():
                        return
                    if delay is None:
                        await self.dead_letter(items, f"failed after {tries} attempts", result, tries)
                        return
                    due = time.time() + delay
                    await self._remember(items[0], attempt, tries, due)
                else:
                    self.record(items, tries, "retry", result)
                    if await self._streak_failing():
                        return
                    if self.prober is token:
                        self.probe_delay = min(seconds(s.probe_max), self.probe_delay * 2)
                        self.probe_at = time.time() + self.probe_delay
                    early_delay = min(seconds(s.probe_max), early_delay * 2)
                early_at = due if asked is not None else time.time() + early_delay
                await self._pause(token, due, early_at, wake)
                if wake.is_set():  # "retry now" is the scheduled attempt, brought forward
                    due = time.time()
        finally:
            if self.prober is token:
                self.prober = None

    def _opened(self) -> None:
        if self.recovered.is_set():
            self.recovered.clear()
            self.probe_delay = seconds(self.svc.settings.probe_min)
            self.probe_at = time.time() + self.probe_delay

    def _closed(self) -> None:
        if not self.recovered.is_set():
            self.recovered.set()
            self.probe_delay = seconds(self.svc.settings.probe_min)

    async def _pause(self, token: object, due: float, early_at: float, wake: asyncio.Event) -> None:
        """Wait for the next scheduled attempt (``due``), or less: "retry now" (``wake``), this lane is the prober
        and its probe is due, or the endpoint answered another lane and this lane may try early (``early_at``)."""
        cap = seconds(self.svc.settings.probe_max)
        while True:
            now = time.time()
            if now >= due or wake.is_set():
                return
            if self.prober is None:
                self.prober = token
                self.probe_at = max(self.probe_at, now + min(self.probe_delay, cap))
            times = [due, now + cap]
            if self.prober is token:
                probe = max(self.probe_at, early_at)
                if now >= probe:
                    return
                times.append(probe)
            if self.recovered.is_set():
                if now >= early_at:
                    return
                times.append(early_at)
                await _wait_any([wake], min(times) - now)
                continue
            await _wait_any([wake, self.recovered], min(times) - now)

    def _retry_key(self, item: Item) -> str | None:
        try:
            meta = item.msg.metadata
        except Exception:  # noqa: BLE001 - not a JetStream message
            return None
        return f"schedule.{self.grant.id}.{meta.stream}.{meta.sequence.stream}"

    async def _restore(self, item: Item) -> tuple[int, int, float | None]:
        """``(attempt, tries, due)`` of a redelivered message whose schedule an earlier process started."""
        key = self._retry_key(item)
        try:
            if key is None or item.msg.metadata.num_delivered <= 1:
                return 0, 0, None
            entry = await self.svc.state.get(key)
            state = msgspec.json.decode(entry.value, type=RetryState)
        except Exception:  # noqa: BLE001 - none recorded (or unreadable): the schedule starts afresh
            return 0, 0, None
        item.retry_saved = True
        log.info("integration %s: %s continues its retry schedule at attempt %d", self.grant.id, item.id,
                 state.attempt + 1)
        return state.attempt, state.tries, state.due

    async def _remember(self, item: Item, attempt: int, tries: int, due: float) -> None:
        key = self._retry_key(item)
        if key is None:
            return
        try:
            await self.svc.state.put(key, msgspec.json.encode(RetryState(attempt=attempt, tries=tries, due=due)))
            item.retry_saved = True
        except Exception as exc:  # noqa: BLE001 - best effort: a restart would start the schedule afresh
            log.warning("could not save the retry schedule of %s: %s", item.id, exc)

    async def send(self, items: list[Item]) -> Result:
        url, headers, body = build(self.target, self.grant.protocol, [i.msg.data for i in items],
                                   [i.id for i in items], self.svc.settings.caliper_sensor, self.batch)
        await self.bucket.take()
        async with self.limit:
            result = await self.sender.post(url, headers, body)
        self.stats.attempts += 1
        return result

    # ---- outcomes --------------------------------------------------------------------------------------
    def record(self, items: list[Item], attempt: int, outcome: str, result: Result) -> None:
        entry = Attempt(t=time.time(), ids=[i.id for i in items], attempt=attempt, outcome=outcome,
                        status=result.status, latency_ms=result.latency_ms, error=result.error,
                        excerpt=result.excerpt[:200] or None, source=items[0].source, seqs=[_seq(i) for i in items])
        if outcome != "delivered":
            self.stats.failures += 1
            self.stats.last_error = result.error or f"HTTP {result.status}: {result.excerpt[:200]}"
            self.stats.last_error_at = entry.t
            self.svc.metrics.inc("delivery_failures", integration=self.grant.id)
            log.info("integration %s: %s attempt %d of %d item(s): %s", self.grant.id, outcome, attempt,
                     len(items), self.stats.last_error)
        else:
            self.stats.last_success = entry.t
        recent = self.stats.recent
        recent.append(entry)
        if len(recent) > 2 * RECENT:  # trimmed now and then, not rebuilt per attempt
            del recent[:-RECENT]
        self.dirty = True
        self.svc.metrics.inc("delivery_attempts", integration=self.grant.id)
        self.svc.log_attempt(self.grant.id, entry)

    async def dead_letter(self, items: list[Item], reason: str, result: Result, attempts: int) -> None:
        s = self.svc.settings
        for item in items:
            meta = item.msg.metadata
            headers = {
                H_REASON: reason, H_STATUS: str(result.status or 0),
                H_RESPONSE: header_text(result.error or result.excerpt, s.response_excerpt_bytes),
                H_SUBJECT: item.subject, H_ID: item.id, H_ATTEMPTS: str(attempts), H_FAILED_AT: _iso(time.time()),
                H_STREAM: (item.msg.headers or {}).get(H_STREAM, meta.stream),
                H_SEQ: (item.msg.headers or {}).get(H_SEQ, str(meta.sequence.stream)),
            }
            await self.svc.js.publish(dlq_subject(self.grant.id), item.msg.data, headers=headers)
            await self._settle(item, "ack")
        self.stats.dead_lettered += len(items)
        self.svc.metrics.inc("dead_lettered", len(items), integration=self.grant.id)

    async def _settle(self, item: Item, how: str) -> None:
        if item.settled:
            return
        item.settled = True
        self.held.discard(item)
        self.room.set()
        if how == "ack":
            self.acker.ack(item.msg)
        else:
            try:
                await item.msg.nak()
            except Exception as exc:  # noqa: BLE001 - JetStream will redeliver; receivers dedupe by id
                log.warning("could not nak %s: %s", item.id, exc)
        if how == "ack" and item.retry_saved and (key := self._retry_key(item)):
            self.svc._spawn(self._forget(key))

    async def _forget(self, key: str) -> None:
        try:
            await self.svc.state.purge(key)  # a small purge marker stays (the deliverer may not purge streams)
        except Exception:  # noqa: BLE001 - left over: read only if this message is ever redelivered
            pass

    async def _streak_over(self) -> None:
        if self.failing_since is not None:
            self.failing_since = None
            try:
                await self.svc.state.delete(f"failing.{self.grant.id}")
            except Exception:  # noqa: BLE001
                pass

    async def _streak_failing(self) -> bool:
        """Record the failure streak; True when it has lasted long enough to disable the endpoint."""
        now = time.time()
        if self.failing_since is None:
            self.failing_since = now
            self.svc._spawn(self._save_streak(now))
        since = self.failing_since
        if now - since >= self.svc.disable_after:
            await self.svc.disable(self.grant.id, f"failing continuously since {_iso(since)} "
                                   f"(last error: {self.stats.last_error})")
            return True
        return False

    async def _save_streak(self, since: float) -> None:
        """Persist the streak start so restarts and other processes keep the same clock."""
        try:
            await self.svc.state.create(f"failing.{self.grant.id}", repr(since).encode())
        except Exception:  # noqa: BLE001 - an earlier streak start exists: adopt it
            try:
                entry = await self.svc.state.get(f"failing.{self.grant.id}")
                if self.failing_since is not None and entry.value:
                    self.failing_since = min(self.failing_since, float(entry.value.decode()))
            except Exception:  # noqa: BLE001
                pass


def _seq(item: Item) -> int:
    """The statement's sequence in its protocol stream (a redriven copy carries it in a header)."""
    if item.source != "redrive":
        return item.msg.metadata.sequence.stream
    return int((item.msg.headers or {}).get(H_SEQ) or 0)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


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
        self.watchers: list = []
        self.state = None
        self.targets_kv = None
        self.on_change: Callable[[str], None] | None = None
        self.backoff: dict[str, tuple[int, float]] = {}  # grant id -> (failed starts in a row, next try)
        self.attempt_log: dict[str, list[Attempt]] = {}  # grant id -> attempts not yet published

    async def start(self) -> Deliverer:
        self.state = await self.js.key_value(STATE_BUCKET)
        self.targets_kv = await self.js.key_value(TARGETS_BUCKET)
        self.grant_watcher = await GrantWatcher(self.js, on_change=self._grant_changed).start()
        for key, kv, handler in ((">", self.targets_kv, self._target_entry), ("replay.*", self.state, self._replay_entry),
                                 ("retry.*", self.state, self._retry_entry)):
            watcher = await kv.watch(key)
            self.watchers.append(watcher)
            ready = asyncio.get_running_loop().create_future()
            self.background.append(asyncio.create_task(self._watch(watcher, handler, ready)))
            await ready
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
            for gid, runner in list(self.runners.items()):
                try:
                    info = await self.js.consumer_info(runner.stream, consumer_name(gid))
                except Exception:  # noqa: BLE001 - NATS away or consumer gone: keep the last values
                    keep.add((("integration", gid),))
                    continue
                lag = (info.num_pending or 0) + (info.num_ack_pending or 0)
                runner.observe_lag(time.time(), lag, window)
                self.metrics.set("integration_lag", lag, integration=gid)
                self.metrics.set("integration_behind", int(runner.stats.behind_since is not None), integration=gid)
                keep.add((("integration", gid),))
            self.metrics.retain("integration_lag", keep)
            self.metrics.retain("integration_behind", keep)
            await asyncio.sleep(interval)

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
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for gid in self.not_delivering():
                _, at = self.backoff.get(gid, (0, 0.0))
                if now >= at and not self.locks[gid].locked():
                    runner = self.runners.get(gid)
                    if runner is not None:
                        log.warning("delivery of %s stopped working; restarting it", gid)
                    self._spawn(self.reconcile(gid, restart=runner is not None, expected=runner))

    async def _watch(self, watcher, handler, ready: asyncio.Future) -> None:
        async for entry in watcher:
            if entry is None:
                if not ready.done():
                    ready.set_result(None)
                continue
            handler(entry)
            if not ready.done() and entry.delta == 0:
                ready.set_result(None)

    def _grant_changed(self, grant_id: str, grant: Grant | None) -> None:
        if grant is None:
            self.grants.pop(grant_id, None)
            self._schedule(grant_id, revoked=True)
        else:
            self.grants[grant_id] = grant
            self._schedule(grant_id)

    def _target_entry(self, entry) -> None:
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self.targets.pop(entry.key, None)
        else:
            try:
                # Secrets are sealed at rest (hub.secretbox); only this process's memory holds them open.
                self.targets[entry.key] = self.box.open_target(msgspec.json.decode(entry.value, type=Target))
            except (msgspec.DecodeError, SecretError) as exc:
                log.error("ignoring unreadable target %s: %s", entry.key, exc)
                return
        self._schedule(entry.key)

    def _replay_entry(self, entry) -> None:
        grant_id = entry.key.split(".", 1)[1]
        if entry.operation not in ("DEL", "PURGE") and grant_id in self.runners:
            self._spawn(self.runners[grant_id].maybe_replay())

    def _retry_entry(self, entry) -> None:
        runner = self.runners.get(entry.key.split(".", 1)[1])
        if entry.operation not in ("DEL", "PURGE") and runner is not None:
            woken, runner.wake = runner.wake, asyncio.Event()
            woken.set()

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
                runner = Runner(self, *want)
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
            for name in (consumer_name(grant_id), replay_consumer(grant_id)):
                try:
                    await self.js.delete_consumer(stream, name)
                except Exception:  # noqa: BLE001 - not there
                    pass
        try:
            await self.js.delete_consumer(REDRIVE_STREAM, redrive_consumer(grant_id))
        except Exception:  # noqa: BLE001
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
            target.enabled, target.disabled_reason = False, reason
            await self.targets_kv.update(grant_id, msgspec.json.encode(target), last=entry.revision)
        except Exception as exc:  # noqa: BLE001 - changed concurrently: the newest config wins
            log.warning("could not disable %s: %s", grant_id, exc)

    def log_attempt(self, grant_id: str, entry: Attempt) -> None:
        """Queued; :meth:`_attempt_loop` publishes every ``ATTEMPT_FLUSH`` seconds (summed up, see ``summarize``)."""
        self.attempt_log.setdefault(grant_id, []).append(entry)

    async def flush_attempts(self) -> None:
        queued, self.attempt_log = self.attempt_log, {}
        for grant_id, entries in queued.items():
            for entry in summarize(entries):
                try:
                    await self.nc.publish(attempts_subject(grant_id), msgspec.json.encode(entry))
                except nats.errors.Error:  # the attempt log is best effort; counters still count
                    pass

    async def _attempt_loop(self) -> None:
        while True:
            await asyncio.sleep(ATTEMPT_FLUSH)
            await self.flush_attempts()

    async def flush_stats(self, runner: Runner) -> None:
        if not runner.dirty:
            return
        runner.dirty = False
        runner.stats.updated = time.time()
        del runner.stats.recent[:-RECENT]
        try:
            await self.state.put(f"stats.{runner.grant.id}.{self.process_id}", msgspec.json.encode(runner.stats))
        except Exception as exc:  # noqa: BLE001
            runner.dirty = True
            log.warning("could not save delivery stats of %s: %s", runner.grant.id, exc)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for runner in list(self.runners.values()):
                await self.flush_stats(runner)

    async def stop(self) -> None:
        for task in self.background:
            task.cancel()
        await self.grant_watcher.stop()
        for watcher in self.watchers:
            try:
                await watcher.stop()
            except Exception:  # noqa: BLE001
                pass
        for task in list(self.pending):
            task.cancel()
        await asyncio.gather(*self.pending, *self.background, return_exceptions=True)
        await asyncio.gather(*(runner.stop() for runner in self.runners.values()), return_exceptions=True)
        self.runners.clear()
        await self.flush_attempts()
