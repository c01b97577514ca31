"""The in-LMS event-tracking backend: ``send()`` in microseconds, JetStream publishing in a background thread.

Configure it in the LMS settings::

    EVENT_TRACKING_BACKENDS["rthub"] = {
        "ENGINE": "lms_publisher.backend.NatsBackend",
        "OPTIONS": {"nats_url": "nats://nats-1:4222,nats://nats-2:4222", "nats_creds": "/etc/rthub/lms.creds",
                    "spool_dir": "/var/spool/rthub", "site": "lms.example.org"},
    }

Any :class:`~lms_publisher.settings.PublisherSettings` field is an option (``RTHUB_*`` variables fill the rest).
``send()`` drops names outside the allow-list, encodes the event (stable id) and appends it to an in-memory
queue; it never touches the network and never raises. The worker thread publishes batches and waits for the
acks; whatever cannot be published (NATS down or slow, queue full) goes to the durable spool, replayed in
order when NATS is back. At interpreter exit the queue is flushed, or spooled if NATS does not answer in time.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import os
import threading
import time
from typing import Any

import nats.errors

from hub.core.errors import JetStreamError
from hub.core.events import InvalidEvent
from hub.core.publish import AckedPublisher
from hub.core.settings import from_env
from lms_publisher.codec import Record, to_record
from lms_publisher.publish import MSG_ID, allowed_events
from lms_publisher.settings import PublisherSettings
from lms_publisher.spool import Spool

log = logging.getLogger("rthub.lms")
_fork_lock = threading.Lock()  # serialises the re-start in a forked child (made anew there: never held on arrival)


def _new_fork_lock() -> None:
    global _fork_lock
    _fork_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_fork_lock)


class NatsBackend:
    """event-tracking backend (``__init__(**options)``, ``send(event)``)."""

    def __init__(self, **options: Any):
        fields = set(PublisherSettings.__struct_fields__)
        unknown = set(options) - fields - {"flush_timeout_s", "start"}
        if unknown:
            raise ValueError(f"unknown NatsBackend options: {sorted(unknown)}")
        self.settings = from_env(PublisherSettings, **{k: v for k, v in options.items() if k in fields})
        self.allow = allowed_events(self.settings)
        self.site = self.settings.site
        self.limits = self.settings.limits
        self.queue_size = self.settings.queue_size
        self.flush_timeout_s = float(options.get("flush_timeout_s", 5.0))
        self.spool = Spool(self.settings.spool_dir, self.settings.spool_max_bytes,
                           self.settings.spool_segment_bytes)
        self.counts: collections.Counter[str] = collections.Counter()
        self._q: collections.deque[Record] = collections.deque()
        self._order = threading.Lock()  # taken when queued records move to the spool (rare), keeps them in order
        self._idle = False
        self._closing = False
        self._paused_since: float | None = None  # the spool replay failed since then (logged once)
        self._paused_tries = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._ready = threading.Event()
        self._connected_once = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, name="rthub-lms-publisher", daemon=True)
        self.connected = False
        self._pid = os.getpid()
        self._autostart = options.get("start", True)
        if self._autostart:
            self.start()

    # ---- the LMS request thread ------------------------------------------------------------------------

    def send(self, event: dict[str, Any]) -> None:
        """Encode and enqueue; never blocks on the network, never raises."""
        try:
            if self._pid != os.getpid():
                self._after_fork()
            if event.get("name") not in self.allow:
                self.counts["not_allowed"] += 1
                return
            self.enqueue(to_record(event, self.site, self.limits))
        except InvalidEvent as exc:  # over the event limits: the hub would only quarantine it
            self.counts["rejected"] += 1
            log.warning("rthub backend rejected event %r: %s", _name(event)[:200], exc)
        except Exception:  # noqa: BLE001 - the LMS must never see our failures
            self.counts["send_errors"] += 1
            log.exception("rthub backend could not enqueue event %r", _name(event))

    def enqueue(self, record: Record) -> None:
        """Queue one encoded record for publishing (spooled behind older ones when the queue is full or we are
        closing); never touches the network. The hook other producers on this machinery use (the Open edX event
        bus producer, :mod:`lms_publisher.event_bus`): one queue, one worker thread, one spool."""
        if self._pid != os.getpid():
            self._after_fork()
        if self._closing:
            self.counts["after_close"] += 1
            self.spool.append([record])
            return
        if len(self._q) >= self.queue_size:
            # keep order: what is queued is older than this event, so it goes to the spool first
            with self._order:
                older = [self._q.popleft() for _ in range(len(self._q))]
                self.counts["overflow"] += len(older) + 1
                self.spool.append([*older, record])
            return
        self._q.append(record)
        if self._idle:
            self._idle = False
            self._loop.call_soon_threadsafe(self._wake.set)

    def outgoing(self, record: Record) -> tuple[str, bytes, dict[str, str]]:
        """``(subject, body, headers)`` to publish for a queued or spooled record. Tracking events go as they
        are, with their stable id for de-duplication and their W3C ``traceparent``; a subclass whose records carry more (headers) unpacks them."""
        return record.subject, record.payload, _headers(record)

    async def on_connect(self, nc) -> None:
        """Called after every (first) connect, before anything is published: a subclass may prepare the server
        (e.g. create its stream). Exceptions are logged, not raised."""

    # ---- lifecycle -------------------------------------------------------------------------------------

    def _after_fork(self) -> None:
        """First send() in a forked process (uWSGI workers forked from the master, which loaded the settings;
        celery's prefork pool): the worker thread did not survive the fork and the spool slot is the parent's.
        Take a slot of our own and a fresh thread; what the parent had queued stays the parent's."""
        with _fork_lock:
            if self._pid == os.getpid():
                return
            self.spool = Spool(self.settings.spool_dir, self.settings.spool_max_bytes,
                               self.settings.spool_segment_bytes)
            self.counts = collections.Counter()
            self._q = collections.deque()
            self._order = threading.Lock()
            self._idle = False
            self._loop = self._wake = None
            self._ready, self._connected_once = threading.Event(), threading.Event()
            self._thread = threading.Thread(target=self._thread_main, name="rthub-lms-publisher", daemon=True)
            self.connected = False
            self._pid = os.getpid()
            if self._autostart:
                self._thread.start()  # no waiting for NATS here: this is a request; the first 2 s are held in memory

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5)
        self._connected_once.wait(1.0)  # at LMS start-up only; a NATS that is down costs at most this second
        atexit.register(self.close)

    def close(self) -> None:
        """Flush what is queued (publish, else spool) within ``flush_timeout_s``; idempotent."""
        if self._closing or self._pid != os.getpid():  # a forked child that never sent: the queue and spool
            return                                      # it inherited are the parent's
        self._closing = True
        if self._thread.is_alive():
            self._ready.wait(5)  # a thread started just now (first send() after a fork) sets its loop first
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._wake.set)
            self._thread.join(self.flush_timeout_s + 2)
        leftover = []
        while self._q:
            leftover.append(self._q.popleft())
        if leftover:
            self.counts["spooled"] += self.spool.append(leftover)
        self.spool.close()
        atexit.unregister(self.close)

    def stats(self) -> dict[str, int]:
        return {**self.counts, "queued": len(self._q), "spool_bytes": self.spool.size,
                "spool_dropped": self.spool.dropped}

    # ---- the worker thread -----------------------------------------------------------------------------

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._wake = asyncio.Event()
        self._ready.set()
        try:
            loop.run_until_complete(self._run())
        except Exception:  # noqa: BLE001
            log.exception("rthub publisher thread died; events will be spooled at exit")
        finally:
            loop.close()

    async def _connect(self):
        from hub.core.natsconn import connect

        async def disconnected() -> None:
            self.connected = False
            if not self._closing:
                log.warning("rthub backend: NATS connection lost; spooling to %s", self.spool.dir)

        async def reconnected() -> None:
            self.connected = True
            log.info("rthub backend: NATS reconnected; replaying the spool")
            self._wake.set()

        nc = await connect(self.settings, "rthub-lms", connect_timeout=2, disconnected_cb=disconnected,
                           reconnected_cb=reconnected)
        try:
            await self.on_connect(nc)
        except Exception as exc:  # noqa: BLE001 - publishing still works (or spools) without it
            log.warning("rthub backend: preparing the server failed: %s", exc)
        self.connected = True
        self._connected_once.set()
        self._wake.set()
        return nc

    async def _retry_connect(self):
        await asyncio.sleep(1.0)
        return await self._connect()

    async def _run(self) -> None:
        nc = pub = None
        # nats-py retries a first connect forever (max_reconnect_attempts=-1): run it beside the loop, which
        # spools meanwhile, so an LMS started while NATS is down loses nothing.
        connecting: asyncio.Task | None = asyncio.create_task(self._connect())
        batch_max = self.settings.publish_batch
        grace_until = time.monotonic() + 2.0  # the first connect usually takes milliseconds: hold events that long
        while True:
            if nc is None and connecting is not None and connecting.done():
                try:
                    nc = connecting.result()
                    pub = await AckedPublisher(nc).start()  # acks on one subscription, parsed precisely
                    connecting = None
                except Exception as exc:  # noqa: BLE001 - e.g. bad credentials: spool and retry
                    log.warning("rthub backend: cannot connect to NATS (%s); spooling", exc)
                    connecting = asyncio.create_task(self._retry_connect())
            online = nc is not None and nc.is_connected
            if online and not self.spool.pending():
                batch = [self._q.popleft() for _ in range(min(len(self._q), batch_max))]
                if batch:
                    await self._publish(pub, batch)
            elif self._q and (nc is not None or self._closing or time.monotonic() > grace_until
                              or len(self._q) >= batch_max):
                self._to_spool()
            if online and self.spool.pending() and not self._closing:
                await self._replay(pub)
            if self._closing and (not self._q or nc is None):
                if self._q:
                    self._to_spool()
                break
            held = bool(self._q) and not online  # events held for the first connect: let the connect run
            if not self._q or held:
                self._idle = True
                if not self._q or held:
                    self._wake.clear()
                    wait = 0.5 if online or nc is None else 0.2
                    try:
                        await asyncio.wait_for(self._wake.wait(), wait)
                    except TimeoutError:
                        pass
                self._idle = False
        if connecting is not None:
            connecting.cancel()
        if nc is not None:
            try:
                await asyncio.wait_for(nc.close(), 2)
            except Exception:  # noqa: BLE001
                pass

    async def _publish(self, pub: AckedPublisher, batch: list[Record]) -> None:
        """Publish with acks; whatever is not acknowledged in time goes to the spool, in order."""
        timeout = self.settings.publish_ack_timeout_s
        if self._closing:
            timeout = min(timeout, self.flush_timeout_s)
        try:
            futures = [await pub.publish(*self.outgoing(r)) for r in batch]
            results = await asyncio.gather(*(asyncio.wait_for(f, timeout) for f in futures),
                                           return_exceptions=True)
        except nats.errors.Error as exc:  # disconnected while sending: all of the batch goes to the spool
            results = [exc] * len(batch)
        pub.forget()
        failed = [r for r, res in zip(batch, results, strict=False) if isinstance(res, BaseException)]
        failed += batch[len(results):]
        self.counts["published"] += len(batch) - len(failed)
        if failed:
            self.counts["spooled"] += self.spool.append(failed)
            log.warning("rthub backend: %d of %d events not acknowledged (%s); spooled", len(failed),
                        len(batch), next((r for r in results if isinstance(r, BaseException)), "?"))

    async def _replay(self, pub: AckedPublisher) -> None:
        """Drain the spool oldest first while NATS answers; stop at the first failure. One line when the replay
        pauses and one when it resumes (with counts), not one per try: during a JetStream outage with the
        connection up it is tried twice a second (an outage wrote thousands of "paused" lines)."""
        while not self._closing:
            chunk = self.spool.read(self.settings.publish_batch)
            if chunk is None:
                log.info("rthub backend: spool drained (%d events replayed in all)", self.counts["replayed"])
                return
            records, token = chunk
            try:
                futures = [await pub.publish(*self.outgoing(r)) for r in records]
                await asyncio.gather(*(asyncio.wait_for(f, self.settings.publish_ack_timeout_s)
                                       for f in futures))
            except (TimeoutError, JetStreamError, nats.errors.Error) as exc:  # still down: keep them, retry later
                pub.forget()
                self.counts["replay_paused"] += 1
                if self._paused_since is None:
                    self._paused_since, self._paused_tries = time.monotonic(), self.counts["replay_paused"] - 1
                    log.warning("rthub backend: spool replay paused (%s): %d bytes spooled; retrying quietly "
                                "until NATS takes them", exc.__class__.__name__, self.spool.size)
                return
            if self._paused_since is not None:
                log.info("rthub backend: spool replay resumed after %.0f s (%d tries failed meanwhile)",
                         time.monotonic() - self._paused_since, self.counts["replay_paused"] - self._paused_tries)
                self._paused_since = None
            self.spool.commit(token)
            self.counts["replayed"] += len(records)
            if self._q:
                self._to_spool()  # keep order: what arrived meanwhile goes behind the spool

    def _to_spool(self) -> None:
        with self._order:
            records = [self._q.popleft() for _ in range(len(self._q))]
            self.counts["spooled"] += self.spool.append(records)


def _headers(r: Record) -> dict[str, str]:
    """The publish headers of one record: its message id (deduplication) and its W3C ``traceparent``."""
    return {MSG_ID: r.msg_id, "traceparent": r.trace} if r.trace else {MSG_ID: r.msg_id}


def _name(event: Any) -> str:
    try:
        return str(event.get("name"))
    except Exception:  # noqa: BLE001
        return "?"
