"""Bad input never escapes as anything but :class:`Rejected`: arbitrary JSON and mutated real events."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.core.events import InvalidEvent, normalize
from hub.core.protocols import NAMES as PROTOCOL_NAMES
from hub.translate import (
    CourseNames,
    ExternalIds,
    Rejected,
    TranslateContext,
    supported,
    translate,
    translate_json,
)
from tests import xapi_validator
from tests.helpers import SHARED

CTX = TranslateContext("https://lms.rthub.test", ExternalIds(b"prop"), CourseNames({"*": "Any"}))
SAMPLES = Path(__file__).parent / "samples"
REAL = [json.loads(line) for p in sorted(SAMPLES.glob("*.jsonl")) for line in p.read_text().splitlines()]
if (SHARED / "events" / "raw").exists():
    REAL += [json.loads(p.read_text()) for p in sorted((SHARED / "events" / "raw").glob("*.json"))]
NAMES = sorted(supported("xapi") | supported("caliper"))

scalars = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True) | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=25)


def check(event) -> None:
    """Only statements (valid xAPI, for xAPI) or a Rejected with a non-empty reason."""
    for protocol in PROTOCOL_NAMES:
        try:
            out = translate(protocol, event, CTX)
            encoded = translate_json(protocol, event, CTX)
        except Rejected as exc:
            assert isinstance(exc.reason, str) and exc.reason
            continue
        assert isinstance(out, list) and len(out) == len(encoded)
        for item, (item_id, raw) in zip(out, encoded, strict=True):
            assert item["id"] == item_id and json.loads(raw)["id"] == item_id
            if protocol == "xapi":
                assert xapi_validator.problems(item) == [], item


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json(value):
    check(value)
    try:
        event = normalize(value)
    except InvalidEvent:
        return
    check(event)


event_shapes = st.fixed_dictionaries({
    "name": st.sampled_from(NAMES),
    "timestamp": st.sampled_from(["2025-01-01T00:00:00+00:00", "2025-01-01T00:00:00.123456Z", "garbage", "", "2025"]),
    "data": json_values | st.dictionaries(st.sampled_from(
        ["id", "problem_id", "module_id", "course_id", "user_id", "duration", "currentTime", "current_time",
         "old_time", "new_time", "target_url", "block_id", "completion", "grade", "max_grade", "submission",
         "answers", "attempts", "weighted_earned", "weighted_possible", "exam_content_id", "attempt_code",
         "hint_index", "tab_count", "current_tab", "target_tab", "percent_grade", "discussion", "mode"]),
        json_values, max_size=8),
    "context": st.dictionaries(st.sampled_from(["user_id", "username", "course_id", "session", "path", "referer",
                                                "event_source", "module"]), json_values, max_size=6),
})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_shapes)
def test_supported_names_with_random_fields(event):
    check(event)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(REAL), st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["drop", "set"]), json_values),
                                       min_size=1, max_size=4))
def test_mutated_real_events(raw, mutations):
    event = copy.deepcopy(raw)
    for pick, action, value in mutations:
        # walk to a random dict inside the event and drop or replace one of its keys
        node, parents = event, []
        while True:
            keys = list(node.keys()) if isinstance(node, dict) else []
            if not keys:
                break
            key = keys[pick % len(keys)]
            parents.append((node, key))
            child = node[key]
            if isinstance(child, dict) and child and pick % 3:
                node, pick = child, pick // 3
                continue
            break
        if parents:
            holder, key = parents[-1]
            if action == "drop":
                holder.pop(key, None)
            else:
                holder[key] = value
    check(event)
    try:
        check(normalize(event))
    except InvalidEvent:
        pass
