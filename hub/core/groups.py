"""Learner groups: named sets of LMS users of one site (an enterprise, a cohort, a partner's students).

Two KV buckets, both mirrored in memory by the hub and the deliverer (:class:`hub.core.kv.KVMirror`), so a
membership lookup per event is a dict lookup, never a network call:

- ``rthub_groups``: key = group name, value = :class:`Group` (its site). The definition only.
- ``rthub_learners``: key = ``<site>.<user id>`` (subject tokens), value = :class:`Learner`: the groups the
  learner belongs to and the identity fields the LMS told us (username, e-mail). One entry per learner keeps
  membership and identity together, so retiring a learner is one purge of one key (history kept: 1).

Group names are ``[A-Za-z0-9_-]{1,64}``: a group name is a subject token as it is (the hub publishes
``<protocol>.<site>.<org>.<course>.<event>.<group>`` for groups some grant uses).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable

import msgspec

from hub.core.subjects import GROUPS_BUCKET, LEARNERS_BUCKET, decode_token, encode_token

GROUP_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
USER_ID = re.compile(r"[0-9]{1,20}")
IDENTITY_FIELDS = ("user_id", "username", "email")  # what an administrator may approve for a grant
IDENT_PREFIX = "ident"  # ident.<grant>.<statement subject>: a direct grant's statements with identity (core NATS)
# Raw events the LMS publishes about membership (lms_publisher.groups), for its own site; the hub applies them.
CONTROL_PREFIX = "rthub."
MEMBER_ADDED, MEMBER_REMOVED, LEARNER_RETIRED = "rthub.group.member_added", "rthub.group.member_removed", \
    "rthub.learner.retired"
MEMBERSHIP_EVENTS = frozenset({MEMBER_ADDED, MEMBER_REMOVED, LEARNER_RETIRED})


class Group(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    site: str
    description: str = ""


class Learner(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One LMS user of one site: the groups they are in, and identity fields the LMS published (or none)."""

    groups: list[str] = []
    username: str | None = None
    email: str | None = None


def check_group_name(name: str) -> str:
    if not GROUP_NAME.fullmatch(name or ""):
        raise ValueError(f"group name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ -")
    return name


def parse_users(values: Iterable[str]) -> list[str]:
    """LMS user ids from ``--users 7,8 --users 9`` (comma-separated, repeatable); refuses anything else."""
    out: list[str] = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            if not USER_ID.fullmatch(part):
                raise ValueError(f"{part!r} is not an LMS user id (digits)")
            out.append(str(int(part)))
    return list(dict.fromkeys(out))


def parse_csv(text: str) -> list[tuple[str, str | None, str | None]]:
    """``(user id, username, email)`` rows of a CSV export (header ``user_id``, optional ``username``,
    ``email``; a file without header: one user id per line)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    first = [c.strip().lower() for c in next(csv.reader([lines[0]]))]
    rows: list[tuple[str, str | None, str | None]] = []
    if "user_id" in first or "id" in first:
        for row in csv.DictReader(io.StringIO("\n".join(lines))):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
            uid = row.get("user_id") or row.get("id") or ""
            rows.append(
                (parse_users([uid])[0] if uid else "", row.get("username") or None, row.get("email") or None)
            )
    else:
        for row in csv.reader(lines):
            rows.append((parse_users([row[0]])[0], None, None))
    bad = [i for i, r in enumerate(rows) if not r[0]]
    if bad:
        raise ValueError(f"row {bad[0] + 2} has no user_id")
    return rows


def learner_key(site: str, user_id: str) -> str:
    return f"{encode_token(site)}.{encode_token(str(user_id))}"


def parse_learner_key(key: str) -> tuple[str, str]:
    site, user = key.split(".", 1)
    s, u = decode_token(site), decode_token(user)
    if s is None or u is None:
        raise ValueError(f"not a learner key: {key!r}")
    return s, u


def decode_group(data: bytes) -> Group:
    return msgspec.json.decode(data, type=Group)


def decode_learner(data: bytes) -> Learner:
    return msgspec.json.decode(data, type=Learner)


def group_subject(statement_subject: str, group: str) -> str:
    """The group-scoped copy of a statement's subject: one more token, the group name."""
    return f"{statement_subject}.{group}"


class Membership:
    """``(site, user id) -> frozenset of groups``, kept by :meth:`apply` from the learners bucket's changes.

    Pure and in memory: the hub asks it once per event of a site some group grant covers."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str], frozenset[str]] = {}
        self.learners: dict[tuple[str, str], Learner] = {}
        self.version = 0

    def apply(self, key: tuple[str, str], learner: Learner | None) -> None:
        if learner is None:
            self._groups.pop(key, None)
            self.learners.pop(key, None)
        else:
            self.learners[key] = learner
            if learner.groups:
                self._groups[key] = frozenset(learner.groups)
            else:
                self._groups.pop(key, None)
        self.version += 1

    def groups_of(self, site: str, user_id: str) -> frozenset[str]:
        return self._groups.get((site, user_id), frozenset())

    def members(self, group: str) -> list[tuple[str, str]]:
        """``(site, user id)`` of a group's members (a scan: for the CLI and portal, not per event)."""
        return sorted((k for k, g in self._groups.items() if group in g), key=lambda k: (k[0], int(k[1])))

    def sizes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for groups in self._groups.values():
            for g in groups:
                out[g] = out.get(g, 0) + 1
        return out


def identity_of(learner: Learner | None, user_id: str, fields: Iterable[str]) -> dict[str, str]:
    """The approved identity ``fields`` of a learner, from the store; nothing for a learner not in it (never
    seen, or retired)."""
    if learner is None:
        return {}
    values = {"user_id": user_id, "username": learner.username, "email": learner.email}
    return {f: values[f] for f in fields if values.get(f)}


# ------------------------------------------------------------------------------------------ the KV store
# Thin async edges over the two buckets, used by ``rthub group``, the portal and the LMS receiver's consumer.


async def put_group(js, group: Group) -> None:
    check_group_name(group.name)
    if not group.site:
        raise ValueError("a group needs a site")
    kv = await js.key_value(GROUPS_BUCKET)
    await kv.put(group.name, msgspec.json.encode(group))


async def get_group(js, name: str) -> Group | None:
    import nats.js.errors

    kv = await js.key_value(GROUPS_BUCKET)
    try:
        entry = await kv.get(check_group_name(name))
    except nats.js.errors.KeyNotFoundError:
        return None
    return decode_group(entry.value) if entry.value else None


async def list_groups(js) -> list[Group]:
    from hub.core.kv import KVMirror

    mirror = await KVMirror(js, GROUPS_BUCKET, decode_group).start()
    await mirror.stop()
    return sorted(mirror.values.values(), key=lambda g: g.name)


async def load_membership(js) -> Membership:
    """Everything the learners bucket holds, read once (the CLI's and the portal's view)."""
    import asyncio
    import time

    from hub.core.kv import KVMirror

    last = (await js.stream_info(f"KV_{LEARNERS_BUCKET}")).state.last_seq
    members = Membership()
    mirror = await KVMirror(
        js, LEARNERS_BUCKET, decode_learner, on_change=members.apply, key=parse_learner_key
    ).start()
    # nats-py may mark a watch's initial content as complete before its messages are handed over (seen under
    # load: a group read back with 0 members right after an import): wait until the newest entry has been seen.
    deadline = time.monotonic() + 5.0
    while mirror.revision < last and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await mirror.stop()
    return members


async def update_learner(js, site: str, user_id: str, change) -> Learner | None:
    """Apply ``change(Learner) -> Learner`` to one learner with compare-and-set (concurrent writers retry). A
    learner left with no group and no identity stays as an empty entry (the key only: site and LMS user id),
    so the deliverers know they are no longer a member; retirement purges even that."""
    import nats.js.errors

    kv = await js.key_value(LEARNERS_BUCKET)
    key = learner_key(site, user_id)
    for _ in range(20):
        try:
            entry = await kv.get(key)
            have, rev = (decode_learner(entry.value) if entry.value else Learner()), entry.revision
        except nats.js.errors.KeyNotFoundError:
            have, rev = Learner(), None
        new = change(msgspec.structs.replace(have, groups=list(have.groups)))
        if new == have and rev is not None:
            return have
        try:
            if not new.groups and not new.username and not new.email and rev is None:
                return None  # never stored: nothing to say
            data = msgspec.json.encode(new)
            if rev is None:
                await kv.create(key, data)
            else:
                await kv.update(key, data, last=rev)
            return new
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
            continue  # someone else wrote it meanwhile: read again
    raise RuntimeError(f"learner {key}: too many concurrent changes")


async def change_members(
    js,
    group: Group,
    add: Iterable[str] = (),
    remove: Iterable[str] = (),
    identities: dict[str, tuple[str | None, str | None]] | None = None,
) -> int:
    """Add and remove members (LMS user ids) of ``group``; ``identities`` may record username and e-mail of
    added members. Returns how many learners changed."""
    identities = identities or {}
    changed = 0

    def adder(uid: str):
        def change(learner: Learner) -> Learner:
            if group.name not in learner.groups:
                learner.groups.append(group.name)
            username, email = identities.get(uid, (None, None))
            return msgspec.structs.replace(
                learner, username=username or learner.username, email=email or learner.email
            )

        return change

    def remover(learner: Learner) -> Learner:
        learner.groups = [g for g in learner.groups if g != group.name]
        return learner

    for uid in parse_users(add):
        await update_learner(js, group.site, uid, adder(uid))
        changed += 1
    for uid in parse_users(remove):
        await update_learner(js, group.site, uid, remover)
        changed += 1
    return changed


async def retire_learner(js, site: str, user_id: str) -> bool:
    """Open edX retirement: purge the learner's entry (groups and identity, no revision kept). True if known."""
    import nats.js.errors

    kv = await js.key_value(LEARNERS_BUCKET)
    key = learner_key(site, parse_users([user_id])[0])
    try:
        await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return False
    await kv.purge(key)
    return True


async def record_identity(js, site: str, user_id: str, username: str | None, email: str | None) -> bool:
    """Update the username / e-mail of a learner the store already has (never creating one: a learner retired
    meanwhile stays gone). True when written."""
    import nats.js.errors

    kv = await js.key_value(LEARNERS_BUCKET)
    key = learner_key(site, user_id)
    for _ in range(5):
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return False
        have = decode_learner(entry.value) if entry.value else None
        if have is None:
            return False
        new = msgspec.structs.replace(have, username=username or have.username, email=email or have.email)
        if new == have:
            return False
        try:
            await kv.update(key, msgspec.json.encode(new), last=entry.revision)
            return True
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
            continue
    return False


async def apply_control(js, site: str, name: str, data: dict) -> None:
    """Apply one membership event the LMS of ``site`` published (``data``: ``group``, ``user_id``, optional
    ``username`` and ``email``). A group is created on its first member; one of another site is refused."""
    user = parse_users([str(data.get("user_id", ""))])
    if not user:
        raise ValueError("no user_id")
    if name == LEARNER_RETIRED:
        await retire_learner(js, site, user[0])
        return
    if name not in (MEMBER_ADDED, MEMBER_REMOVED):
        raise ValueError(f"unknown membership event {name!r}")
    group = await get_group(js, check_group_name(str(data.get("group", ""))))
    if group is None:
        group = Group(name=str(data["group"]), site=site)
        await put_group(js, group)
    elif group.site != site:
        raise ValueError(f"group {group.name!r} belongs to site {group.site!r}, not {site!r}")
    username = data.get("username") if isinstance(data.get("username"), str) else None
    email = data.get("email") if isinstance(data.get("email"), str) else None
    if name == MEMBER_ADDED:
        await change_members(js, group, add=user, identities={user[0]: (username, email)})
    else:
        await change_members(js, group, remove=user)


async def delete_group(js, name: str) -> int:
    """Remove a group and its memberships; returns how many members it had."""
    group = await get_group(js, name)
    if group is None:
        return 0
    members = [uid for site, uid in (await load_membership(js)).members(name) if site == group.site]
    await change_members(js, group, remove=members)
    kv = await js.key_value(GROUPS_BUCKET)
    await kv.delete(name)
    return len(members)


# ------------------------------------------------------------------------------------------ identity at the edge
IDENTITY_EXTENSION = "urn:rthub:identity"  # where approved identity fields go (xAPI context / Caliper extensions)


def actor_key(protocol: str, statement: dict) -> str | None:
    """The anonymized id of a statement's learner: xAPI ``actor.account.name``, Caliper the last segment of
    ``actor.id`` (``<lms>/user/<id>``)."""
    actor = statement.get("actor")
    if not isinstance(actor, dict):
        return None
    if protocol == "xapi":
        account = actor.get("account")
        name = account.get("name") if isinstance(account, dict) else None
        return name if isinstance(name, str) else None
    ident = actor.get("id")
    return ident.rsplit("/", 1)[-1] if isinstance(ident, str) else None


def with_identity(protocol: str, statement: dict, identity: dict[str, str]) -> dict:
    """``statement`` with the approved ``identity`` fields added (never replacing the anonymized actor): xAPI in
    ``context.extensions``, Caliper in the event's ``extensions``, under :data:`IDENTITY_EXTENSION`."""
    if not identity:
        return statement
    if protocol == "xapi":
        context = statement.setdefault("context", {})
        context.setdefault("extensions", {})[IDENTITY_EXTENSION] = identity
    else:
        statement.setdefault("extensions", {})[IDENTITY_EXTENSION] = identity
    return statement


class IdentityIndex:
    """``(protocol, anonymized id, site) -> (user id, Learner)`` for the learners the store knows, so the edge
    (deliverer, hub's identity subjects) can name a statement's learner without the streams ever doing so.

    ``anonymize(protocol, user_id)`` is the hub's own anonymization (:class:`hub.translate.ExternalIds`)."""

    def __init__(self, anonymize, protocols: Iterable[str]):
        self.anonymize, self.protocols = anonymize, tuple(protocols)
        self.learners: dict[tuple[str, str], Learner] = {}
        self._by_anon: dict[tuple[str, str], dict[str, str]] = {}

    def apply(self, key: tuple[str, str], learner: Learner | None) -> None:
        site, uid = key
        if learner is None:
            if self.learners.pop(key, None) is None:
                return
            for p in self.protocols:
                sites = self._by_anon.get((p, self.anonymize(p, uid)))
                if sites is not None:
                    sites.pop(site, None)
                    if not sites:
                        del self._by_anon[(p, self.anonymize(p, uid))]
            return
        self.learners[key] = learner
        for p in self.protocols:
            self._by_anon.setdefault((p, self.anonymize(p, uid)), {})[site] = uid

    def identity(self, protocol: str, statement: dict, site: str, fields: Iterable[str]) -> dict[str, str]:
        anon = actor_key(protocol, statement)
        uid = self._by_anon.get((protocol, anon), {}).get(site) if anon else None
        if uid is None:
            return {}
        return identity_of(self.learners.get((site, uid)), uid, fields)

    def groups_of(self, protocol: str, statement: dict, site: str) -> list[str] | None:
        """The groups of a statement's learner as the store says now; ``None`` when the store does not know the
        learner (not mapped yet, or never stored)."""
        anon = actor_key(protocol, statement)
        uid = self._by_anon.get((protocol, anon), {}).get(site) if anon else None
        learner = self.learners.get((site, uid)) if uid is not None else None
        return None if learner is None else learner.groups

    def enrich(self, protocol: str, data: bytes, site: str, fields: Iterable[str]) -> bytes:
        """The statement bytes with the approved ``fields`` of its learner; unchanged when the store does not
        know the learner (never seen, or retired)."""
        try:
            statement = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return data
        if not isinstance(statement, dict):
            return data
        found = self.identity(protocol, statement, site, fields)
        return msgspec.json.encode(with_identity(protocol, statement, found)) if found else data
