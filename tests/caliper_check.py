"""Caliper 1.2 validity for the tests: the IMS JSON schemas (one registry keyed by file stem) plus the
spec's table of actions allowed per event type, which the schemas do not express."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from jsonschema import Draft4Validator
from referencing import Registry
from referencing.jsonschema import DRAFT4

MEDIA_ACTIONS = {"Started", "Ended", "Paused", "Resumed", "Restarted", "ForwardedTo", "JumpedTo",
                 "ChangedResolution", "ChangedSize", "ChangedSpeed", "ChangedVolume", "EnabledClosedCaptioning",
                 "DisabledClosedCaptioning", "EnteredFullScreen", "ExitedFullScreen", "Muted", "Unmuted",
                 "OpenedPopout", "ClosedPopout"}
ALLOWED_ACTIONS = {
    "AnnotationEvent": {"Bookmarked", "Highlighted", "Shared", "Tagged"},
    "AssessmentEvent": {"Started", "Paused", "Resumed", "Restarted", "Reset", "Submitted"},
    "AssessmentItemEvent": {"Started", "Skipped", "Completed"},
    "AssignableEvent": {"Activated", "Deactivated", "Started", "Completed", "Submitted", "Reviewed"},
    "FeedbackEvent": {"Commented", "Ranked"},
    "ForumEvent": {"Subscribed", "Unsubscribed"},
    "GradeEvent": {"Graded"},
    "MediaEvent": MEDIA_ACTIONS,
    "MessageEvent": {"Posted", "MarkedAsRead", "MarkedAsUnread"},
    "NavigationEvent": {"NavigatedTo"},
    "QuestionnaireEvent": {"Started", "Submitted"},
    "QuestionnaireItemEvent": {"Started", "Skipped", "Completed"},
    "SearchEvent": {"Searched"},
    "SessionEvent": {"LoggedIn", "LoggedOut", "TimedOut"},
    "ThreadEvent": {"MarkedAsRead", "MarkedAsUnread"},
    "ToolLaunchEvent": {"Launched", "Returned"},
    "ToolUseEvent": {"Used"},
    "ViewEvent": {"Viewed"},
}


@cache
def validators(schema_dir: str) -> dict[str, Draft4Validator]:
    """One validator per schema file, all sharing a registry keyed by file stem (``"$ref": "Entity"``)."""
    schemas = {p.stem: json.loads(p.read_text()) for p in Path(schema_dir).glob("*.json")}
    registry = Registry().with_resources((stem, DRAFT4.create_resource(s)) for stem, s in schemas.items())
    return {stem: Draft4Validator(s, registry=registry) for stem, s in schemas.items()}


@cache
def _all_actions(schema_dir: str) -> frozenset[str]:
    action = json.loads((Path(schema_dir) / "Action.json").read_text())
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "enum" and isinstance(value, list):
                    found.update(v for v in value if isinstance(v, str))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(action)
    return frozenset(found)


def problems(event: dict, schema_dir: str) -> list[str]:
    """Schema errors for the event's own ``type`` plus a disallowed action; empty means valid."""
    kind = event.get("type")
    table = validators(schema_dir)
    if kind not in table:
        return [f"no schema for event type {kind!r}"]
    out = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in table[kind].iter_errors(event)]
    allowed = ALLOWED_ACTIONS.get(kind, _all_actions(schema_dir))
    if event.get("action") not in allowed:
        out.append(f"action {event.get('action')!r} not allowed for {kind}")
    return out
