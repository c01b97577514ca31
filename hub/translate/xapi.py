"""Open edX events -> xAPI 1.0.3 statements, the established Open edX profile (see docs/translation.md).

A statement is ``verb`` + ``object`` + optional ``result`` + context extensions; ``SPECS`` says, per event
name, which verb and which part builders apply. Part builders are small pure functions of the event.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from hub.translate.base import (
    EventParts,
    Rejected,
    TranslateContext,
    as_dict,
    block_id,
    browser_problem_id,
    number,
    session_of,
    text,
    user_of,
    uuid5,
    xapi_duration,
    xapi_timestamp,
)

VERSION = "1.0.3"
EN, EN_US = "en", "en-US"

# activity types
COURSE = "http://adlnet.gov/expapi/activities/course"
VIDEO = "https://w3id.org/xapi/video/activity-type/video"
INTERACTION = "http://adlnet.gov/expapi/activities/cmi.interaction"
QUESTION = "http://adlnet.gov/expapi/activities/question"
RESOURCE = "http://id.tincanapi.com/activitytype/resource"
SOLUTION = "http://id.tincanapi.com/activitytype/solution"
SUPPLEMENTAL = "https://w3id.org/xapi/acrossx/extensions/supplemental-info"
DISCUSSION = "http://id.tincanapi.com/activitytype/discussion"
LINK = "http://adlnet.gov/expapi/activities/link"
MODULE = "http://adlnet.gov/expapi/activities/module"
ATTEMPT = "http://adlnet.gov/expapi/activities/attempt"
EXAM_TYPES = {kind: f"https://w3id.org/xapi/openedx/activity/{kind}-assessment"
              for kind in ("practice", "proctored", "timed")}

# extensions
X_VERSION = "https://w3id.org/xapi/openedx/extension/transformer-version"
X_SESSION = "https://w3id.org/xapi/openedx/extensions/session-id"
X_LENGTH = "https://w3id.org/xapi/video/extensions/length"
X_TIME = "https://w3id.org/xapi/video/extensions/time"
X_TIME_FROM = "https://w3id.org/xapi/video/extensions/time-from"
X_TIME_TO = "https://w3id.org/xapi/video/extensions/time-to"
X_CC = "https://w3id.org/xapi/video/extensions/cc-enabled"
X_SPEED_FROM = "https://w3id.org/xapi/openedx/extension/speed-from"
X_SPEED_TO = "https://w3id.org/xapi/openedx/extension/speed-to"
X_TYPE = "https://w3id.org/xapi/acrossx/extensions/type"
X_TOTAL_ITEMS = "https://w3id.org/xapi/acrossx/extensions/total-items"
X_START_POS = "http://id.tincanapi.com/extension/starting-position"
X_END_POINT = "http://id.tincanapi.com/extension/ending-point"
X_ATTEMPT_ID = "http://id.tincanapi.com/extension/attempt-id"
X_DURATION = "http://id.tincanapi.com/extension/duration"
X_ATTEMPT_STARTED = "https://w3id.org/xapi/openedx/extension/attempt-started"
X_ATTEMPT_COMPLETED = "https://w3id.org/xapi/openedx/extension/attempt-completed"
X_TIME_LIMIT = "https://w3id.org/xapi/acrossx/extensions/time-limit"
X_GRADE_CLASS = "http://www.tincanapi.co.uk/activitytypes/grade_classification"
X_PROGRESS = "https://w3id.org/xapi/cmi5/result/extensions/progress"


def _verb(iri: str, display: str) -> dict:
    return {"id": iri, "display": {EN: display}}


ADL = "http://adlnet.gov/expapi/verbs/"
VERBS = {
    "played": _verb("https://w3id.org/xapi/video/verbs/played", "played"),
    "paused": _verb("https://w3id.org/xapi/video/verbs/paused", "paused"),
    "seeked": _verb("https://w3id.org/xapi/video/verbs/seeked", "seeked"),
    "initialized": _verb(ADL + "initialized", "initialized"),
    "terminated": _verb(ADL + "terminated", "terminated"),
    "completed": _verb(ADL + "completed", "completed"),
    "interacted": _verb(ADL + "interacted", "interacted"),
    "attempted": _verb(ADL + "attempted", "attempted"),
    "asked": _verb(ADL + "asked", "asked"),
    "registered": _verb(ADL + "registered", "registered"),
    "unregistered": _verb("http://id.tincanapi.com/verb/unregistered", "unregistered"),
    "passed": _verb(ADL + "passed", "passed"),
    "failed": _verb(ADL + "failed", "failed"),
    "progressed": _verb(ADL + "progressed", "progressed"),
    "evaluated": _verb("https://w3id.org/xapi/acrossx/verbs/evaluated", "evaluated"),
    "earned": _verb("http://id.tincanapi.com/verb/earned", "earned"),
    "navigated": _verb("https://w3id.org/xapi/dod-isd/verbs/navigated", "navigated"),
    "posted": _verb("https://w3id.org/xapi/acrossx/verbs/posted", "posted"),
    "edited": _verb("https://w3id.org/xapi/acrossx/verbs/edited", "edited"),
    "deleted": _verb("https://w3id.org/xapi/dod-isd/verbs/deleted", "deleted"),
    "reported": _verb("https://w3id.org/xapi/acrossx/verbs/reported", "reported"),
    "unreported": _verb("https://w3id.org/xapi/openedx/verb/unreported", "unreported"),
    "voted": _verb("https://w3id.org/xapi/openedx/verb/voted", "voted"),
    "viewed": _verb("http://id.tincanapi.com/verb/viewed", "viewed"),
}
# The id recipe hashes the verb exactly as json.dumps writes it; the namespace per verb is computed once.
_VERB_NS = {name: uuid.uuid5(uuid.NAMESPACE_DNS, json.dumps(v)).bytes for name, v in VERBS.items()}
_VERB_JSON = {name: json.dumps(v) for name, v in VERBS.items()}

INTERACTION_TYPES = {
    "choiceresponse": "choice", "multiplechoiceresponse": "choice", "numericalresponse": "numeric",
    "stringresponse": "fill-in", "customresponse": "other", "coderesponse": "performance",
    "externalresponse": "performance", "formularesponse": "fill-in", "schematicresponse": "sequencing",
    "imageresponse": "matching", "annotationresponse": "fill-in", "choicetextresponse": "choice",
    "optionresponse": "choice", "symbolicresponse": "fill-in", "truefalseresponse": "true-false",
}


class Ev(EventParts):
    __slots__ = ()


    def course_activity(self) -> dict | None:
        if not self.course:
            return None
        iri, name = self.ctx.course(self.course)
        definition: dict[str, Any] = {"type": COURSE}
        if name:
            definition["name"] = {EN_US: name}
        return {"id": iri, "objectType": "Activity", "definition": definition}


def activity(iri: str, kind: str, **definition: Any) -> dict:
    return {"id": iri, "objectType": "Activity", "definition": {"type": kind, **definition}}


def _actor(external_id: str, lms_url: str) -> tuple[dict, str]:
    account = {"name": external_id, "homePage": lms_url}
    agent = {"objectType": "Agent", "account": account}
    return agent, json.dumps(agent)


# ----------------------------------------------------------------------------------------- part builders
def video_object(ev: Ev) -> dict:
    vid = ev.need("id")
    return activity(ev.xblock(block_id(vid, ev.course, "video")), VIDEO)


def video_length(ev: Ev) -> dict:
    length = number(ev.data.get("duration"), "duration")
    return {} if length is None else {X_LENGTH: float(length)}


def _current_time(ev: Ev) -> float | None:
    data = ev.data
    value = data.get("currentTime")
    if value is None:
        value = data.get("current_time")
    found = number(value, "current time")
    return None if found is None else round(float(found), 3)


def video_time(ev: Ev) -> dict | None:
    now = _current_time(ev)
    return None if now is None else {"extensions": {X_TIME: now}}


def video_cc(enabled: bool) -> Callable[[Ev], dict]:
    def build(ev: Ev) -> dict:
        now = _current_time(ev)
        ext = {} if now is None else {X_TIME: now}
        ext[X_CC] = enabled
        return {"extensions": ext}
    return build


def video_seek(ev: Ev) -> dict | None:
    old = number(ev.data.get("old_time"), "old_time")
    if old is None:
        old = _current_time(ev)
    new = number(ev.data.get("new_time"), "new_time")
    ext = {}
    if old is not None:
        ext[X_TIME_FROM] = round(float(old), 3)
    if new is not None:
        ext[X_TIME_TO] = round(float(new), 3)
    return {"extensions": ext} if ext else None


def video_speed(ev: Ev) -> dict | None:
    ext = {}
    for key, ext_key in (("old_speed", X_SPEED_FROM), ("new_speed", X_SPEED_TO)):
        speed = text(ev.data.get(key))
        if speed is not None:
            ext[ext_key] = f"{speed}x"
    return {"extensions": ext} if ext else None


def video_completed(ev: Ev) -> dict:
    length = number(ev.data.get("duration"), "duration")
    result: dict[str, Any] = {}
    if length is not None:
        result["extensions"] = {X_TIME: float(length)}
    result["completion"] = True
    if length is not None:
        result["duration"] = xapi_duration(length)
    return result


def course_object(ev: Ev, with_extensions: bool = True) -> dict:
    if not ev.course:
        raise Rejected("no object id (no course)")
    iri, name = ev.ctx.course(ev.course)
    definition: dict[str, Any] = {"type": COURSE}
    if name:
        definition["name"] = {EN: name}
    if with_extensions:
        mode = text(ev.data.get("mode"))
        definition["extensions"] = {X_TYPE: mode} if mode else {}
    return {"id": iri, "objectType": "Activity", "definition": definition}


def course_object_plain(ev: Ev) -> dict:
    return course_object(ev, with_extensions=False)


def problem_object(kind: str, suffix: str = "", key: str = "problem_id") -> Callable[[Ev], dict]:
    def build(ev: Ev) -> dict:
        return activity(ev.xblock(ev.need(key)) + suffix, kind)
    return build


def hint_object(ev: Ev) -> dict:
    index = text(ev.data.get("hint_index"))
    if index is None:
        raise Rejected("no object id (data.hint_index missing)")
    return activity(f"{ev.xblock(ev.need('module_id'))}/hint/{index}", SUPPLEMENTAL)


def _score(earned: Any, possible: Any, what: str) -> dict:
    raw = number(earned, what + " earned")
    top = number(possible, what + " possible")
    raw = 0 if raw is None else raw
    top = 0 if top is None else top
    scaled = raw / top if top else 0
    if not -1 <= scaled <= 1 or raw < 0 or top < 0 or raw > top:
        # xAPI requires min <= raw <= max: an event earning more than possible cannot be stated validly
        raise Rejected(f"{what} score out of range (earned {raw}, possible {top})")
    return {"score": {"min": 0, "max": top, "raw": raw, "scaled": scaled}, "success": raw >= top}


def problem_submitted_result(ev: Ev) -> dict:
    return _score(ev.data.get("weighted_earned"), ev.data.get("weighted_possible"), "weighted")


def subsection_result(ev: Ev) -> dict:
    return _score(ev.data.get("weighted_total_earned"), ev.data.get("weighted_total_possible"), "weighted total")


def course_grade_result(ev: Ev) -> dict:
    percent = number(ev.data.get("percent_grade"), "percent_grade")
    percent = 0.0 if percent is None else percent
    if not 0 <= percent <= 1:
        raise Rejected("percent_grade out of range")
    letter = text(ev.data.get("letter_grade")) or "Fail"
    return {"score": {"scaled": percent, "raw": percent, "min": 0.0, "max": 1.0},
            "extensions": {X_GRADE_CLASS: letter}}


def completion_result(ev: Ev) -> dict:
    done = number(ev.data.get("completion"), "completion")
    done = 0.0 if done is None else done
    return {"completion": done == 1.0, "extensions": {X_PROGRESS: done * 100}}


def block_object(kind: str, key: str = "block_id") -> Callable[[Ev], dict]:
    def build(ev: Ev) -> dict:
        return activity(ev.xblock(ev.need(key)), kind)
    return build


def link_object(ev: Ev) -> dict:
    return activity(ev.need_iri("target_url"), LINK)


def outline_object(ev: Ev) -> dict:
    if text(ev.data.get("target_url")) is None:
        return sequence_object(ev)
    obj = activity(ev.need_iri("target_url"), MODULE)
    name = text(ev.data.get("target_name"))
    if name:
        obj["definition"]["name"] = {EN: name}
    return obj


def sequence_object(ev: Ev) -> dict:
    obj = activity(ev.xblock(ev.need("id")), RESOURCE)
    count = number(ev.data.get("tab_count"), "tab_count")
    if count is not None:
        obj["definition"]["extensions"] = {X_TOTAL_ITEMS: count}
    return obj


def sequence_ext(ending: str | None) -> Callable[[Ev], dict]:
    def build(ev: Ev) -> dict:
        ext = {}
        current = ev.data.get("current_tab")
        if current is not None:
            ext[X_START_POS] = number(current, "current_tab")
        end = ending if ending is not None else ev.data.get("target_tab")
        if end is not None:
            ext[X_END_POINT] = end if isinstance(end, str) else number(end, "target_tab")
        return ext
    return build


def forum_object(ev: Ev) -> dict:
    post = ev.need("id")
    path = text(ev.context.get("path"))
    if path is None:
        raise Rejected("no object id (forum event without context.path)")
    path = path.rstrip("/")
    if path.endswith("/" + post):
        path = path[: -len(post) - 1]
    obj = activity(f"{ev.ctx.lms_url}{path}/{quote(post, safe='')}", DISCUSSION)
    title = text(ev.data.get("title"))
    if title:
        obj["definition"]["name"] = {EN: title}
    return obj


def forum_grouping(ev: Ev) -> list | None:
    thread = text(as_dict(ev.data.get("discussion")).get("id"))
    if thread is None:
        return None
    return [activity(f"{ev.ctx.lms_url}/api/discussion/v1/threads/{quote(thread, safe='')}", DISCUSSION)]


def data_ext(ext_key: str, data_key: str) -> Callable[[Ev], dict]:
    def build(ev: Ev) -> dict:
        value = text(ev.data.get(data_key))
        return {ext_key: value} if value is not None else {}
    return build


def _exam_kind(ev: Ev) -> str:
    return ev.name.split(".")[2]


def exam_object(ev: Ev) -> dict:
    content = ev.need("exam_content_id")
    definition: dict[str, Any] = {}
    name = text(ev.data.get("exam_name"))
    if name:
        definition["name"] = {EN: name}
    definition["type"] = EXAM_TYPES[_exam_kind(ev)]
    limit = number(ev.data.get("exam_default_time_limit_mins"), "exam_default_time_limit_mins")
    if limit is not None:
        definition["extensions"] = {X_TIME_LIMIT: limit}
    return {"id": ev.xblock(content), "objectType": "Activity", "definition": definition}


def exam_grouping(ev: Ev) -> list | None:
    code = text(ev.data.get("attempt_code"))
    if code is None:
        return None
    try:
        iri = uuid.UUID(code).urn
    except ValueError:
        iri = f"{ev.xblock(ev.need('exam_content_id'))}/attempt/{quote(code, safe='')}"
    definition: dict[str, Any] = {}
    name = text(ev.data.get("exam_name"))
    if name:
        definition["name"] = {EN: name}
    definition["type"] = ATTEMPT
    ext = {}
    for key, ext_key in (("attempt_started_at", X_ATTEMPT_STARTED), ("attempt_completed_at", X_ATTEMPT_COMPLETED)):
        value = text(ev.data.get(key))
        if value is not None:
            ext[ext_key] = value
    elapsed = number(ev.data.get("attempt_event_elapsed_time_secs"), "attempt_event_elapsed_time_secs")
    if elapsed is not None:
        ext[X_DURATION] = elapsed
    attempt = ev.data.get("attempt_id")
    if attempt is not None:
        ext[X_ATTEMPT_ID] = number(attempt, "attempt_id")
    if ext:
        definition["extensions"] = ext
    return [{"id": iri, "objectType": "Activity", "definition": definition}]


# --------------------------------------------------------------------------------------------- the table
class Spec:
    """One event name's translation: verb, object builder and optional result/extension/grouping builders."""

    __slots__ = ("verb", "obj", "result", "ext", "grouping", "course_parent")

    def __init__(self, verb: str, obj: Callable[[Ev], dict], result: Callable[[Ev], dict | None] | None = None,
                 ext: Callable[[Ev], dict] | None = None, grouping: Callable[[Ev], list | None] | None = None,
                 course_parent: bool = True):
        self.verb, self.obj, self.result, self.ext = verb, obj, result, ext
        self.grouping, self.course_parent = grouping, course_parent


def _video(verb: str, result=None) -> Spec:
    return Spec(verb, video_object, result, video_length)


SPECS: dict[str, Spec] = {
    # video, legacy and new names
    "load_video": _video("initialized"), "edx.video.loaded": _video("initialized"),
    "play_video": _video("played", video_time), "edx.video.played": _video("played", video_time),
    "pause_video": _video("paused", video_time), "edx.video.paused": _video("paused", video_time),
    "stop_video": _video("terminated", video_time), "edx.video.stopped": _video("terminated", video_time),
    "complete_video": _video("completed", video_completed),
    "edx.video.completed": _video("completed", video_completed),
    "seek_video": _video("seeked", video_seek), "edx.video.position.changed": _video("seeked", video_seek),
    "speed_change_video": _video("interacted", video_speed),
    "show_transcript": _video("interacted", video_cc(True)),
    "hide_transcript": _video("interacted", video_cc(False)),
    "edx.video.transcript.shown": _video("interacted", video_cc(True)),
    "edx.video.transcript.hidden": _video("interacted", video_cc(False)),
    "edx.video.closed_captions.shown": _video("interacted", video_cc(True)),
    "edx.video.closed_captions.hidden": _video("interacted", video_cc(False)),
    "video_show_cc_menu": _video("interacted", video_cc(True)),
    "video_hide_cc_menu": _video("interacted", video_cc(False)),
    # enrollment and course grade: the course itself is the object, no contextActivities
    "edx.course.enrollment.activated": Spec("registered", course_object, course_parent=False),
    "edx.course.enrollment.mode_changed": Spec("registered", course_object, course_parent=False),
    "edx.course.enrollment.deactivated": Spec("unregistered", course_object, course_parent=False),
    "edx.course.grade.passed.first_time": Spec("passed", course_object, course_parent=False),
    "edx.course.grade.now_passed": Spec("passed", course_object, course_parent=False),
    "edx.course.grade.now_failed": Spec("failed", course_object, course_parent=False),
    # grades, problems, completion
    "edx.grades.subsection.grade_calculated": Spec("earned", block_object(RESOURCE), subsection_result),
    "edx.grades.course.grade_calculated": Spec("earned", course_object_plain, course_grade_result),
    "edx.grades.problem.submitted": Spec("attempted", problem_object(QUESTION), problem_submitted_result),
    "showanswer": Spec("asked", problem_object(SOLUTION, "/answer")),
    "edx.problem.hint.demandhint_displayed": Spec("asked", hint_object),
    "edx.problem.completed": Spec("completed", problem_object(INTERACTION)),
    "edx.completion.block_completion.changed": Spec("progressed", block_object(RESOURCE), completion_result),
    # navigation
    "edx.ui.lms.link_clicked": Spec("navigated", link_object),
    "edx.ui.lms.outline.selected": Spec("navigated", outline_object),
    "edx.ui.lms.sequence.outline.selected": Spec("navigated", outline_object),
    "edx.ui.lms.sequence.next_selected": Spec("navigated", sequence_object, ext=sequence_ext("next unit")),
    "edx.ui.lms.sequence.previous_selected": Spec("navigated", sequence_object, ext=sequence_ext("previous unit")),
    "edx.ui.lms.sequence.tab_selected": Spec("navigated", sequence_object, ext=sequence_ext(None)),
}
for _kind in ("practice", "proctored", "timed"):
    SPECS[f"edx.special_exam.{_kind}.attempt.created"] = Spec("initialized", exam_object, grouping=exam_grouping)
    SPECS[f"edx.special_exam.{_kind}.attempt.submitted"] = Spec("terminated", exam_object, grouping=exam_grouping)
_FORUM_VERBS = {"created": "posted", "deleted": "deleted", "edited": "edited", "reported": "reported",
                "unreported": "unreported", "voted": "voted"}
for _thing in ("thread", "response", "comment"):
    for _action, _verb_name in _FORUM_VERBS.items():
        if _thing == "comment" and _action == "voted":
            continue
        _ext = None
        if _action == "voted":
            _ext = data_ext(X_TYPE, "vote_value")
        elif _thing == "thread" and _action == "created":
            _ext = data_ext(X_TYPE, "thread_type")
        SPECS[f"edx.forum.{_thing}.{_action}"] = Spec(_verb_name, forum_object, ext=_ext, grouping=forum_grouping)
SPECS["edx.forum.thread.viewed"] = Spec("viewed", forum_object, grouping=forum_grouping)

SUPPORTED = frozenset(SPECS) | {"problem_check"}


# ------------------------------------------------------------------------------------------ assembly
def _statement(ev: Ev, verb: str, obj: dict, actor: tuple[dict, str], context: dict,
               result: dict | None, ns_key: str | None = None) -> dict:
    timestamp = ev.event["timestamp"]
    if ns_key is None:
        namespace = _VERB_NS[verb]
    else:
        namespace = uuid.uuid5(uuid.NAMESPACE_DNS, _VERB_JSON[verb] + "-" + ns_key).bytes
    statement = {
        "id": uuid5(namespace, actor[1] + "-" + timestamp),
        "actor": actor[0],
        "verb": VERBS[verb],
        "object": obj,
        "timestamp": xapi_timestamp(timestamp),
        "version": VERSION,
        "context": context,
    }
    if result:
        statement["result"] = result
    return statement


def _base_extensions(ev: Ev) -> dict:
    ext = {X_VERSION: ev.ctx.version}
    session = session_of(ev.event, ev.context)
    if session:
        ext[X_SESSION] = session
    return ext


def _actor_of(ev: Ev) -> tuple[dict, str]:
    return ev.ctx.user_part("xapi", user_of(ev.event, ev.context, ev.data), _actor)


def translate(event: dict, ctx: TranslateContext) -> list[dict]:
    """The xAPI statements of one normalized event ([] for names without a translator)."""
    name = event["name"]
    if name == "problem_check":
        return problem_check(event, ctx)
    spec = SPECS.get(name)
    if spec is None:
        return []
    ev = Ev(event, ctx)
    actor = _actor_of(ev)
    obj = spec.obj(ev)
    result = spec.result(ev) if spec.result else None
    context: dict[str, Any] = {}
    activities: dict[str, Any] = {}
    if spec.course_parent:
        parent = ev.course_activity()
        if parent:
            activities["parent"] = [parent]
    if spec.grouping:
        grouping = spec.grouping(ev)
        if grouping:
            activities["grouping"] = grouping
    if activities:
        context["contextActivities"] = activities
    ext = _base_extensions(ev)
    if spec.ext:
        ext.update(spec.ext(ev))
    context["extensions"] = ext
    return [_statement(ev, spec.verb, obj, actor, context, result)]


# ------------------------------------------------------------------------------------------ problem_check
def _response(value: Any) -> str:
    """The reference's ``result.response``: a list as JSON text, a string as is, anything else as Python text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _interaction(submission: dict) -> str:
    kind = submission.get("response_type")
    return INTERACTION_TYPES.get(kind, "other") if isinstance(kind, str) else "other"


def problem_check(event: dict, ctx: TranslateContext) -> list[dict]:
    """Browser: one ``attempted``. Server: one ``evaluated``; several questions add one child each."""
    ev = Ev(event, ctx)
    actor = _actor_of(ev)
    parent = ev.course_activity()
    ext = _base_extensions(ev)
    browser = ev.context.get("event_source") == "browser" or event.get("event_source") == "browser"
    if browser or not isinstance(ev.raw_data, dict):
        obj = activity(ev.xblock(browser_problem_id(ev.context, ev.raw_data, ev.course)), INTERACTION,
                       interactionType="other")
        context = {"contextActivities": {"parent": [parent]}} if parent else {}
        context["extensions"] = ext
        return [_statement(ev, "attempted", obj, actor, context, None)]

    data = ev.data
    problem_iri = ev.xblock(ev.need("problem_id"))
    submissions = data.get("submission")
    submissions = {k: v for k, v in submissions.items() if isinstance(v, dict)} if isinstance(submissions, dict) else {}
    display = text(as_dict(ev.context.get("module")).get("display_name"))
    score = _score(data.get("grade"), data.get("max_grade"), "grade")["score"]
    success = data.get("success") == "correct"
    context = {"contextActivities": {"parent": [parent]}} if parent else {}
    context["extensions"] = ext

    if len(submissions) > 1:
        definition: dict[str, Any] = {"type": INTERACTION}
        if display:
            definition["name"] = {EN_US: display}
        definition["interactionType"] = "other"
        group = {"id": problem_iri, "objectType": "Activity", "definition": definition}
        head = _statement(ev, "evaluated", group, actor, context, {"score": score, "success": success})
        out = [head]
        child_activities: dict[str, Any] = {"parent": [group]}
        if parent:
            child_activities["grouping"] = [parent]
        child_context = {"statement": {"id": head["id"], "objectType": "StatementRef"},
                         "contextActivities": child_activities, "extensions": ext}
        for key, sub in submissions.items():
            suffix = "_".join(key.split("_")[-2:])
            child = {"id": f"{problem_iri}_{suffix}", "objectType": "Activity",
                     "definition": {"type": INTERACTION,
                                    "description": {EN_US: str(sub.get("question") or "")},
                                    "interactionType": _interaction(sub)}}
            result = {"response": _response(sub.get("answer")), "success": sub.get("correct") is True}
            out.append(_statement(ev, "evaluated", child, actor, child_context, result, ns_key=key))
        return out

    only = next(iter(submissions.values()), None)
    definition = {}
    attempts = data.get("attempts")
    if attempts is not None:
        definition["extensions"] = {X_ATTEMPT_ID: number(attempts, "attempts")}
    if only is not None and text(only.get("response_type")):
        definition["description"] = {EN_US: str(only.get("question") or "")}
        definition["interactionType"] = _interaction(only)
        response = only.get("answer")
    else:
        if display:
            definition["name"] = {EN_US: display}
        definition["interactionType"] = "other"
        response = data.get("answers")
    definition["type"] = INTERACTION
    result: dict[str, Any] = {}
    if response is not None:
        result["response"] = _response(response)
    result["score"] = score
    result["success"] = success
    obj = {"id": problem_iri, "objectType": "Activity", "definition": definition}
    return [_statement(ev, "evaluated", obj, actor, context, result)]
