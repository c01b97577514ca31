"""W3C Trace Context (``traceparent``) for one event, from the LMS ``send()`` through the hub to the webhook
request and the attempt log, so a consumer can follow one event across systems.

The LMS backend sets a ``traceparent`` header on each raw event (the event's own ``context.traceparent`` when it
carries a valid one, else a new trace); the hub copies it to every statement it makes of the event as a child
(same trace id, its own span id); the deliverer sends it as the ``traceparent`` request header and records it
in the attempt log. Pure functions, no OpenTelemetry dependency.
"""

from __future__ import annotations

import re
import secrets

HEADER = "traceparent"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


def valid(value: object) -> str | None:
    """``value`` if it is a version-00 ``traceparent`` with non-zero ids (lower-case, as the spec requires)."""
    if not isinstance(value, str):
        return None
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None or m[1] == _ZERO_TRACE or m[2] == _ZERO_SPAN:
        return None
    return m[0]


def new() -> str:
    """A new trace, sampled."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def child(parent: str) -> str:
    """The same trace with a new span id (the next hop's own span); flags kept."""
    m = _TRACEPARENT.fullmatch(parent)
    if m is None:
        return new()
    return f"00-{m[1]}-{secrets.token_hex(8)}-{m[3]}"


def trace_id(value: str | None) -> str | None:
    m = _TRACEPARENT.fullmatch(value or "")
    return m[1] if m else None


def of_event(event: dict) -> str:
    """The ``traceparent`` an LMS event starts with: its ``context.traceparent`` when valid, else a new trace."""
    context = event.get("context")
    given = valid(context.get("traceparent")) if isinstance(context, dict) else None
    return given or new()
