"""Subject scheme: ``<prefix>.<site>.<org>.<course>.<event>``, one place for every subject the hub uses.

Org, course keys and event names contain ``.``, ``:``, ``+``, ``/`` and more. A subject token keeps
``A-Z a-z 0-9 - _ + : @ = ,`` as they are (so course keys stay readable) and writes every other UTF-8 byte
as ``~XX`` (upper-case hex). ``~`` alone is the empty string and ``~none`` the placeholder for "no course" or
"no org": neither is ever produced by encoding a string, so decoding stays exact.
"""

from __future__ import annotations

import re

from hub.core.protocols import NAMES as PROTOCOLS  # noqa: F401  (re-exported)
from hub.core.protocols import PROTOCOLS as _PROTOCOLS

RAW_PREFIX = "lms"
QUARANTINE_PREFIX = "quarantine"

# Every stream and bucket of the system, named once here (created by hub.core.streams, hub.deliver.state.setup
# and hub.ops.streams; granted by hub.auth.permissions).
RAW_STREAM = "LMS_RAW"
QUARANTINE_STREAM = "QUARANTINE"
DEAD_LETTER_STREAM = "DEAD_LETTER"
PROTOCOL_STREAMS = {p.name: p.stream for p in _PROTOCOLS.values()}
GRANTS_BUCKET = "rthub_grants"
TARGETS_BUCKET = "rthub_targets"
COURSES_BUCKET = "rthub_courses"
GROUPS_BUCKET = "rthub_groups"  # learner groups (hub.core.groups)
LEARNERS_BUCKET = "rthub_learners"
BUCKETS = (GRANTS_BUCKET, TARGETS_BUCKET, COURSES_BUCKET, GROUPS_BUCKET, LEARNERS_BUCKET)
# The deliverer's: attempt log, dead letters sent back, course partitions of the protocol streams, its KV state.
DELIVERY_LOG_STREAM = "DELIVERY_LOG"
REDRIVE_STREAM = "REDRIVE"
PARTS_STREAM = "DELIVERY_PARTS"
DELIVERY_STATE_BUCKET = "rthub_delivery"
# Open edX Events (the event bus, lms_publisher.event_bus; hub.core.openedx): one stream, a subject per topic.
OPENEDX_STREAM = "OPENEDX_EVENTS"
OPENEDX_PREFIX = "openedx"  # ``openedx.<full topic>``
OPENEDX_DLQ_STREAM = "OPENEDX_DEAD_LETTERS"
OPENEDX_DLQ_PREFIX = "openedx_dlq"  # ``openedx_dlq.<group>.<full topic>``
# The event bus's own account (LMS-BUS) reaches the data account's JetStream API under this prefix (its imports
# rename ``$JS.API.<...>`` to ``JS.rthub.API.<...>``): ``$JS.API`` in an account without JetStream is the server's.
BUS_API_PREFIX = "JS.rthub.API"
# A direct subscriber's account reaches its own consumer's INFO and MSG.NEXT under this prefix (nats.js
# ``jetstream({apiPrefix})``, nats-py ``jetstream(prefix=)``), so ``js.consumers.get()`` / ``consume()`` work.
TENANT_API_PREFIX = "JS.rthub.API"


def attempts_subject(grant_id: str) -> str:
    """One integration's records in the attempt log."""
    return f"attempts.{grant_id}"


def redrive_subject(grant_id: str) -> str:
    """One integration's dead letters sent back for another try."""
    return f"redrive.{grant_id}"


def dlq_subject(grant_id: str) -> str:
    """One integration's dead letters."""
    return f"dlq.{grant_id}"

NONE_TOKEN = "~none"
EMPTY_TOKEN = "~"

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+:@=,")
_VALID = re.compile(r"(?:[A-Za-z0-9\-_+:@=,]|~[0-9A-F]{2})+")
_cache: dict[str, str] = {}


def encode_token(value: str | None) -> str:
    """One subject token for ``value``; ``None`` becomes the placeholder ``~none``."""
    if value is None:
        return NONE_TOKEN
    token = _cache.get(value)
    if token is not None:
        return token
    if value == "":
        token = EMPTY_TOKEN
    else:
        token = "".join(chr(b) if b in _SAFE else f"~{b:02X}" for b in value.encode("utf-8", "surrogatepass"))
    if len(_cache) < 100_000:
        _cache[value] = token
    return token


def decode_token(token: str) -> str | None:
    """Inverse of :func:`encode_token`; raises ``ValueError`` for a token it never produces."""
    if token == NONE_TOKEN:
        return None
    if token == EMPTY_TOKEN:
        return ""
    if not _VALID.fullmatch(token):
        raise ValueError(f"not an encoded subject token: {token!r}")
    if "~" not in token:
        return token
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "~":
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(token[i]))
            i += 1
    return out.decode("utf-8", "surrogatepass")


def subject(prefix: str, site: str, org: str | None, course: str | None, event: str) -> str:
    """The subject of one event under ``prefix`` (``lms``, ``xapi``, ``caliper`` or ``quarantine``)."""
    return ".".join((prefix, encode_token(site), encode_token(org), encode_token(course), encode_token(event)))


def parse_subject(subj: str) -> tuple[str, str, str | None, str | None, str]:
    """``(prefix, site, org, course, event)`` of a subject built by :func:`subject`."""
    parts = subj.split(".")
    if len(parts) != 5:
        raise ValueError(f"subject {subj!r} does not have 5 tokens")
    prefix, site, org, course, event = parts
    site_v, event_v = decode_token(site), decode_token(event)
    if site_v is None or event_v is None:
        raise ValueError(f"subject {subj!r} has no site or event")
    return prefix, site_v, decode_token(org), decode_token(course), event_v


def filter_subject(prefix: str, site: str | None = None, org: str | None = None, course: str | None = None,
                   event: str | None = None) -> str:
    """A subscription filter; a dimension left as ``None`` matches anything (``*``)."""
    return ".".join(
        (prefix, *("*" if v is None else encode_token(v) for v in (site, org, course, event)))
    )


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match: ``*`` one token, ``>`` one or more trailing tokens."""
    return tokens_match(pattern.split("."), subject.split("."))


def tokens_match(pattern: tuple[str, ...] | list[str], tokens: tuple[str, ...] | list[str]) -> bool:
    """:func:`subject_matches` over subjects already split into tokens (a hot path splits once)."""
    for i, p in enumerate(pattern):
        if p == ">":
            return len(tokens) > i
        if i >= len(tokens) or (p != "*" and p != tokens[i]):
            return False
    return len(pattern) == len(tokens)
