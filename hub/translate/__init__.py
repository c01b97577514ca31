"""Translation of Open edX events to xAPI and IMS Caliper: pure functions, a registry by event name.

``translate(protocol, event, ctx)`` takes a normalized event (``hub.core.events.normalize``) and returns the
statements; ``translate_json`` also encodes them, which is what the hub publishes. Input the translators
cannot use raises :class:`Rejected` with a reason, never anything else.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from hub.translate import caliper, xapi
from hub.translate.base import (
    TRANSFORMER_VERSION,
    CourseNames,
    ExternalIds,
    Rejected,
    TranslateContext,
    course_from_kv_key,
    course_kv_key,
)
from hub.translate.caliper import CALIPER_DATA_VERSION, caliper_envelope

__all__ = [
    "CALIPER_DATA_VERSION", "TRANSFORMER_VERSION", "CourseNames", "ExternalIds", "Rejected", "TranslateContext", "caliper_envelope",
    "course_from_kv_key", "course_kv_key", "supported", "translate", "translate_json",
]

log = logging.getLogger("rthub.translate")
# ``cloudevents`` carries Open edX Events only (hub.translate.openedx): no tracking event has a translator for it.
_REGISTRY = {"xapi": (xapi.translate, xapi.SUPPORTED), "caliper": (caliper.translate, caliper.SUPPORTED),
             "cloudevents": (lambda event, ctx: [], frozenset())}
_encode = msgspec.json.Encoder().encode


def supported(protocol: str) -> frozenset[str]:
    """The event names ``protocol`` has a translator for."""
    return _REGISTRY[protocol][1]


def translate(protocol: str, event: Any, ctx: TranslateContext) -> list[dict]:
    """Statements (xAPI) or events (Caliper) for one normalized event; [] when the name is unsupported."""
    try:
        func = _REGISTRY[protocol][0]
    except KeyError:
        raise ValueError(f"unknown protocol {protocol!r}") from None
    if not isinstance(event, dict):
        raise Rejected("event is not an object")
    name = event.get("name")
    if not isinstance(name, str) or not isinstance(event.get("timestamp"), str):
        raise Rejected("event has no name or timestamp")
    if name not in _REGISTRY[protocol][1]:
        return []
    try:
        return func(event, ctx)
    except Rejected:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed input of any shape becomes a rejection with a reason
        log.debug("translation of %s failed", name, exc_info=True)
        raise Rejected(f"malformed {name} event ({type(exc).__name__}: {str(exc)[:80]})") from None


def translate_json(protocol: str, event: Any, ctx: TranslateContext) -> list[tuple[str, bytes]]:
    """``(statement or event id, JSON bytes)`` pairs: what the hub publishes, the id as Nats-Msg-Id."""
    return [(s["id"], _encode(s)) for s in translate(protocol, event, ctx)]
