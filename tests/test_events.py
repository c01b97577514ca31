"""Both event shapes normalise to one; course, org and name come out for the subject."""

import pytest

from hub.events import InvalidEvent, dimensions, normalize


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
