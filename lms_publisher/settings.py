"""Settings of the LMS-side publisher: ``rthub publish``, ``rthub demo`` and the in-LMS backend."""

from __future__ import annotations

import msgspec

from hub.core.events import MAX_EVENT_BYTES, MAX_EVENT_DEPTH, Limits
from hub.core.settings import NatsSettings, register


@register
class PublisherSettings(NatsSettings, kw_only=True):
    """Field names carry a ``publish_``/``spool_``/``demo_`` prefix so their env vars never clash with the hub's.

    ``allow_events`` empty means "every event name a translator supports" (``hub.translate.supported()``).
    ``max_event_bytes``/``max_event_depth`` are deliberately the hub's names: one limit, set once for both.
    """

    site: str = "default"
    allow_events: list[str] = msgspec.field(default_factory=list)
    publish_batch: int = 1000
    publish_ack_timeout_s: float = 5.0
    queue_size: int = 10_000
    spool_dir: str = ".rthub/spool"
    spool_max_bytes: int = 256 << 20
    spool_segment_bytes: int = 4 << 20
    demo_rate: float = 20.0
    demo_courses: int = 3
    demo_users: int = 6
    max_event_bytes: int = MAX_EVENT_BYTES
    max_event_depth: int = MAX_EVENT_DEPTH

    @property
    def limits(self) -> Limits:
        return Limits(self.max_event_bytes, self.max_event_depth)
