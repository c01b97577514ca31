"""What every translator shares: the rejection error, the per-site context, external ids and course names.

Everything here is pure and cheap on the hot path: per-user and per-course parts are computed once and
cached, so translating an event is mostly dictionary building.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import json
import logging
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from math import isfinite
from typing import Any
from urllib.parse import parse_qs, urlsplit

from hub.core.protocols import NAMES as PROTOCOLS

log = logging.getLogger("rthub.translate")

TRANSFORMER_VERSION = "rthub@0.1.0"
_CACHE_LIMIT = 500_000


class Rejected(Exception):
    """An event the translators cannot turn into a statement; ``reason`` says why (e.g. ``no user``)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------------- ids
def _uuid_from_digest(digest: bytes) -> str:
    return str(uuid.UUID(bytes=digest[:16], version=4))


class ExternalIds:
    """One anonymized id per user per protocol: an imported mapping first, else HMAC-SHA256 of the secret.

    ``imported`` maps an LMS user id or username to a UUID for every protocol, or holds per-protocol maps
    under ``"xapi"`` / ``"caliper"``; the key ``"*"`` is the default for every user (conformance fixtures).
    """

    def __init__(self, secret: bytes | str, imported: dict[str, Any] | None = None):
        self.secret = secret.encode() if isinstance(secret, str) else bytes(secret)
        self._imported: dict[str, dict[str, str]] = {p: {} for p in PROTOCOLS}
        self._cache: dict[tuple[str, str], str] = {}
        for key, value in (imported or {}).items():
            if key in PROTOCOLS and isinstance(value, dict):
                self._imported[key].update({str(k): str(v) for k, v in value.items()})
            elif isinstance(value, str | int):
                for proto in PROTOCOLS:
                    self._imported[proto].setdefault(str(key), str(value))

    def get(self, protocol: str, user_key: str, alt_key: str | None = None) -> str:
        """The id of ``user_key`` (LMS user id, else username) for ``protocol``; ``alt_key`` also matches imports."""
        cache_key = (protocol, user_key)
        found = self._cache.get(cache_key)
        if found is not None:
            return found
        table = self._imported.get(protocol, {})
        found = table.get(user_key) or (table.get(alt_key) if alt_key else None) or table.get("*")
        if found is None:
            digest = hmac.new(self.secret, f"{protocol}:{user_key}".encode(), hashlib.sha256).digest()
            found = _uuid_from_digest(digest)
        if len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
        self._cache[cache_key] = found
        return found

    @classmethod
    def parse(cls, text: str) -> dict[str, Any]:
        """An imported mapping from JSON (``{user: uuid}`` or per protocol) or CSV of Open edX's external-id table.

        CSV columns (header required): ``external_user_id`` (or ``external_id``/``uuid``), ``user_id`` and/or
        ``username``, and optionally ``external_id_type`` (``xapi``, ``caliper``; other types apply to both).
        """
        stripped = text.lstrip()
        if stripped.startswith("{"):
            data = json.loads(stripped)
            if not isinstance(data, dict):
                raise ValueError("external ids JSON must be an object")
            return data
        out: dict[str, Any] = {p: {} for p in PROTOCOLS}
        shared: dict[str, str] = {}
        for row in csv.DictReader(io.StringIO(text)):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
            ext = row.get("external_user_id") or row.get("external_id") or row.get("uuid")
            if not ext:
                continue
            kind = row.get("external_id_type") or row.get("type") or ""
            target = out[kind] if kind in PROTOCOLS else shared
            for col in ("user_id", "username"):
                if row.get(col):
                    target[row[col]] = ext
        for proto in PROTOCOLS:
            for k, v in shared.items():
                out[proto].setdefault(k, v)
        return out

    @classmethod
    def load(cls, path: str, secret: bytes | str) -> ExternalIds:
        with open(path, encoding="utf-8") as fh:
            return cls(secret, cls.parse(fh.read()))

    @staticmethod
    def deployment_secret(configured: str | None, data_dir: str) -> bytes:
        """The deployment's secret for anonymized ids: configured (``RTHUB_ID_SECRET``), else created once in the
        data directory (the hub and a deliverer sharing it read the same file)."""
        import os
        import secrets
        from pathlib import Path

        if configured:
            return configured.encode()
        path = Path(data_dir) / "id_secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another service created it meanwhile
                return path.read_text().strip().encode()
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return path.read_text().strip().encode()

    @classmethod
    def from_settings(cls, secret: bytes | str, external_ids_file: str | None = None) -> ExternalIds:
        """What a service builds from ``RTHUB_ID_SECRET`` and ``RTHUB_EXTERNAL_IDS_FILE`` (optional import)."""
        return cls.load(external_ids_file, secret) if external_ids_file else cls(secret)


# ----------------------------------------------------------------------------------------------- courses
def course_kv_key(course_key: str) -> str:
    """The KV key of a course: base64url without padding, since KV keys allow only ``[-/_=.a-zA-Z0-9]``."""
    return base64.urlsafe_b64encode(course_key.encode()).rstrip(b"=").decode() or "_"


def course_from_kv_key(key: str) -> str:
    return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)).decode()


class CourseNames:
    """Course key -> display name. ``"*"`` is the default name; ``unknown`` counts lookups that found none.

    A plain lookup: whoever owns the names keeps it current (the hub mirrors the ``rthub_courses`` bucket into
    it, ``rthub translate`` loads a file); ``version`` tells contexts to drop what they cached."""

    def __init__(self, names: dict[str, str] | None = None):
        self._names: dict[str, str] = dict(names or {})
        self.version = 0
        self.unknown = 0

    def get(self, course_key: str) -> str | None:
        return self._names.get(course_key) or self._names.get("*")

    def set(self, course_key: str, name: str) -> None:
        if self._names.get(course_key) != name:
            self._names[course_key] = name
            self.version += 1

    def delete(self, course_key: str) -> None:
        if self._names.pop(course_key, None) is not None:
            self.version += 1

    def __len__(self) -> int:
        return len(self._names)


# ------------------------------------------------------------------------------------------------ context
class TranslateContext:
    """Everything a translation needs besides the event: one per site (each site has its LMS root URL)."""

    __slots__ = ("lms_url", "ids", "courses", "version", "_users", "_courses", "_courses_version")

    def __init__(self, lms_url: str, ids: ExternalIds, courses: CourseNames | Mapping[str, str] | None = None,
                 version: str = TRANSFORMER_VERSION):
        """``courses``: a :class:`CourseNames` kept current by its owner, or a fixed mapping of names."""
        self.lms_url = lms_url.rstrip("/")
        self.ids = ids
        self.courses = courses if isinstance(courses, CourseNames) else CourseNames(dict(courses or {}))
        self.version = version
        self._users: dict[tuple[str, str], Any] = {}
        self._courses: dict[str, tuple[str, str | None]] = {}
        self._courses_version = -1

    def user_part(self, protocol: str, user: tuple[str, str | None], build) -> Any:
        """Per-user precomputed part for ``protocol`` (``build(external_id, lms_url)`` makes it once)."""
        key = (protocol, user[0])
        part = self._users.get(key)
        if part is None:
            part = build(self.ids.get(protocol, user[0], user[1]), self.lms_url)
            if len(self._users) > _CACHE_LIMIT:
                self._users.clear()
            self._users[key] = part
        return part

    def course(self, course_key: str) -> tuple[str, str | None]:
        """``(course IRI, display name or None)``; an unknown course is counted in ``courses.unknown``."""
        if self._courses_version != self.courses.version:
            self._courses.clear()
            self._courses_version = self.courses.version
        found = self._courses.get(course_key)
        if found is None:
            found = (f"{self.lms_url}/course/{course_key}", self.courses.get(course_key))
            if len(self._courses) > 100_000:
                self._courses.clear()
            self._courses[course_key] = found
        if found[1] is None:
            self.courses.unknown += 1
        return found


# ------------------------------------------------------------------------------------------ event access
_ABSOLUTE_IRI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s]+\Z")


class EventParts:
    """The parts of one normalized event a builder reads (no copies of the event); each protocol extends it."""

    __slots__ = ("name", "event", "context", "raw_data", "data", "course", "ctx")

    def __init__(self, event: dict, ctx: TranslateContext):
        self.name = event["name"]
        self.event = event
        self.context = as_dict(event.get("context"))
        self.raw_data = event.get("data")
        self.data = as_dict(self.raw_data)
        self.course = course_of(self.context, self.data)
        self.ctx = ctx

    def need(self, key: str) -> str:
        value = text(self.data.get(key))
        if value is None:
            raise Rejected(f"no object id (data.{key} missing)")
        return value

    def need_iri(self, key: str) -> str:
        """``data[key]`` as an object id that must already be an absolute IRI (a URL the event carries)."""
        value = self.need(key)
        if not _ABSOLUTE_IRI.match(value):
            raise Rejected(f"data.{key} is not an absolute IRI")
        return value

    def xblock(self, usage_key: str) -> str:
        return f"{self.ctx.lms_url}/xblock/{usage_key}"


def as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def text(value: Any) -> str | None:
    """A non-empty string (numbers become strings), else None."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def user_of(event: dict, context: dict, data: dict) -> tuple[str, str | None]:
    """``(user key, username)``: context.user_id, else data.user_id, else the username; else ``no user``."""
    username = text(context.get("username")) or text(data.get("username")) or text(event.get("username"))
    key = text(context.get("user_id")) or text(data.get("user_id")) or username
    if key is None:
        raise Rejected("no user")
    return key, username


def session_of(event: dict, context: dict) -> str | None:
    return text(context.get("session")) or text(event.get("session"))


def course_of(context: dict, data: dict) -> str | None:
    return text(context.get("course_id")) or text(data.get("course_id"))


def parse_time(timestamp: str) -> datetime:
    try:
        moment = datetime.fromisoformat(timestamp)
    except (ValueError, TypeError):
        raise Rejected(f"bad timestamp {str(timestamp)[:40]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def xapi_timestamp(timestamp: str) -> str:
    """ISO 8601 with an explicit offset (``Z`` becomes ``+00:00``, a naive time is taken as UTC)."""
    if len(timestamp) == 32 and timestamp.endswith("+00:00") and timestamp[10] == "T" and timestamp[19] == ".":
        return timestamp
    return parse_time(timestamp).isoformat()


def uuid5(namespace: bytes, name: str) -> str:
    """``str(uuid.uuid5(UUID(bytes=namespace), name))`` without the UUID object (hot path)."""
    digest = bytearray(hashlib.sha1(namespace + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def caliper_time(timestamp: str) -> str:
    """Caliper's ``eventTime``: UTC, milliseconds, ``Z``."""
    if len(timestamp) >= 24 and timestamp[10] == "T" and timestamp[19] == "." and timestamp[20:23].isdigit() \
            and timestamp.endswith(("+00:00", "Z")) and timestamp[:4].isdigit():
        return timestamp[:23] + "Z"
    moment = parse_time(timestamp).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def number(value: Any, what: str) -> float | int | None:
    """A JSON number (or numeric string) as a number; None stays None; anything else is rejected."""
    if value is None or value == "":
        return None
    kind = type(value)
    if kind is int:  # the common cases first: no isinstance chain (hot path)
        return value
    if kind is float:
        if not isfinite(value):
            raise Rejected(f"{what} is not a finite number")
        return value
    if isinstance(value, bool):
        raise Rejected(f"{what} is not a number")
    if isinstance(value, int | float):
        if not isfinite(value):
            raise Rejected(f"{what} is not a finite number")
        return value
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            raise Rejected(f"{what} is not a number") from None
        if not isfinite(parsed):
            raise Rejected(f"{what} is not a finite number")
        return parsed
    raise Rejected(f"{what} is not a number")


def iso_duration(seconds: float | int | None) -> str:
    """Seconds as an ISO 8601 duration the way isodate writes a timedelta (``PT3M14.407359S``, ``P0D``)."""
    if seconds is None:
        seconds = 0
    if seconds == int(seconds) and 0 <= seconds < 86400:
        whole = int(seconds)
        if not whole:
            return "P0D"
        hours, rest = divmod(whole, 3600)
        minutes, secs = divmod(rest, 60)
        return "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "") + (f"{secs}S" if secs else "")
    if abs(seconds) > 1e11:
        raise Rejected("duration out of range")
    delta = timedelta(seconds=seconds)
    sign = ""
    if delta < timedelta(0):
        sign, delta = "-", -delta
    out = []
    if delta.days:
        out.append(f"{delta.days}D")
    if delta.seconds or delta.microseconds:
        out.append("T")
        hours, rest = divmod(delta.seconds, 3600)
        minutes, secs = divmod(rest, 60)
        if hours:
            out.append(f"{hours}H")
        if minutes:
            out.append(f"{minutes}M")
        if delta.microseconds:
            out.append(f"{secs}.{delta.microseconds:06d}".rstrip("0") + "S")
        elif secs:
            out.append(f"{secs}S")
    return sign + "P" + ("".join(out) or "0D")


def xapi_duration(seconds: float | int) -> str:
    """The reference's xAPI ``result.duration`` shape: two-digit minutes and seconds (``PT03M15S``)."""
    whole = int(round(seconds))
    minutes, secs = divmod(abs(whole), 60)
    return f"PT{minutes:02d}M{secs:02d}S"


def block_prefix(course_key: str) -> str:
    """The usage-key prefix of a course's blocks, as the reference builds it: ``course-v1:X`` -> ``block-v1:X``,
    ``ccx-v1:X+ccx@N`` -> ``ccx-block-v1:X+ccx@N`` (the CCX part stays); old ``Org/Course/Run`` keys ->
    ``block-v1:Org+Course+Run`` (the reference fails on those). Cached: the same courses come again and again."""
    found = _prefixes.get(course_key)
    if found is None:
        if ":" in course_key:
            kind, body = course_key.split(":", 2)[:2]
            version = "block-" + kind.rsplit("-", 1)[-1]
            found = f"{'ccx-' if 'ccx' in kind else ''}{version}:{body}"
        else:
            found = "block-v1:" + "+".join(course_key.split("/")[:3])
        if len(_prefixes) >= 100_000:
            _prefixes.clear()
        _prefixes[course_key] = found
    return found


_prefixes: dict[str, str] = {}


def block_id(block: str, course_key: str | None, block_type: str) -> str:
    """A usage key: a full key stays as is; a bare block id is made a usage key of the course."""
    if "+type@" in block or block.startswith(("block-v1:", "i4x://", "ccx-block-v1:")):
        return block
    if not course_key:
        raise Rejected("no course for block id")
    return f"{block_prefix(course_key)}+type@{block_type}+block@{block}"


_INPUT_RE = re.compile(r"input_([0-9A-Za-z]+)_")


def browser_problem_id(context: dict, data: Any, course_key: str | None) -> str:
    """Browser ``problem_check`` carries no problem id: the referer's ``activate_block_id``, else the input names."""
    referer = text(context.get("referer"))
    if referer:
        found = parse_qs(urlsplit(referer).query).get("activate_block_id")
        if found and found[0]:
            return found[0]
    if isinstance(data, str) and course_key:
        match = _INPUT_RE.search(data)
        if match:
            return f"{block_prefix(course_key)}+type@problem+block@{match.group(1)}"
    raise Rejected("no object id (browser problem_check without referer block or input names)")
