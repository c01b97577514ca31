"""The event bus's settings, read from Django settings named ``EVENT_BUS_NATS_*`` (and openedx-events' own
``EVENT_BUS_TOPIC_PREFIX``), with their defaults."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import msgspec

from hub.core.openedx import STREAM, full_topic
from hub.core.settings import StreamSettings

log = logging.getLogger("rthub.event_bus")


class BusSettings(msgspec.Struct, kw_only=True):
    url: str = "nats://127.0.0.1:4222"  # EVENT_BUS_NATS_URL, comma-separated for a cluster
    creds: str | None = (
        None  # EVENT_BUS_NATS_CREDS: a .creds file (operator mode: `rthub auth creds event-bus`)
    )
    # EVENT_BUS_NATS_API_PREFIX: the JetStream API prefix; by default read from the creds (`rthub auth creds
    # event-bus` is a user of the bus's own account, which reaches the hub's API as JS.rthub.API), else $JS.API
    api_prefix: str | None = None
    site: str = "default"  # EVENT_BUS_NATS_SITE: this LMS's name in the hub's RTHUB_SITES
    spool_dir: str = ".rthub/event-bus-spool"  # EVENT_BUS_NATS_SPOOL_DIR: events wait here while NATS is away
    spool_max_bytes: int = 256 << 20
    queue_size: int = 10_000
    publish_ack_timeout_s: float = 5.0
    flush_timeout_s: float = 5.0  # prepare_for_shutdown waits this long for NATS, then spools the rest
    max_deliveries: int = 5  # a message whose receivers failed this many times goes to the dead letters
    retry_delay_s: float = 1.0  # NAK delay after the first failure, doubling up to retry_max_delay_s
    retry_max_delay_s: float = 60.0
    ack_wait_s: float = 60.0  # a consumer that died holding a message: redelivered after this
    fetch_timeout_s: float = 1.0  # how long one fetch waits (and how soon SIGTERM is noticed when idle)
    max_age_days: float = 7.0  # retention of the OPENEDX_EVENTS stream (personal data: bounded)
    replicas: int = 1
    duplicate_window_s: float = 120.0
    topic_prefix: str = ""  # EVENT_BUS_TOPIC_PREFIX

    def full_topic(self, topic: str) -> str:
        return full_topic(topic, self.topic_prefix)

    def js_prefix(self) -> str:
        from hub.core.creds import creds_api_prefix

        return self.api_prefix or creds_api_prefix(self.creds)

    def jetstream(self, nc, timeout: float):
        """A JetStream context over ``nc`` with this bus's API prefix."""
        return nc.jetstream(timeout=timeout, prefix=self.js_prefix())

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]

    def stream_settings(self) -> StreamSettings:
        return StreamSettings(
            raw_max_age_days=self.max_age_days,
            stream_replicas=self.replicas,
            duplicate_window_s=self.duplicate_window_s,
        )


def load(django_settings: Any = None) -> BusSettings:
    """Every ``EVENT_BUS_NATS_<FIELD>`` Django setting that is set (and ``EVENT_BUS_TOPIC_PREFIX``)."""
    if django_settings is None:
        from django.conf import settings as django_settings
    values = {}
    for field in BusSettings.__struct_fields__:
        name = "EVENT_BUS_TOPIC_PREFIX" if field == "topic_prefix" else f"EVENT_BUS_NATS_{field.upper()}"
        value = getattr(django_settings, name, None)
        if value is not None:
            values[field] = value
    return msgspec.convert(values, BusSettings, strict=False)


def process_name(group: str) -> str:
    """A consumer name unique per process (host and pid), for logs and the NATS connection name."""
    return f"{group}-{socket.gethostname()}-{os.getpid()}"


async def ensure_stream(js, s: BusSettings) -> None:
    """Create the OPENEDX_EVENTS and dead-letter streams if missing (the hub creates them too, with the same
    definition, and keeps them as its settings say); an existing stream is never changed from here, and a
    credential without the right to create streams (operator mode) only logs."""
    from nats.js.errors import NotFoundError

    from hub.core.openedx import DLQ_STREAM
    from hub.core.streams import ensure_stream as create
    from hub.core.streams import stream_configs

    for cfg in stream_configs(s.stream_settings()):
        if cfg.name not in (STREAM, DLQ_STREAM):
            continue
        try:
            await js.stream_info(cfg.name)
        except NotFoundError:
            try:
                await create(
                    js, cfg
                )  # the project's one way to create a stream (safe under concurrent starts)
            except Exception as exc:  # noqa: BLE001 - e.g. no right to create it: the hub does (rthub streams)
                log.warning(
                    "event bus: cannot create stream %s (%s); `rthub streams` or the hub creates it",
                    cfg.name,
                    exc,
                )
