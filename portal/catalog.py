"""The event catalog: which Open edX event types the hub translates for each protocol (read from the
translators' registries, :func:`hub.translate.supported`), so a request picks names instead of typing them and
an unknown name is flagged."""

from __future__ import annotations

from hub.translate import openedx, supported


def known_event_types(protocol: str) -> frozenset[str]:
    """Tracking event names and Open edX Event types (hub/core/openedx.py's catalog) the protocol carries."""
    try:
        return supported(protocol) | openedx.supported(protocol)
    except KeyError:
        return frozenset()


def unknown_event_types(protocol: str, names: list[str]) -> list[str]:
    """Requested event types no translator of ``protocol`` knows: such a grant would never receive them."""
    known = known_event_types(protocol)
    return [n for n in names if n not in known]


def unknown_types_warning(names: list[str], protocol: str) -> str:
    shown = ", ".join(names[:5]) + (" and more" if len(names) > 5 else "")
    return (f"The hub does not translate {shown} to {protocol}: nothing would arrive for "
            f"{'it' if len(names) == 1 else 'them'}. Pick event types from the catalog (/event-types).")
