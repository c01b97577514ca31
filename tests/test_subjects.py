"""Subject tokens: lossless, reversible, and never a character NATS treats specially."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.core.subjects import (
    NONE_TOKEN,
    decode_token,
    encode_token,
    filter_subject,
    parse_subject,
    subject,
)

FORBIDDEN = re.compile(r"[.*>\s]")


@given(st.text())
def test_any_string_round_trips(value):
    token = encode_token(value)
    assert decode_token(token) == value
    assert token
    assert not FORBIDDEN.search(token)
    assert token != NONE_TOKEN


@given(st.text(), st.text())
def test_distinct_strings_give_distinct_tokens(a, b):
    if a != b:
        assert encode_token(a) != encode_token(b)


@pytest.mark.parametrize("value", [
    "course-v1:edX+DemoX+Demo_Course", "edX/DemoX/Demo_Course", "ccx-v1:edX+DemoX+Demo_Course+ccx@2",
    "edx.course.enrollment.activated", "problem_check", "a b\tc", "*", ">", "~", "~none", "", "é漢字🙂",
])
def test_real_and_odd_keys(value):
    token = encode_token(value)
    assert decode_token(token) == value
    assert not FORBIDDEN.search(token)


def test_readable_course_keys_stay_readable():
    assert encode_token("course-v1:edX+DemoX+Demo_Course") == "course-v1:edX+DemoX+Demo_Course"
    assert encode_token("edx.course.enrollment.activated") == "edx~2Ecourse~2Eenrollment~2Eactivated"


def test_no_course_placeholder():
    assert encode_token(None) == NONE_TOKEN == "~none"
    assert decode_token("~none") is None
    subj = subject("xapi", "default", "edX", None, "edx.course.enrollment.activated")
    assert subj == "xapi.default.edX.~none.edx~2Ecourse~2Eenrollment~2Eactivated"
    assert parse_subject(subj) == ("xapi", "default", "edX", None, "edx.course.enrollment.activated")


@pytest.mark.parametrize("bad", ["a~", "~zz", "~2e", "a.b", "a b", "*", ""])
def test_decode_rejects_tokens_never_produced(bad):
    with pytest.raises(ValueError):
        decode_token(bad)


def test_filter_subject_wildcards_missing_dimensions():
    assert filter_subject("xapi", org="edX", course="course-v1:edX+DemoX+Demo_Course") == \
        "xapi.*.edX.course-v1:edX+DemoX+Demo_Course.*"


def test_parse_subject_rejects_wrong_shapes():
    with pytest.raises(ValueError):
        parse_subject("xapi.default.edX")
