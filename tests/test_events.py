"""Both event shapes normalise to one; course, org and name come out for the subject; the limits of one event."""

import time

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.core.events import InvalidEvent, Limits, dimensions, nesting_depth, normalize


def test_backend_shape_kept():
    e = {"name": "play_video", "timestamp": "2020-07-15T06:52:55+00:00", "data": {"id": "v"},
         "context": {"course_id": "course-v1:edX+DemoX+Demo_Course", "org_id": "edX"}}
    assert normalize(e) is e
    assert dimensions(e) == ("edX", "course-v1:edX+DemoX+Demo_Course", "play_video")


def test_tracking_log_shape_with_browser_json_string():
    line = {"event_type": "play_video", "time": "2020-07-15T06:52:55+00:00", "event": '{"id": "v", "currentTime": 3}',
            "context": {"course_id": "edX/DemoX/Demo_Course"}, "username": "edx", "session": "s1", "ip": ""}
    e = normalize(line)
    assert e["name"] == "play_video" and e["timestamp"] == "2020-07-15T06:52:55+00:00"
    assert e["data"] == {"id": "v", "currentTime": 3}
    assert e["username"] == "edx" and e["session"] == "s1" and "ip" not in e
    assert dimensions(e) == ("edX", "edX/DemoX/Demo_Course", "play_video")


def test_course_from_data_and_no_course():
    e = normalize({"name": "edx.course.enrollment.activated", "timestamp": "t", "data": {"course_id": "course-v1:MITx+6.00x+2024"}})
    assert dimensions(e) == ("MITx", "course-v1:MITx+6.00x+2024", "edx.course.enrollment.activated")
    assert dimensions(normalize({"name": "x", "timestamp": "t"})) == (None, None, "x")


@pytest.mark.parametrize("bad, reason", [
    ([1, 2], "not an object"), ("x", "not an object"), ({"timestamp": "t"}, "missing name"),
    ({"name": "x"}, "missing timestamp"), ({"name": 5, "timestamp": "t"}, "missing name"),
    ({"name": "x", "timestamp": 3}, "missing timestamp"), ({"name": "x", "timestamp": "t", "context": []}, "context"),
])
def test_invalid_events_have_reasons(bad, reason):
    with pytest.raises(InvalidEvent, match=reason):
        normalize(bad)


# ---- limits: size, then nesting depth, on the bytes before decoding ----------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=40)


def _depth(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(_values)
def test_prescan_depth_is_exact_on_valid_json(value):
    """Strings (with brackets, quotes and backslashes in them) are skipped; every container counts."""
    assert nesting_depth(msgspec.json.encode(value)) == _depth(value)


def _nest(n: int) -> bytes:
    return b"[" * n + b"]" * n


def test_limits_size_first_then_depth_with_the_hubs_reasons():
    limits = Limits(max_bytes=100, max_depth=3)
    limits.check(_nest(3))
    with pytest.raises(InvalidEvent, match="^event is nested deeper than 3 levels$"):
        limits.check(_nest(4))
    with pytest.raises(InvalidEvent, match="^event is 101 bytes, over the 100 byte limit$"):
        limits.check(b"[" * 101)  # too big and too deep: size is what is checked (and said) first
    Limits().check(b'{"a": "' + b"[" * 5000 + b'"}')  # brackets in a string are text
    with pytest.raises(InvalidEvent, match="nested deeper than 64"):
        Limits().check(b"[" * 65)  # unterminated: a decoder would recurse before it noticed


def test_browser_event_json_string_is_held_to_the_limits():
    line = {"event_type": "play_video", "time": "t", "event": "[" * 5000}
    with pytest.raises(InvalidEvent, match="nested deeper than 64 levels"):
        normalize(line)
    assert normalize({**line, "event": "[" * 10})["data"] == "[" * 10  # not JSON: kept as the string it is


@pytest.mark.parametrize("hostile", [
    b'"' + b'\\"' * 350_000,  # escaped quotes, unterminated: quadratic for a naive string pattern
    b'"' * (1 << 20), b"[]" * (1 << 19), b"[" * (1 << 20), b'{"a":"' + b"x" * (1 << 20),
])
def test_prescan_of_hostile_megabyte_is_linear(hostile):
    start = time.perf_counter()
    nesting_depth(hostile)
    assert time.perf_counter() - start < 2.0
