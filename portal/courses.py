"""The courses the hub knows, for the request form: names from the ``rthub_courses`` bucket and, per site, the
courses seen on the raw stream (``lms.<site>.<org>.<course>.<event>``). Cached for a minute."""

from __future__ import annotations

import time

from hub.core.subjects import COURSES_BUCKET, RAW_STREAM, parse_subject
from hub.translate.base import course_from_kv_key

TTL = 60.0
MAX_SUBJECTS = 20_000
_cache: dict[str, tuple[float, dict[str, list[str]]]] = {}


async def known_courses(portal) -> dict[str, list[str]]:
    """``{site: [course keys]}`` seen on the raw stream, plus ``"*"``: courses named in ``rthub_courses``."""
    hit = _cache.get(portal.settings.nats_url)
    if hit and time.monotonic() - hit[0] < TTL:
        return hit[1]
    out: dict[str, set[str]] = {"*": set()}
    try:
        js = await portal.js()
    except Exception:  # noqa: BLE001 - no NATS: the form works without suggestions
        return {"*": []}
    try:
        info = await js.stream_info(RAW_STREAM, subjects_filter="lms.>")
        for subj in list(info.state.subjects or {})[:MAX_SUBJECTS]:
            try:
                _, site, _, course, _ = parse_subject(subj)
            except ValueError:
                continue
            if course:
                out.setdefault(site, set()).add(course)
    except Exception:  # noqa: BLE001 - no raw stream on this hub
        pass
    try:
        kv = await js.key_value(COURSES_BUCKET)
        for key in await kv.keys():
            try:
                out["*"].add(course_from_kv_key(key))
            except (ValueError, UnicodeDecodeError):
                continue
    except Exception:  # noqa: BLE001 - empty or missing bucket (nats-py raises NoKeysError)
        pass
    result = {site: sorted(courses) for site, courses in out.items()}
    _cache[portal.settings.nats_url] = (time.monotonic(), result)
    return result


def for_sites(known: dict[str, list[str]], sites: list[str]) -> list[str]:
    """Suggestions for the chosen sites (every known site when none is chosen)."""
    chosen = sites or [s for s in known if s != "*"]
    return sorted({c for s in chosen for c in known.get(s, [])} | set(known.get("*", [])))


def unknown_courses(known: dict[str, list[str]], sites: list[str], courses: list[str]) -> list[str]:
    """Requested course keys the hub has never seen on those sites (nothing is flagged while it knows none)."""
    offered = set(for_sites(known, sites))
    return [c for c in courses if offered and c not in offered]


def forget() -> None:
    _cache.clear()
