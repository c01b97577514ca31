"""The hub's second input: Open edX Events from the event bus (``RTHUB_OPENEDX_TOPICS``), routed like raw
tracking events.

Its own durable consumer (``RTHUB_OPENEDX_CONSUMER``, default ``hub_openedx``) on the ``OPENEDX_EVENTS``
stream, filtered to the configured topics' subjects, shared by every hub process, beside whatever consumer
groups the LMS's services run there. Each message is decoded (headers: CloudEvents attributes named as the
Kafka backend names them; body: openedx-events' Avro, read with the schema of the signal), filtered by site,
org, course, event type and learner groups exactly as raw events are (the same grants), translated by the
pure :mod:`hub.translate.openedx` for each protocol a covering grant needs, and published to
``<protocol>.<site>.<org>.<course>.<event type>``. Publishing, acks, holding through an output outage,
quarantine with a reason and the max-deliveries guard are the raw route's (:class:`hub.route.service.Hub`).
Needs the ``openedx`` extra (openedx-events, for the Avro schemas).
"""

from __future__ import annotations

import io
import logging
from functools import lru_cache

from nats.js.api import ConsumerConfig

from hub.core.events import InvalidEvent
from hub.core.metrics import Metrics
from hub.core.openedx import KEY_HEADER, SITE_HEADER, topic_subject
from hub.core.protocols import PROTOCOLS
from hub.core.settings import HubSettings
from hub.core.subjects import OPENEDX_STREAM, subject
from hub.route.service import Hub
from hub.translate import Rejected
from hub.translate import openedx as translator

log = logging.getLogger("rthub.hub.openedx")


@lru_cache(maxsize=256)
def _schema(event_type: str) -> dict:
    """The (parsed) Avro schema of an event type, as openedx-events derives it from the signal's data classes."""
    from openedx_events.event_bus.avro.serializer import AvroSignalSerializer
    from openedx_events.tooling import OpenEdxPublicSignal, load_all_signals

    load_all_signals()
    try:
        signal = OpenEdxPublicSignal.get_signal_by_type(event_type)
    except KeyError:
        raise InvalidEvent(f"unknown Open edX event type {event_type[:100]!r}") from None
    import fastavro

    return fastavro.parse_schema(AvroSignalSerializer(signal).schema)  # parsed once, not at every message


def decode(headers: dict[str, str], data: bytes) -> tuple[str, dict, dict]:
    """``(event type, data as the Avro record dict, metadata)`` of one event-bus message."""
    import fastavro

    event_type = headers.get("ce_type")
    if not event_type or not headers.get("ce_id") or not headers.get("ce_time"):
        raise InvalidEvent("not an Open edX event (ce_type, ce_id or ce_time header missing)")
    try:
        record = fastavro.schemaless_reader(io.BytesIO(data), _schema(event_type))
    except InvalidEvent:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the Avro reader says about these bytes
        raise InvalidEvent(f"unreadable Avro for {event_type}: {type(exc).__name__}: {exc}") from None
    if not isinstance(record, dict):
        raise InvalidEvent("Avro data is not a record")
    meta = {
        "id": headers["ce_id"],
        "type": event_type,
        "time": headers["ce_time"],
        "source": headers.get("ce_source"),
        "specversion": headers.get("ce_specversion", "1.0"),
        "minorversion": headers.get("ce_minorversion"),
        "sourcehost": headers.get("sourcehost"),
        "sourcelib": headers.get("sourcelib"),
        "key": headers.get(KEY_HEADER),
    }
    return event_type, record, meta


class OpenedxHub(Hub):
    stream = OPENEDX_STREAM

    def __init__(self, settings: HubSettings, metrics: Metrics | None = None):
        try:  # fail at start, not by quarantining every event
            import fastavro  # noqa: F401
            import openedx_events  # noqa: F401
        except ImportError as exc:
            raise SystemExit(
                f"RTHUB_OPENEDX_TOPICS needs the openedx extra (pip install 'rthub[openedx]'): {exc}"
            ) from None
        super().__init__(settings, metrics)
        self.consumer = settings.openedx_consumer
        self.supported = {p: translator.supported(p) for p in PROTOCOLS}
        self.filters = [topic_subject(t) for t in settings.openedx_topics]

    def _consumer_config(self) -> ConsumerConfig:
        config = super()._consumer_config()
        if len(self.filters) == 1:
            config.filter_subject = self.filters[0]
        else:
            config.filter_subjects = self.filters
        return config

    def _translate(self, msg) -> tuple[list[tuple[str, str, str | None, bytes]], list[str]]:
        if len(msg.data) > self.limits.max_bytes:
            raise InvalidEvent(f"event of {len(msg.data)} bytes is over the limit of {self.limits.max_bytes}")
        headers = msg.headers or {}
        site = headers.get(SITE_HEADER) or self.s.default_site
        ctx = self.contexts.get(site)
        if ctx is None:
            raise InvalidEvent(f"unknown site {site!r} (configure it in RTHUB_SITES)")
        event_type, data, meta = decode(headers, msg.data)
        org, course = translator.dimensions(data)
        # the raw route's rules (hub.route.service.Hub._translate): grants, learner groups, identity copies
        index = self.grants.index
        plain, grouped = index.routes_for(site, org, course, event_type)
        learner = translator.user_key(event_type, data)
        user = learner[0] if learner is not None and (grouped or index.any_identity) else None
        member_of = self._member_groups(site, user, grouped) if grouped and user is not None else {}
        protocols = plain | member_of.keys() if member_of else plain
        idents = (
            index.direct_identity_grants(site, org, course, event_type)
            if user is not None and index.any_identity
            else ()
        )
        if not protocols:
            self.metrics.inc("filtered")
            return [], []
        out, rejected = [], []
        for protocol in protocols:
            if event_type not in self.supported[protocol]:
                self.metrics.inc("unsupported", protocol=protocol)
                continue
            try:
                statements = translator.translate_json(protocol, event_type, data, meta, ctx)
            except Rejected as exc:
                rejected.append(f"{protocol}: {exc.reason}")
                continue
            subj = subject(PROTOCOLS[protocol].prefix, site, org, course, event_type)
            if protocol in plain:
                out.extend((subj, sid, None, body) for sid, body in statements)
            groups = member_of.get(protocol, ())
            for group in groups:
                out.extend((f"{subj}.{group}", sid, f"{sid}.{group}", body) for sid, body in statements)
            self._translated[protocol] += len(statements)
            for grant in idents:
                if grant.protocol == protocol:
                    self._identity_copies(
                        grant, site, user, subj, groups if protocol not in plain else None, statements
                    )
        return out, rejected
