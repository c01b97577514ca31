"""Open edX events -> IMS Caliper 1.2 events, the established Open edX profile (see docs/translation.md).

``SPECS`` maps an event name to its Caliper event type, action and object builder. Ids are deterministic
(uuid5 of name, actor, time and object) so the hub's Nats-Msg-Id de-duplication works on re-processing;
the reference implementation uses random uuid4 there.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import msgspec

from hub.translate.base import (
    EventParts,
    Rejected,
    TranslateContext,
    block_id,
    browser_problem_id,
    caliper_time,
    iso_duration,
    number,
    session_of,
    text,
    user_of,
    uuid5,
)

CONTEXT = CALIPER_DATA_VERSION = "http://purl.imsglobal.org/ctx/caliper/v1p2"
_encode = msgspec.json.Encoder().encode
_ID_NS = uuid.UUID("4f6c2c9e-8a55-5c7e-9d0b-6d3c1c2f8a11").bytes  # our own namespace for Caliper event ids


def _person(external_id: str, lms_url: str) -> dict:
    return {"id": f"{lms_url}/user/{external_id}", "type": "Person"}


class Ev(EventParts):
    __slots__ = ("actor",)

    def __init__(self, event: dict, ctx: TranslateContext):
        super().__init__(event, ctx)
        self.actor = ctx.user_part("caliper", user_of(event, self.context, self.data), _person)


    def part_of(self, obj: dict, extensions: dict | None = None) -> dict:
        """Add ``extensions.isPartOf`` (the course offering) to an object."""
        ext = {}
        if self.course:
            iri, _ = self.ctx.course(self.course)
            ext["isPartOf"] = {"id": iri, "type": "CourseOffering"}
        if extensions:
            ext.update(extensions)
        if ext:
            obj["extensions"] = ext
        return obj


# ------------------------------------------------------------------------------------------- builders
def _now_seconds(ev: Ev, *keys: str) -> float | int | None:
    for key in keys:
        value = number(ev.data.get(key), key)
        if value is not None:
            return value
    return None


def video(ev: Ev) -> tuple[dict, dict | None, dict | None]:
    vid = ev.need("id")
    obj = {"id": ev.xblock(block_id(vid, ev.course, "video")), "type": "VideoObject",
           "duration": iso_duration(number(ev.data.get("duration"), "duration"))}
    ev.part_of(obj)
    target: dict[str, Any] = {"id": "_:MediaLocation", "type": "MediaLocation"}
    extra = None
    if ev.name in ("seek_video", "edx.video.position.changed"):
        old = _now_seconds(ev, "old_time", "currentTime", "current_time")
        if old is not None:
            target["currentTime"] = iso_duration(old)
        new = number(ev.data.get("new_time"), "new_time")
        if new is not None:
            target["extensions"] = {"newTime": iso_duration(new)}
    else:
        now = _now_seconds(ev, "currentTime", "current_time")
        if now is not None:
            target["currentTime"] = iso_duration(now)
    if ev.name == "speed_change_video":
        extra = {k: v for k in ("old_speed", "new_speed")
                 if (v := text(ev.data.get(k))) is not None}
        extra = {("oldSpeed" if k == "old_speed" else "newSpeed"): v for k, v in extra.items()}
    return obj, target, extra


def course_offering(with_mode: bool) -> Callable[[Ev], tuple]:
    def build(ev: Ev) -> tuple[dict, None, None]:
        if not ev.course:
            raise Rejected("no object id (no course)")
        iri, name = ev.ctx.course(ev.course)
        obj: dict[str, Any] = {"id": iri, "type": "CourseOffering"}
        if name:
            obj["name"] = name
        mode = text(ev.data.get("mode")) if with_mode else None
        if mode:
            obj["extensions"] = {"mode": mode}
        return obj, None, None
    return build


def problem(kind: str, suffix: str = "", key: str = "problem_id", name: str | None = None) -> Callable:
    def build(ev: Ev) -> tuple[dict, None, None]:
        obj: dict[str, Any] = {"id": ev.xblock(ev.need(key)) + suffix, "type": kind}
        if name:
            obj["name"] = name
        return ev.part_of(obj), None, None
    return build


def hint(ev: Ev) -> tuple[dict, None, None]:
    index = text(ev.data.get("hint_index"))
    if index is None:
        raise Rejected("no object id (data.hint_index missing)")
    obj = {"id": f"{ev.xblock(ev.need('module_id'))}/hint/{index}", "type": "Annotation", "name": "Hint"}
    return ev.part_of(obj), None, None


def link(ev: Ev) -> tuple[dict, None, None]:
    return ev.part_of({"id": ev.need_iri("target_url"), "type": "WebPage"}), None, None


def outline(ev: Ev) -> tuple[dict, None, None]:
    if text(ev.data.get("target_url")) is None:
        return sequence(None)(ev)
    obj: dict[str, Any] = {"id": ev.need_iri("target_url"), "type": "DigitalResource"}
    name = text(ev.data.get("target_name"))
    if name:
        obj["name"] = name
    return ev.part_of(obj), None, None


def sequence(target: str | None) -> Callable:
    def build(ev: Ev) -> tuple[dict, None, None]:
        obj = {"id": ev.xblock(ev.need("id")), "type": "DigitalResourceCollection", "name": "Unit"}
        ext: dict[str, Any] = {}
        for key in ("current_tab", "tab_count"):
            value = number(ev.data.get(key), key)
            if value is not None:
                ext[key] = value
        end = target if target is not None else ev.data.get("target_tab")
        if end is not None:
            ext["target"] = end if isinstance(end, str) else number(end, "target_tab")
        return ev.part_of(obj, ext), None, None
    return build


class Spec:
    __slots__ = ("type", "action", "build")

    def __init__(self, type_: str, action: str, build: Callable[[Ev], tuple]):
        self.type, self.action, self.build = type_, action, build


_MEDIA = {
    "load_video": "Started", "edx.video.loaded": "Started",
    "play_video": "Resumed", "edx.video.played": "Resumed",
    "pause_video": "Paused", "edx.video.paused": "Paused",
    "stop_video": "Ended", "edx.video.stopped": "Ended", "complete_video": "Ended", "edx.video.completed": "Ended",
    "seek_video": "JumpedTo", "edx.video.position.changed": "JumpedTo",
    "speed_change_video": "ChangedSpeed",
    "show_transcript": "EnabledClosedCaptioning", "edx.video.transcript.shown": "EnabledClosedCaptioning",
    "edx.video.closed_captions.shown": "EnabledClosedCaptioning", "video_show_cc_menu": "EnabledClosedCaptioning",
    "hide_transcript": "DisabledClosedCaptioning", "edx.video.transcript.hidden": "DisabledClosedCaptioning",
    "edx.video.closed_captions.hidden": "DisabledClosedCaptioning", "video_hide_cc_menu": "DisabledClosedCaptioning",
}
SPECS: dict[str, Spec] = {name: Spec("MediaEvent", action, video) for name, action in _MEDIA.items()}
SPECS.update({
    "edx.course.enrollment.activated": Spec("Event", "Activated", course_offering(True)),
    "edx.course.enrollment.deactivated": Spec("Event", "Deactivated", course_offering(True)),
    "edx.course.grade.passed.first_time": Spec("Event", "Completed", course_offering(False)),
    "edx.grades.problem.submitted": Spec("AssessmentEvent", "Submitted", problem("Assessment")),
    "edx.problem.completed": Spec("AssessmentItemEvent", "Completed", problem("AssessmentItem")),
    "edx.problem.hint.demandhint_displayed": Spec("Event", "Viewed", hint),
    "showanswer": Spec("Event", "Viewed", problem("Annotation", "/solution", name="Solution")),
    "edx.ui.lms.link_clicked": Spec("NavigationEvent", "NavigatedTo", link),
    "edx.ui.lms.outline.selected": Spec("NavigationEvent", "NavigatedTo", outline),
    "edx.ui.lms.sequence.outline.selected": Spec("NavigationEvent", "NavigatedTo", outline),
    "edx.ui.lms.sequence.next_selected": Spec("NavigationEvent", "NavigatedTo", sequence("next unit")),
    "edx.ui.lms.sequence.previous_selected": Spec("NavigationEvent", "NavigatedTo", sequence("previous unit")),
    "edx.ui.lms.sequence.tab_selected": Spec("NavigationEvent", "NavigatedTo", sequence(None)),
})
SUPPORTED = frozenset(SPECS) | {"problem_check"}


def _event(ev: Ev, type_: str, action: str, obj: dict, target: dict | None = None,
           extra: dict | None = None, generated: dict | None = None) -> dict:
    timestamp = ev.event["timestamp"]
    event_id = "urn:uuid:" + uuid5(_ID_NS, f"{ev.name}\n{ev.actor['id']}\n{timestamp}\n{obj['id']}")
    out: dict[str, Any] = {
        "@context": CONTEXT,
        "id": event_id,
        "type": type_,
        "action": action,
        "actor": ev.actor,
        "object": obj,
        "eventTime": caliper_time(timestamp),
    }
    if target is not None:
        out["target"] = target
    if generated is not None:
        out["generated"] = generated
    extensions = {"transformerVersion": ev.ctx.version}
    if extra:
        extensions.update(extra)
    out["extensions"] = extensions
    session = session_of(ev.event, ev.context)
    if session:
        out["session"] = {"id": f"{ev.ctx.lms_url}/sessions/{quote(session, safe='')}", "type": "Session"}
    return out


def translate(event: dict, ctx: TranslateContext) -> list[dict]:
    """The Caliper events of one normalized event ([] for names without a translator)."""
    name = event["name"]
    if name == "problem_check":
        return [problem_check(Ev(event, ctx))]
    spec = SPECS.get(name)
    if spec is None:
        return []
    ev = Ev(event, ctx)
    obj, target, extra = spec.build(ev)
    return [_event(ev, spec.type, spec.action, obj, target, extra)]


def problem_check(ev: Ev) -> dict:
    """Browser: AssessmentEvent/Submitted on the problem. Server: GradeEvent/Graded on the learner's attempt,
    in exactly the reference's shape: assignee, assignable and count in the Attempt's ``extensions``, and
    ``generated`` = ``{"score": Score}`` with a blank-node id, ``attempts`` and ``success`` as ``"True"``/``"False"``
    text. Absent values are left out, as the reference drops them."""
    browser = ev.context.get("event_source") == "browser" or ev.event.get("event_source") == "browser"
    if browser or not isinstance(ev.raw_data, dict):
        obj = {"id": ev.xblock(browser_problem_id(ev.context, ev.raw_data, ev.course)), "type": "Assessment"}
        return _event(ev, "AssessmentEvent", "Submitted", ev.part_of(obj))
    problem_iri = ev.xblock(ev.need("problem_id"))
    count = number(ev.data.get("attempts"), "attempts")
    if count is not None and count == int(count):
        count = int(count)
    ext_id = ev.actor["id"].rsplit("/", 1)[1]
    attempt = {"id": f"{problem_iri}/user/{ext_id}/attempt/{'' if count is None else count}", "type": "Attempt"}
    extensions: dict[str, Any] = {"assignee": ev.actor, "assignable": {"id": problem_iri, "type": "Assessment"}}
    if count is not None:
        extensions["count"] = count
    ev.part_of(attempt, extensions)
    score: dict[str, Any] = {"id": "_:score", "type": "Score"}
    for key, value in (("maxScore", number(ev.data.get("max_grade"), "max_grade")),
                       ("scoreGiven", number(ev.data.get("grade"), "grade")), ("attempts", count)):
        if value is not None:
            score[key] = value
    score["extensions"] = {"success": "True" if ev.data.get("success") == "correct" else "False"}
    return _event(ev, "GradeEvent", "Graded", attempt, generated={"score": score})


def caliper_envelope(events: list[bytes], sensor: str, send_time: datetime | None = None) -> bytes:
    """The one Caliper 1.2 envelope (``sensor``, ``sendTime``, ``dataVersion``, ``data``) around events already
    encoded as JSON, as the streams hold them: spliced in, never decoded and encoded again."""
    moment = (send_time or datetime.now(UTC)).astimezone(UTC)
    head = _encode({"sensor": sensor, "sendTime": moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                    "dataVersion": CALIPER_DATA_VERSION})
    return head[:-1] + b',"data":[' + b",".join(events) + b"]}"
