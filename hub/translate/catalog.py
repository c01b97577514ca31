"""The event catalog: every event type the hub carries, tracking events and Open edX Events, with the protocols
it is available in (``rthub event-types``; the portal's catalog reads the same function).

Tracking event names come from the translators' registries (:func:`hub.translate.supported`); Open edX Events
from :data:`hub.core.openedx.CATALOG`, which also says why xAPI/Caliper refuse the types they refuse.
"""

from __future__ import annotations

import json
from typing import Any

from hub.core.openedx import CATALOG
from hub.core.protocols import NAMES


def entries() -> list[dict[str, Any]]:
    """``{name, source, description, protocols, refused}`` per event type, tracking events first, by name."""
    from hub.translate import supported

    tracking: dict[str, list[str]] = {}
    for protocol in NAMES:
        for name in supported(protocol):
            tracking.setdefault(name, []).append(protocol)
    out = [
        {
            "name": name,
            "source": "tracking",
            "description": "Open edX tracking event",
            "protocols": protocols,
            "refused": "",
        }
        for name, protocols in sorted(tracking.items())
    ]
    out += [
        {
            "name": e.name,
            "source": e.source,
            "description": e.description,
            "protocols": list(e.protocols),
            "refused": e.refused,
        }
        for e in sorted(CATALOG.values(), key=lambda e: e.name)
    ]
    return out


def add_parser(sub) -> None:
    p = sub.add_parser(
        "event-types",
        help="the event catalog: tracking events and Open edX Events, with the "
        "protocols each is available in",
    )
    p.add_argument("--protocol", choices=NAMES, help="only the types available in this protocol")
    p.add_argument(
        "--source", choices=("tracking", "openedx-events"), help="only tracking or Open edX Events"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    def run(args) -> int:
        rows = [
            e
            for e in entries()
            if (not args.protocol or args.protocol in e["protocols"])
            and (not args.source or e["source"] == args.source)
        ]
        for e in rows:
            if args.json:
                print(json.dumps(e))
            else:
                note = f"  (xAPI/Caliper refused: {e['refused']})" if e["refused"] else ""
                print(f"{e['name']}  [{','.join(e['protocols'])}]  {e['source']}: {e['description']}{note}")
        return 0

    p.set_defaults(func=run)
