"""Translation throughput on one core: ``python bench/translate.py [--events DIR] [--seconds N] [--users N]``.

Translates a mix of real raw events (../shared/events/raw, else tests/samples) for many users, encoding each
statement to JSON as the hub does, and ends with ``xapi_events_per_s=<n>`` and ``caliper_events_per_s=<n>``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from hub.core.events import normalize
from hub.core.protocols import NAMES as PROTOCOL_NAMES
from hub.translate import CourseNames, ExternalIds, Rejected, TranslateContext, translate_json

ROOT = Path(__file__).resolve().parent.parent


def load(folder: Path, users: int) -> list[dict]:
    """One event per ``*.json`` file (../shared/events/raw) and one per line of ``*.jsonl`` (tests/samples)."""
    texts = [p.read_text() for p in sorted(folder.glob("*.json"))]
    texts += [line for p in sorted(folder.glob("*.jsonl")) for line in p.read_text().splitlines() if line.strip()]
    base = []
    for text in texts:
        try:
            base.append(normalize(json.loads(text)))
        except ValueError:
            continue
    if not base:
        raise SystemExit(f"no events in {folder} (*.json, *.jsonl)")
    events = []
    for user in range(users):
        for event in base:
            clone = copy.deepcopy(event)
            context = clone.setdefault("context", {})
            if isinstance(context, dict) and context.get("user_id"):
                context["user_id"] = 1000 + user
            events.append(clone)
    return events


def run(protocol: str, events: list[dict], seconds: float) -> tuple[float, int]:
    ctx = TranslateContext("http://localhost:18000", ExternalIds(b"bench-secret"),
                           CourseNames({"course-v1:edX+DemoX+Demo_Course": "Demonstration Course"}))
    usable = []
    for event in events:
        try:
            if translate_json(protocol, event, ctx):
                usable.append(event)
        except Rejected:
            pass
    done = statements = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for event in usable:
            statements += len(translate_json(protocol, event, ctx))
        done += len(usable)
    return done / (time.perf_counter() - start), statements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = ROOT.parent / "shared" / "events" / "raw"
    parser.add_argument("--events", type=Path, default=default if default.exists() else ROOT / "tests" / "samples")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--users", type=int, default=200)
    args = parser.parse_args()
    events = load(args.events, args.users)
    print(f"events: {len(events)} ({args.users} users) from {args.events}")
    results = {}
    for protocol in PROTOCOL_NAMES:
        rate, statements = run(protocol, events, args.seconds)
        results[protocol] = rate
        print(f"{protocol}: {rate:,.0f} events/s ({statements} statements in {args.seconds:g}s)")
    print(f"xapi_events_per_s={results['xapi']:.0f}")
    print(f"caliper_events_per_s={results['caliper']:.0f}")


if __name__ == "__main__":
    main()
