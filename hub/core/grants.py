"""Access grants: who may receive which protocol for which sites, orgs, courses and event types.

Grants live in the ``rthub_grants`` KV bucket (key = integration id, value = JSON :class:`Grant`). The portal
and ``rthub grant`` write it; the hub and the deliverers watch it, so a change takes effect within a second.
An empty dimension means "any"; a grant must name at least one site, org or course.

``learner_groups`` restricts a grant to the events of members of those groups (:mod:`hub.core.groups`): its
subjects get a sixth token, the group, which the hub publishes only for members of groups some grant uses.
``identity`` lists the identity fields an administrator approved for the grant (``user_id``, ``username``,
``email``); statements stay anonymized in the streams and these are added at the edge.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable, Iterable
from typing import Literal

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NoKeysError

from hub.core.delivery_kinds import DeliveryName, PushName, is_push
from hub.core.groups import GROUP_NAME, IDENTITY_FIELDS
from hub.core.kv import KVMirror
from hub.core.protocols import ProtocolName
from hub.core.subjects import GRANTS_BUCKET, encode_token

log = logging.getLogger("rthub.grants")

Protocol = ProtocolName
Delivery = DeliveryName
GRANT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A scope expands into the cartesian product of its dimensions (one filter subject per combination). These
# bound that product: a push consumer's filter list is one JetStream API call the server handles under its
# stream lock (125,000 filters stalled the whole server's API for minutes); a direct subscription's subjects
# become imports in its account JWT and allow entries in its users' JWTs (10x10x10 made a 1 MB JWT the server
# refused, and then could not start with it). Empty dimensions are ``*`` wildcards and count as one.
MAX_FILTERS_PUSH = 250
MAX_FILTERS_DIRECT = 50
SIZE_REFUSAL = "This scope expands to"


def filter_limit(delivery: str) -> int:
    """Largest number of filter subjects an integration of this delivery kind may expand to."""
    return MAX_FILTERS_PUSH if is_push(delivery) else MAX_FILTERS_DIRECT


def expansion(sites: Iterable[str] = (), orgs: Iterable[str] = (), courses: Iterable[str] = (),
              event_types: Iterable[str] = (), learner_groups: Iterable[str] = ()) -> tuple[list[list[str]], int]:
    """``(values per dimension, number of filter subjects)`` of a scope, computed before building anything:
    each dimension's distinct values (``["*"]`` when empty, a single wildcard), and their product."""
    dims = [sorted(set(d)) or ["*"] for d in (sites, orgs, courses, event_types)]
    groups = sorted(set(learner_groups))
    if groups:
        dims.append(groups)
    count = 1
    for d in dims:
        count *= len(d)
    return dims, count


def size_refusal(count: int, delivery: str) -> str | None:
    """The refusal for a scope of ``count`` filter subjects (``None``: within the limit); names the limit."""
    limit = filter_limit(delivery)
    if count <= limit:
        return None
    kind = "a push integration" if is_push(delivery) else "a direct subscription"
    return (f"{SIZE_REFUSAL} {count} filter subjects (sites x organisations x courses x event types x "
            f"learner groups); {kind} may have at most {limit}. Leave a dimension empty (any) or split the "
            "integration.")


class Grant(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    consumer: str
    protocol: Protocol
    sites: list[str] = []
    orgs: list[str] = []
    courses: list[str] = []
    event_types: list[str] = []
    delivery: Delivery = "direct"
    pii: bool = False
    learner_groups: list[str] = []
    identity: list[str] = []
    status: Literal["active", "suspended"] = "active"

    def validate(self) -> Grant:
        if not GRANT_ID.fullmatch(self.id):
            raise ValueError(f"grant id {self.id!r} must be 1-64 characters of A-Z a-z 0-9 _ -")
        if not (self.sites or self.orgs or self.courses):
            raise ValueError("a grant must name at least one site, org or course")
        for name in self.learner_groups:
            if not GROUP_NAME.fullmatch(name):
                raise ValueError(f"group name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ -")
        unknown = sorted(set(self.identity) - set(IDENTITY_FIELDS))
        if unknown:
            raise ValueError(f"unknown identity field(s) {', '.join(unknown)}; one of {', '.join(IDENTITY_FIELDS)}")
        refusal = size_refusal(self.filter_count(), self.delivery)
        if refusal:
            raise ValueError(f"grant {self.id}: {refusal}")
        return self

    def filter_count(self) -> int:
        """How many filter subjects :meth:`filter_subjects` would build (without building them)."""
        return expansion(self.sites, self.orgs, self.courses, self.event_types, self.learner_groups)[1]

    @property
    def active(self) -> bool:
        return self.status == "active"

    def covers(self, site: str, org: str | None, course: str | None, event: str) -> bool:
        return (
            (not self.courses or course in self.courses)
            and (not self.orgs or org in self.orgs)
            and (not self.sites or site in self.sites)
            and (not self.event_types or event in self.event_types)
        )

    def filter_subjects(self) -> list[str]:
        """Non-overlapping subjects of ``<protocol>.<site>.<org>.<course>.<event>`` this grant covers; with
        learner groups, ``<...>.<event>.<group>`` for each group (the hub's group-scoped copies)."""

        # Encoded here, not in expansion(): a value "*" must stay a literal token, never become a wildcard.
        tokens = [[encode_token(v) for v in sorted(set(d))] or ["*"]
                  for d in (self.sites, self.orgs, self.courses, self.event_types)]
        tokens += [sorted(set(self.learner_groups))] if self.learner_groups else []
        return [".".join((self.protocol, *combo)) for combo in itertools.product(*tokens)]

def consumer_name(grant_id: str) -> str:
    """The durable JetStream consumer of an integration (direct subscription or deliverer), on its protocol stream."""
    return f"rthub_{grant_id}"


def replay_name(grant_id: str) -> str:
    """The replay consumer of an integration (statements since a time, created on request next to the main one);
    a direct subscriber pulls it like its main consumer."""
    return f"{consumer_name(grant_id)}_replay"


def redrive_name(grant_id: str) -> str:
    """The deliverer's second consumer of an integration, on the REDRIVE stream (dead letters sent back)."""
    return f"{consumer_name(grant_id)}_redrive"


def part_name(grant_id: str, k: int) -> str:
    """The deliverer's consumer of partition ``k`` of an ordered integration, on the partition stream."""
    return f"{consumer_name(grant_id)}_p{k}"


def decode_grant(data: bytes) -> Grant:
    return msgspec.json.decode(data, type=Grant)

class GrantIndex:
    """Which protocols some active grant needs for an event; answers are cached per event dimensions."""

    def __init__(self, grants: Iterable[Grant] = ()):
        self.grants: dict[str, Grant] = {g.id: g for g in grants}
        self._cache: dict[tuple, tuple] = {}
        self._idents: dict[tuple, tuple[Grant, ...]] = {}
        self.any_identity = any(g.identity and g.active for g in self.grants.values())

    def put(self, grant: Grant) -> None:
        self.grants[grant.id] = grant
        self._changed()

    def remove(self, grant_id: str) -> None:
        self.grants.pop(grant_id, None)
        self._changed()

    def _changed(self) -> None:
        self._cache.clear()
        self._idents.clear()
        self.any_identity = any(g.identity and g.active for g in self.grants.values())

    def direct_identity_grants(self, site: str, org: str | None, course: str | None, event: str) -> tuple[Grant, ...]:
        """Active direct grants approved for identity fields that cover these dimensions: the hub publishes
        their learners' identity on ``ident.<grant>.<subject>`` (core NATS, never stored)."""
        key = (site, org, course, event)
        found = self._idents.get(key)
        if found is None:
            found = tuple(g for g in self.grants.values() if g.active and g.identity and not is_push(g.delivery)
                          and g.covers(site, org, course, event))
            if len(self._idents) > 200_000:
                self._idents.clear()
            self._idents[key] = found
        return found

    def protocols_for(self, site: str, org: str | None, course: str | None, event: str) -> frozenset[str]:
        """Protocols some active grant without learner groups needs for these dimensions."""
        return self.routes_for(site, org, course, event)[0]

    def routes_for(self, site: str, org: str | None, course: str | None,
                   event: str) -> tuple[frozenset[str], dict[str, frozenset[str]]]:
        """``(protocols for everyone, {protocol: learner groups})``: what active grants covering these
        dimensions need; the second part names only groups some grant uses (no fan-out to unused groups)."""
        key = (site, org, course, event)
        found = self._cache.get(key)
        if found is None:
            plain: set[str] = set()
            grouped: dict[str, set[str]] = {}
            for g in self.grants.values():
                if g.active and g.covers(site, org, course, event):
                    if g.learner_groups:
                        grouped.setdefault(g.protocol, set()).update(g.learner_groups)
                    else:
                        plain.add(g.protocol)
            found = (frozenset(plain), {p: frozenset(gs) for p, gs in grouped.items()})
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[key] = found
        return found

class GrantWatcher:
    """Keeps a :class:`GrantIndex` in step with the grants bucket (a :class:`KVMirror`); ``on_change`` hears every
    change, after the index has it."""

    def __init__(self, js: JetStreamContext, on_change: Callable[[str, Grant | None], None] | None = None):
        self.js = js
        self.index = GrantIndex()
        self.on_change = on_change
        self._mirror: KVMirror[str, Grant] | None = None

    async def start(self) -> GrantWatcher:
        self._mirror = KVMirror(self.js, GRANTS_BUCKET, decode_grant, on_change=self._changed)
        await self._mirror.start()
        return self

    def _changed(self, key: str, grant: Grant | None) -> None:
        if grant is None:
            self.index.remove(key)
        else:
            self.index.put(grant)
        log.info("grant %s %s", key, "removed" if grant is None else grant.status)
        if self.on_change:
            self.on_change(key, grant)

    async def stop(self) -> None:
        if self._mirror is not None:
            await self._mirror.stop()

async def put_grant(js: JetStreamContext, grant: Grant) -> int:
    grant.validate()
    kv = await js.key_value(GRANTS_BUCKET)
    return await kv.put(grant.id, msgspec.json.encode(grant))

async def delete_grant(js: JetStreamContext, grant_id: str) -> None:
    kv = await js.key_value(GRANTS_BUCKET)
    await kv.delete(grant_id)

async def list_grants(js: JetStreamContext) -> list[Grant]:
    kv = await js.key_value(GRANTS_BUCKET)
    try:
        keys = await kv.keys()
    except NoKeysError:  # the bucket is empty
        return []
    out = []
    for key in keys:
        entry = await kv.get(key)
        if entry.value:
            out.append(decode_grant(entry.value))
    return out



class Target(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Where a push integration delivers: ``rthub_targets`` bucket, key = grant id (secrets: deliverer only).

    ``kind``: ``webhook`` (Standard Webhooks signed POST), ``lrs`` (xAPI ``<url>/statements``) or ``caliper``
    (Caliper 1.2 envelope, bearer token). ``secrets`` are ``whsec_...`` signing secrets, newest first (two
    during rotation). ``basic_auth`` is ``user:pass``; ``bearer`` a token.

    Set by the consumer in the portal: ``rate_limit_per_s`` (POSTs per second, 0 = unlimited, within the
    administrator's maximum), ``custom_headers`` (added to every request; reserved names are refused by the
    portal and never override the hub's own), ``payload_filter`` (top-level parts of each statement or event
    dropped before signing, e.g. ``context``). A pause by the owner is ``enabled=False`` with
    :data:`PAUSED_REASON`: the durable consumer keeps the events until ``enabled`` again.
    """

    id: str
    kind: PushName
    url: str
    secrets: list[str] = []
    basic_auth: str | None = None
    bearer: str | None = None
    batch_size: int = 1
    batch_wait_ms: int = 200
    parallel: bool = False
    max_concurrency: int = 4
    rate_limit_per_s: float = 0.0
    retry_schedule: list[str] = []  # this integration's delays before each retry; empty = the deliverer's
    enabled: bool = True
    disabled_reason: str | None = None
    disabled_at: float | None = None  # when the deliverer switched it off (the portal's "disabled since")
    custom_headers: dict[str, str] = {}
    payload_filter: list[str] = []


PAUSED_REASON = "paused by its owner"
