"""The event catalog: every event type the hub carries, for which protocols, with a description and an example
payload per protocol, read from the translators (:func:`hub.translate.supported`) and the Open edX events
catalog (:data:`hub.core.openedx.CATALOG`), so a request picks names instead of typing them and an unknown name
is flagged. Pure, computed once per process."""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import json

import msgspec

from hub.core import openedx
from hub.core.protocols import NAMES
from hub.translate import supported

# Tracking-log event families: a description by name prefix (the first that matches).
FAMILIES = (
    (("edx.video.closed_captions", "video_show_cc_menu", "video_hide_cc_menu"), "video captions shown or hidden"),
    (("edx.video.transcript", "show_transcript", "hide_transcript"), "video transcript shown or hidden"),
    (("edx.video.loaded", "load_video"), "a video player was loaded"),
    (("edx.video.played", "play_video"), "a learner played a video"),
    (("edx.video.paused", "pause_video"), "a learner paused a video"),
    (("edx.video.stopped", "stop_video"), "a video stopped"),
    (("edx.video.completed", "complete_video"), "a learner watched a video to its end"),
    (("edx.video.position.changed", "seek_video"), "a learner moved to another point of a video"),
    (("speed_change_video",), "a learner changed a video's speed"),
    (("edx.forum.thread",), "forum: a thread was created, viewed, edited, voted, reported or deleted"),
    (("edx.forum.response",), "forum: a response was created, edited, voted, reported or deleted"),
    (("edx.forum.comment",), "forum: a comment was created, edited, reported or deleted"),
    (("problem_check", "edx.grades.problem.submitted"), "a learner submitted an answer to a problem"),
    (("edx.problem.completed",), "a learner completed a problem"),
    (("edx.problem.hint",), "a learner asked for a hint"),
    (("showanswer",), "a learner displayed a problem's answer"),
    (("edx.course.enrollment",), "a learner's enrollment was activated, deactivated or changed mode"),
    (("edx.course.grade",), "a learner's course grade passed or failed"),
    (("edx.grades.course",), "a learner's course grade was calculated"),
    (("edx.grades.subsection",), "a learner's subsection grade was calculated"),
    (("edx.completion",), "a block's completion changed"),
    (("edx.special_exam",), "a timed, proctored or practice exam attempt was created or submitted"),
    (("edx.ui.lms.link_clicked",), "a learner followed a link in the course"),
    (("edx.ui.lms",), "a learner navigated the course outline or sequence"),
)


class EventTypeView(msgspec.Struct, kw_only=True):
    """One event type: ``protocols`` it is delivered in, ``examples`` (protocol -> one example payload as JSON
    text, where the demo generator produces this type), ``refused`` (why xAPI/Caliper carry none)."""

    name: str
    description: str
    source: str  # tracking (the LMS tracking log) or openedx-events
    protocols: list[str]
    refused: str = ""
    examples: dict[str, str] = {}


def describe(name: str) -> str:
    for prefixes, text in FAMILIES:
        if name.startswith(prefixes):
            return text
    return "an Open edX tracking event"


def _known(protocol: str) -> frozenset[str]:
    try:
        tracking = supported(protocol)
    except KeyError:  # a protocol without a tracking-log translator (e.g. cloudevents)
        tracking = frozenset()
    return tracking | openedx.translated(protocol)


@functools.cache
def examples() -> dict[str, dict[str, str]]:
    """``{event name: {protocol: example JSON}}``: the first event of each type in the demo generator's stream
    (fixed seed and clock), translated by the hub's own translators with a throwaway id secret."""
    from hub.core.events import Limits, normalize
    from hub.translate import TranslateContext, translate_json
    from hub.translate.base import ExternalIds
    from lms_publisher.demo import generate

    start = dt.datetime(2026, 5, 1, 9, 0, tzinfo=dt.UTC)
    first: dict[str, dict] = {}
    for ev in itertools.islice(generate(seed=24, clock=lambda: start), 5000):
        first.setdefault(ev["name"], ev)
    ctx = TranslateContext("https://lms.example.org", ExternalIds("event-catalog-example"))
    out: dict[str, dict[str, str]] = {}
    for name, ev in first.items():
        event = normalize(json.loads(json.dumps(ev, default=str)), Limits())
        for protocol in NAMES:
            try:
                statements = translate_json(protocol, event, ctx)
            except Exception:  # noqa: BLE001 - no example for this one, the catalog still lists it
                continue
            if statements:
                out.setdefault(name, {})[protocol] = json.dumps(json.loads(statements[0][1]), indent=2)
    return out


@functools.cache
def catalog() -> tuple[EventTypeView, ...]:
    """Every event type some protocol carries (tracking events, then Open edX events), sorted by name."""
    known = {p: _known(p) for p in NAMES}
    samples = examples()
    tracking = sorted(set().union(*(supported(p) for p in NAMES if p in ("xapi", "caliper"))))
    rows = [EventTypeView(name=n, description=describe(n), source="tracking",
                          protocols=[p for p in NAMES if n in known[p]], examples=samples.get(n, {}))
            for n in tracking]
    rows += [EventTypeView(name=e.name, description=e.description, source=e.source,
                           protocols=[p for p in NAMES if p in e.protocols], refused=e.refused)
             for e in openedx.catalog()]
    return tuple(rows)


def unknown_event_types(protocol: str, names: list[str]) -> list[str]:
    """Requested event types no translator of ``protocol`` knows: such a grant would never receive them."""
    known = _known(protocol)
    return [n for n in names if n not in known]


def unknown_types_warning(names: list[str], protocol: str) -> str:
    shown = ", ".join(names[:5]) + (" and more" if len(names) > 5 else "")
    return (f"The hub does not translate {shown} to {protocol}: nothing would arrive for "
            f"{'it' if len(names) == 1 else 'them'}. Pick event types from the catalog (/event-types).")
