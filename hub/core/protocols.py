"""The output protocols, declared once: name, JetStream stream, subject prefix.

A new protocol is one line here, one stream it gets from :func:`hub.core.streams.stream_configs`, and one
translator registered under the same name in ``hub.translate``. Nothing else names the protocols.
"""

from __future__ import annotations

from typing import Literal, NamedTuple


class Protocol(NamedTuple):
    name: str
    stream: str  # the JetStream stream holding its statements
    prefix: str  # subjects ``<prefix>.<site>.<org>.<course>.<event>``
    description: str


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("xapi", "XAPI", "xapi", "xAPI statements"),
    Protocol("caliper", "CALIPER", "caliper", "IMS Caliper 1.2 events"),
    # Open edX Events themselves (hub.translate.openedx): tracking events have no CloudEvents form
    Protocol("cloudevents", "CLOUDEVENTS", "cloudevents", "Open edX Events as CloudEvents 1.0 (structured JSON)"),
)}
NAMES: tuple[str, ...] = tuple(PROTOCOLS)
ProtocolName = Literal[NAMES]  # type: ignore[valid-type]  # msgspec validates grants against it


def stream_of(name: str) -> str:
    return PROTOCOLS[name].stream
