"""Grant matching and the subjects a grant allows (pure code)."""

import pytest

from hub.core.grants import Grant, GrantIndex
from hub.core.protocols import NAMES as PROTOCOL_NAMES

COURSE = "course-v1:edX+DemoX+Demo_Course"


def test_course_grant_covers_only_its_course():
    g = Grant(id="g1", consumer="c", protocol="xapi", courses=[COURSE])
    assert g.covers("default", "edX", COURSE, "play_video")
    assert not g.covers("default", "edX", "course-v1:edX+Other+1", "play_video")
    assert not g.covers("default", "edX", None, "play_video")


def test_all_dimensions_must_match():
    g = Grant(id="g1", consumer="c", protocol="caliper", sites=["a"], orgs=["edX"], event_types=["play_video"])
    assert g.covers("a", "edX", COURSE, "play_video")
    assert not g.covers("b", "edX", COURSE, "play_video")
    assert not g.covers("a", "MITx", COURSE, "play_video")
    assert not g.covers("a", "edX", COURSE, "pause_video")


def test_filter_subjects_are_the_product_of_dimensions():
    g = Grant(id="g1", consumer="c", protocol="xapi", sites=["s1", "s2"], courses=[COURSE])
    assert g.filter_subjects() == [f"xapi.s1.*.{COURSE}.*", f"xapi.s2.*.{COURSE}.*"]
    e = Grant(id="g2", consumer="c", protocol="caliper", orgs=["edX"], event_types=["edx.ui.lms.outline.selected"])
    assert e.filter_subjects() == ["caliper.*.edX.*.edx~2Eui~2Elms~2Eoutline~2Eselected"]


def test_a_grant_must_name_a_scope_and_a_safe_id():
    with pytest.raises(ValueError, match="at least one site, org or course"):
        Grant(id="g1", consumer="c", protocol="xapi").validate()
    with pytest.raises(ValueError, match="grant id"):
        Grant(id="a.b", consumer="c", protocol="xapi", orgs=["x"]).validate()


def test_index_answers_protocols_and_forgets_suspended_and_removed():
    idx = GrantIndex([
        Grant(id="x", consumer="c", protocol="xapi", orgs=["edX"]),
        Grant(id="y", consumer="d", protocol="caliper", courses=[COURSE]),
    ])
    assert idx.protocols_for("default", "edX", COURSE, "play_video") == {"xapi", "caliper"} <= set(PROTOCOL_NAMES)
    assert idx.protocols_for("default", "MITx", "course-v1:MITx+1+1", "play_video") == frozenset()
    idx.put(Grant(id="y", consumer="d", protocol="caliper", courses=[COURSE], status="suspended"))
    assert idx.protocols_for("default", "edX", COURSE, "play_video") == {"xapi"}
    idx.remove("x")
    assert idx.protocols_for("default", "edX", COURSE, "play_video") == frozenset()
