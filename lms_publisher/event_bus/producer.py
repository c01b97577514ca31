"""The producer (``EVENT_BUS_PRODUCER = "lms_publisher.event_bus.create_producer"``).

``send()`` runs in the request that emitted the signal: it serialises the event with openedx-events' Avro
serializer and hands it to the tracking backend's machinery (:class:`lms_publisher.backend.NatsBackend`:
in-memory queue, a worker thread that publishes with acks, the durable spool while NATS is away, replayed in
order). It never touches the network and never raises. ``Nats-Msg-Id`` is the event id, so an event sent
twice (a replayed spool, a retried batch) is stored once.
"""

from __future__ import annotations

import atexit
import logging

from openedx_events.event_bus import EventBusProducer
from openedx_events.event_bus.avro.serializer import serialize_event_data_to_bytes

from hub.core.api import Header
from hub.core.openedx import topic_subject
from lms_publisher.backend import NatsBackend
from lms_publisher.codec import Record
from lms_publisher.event_bus import wire
from lms_publisher.event_bus.config import BusSettings, ensure_stream, load

log = logging.getLogger("rthub.event_bus")


class BusBackend(NatsBackend):
    """The tracking backend's queue, worker and spool, carrying event-bus records (headers + Avro)."""

    def __init__(self, s: BusSettings, **options):
        self.bus = s
        super().__init__(
            nats_url=s.url,
            nats_creds=s.creds,
            spool_dir=s.spool_dir,
            spool_max_bytes=s.spool_max_bytes,
            queue_size=s.queue_size,
            publish_ack_timeout_s=s.publish_ack_timeout_s,
            flush_timeout_s=s.flush_timeout_s,
            site=s.site,
            **options,
        )

    def start(self) -> None:
        """Start the worker without waiting for NATS: openedx-events makes the producer lazily, inside the first
        request that emits a signal, which must not wait. Events wait in memory (2 s), then in the spool."""
        self._thread.start()
        self._ready.wait(5)
        atexit.register(self.close)

    def outgoing(self, record: Record) -> tuple[str, bytes, dict[str, str]]:
        headers, data = wire.from_record(record)
        return record.subject, data, {**headers, Header.MSG_ID: record.msg_id}

    async def on_connect(self, nc) -> None:
        await ensure_stream(self.bus.jetstream(nc, 5), self.bus)


class NatsEventProducer(EventBusProducer):
    def __init__(self, settings: BusSettings | None = None, **options):
        self.settings = settings or load()
        self.backend = BusBackend(self.settings, **options)
        self.failed = 0

    def send(self, *, signal, topic: str, event_key_field: str, event_data: dict, event_metadata) -> None:
        try:
            data = serialize_event_data_to_bytes(event_data, signal)
            headers = wire.headers_from_metadata(
                event_metadata, wire.event_key(event_data, event_key_field), self.settings.site
            )
            self.backend.enqueue(
                wire.to_record(topic_subject(self.settings.full_topic(topic)), headers, data)
            )
        except Exception:  # noqa: BLE001 - the request that emitted the signal must never see our failure
            self.failed += 1
            log.exception(
                "event bus: could not send %s to topic %s", getattr(signal, "event_type", signal), topic
            )

    def prepare_for_shutdown(self) -> None:
        """Publish what is queued (waiting at most EVENT_BUS_NATS_FLUSH_TIMEOUT_S), spool the rest."""
        self.backend.close()

    def stats(self) -> dict[str, int]:
        return {**self.backend.stats(), "failed": self.failed}


def create_producer() -> NatsEventProducer:
    """A producer from the Django settings (openedx-events' ``get_producer`` keeps one per process: one worker
    thread and one spool slot)."""
    return NatsEventProducer()
