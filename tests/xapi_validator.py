"""A strict xAPI 1.0.3 statement check, written for the tests (what a conformance-tested LRS rejects).

``problems(statement)`` returns a list of human-readable problems; empty means valid.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_IRI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]+$")
_LANG = re.compile(r"^[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*$")
_DURATION = re.compile(r"^P(?!$)(\d+(\.\d+)?Y)?(\d+(\.\d+)?M)?(\d+(\.\d+)?W)?(\d+(\.\d+)?D)?"
                       r"(T(?=\d)(\d+(\.\d+)?H)?(\d+(\.\d+)?M)?(\d+(\.\d+)?S)?)?$")
_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
_INTERACTIONS = {"true-false", "choice", "fill-in", "long-fill-in", "matching", "performance", "sequencing",
                 "likert", "numeric", "other"}
_STATEMENT_KEYS = {"id", "actor", "verb", "object", "result", "context", "timestamp", "stored", "authority",
                   "version", "attachments"}


def is_iri(value: Any) -> bool:
    return isinstance(value, str) and bool(_IRI.match(value)) and not value.startswith(("block-v1:", "i4x:"))


class _Check:
    def __init__(self):
        self.out: list[str] = []

    def fail(self, path: str, msg: str) -> None:
        self.out.append(f"{path}: {msg}")

    def obj(self, path: str, value: Any, allowed: set[str] | None = None) -> bool:
        if not isinstance(value, dict):
            self.fail(path, "must be an object")
            return False
        if allowed is not None:
            for key in value:
                if key not in allowed:
                    self.fail(path, f"unexpected property {key!r}")
        for key, item in value.items():
            if item is None:
                self.fail(f"{path}.{key}", "null is not allowed")
        return True

    def iri(self, path: str, value: Any) -> None:
        if not is_iri(value):
            self.fail(path, f"not an IRI: {value!r}")

    def lang_map(self, path: str, value: Any) -> None:
        if self.obj(path, value):
            for tag, text in value.items():
                if not _LANG.match(tag):
                    self.fail(path, f"bad language tag {tag!r}")
                if not isinstance(text, str):
                    self.fail(f"{path}.{tag}", "must be a string")

    def extensions(self, path: str, value: Any) -> None:
        if self.obj(path, value):
            for key in value:
                self.iri(f"{path}[{key}]", key)

    def agent(self, path: str, value: Any) -> None:
        if not self.obj(path, value, {"objectType", "name", "mbox", "mbox_sha1sum", "openid", "account"}):
            return
        if value.get("objectType", "Agent") != "Agent":
            self.fail(path, "objectType must be Agent")
        ifis = [k for k in ("mbox", "mbox_sha1sum", "openid", "account") if k in value]
        if len(ifis) != 1:
            self.fail(path, f"exactly one inverse functional identifier required, got {ifis}")
        account = value.get("account")
        if account is not None and self.obj(f"{path}.account", account, {"homePage", "name"}):
            self.iri(f"{path}.account.homePage", account.get("homePage"))
            if not isinstance(account.get("name"), str) or not account.get("name"):
                self.fail(f"{path}.account.name", "required string")

    def activity(self, path: str, value: Any) -> None:
        if not self.obj(path, value, {"objectType", "id", "definition"}):
            return
        if value.get("objectType", "Activity") != "Activity":
            self.fail(f"{path}.objectType", f"must be Activity, got {value.get('objectType')!r}")
        self.iri(f"{path}.id", value.get("id"))
        definition = value.get("definition")
        if definition is None:
            return
        allowed = {"name", "description", "type", "moreInfo", "extensions", "interactionType",
                   "correctResponsesPattern", "choices", "scale", "source", "target", "steps"}
        if not self.obj(f"{path}.definition", definition, allowed):
            return
        for key in ("name", "description"):
            if key in definition:
                self.lang_map(f"{path}.definition.{key}", definition[key])
        if "type" in definition:
            self.iri(f"{path}.definition.type", definition["type"])
        if "extensions" in definition:
            self.extensions(f"{path}.definition.extensions", definition["extensions"])
        if "interactionType" in definition and definition["interactionType"] not in _INTERACTIONS:
            self.fail(f"{path}.definition.interactionType", "unknown interaction type")

    def result(self, path: str, value: Any) -> None:
        if not self.obj(path, value, {"score", "success", "completion", "response", "duration", "extensions"}):
            return
        for key in ("success", "completion"):
            if key in value and not isinstance(value[key], bool):
                self.fail(f"{path}.{key}", "must be a boolean")
        if "response" in value and not isinstance(value["response"], str):
            self.fail(f"{path}.response", "must be a string")
        if "duration" in value and not (isinstance(value["duration"], str) and _DURATION.match(value["duration"])):
            self.fail(f"{path}.duration", f"not an ISO 8601 duration: {value['duration']!r}")
        if "extensions" in value:
            self.extensions(f"{path}.extensions", value["extensions"])
        score = value.get("score")
        if score is not None and self.obj(f"{path}.score", score, {"scaled", "raw", "min", "max"}):
            for key, item in score.items():
                if isinstance(item, bool) or not isinstance(item, int | float):
                    self.fail(f"{path}.score.{key}", "must be a number")
            nums = {k: v for k, v in score.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            if "scaled" in nums and not -1 <= nums["scaled"] <= 1:
                self.fail(f"{path}.score.scaled", "must be within [-1, 1]")
            if "min" in nums and "max" in nums and nums["min"] > nums["max"]:
                self.fail(f"{path}.score", "min > max")
            if "raw" in nums:
                if "min" in nums and nums["raw"] < nums["min"]:
                    self.fail(f"{path}.score.raw", "below min")
                if "max" in nums and nums["raw"] > nums["max"]:
                    self.fail(f"{path}.score.raw", "above max")

    def context(self, path: str, value: Any) -> None:
        allowed = {"registration", "instructor", "team", "contextActivities", "revision", "platform",
                   "language", "statement", "extensions"}
        if not self.obj(path, value, allowed):
            return
        if "registration" in value and not _UUID.match(str(value["registration"])):
            self.fail(f"{path}.registration", "must be a UUID")
        if "statement" in value and self.obj(f"{path}.statement", value["statement"], {"objectType", "id"}):
            if value["statement"].get("objectType") != "StatementRef":
                self.fail(f"{path}.statement.objectType", "must be StatementRef")
            if not _UUID.match(str(value["statement"].get("id"))):
                self.fail(f"{path}.statement.id", "must be a UUID")
        activities = value.get("contextActivities")
        if activities is not None and self.obj(f"{path}.contextActivities", activities,
                                               {"parent", "grouping", "category", "other"}):
            for key, items in activities.items():
                for i, item in enumerate(items if isinstance(items, list) else [items]):
                    self.activity(f"{path}.contextActivities.{key}[{i}]", item)
        if "extensions" in value:
            self.extensions(f"{path}.extensions", value["extensions"])


def problems(statement: Any) -> list[str]:
    """Everything that makes ``statement`` invalid xAPI 1.0.3 (empty list: valid)."""
    check = _Check()
    if not check.obj("statement", statement, _STATEMENT_KEYS):
        return check.out
    if "id" in statement and not _UUID.match(str(statement["id"])):
        check.fail("id", "must be a lower-case UUID")
    for key in ("actor", "verb", "object"):
        if key not in statement:
            check.fail(key, "required")
    check.agent("actor", statement.get("actor"))
    verb = statement.get("verb")
    if check.obj("verb", verb, {"id", "display"}):
        check.iri("verb.id", verb.get("id"))
        if "display" in verb:
            check.lang_map("verb.display", verb["display"])
    obj = statement.get("object")
    if isinstance(obj, dict) and obj.get("objectType", "Activity") in ("Activity", "GroupActivity"):
        check.activity("object", obj)
    else:
        check.fail("object", "expected an Activity")
    if "result" in statement:
        check.result("result", statement["result"])
    if "context" in statement:
        check.context("context", statement["context"])
    if "timestamp" in statement:
        ts = statement["timestamp"]
        if not (isinstance(ts, str) and _ISO.match(ts)):
            check.fail("timestamp", f"not an ISO 8601 timestamp with offset: {ts!r}")
        else:
            try:
                datetime.fromisoformat(ts.replace("Z", "+00:00"))
            except ValueError:
                check.fail("timestamp", "not a real date")
    if "version" in statement and not re.match(r"^1\.0(\.\d+)?$", str(statement["version"])):
        check.fail("version", "must be 1.0.x")
    return check.out
