"""The consumer (``EVENT_BUS_CONSUMER = "lms_publisher.event_bus.NatsEventConsumer"``), run by openedx-events'
``manage.py consume_events -t TOPIC -g GROUP [--extra JSON]``.

One durable JetStream consumer per (group, topic): every process of a group pulls from it, so each event goes
to one of them. A message is acked only after every receiver of its signal succeeded; when one raised, it is
NAKed with a growing delay (``EVENT_BUS_NATS_RETRY_DELAY_S`` doubling up to ``..._RETRY_MAX_DELAY_S``) and
comes again; after ``EVENT_BUS_NATS_MAX_DELIVERIES`` deliveries it is moved to the dead-letter stream with the
error (``manage.py event_bus_dead_letters list|replay|purge``). A message that cannot be decoded goes there at
once. ``--extra '{"offset_time": "2025-01-01T00:00:00Z"}'`` starts the group over from that time (like the
Kafka backend's option). SIGTERM (or SIGINT) finishes the event in hand, hands back the rest, and returns.

The asyncio loop runs in the calling thread; receivers run in one worker thread (Django's ORM may not run in
a thread with a running event loop), one message at a time, as the other backends do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import signal as signals
import threading
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from openedx_events.event_bus import EventBusConsumer

from hub.core.errors import ConsumerGone
from hub.core.natsconn import connect
from hub.core.openedx import (
    DELIVERIES_HEADER,
    ERROR_HEADER,
    ORIGIN_HEADER,
    SEQ_HEADER,
    STREAM,
    dlq_subject,
    durable_name,
    topic_subject,
)
from hub.core.publish import AckedPublisher
from hub.core.pull import PullStream
from hub.core.settings import NatsSettings
from lms_publisher.event_bus import wire
from lms_publisher.event_bus.config import BusSettings, ensure_stream, load, process_name

log = logging.getLogger("rthub.event_bus")


class ReceiverError(Exception):
    """One or more receivers of the signal raised."""


class UnusableMessage(Exception):
    """The message cannot become a signal (headers, unknown event type, Avro): retrying cannot help."""


def dispatch(headers: dict[str, str], data: bytes) -> None:
    """Send the signal of one message to its receivers; raise if the message is unusable or a receiver failed.
    Runs in the receiver thread."""
    from openedx_events.event_bus.avro.deserializer import deserialize_bytes_to_event_data
    from openedx_events.tooling import OpenEdxPublicSignal, prepare_for_new_work_cycle

    try:
        metadata = wire.metadata_from_headers(headers)
        signal = OpenEdxPublicSignal.get_signal_by_type(metadata.event_type)
        event_data = deserialize_bytes_to_event_data(data, signal)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the message's
        raise UnusableMessage(f"{type(exc).__name__}: {exc}") from exc
    prepare_for_new_work_cycle()  # as at the start of a request: stale DB connections closed, caches cleared
    results = signal.send_event_with_custom_metadata(metadata, **event_data)
    errors = [
        f"{getattr(r, '__module__', '?')}.{getattr(r, '__qualname__', r)}={e!r}"
        for r, e in results
        if isinstance(e, BaseException)
    ]
    if errors:
        raise ReceiverError(f"{len(errors)} of {len(results)} receivers failed: {'; '.join(errors)}")


async def _settle(ack) -> bool:
    """Send an ack or NAK; when the connection is away it is lost, and the server delivers the message again
    after the ack wait (receivers see it twice, never zero times)."""
    try:
        await ack
        return True
    except nats.errors.Error as exc:
        log.warning("event bus: ack/nak not sent (%s); the event is delivered again after the ack wait", exc)
        return False


def retry_delay(s: BusSettings, deliveries: int) -> float:
    return min(s.retry_delay_s * 2 ** max(deliveries - 1, 0), s.retry_max_delay_s)


class NatsEventConsumer(EventBusConsumer):
    def __init__(
        self,
        topic: str,
        group_id: str,
        consumer_name: str | None = None,
        offset_time: str | datetime | None = None,
        settings: BusSettings | None = None,
        **extra,
    ):
        self.s = settings or load()
        self.topic = topic
        self.group_id = group_id
        self.full_topic = self.s.full_topic(topic)
        self.subject = topic_subject(self.full_topic)
        self.durable = durable_name(group_id, self.full_topic)
        self.consumer_name = consumer_name or process_name(group_id)
        if isinstance(offset_time, str):
            offset_time = datetime.fromisoformat(offset_time.replace("Z", "+00:00"))
        if offset_time is not None and offset_time.tzinfo is None:
            offset_time = offset_time.replace(
                tzinfo=UTC
            )  # a time without zone is UTC, as the LMS's times are
        self.offset_time = offset_time
        if extra:
            log.warning("event bus consumer: unknown --extra options ignored: %s", sorted(extra))
        self.counts = {"acked": 0, "retried": 0, "dead_lettered": 0}
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- openedx-events API -------------------------------------------------------------------------
    def consume_indefinitely(self) -> None:
        asyncio.run(self.run())

    def stop(self) -> None:
        """Thread-safe: finish the message in hand and return from :meth:`consume_indefinitely`."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    # ---- the loop -----------------------------------------------------------------------------------
    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        installed = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signals.SIGTERM, signals.SIGINT):
                self._loop.add_signal_handler(sig, self._stop.set)
                installed.append(sig)
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="event-bus-receivers")
        nc = await connect(NatsSettings(nats_url=self.s.url, nats_creds=self.s.creds), self.consumer_name)
        try:
            js = self.s.jetstream(nc, 10)
            await ensure_stream(js, self.s)
            await self._ensure_consumer(js)
            publisher = await AckedPublisher(nc).start()
            gc.freeze()  # what start-up made (Django, the signals, schemas) stays out of the collector's way
            log.info(
                "event bus consumer %s: topic %s, group %s (durable %s)",
                self.consumer_name,
                self.full_topic,
                self.group_id,
                self.durable,
            )
            while not self._stop.is_set():
                try:
                    await self._pull(nc, pool, publisher)
                except ConsumerGone:
                    log.error("durable %s was deleted; creating it again", self.durable)
                    self.offset_time = None
                    await self._ensure_consumer(js)
            await publisher.close()
        finally:
            for sig in installed:
                self._loop.remove_signal_handler(sig)
            try:
                await nc.flush(5)
            except nats.errors.Error:
                pass
            await nc.close()
            pool.shutdown(wait=True)
            log.info("event bus consumer %s stopped: %s", self.consumer_name, self.counts)

    async def _ensure_consumer(self, js) -> None:
        config = ConsumerConfig(
            durable_name=self.durable,
            filter_subject=self.subject,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.s.ack_wait_s,
            max_deliver=-1,
            max_ack_pending=1000,
            description=f"event bus group {self.group_id} on {self.full_topic}",
        )
        if self.offset_time is not None:
            # The group starts over from that time: its consumer is made anew (like resetting Kafka offsets).
            try:
                await js.delete_consumer(STREAM, self.durable)
            except nats.js.errors.NotFoundError:
                pass
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = self.offset_time.isoformat()
            log.warning(
                "event bus group %s on %s restarts from %s",
                self.group_id,
                self.full_topic,
                config.opt_start_time,
            )
        try:
            await js.add_consumer(STREAM, config)
        except nats.js.errors.BadRequestError as exc:  # exists with other settings: use it as it is
            log.warning("durable %s exists with other settings, using it: %s", self.durable, exc)

    async def _pull(self, nc, pool, publisher: AckedPublisher) -> None:
        pull = await PullStream(
            nc,
            STREAM,
            self.durable,
            batch=10,
            threshold=5,
            max_batch=1,
            expires=max(2 * self.s.fetch_timeout_s, 1.0),
            api_prefix=self.s.js_prefix(),
        ).start()
        stopper = asyncio.create_task(self._stop.wait())
        stopper.add_done_callback(lambda _: pull.stop())
        try:
            async for msgs in pull:
                for msg in msgs:
                    await self._handle(msg, pool, publisher)
        finally:
            stopper.cancel()
            for (
                msg
            ) in await pull.drain():  # delivered, never handed to receivers: the group's others take them
                try:
                    await msg.nak()
                except nats.errors.Error:
                    pass

    async def _handle(self, msg, pool, publisher: AckedPublisher) -> None:
        headers = dict(msg.headers or {})
        try:
            await self._run_receivers(msg, pool, headers)
        except UnusableMessage as exc:
            log.error(
                "event bus: unusable message %s on %s: %s", msg.metadata.sequence.stream, msg.subject, exc
            )
            await self._dead_letter(msg, headers, f"unusable: {exc}", publisher)
            return
        except Exception as exc:  # noqa: BLE001 - a receiver's failure: retry, then dead letters
            n = msg.metadata.num_delivered
            if n >= self.s.max_deliveries:
                log.error("event bus: %s failed %d times, dead-lettered: %s", headers.get("ce_id"), n, exc)
                await self._dead_letter(msg, headers, str(exc), publisher)
            else:
                delay = retry_delay(self.s, n)
                log.warning(
                    "event bus: %s failed (delivery %d), again in %g s: %s",
                    headers.get("ce_id"),
                    n,
                    delay,
                    exc,
                )
                self.counts["retried"] += 1
                await _settle(msg.nak(delay=delay))
            return
        if await _settle(msg.ack()):
            self.counts["acked"] += 1

    async def _run_receivers(self, msg, pool, headers: dict[str, str]) -> None:
        """Run the receivers in the receiver thread; while they run, tell the server every third of the ack wait
        that the message is in progress, so a slow receiver does not see it handed to another process."""
        job = self._loop.run_in_executor(pool, dispatch, headers, msg.data)
        beat = max(self.s.ack_wait_s / 3, 0.05)
        while True:
            done, _ = await asyncio.wait({job}, timeout=beat)
            if done:
                return job.result()
            await _settle(msg.in_progress())

    async def _dead_letter(self, msg, headers: dict[str, str], error: str, publisher: AckedPublisher) -> None:
        """Store the message with its error in the dead letters, then ack it; if that store fails, NAK."""
        from lms_publisher.event_bus.deadletters import clean_header

        seq = msg.metadata.sequence.stream
        dl_headers = {
            **{k: v for k, v in headers.items() if not k.startswith("Nats-")},
            ERROR_HEADER: clean_header(error),
            DELIVERIES_HEADER: str(msg.metadata.num_delivered),
            ORIGIN_HEADER: msg.subject,
            SEQ_HEADER: str(seq),
            "Nats-Msg-Id": f"dl-{self.durable}-{seq}",
        }
        try:
            await publisher.publish_acked(dlq_subject(self.group_id, self.full_topic), msg.data, dl_headers)
        except Exception as exc:  # noqa: BLE001 - keep the message until the dead letters take it
            log.error("event bus: dead-lettering %s failed (%s); it comes again", seq, exc)
            await _settle(msg.nak(delay=retry_delay(self.s, msg.metadata.num_delivered)))
            return
        await _settle(msg.ack())
        self.counts["dead_lettered"] += 1
