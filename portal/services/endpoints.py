"""What a consumer changes about their own endpoint without asking anyone: re-enable it after the deliverer
disabled it, edit its URL and credentials (checked with the deliverer's SSRF rules), narrow its scope at once or
ask for a wider one (an administrator approves), and the signing-secret overlap after a rotation."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import logging
from typing import Any

import msgspec

from hub.core.delivery_kinds import KINDS, is_push
from hub.core.subjects import DELIVERY_STATE_BUCKET
from hub.deliver.transport import ssrf
from portal.services import Portal, PortalError, granted_scope, now
from portal.services.integrations import _scope_text
from portal.services.provisioning import header_names, payload_filter_of, scope_json
from portal.tables import Account, Integration
from portal.validation import (
    Scope,
    check_batch,
    check_custom_headers,
    check_narrowing,
    check_payload_filter,
    check_rate_limit,
    check_scope,
    check_url,
    clean_text,
)

log = logging.getLogger("rthub.portal.endpoints")


class EndpointEdit(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A change of a push endpoint: omitted fields stay as they are; ``auth`` ``none`` removes credentials."""

    url: str | None = None
    basic_auth: str | None = None
    bearer: str | None = None
    remove_credentials: bool = False
    batch_size: int | str | None = None
    batch_wait_ms: int | str | None = None
    rate_limit: float | str | None = None
    custom_headers: dict[str, str] | list[dict[str, str]] | str | None = None  # replaces the list; {} clears
    payload_filter: list[str] | str | None = None  # replaces the list; [] keeps every part


class ScopeChange(msgspec.Struct, kw_only=True):
    sites: list[str] | None = None
    orgs: list[str] | None = None
    courses: list[str] | None = None
    event_types: list[str] | None = None


# Names that are loopback or cloud metadata by definition (RFC 6761 ``localhost``; GCP's metadata name).
_INWARD_NAMES = ("localhost", "metadata.google.internal", "metadata")


async def reachable(url: str, settings) -> str | None:
    """Refusal text when the URL names a host the deliverer will never send to, with its rules and allowed
    networks; ``None`` when acceptable.

    Addresses written literally (the legacy IPv4 forms ``0x7f000001``, ``127.1``, ``2130706433`` that resolvers
    accept are refused by :func:`hub.deliver.transport.ssrf.check_url` itself) and names that are inward by definition are checked here. Other names are not resolved at
    submit time: answering "that name is internal" would make the form an oracle for the hub's private DNS; the
    deliverer resolves and checks every connection anyway, and the endpoint state shows its refusal.
    """
    allowed = ssrf.networks(settings.allowed_networks)
    try:
        _, host, _ = ssrf.check_url(url, settings.https_only)
    except ssrf.Refused as exc:
        return str(exc)
    name = host.lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:  # a name (legacy IPv4 forms were refused by ssrf.check_url above)
        ip = None
    if ip is None:
        if name in _INWARD_NAMES or name.endswith(".localhost"):
            ip = ipaddress.ip_address("127.0.0.1" if "localhost" in name else "169.254.169.254")
        else:
            return None
    try:
        ssrf.check_address(ip, allowed)
    except ssrf.Refused as exc:
        return f"The deliverer will not send there: {exc}."
    return None


async def check_endpoint_url(value: Any, settings, errors: dict[str, str], field: str = "url") -> str | None:
    url = check_url(value, errors, field, allowed=settings.allowed())
    if url and (refusal := await reachable(url, settings)):
        errors[field] = refusal
        return None
    return url


async def update(row: Integration, **changes: Any) -> None:
    """Write these columns of ``row`` (never its status: status changes go through the service's transitions)."""
    assert "status" not in changes
    for name, value in changes.items():
        setattr(row, name, value)
    row.updated = now()
    columns = {getattr(Integration, name): value for name, value in changes.items()}
    columns[Integration.updated] = row.updated
    await Integration.update(columns).where(Integration.id == row.id)


async def _clear_streak(portal: Portal, key: str) -> None:
    with contextlib.suppress(Exception):
        kv = await (await portal.js()).key_value(DELIVERY_STATE_BUCKET)
        await kv.delete(f"failing.{key}")


def _push(row: Integration, what: str) -> None:
    if not is_push(row.delivery):
        raise PortalError(f"A direct subscription has no endpoint to {what}.", 409)
    if row.status != "approved":
        raise PortalError(f"Only an approved integration's endpoint can be changed (this one is {row.status}).", 409)


async def reenable(portal: Portal, actor: Account, row: Integration) -> None:
    """Switch a target the deliverer disabled (410, failing too long) back on; its backlog is delivered."""
    _push(row, "re-enable")
    target = await portal.get_target(row.key)
    if target is None:
        raise PortalError("The hub has no delivery target for this integration; ask an administrator.", 409)
    if row.paused_at is not None:
        raise PortalError("This endpoint is paused by you: resume it instead.", 409)
    if target.enabled:
        raise PortalError("This endpoint is not disabled.", 409)
    await _clear_streak(portal, row.key)  # else the old streak would disable it again at the first failure
    await portal.put_target(portal.target_for(row, target.secrets, enabled=True))
    await portal.audit(actor.email, "endpoint.reenable", row.key, f"was disabled: {target.disabled_reason or '?'}")


async def pause(portal: Portal, actor: Account, row: Integration) -> dt.datetime:
    """The owner stops delivery for a while: the target is switched off (``PAUSED_REASON``), the durable
    consumer keeps every event (within the stream's retention, see :func:`kept_until`) until :func:`resume`."""
    _push(row, "pause")
    if row.paused_at is not None:
        raise PortalError("This endpoint is already paused.", 409)
    target = await portal.get_target(row.key)
    await update(row, paused_at=now())
    await portal.put_target(portal.target_for(row, target.secrets if target else []))
    await portal.audit(actor.email, "endpoint.pause", row.key, "paused by its owner; events are kept")
    return row.paused_at


async def resume(portal: Portal, actor: Account, row: Integration) -> None:
    """Delivery again, starting with every event kept while paused, in order per course."""
    _push(row, "resume")
    if row.paused_at is None:
        raise PortalError("This endpoint is not paused.", 409)
    target = await portal.get_target(row.key)
    since = row.paused_at
    await update(row, paused_at=None)
    await portal.put_target(portal.target_for(row, target.secrets if target else []))
    await portal.audit(actor.email, "endpoint.resume", row.key, f"paused since {since.isoformat()}")


async def kept_until(portal: Portal, row: Integration) -> dt.datetime | None:
    """While paused: when the oldest kept event starts to expire (pause time + the protocol stream's
    ``max_age``); ``None`` when not paused or the stream keeps events without an age limit."""
    if row.paused_at is None:
        return None
    from hub.core.subjects import PROTOCOL_STREAMS

    try:
        info = await (await portal.js()).stream_info(PROTOCOL_STREAMS[row.protocol])
    except Exception:  # noqa: BLE001 - NATS down: the page says nothing about it
        return None
    age = info.config.max_age or 0
    return row.paused_at + dt.timedelta(seconds=age) if age else None


async def edit(portal: Portal, actor: Account, row: Integration, change: EndpointEdit) -> list[str]:
    """Apply a new URL and/or credentials at once (same scope: no re-approval); returns what changed."""
    _push(row, "edit")
    errors: dict[str, str] = {}
    changes: dict[str, Any] = {}
    if change.url is not None and change.url.strip() != (row.url or ""):
        url = await check_endpoint_url(change.url, portal.settings, errors)
        if url:
            changes["url"] = url
    basic = clean_text(change.basic_auth, "basic_auth", 500, errors) if change.basic_auth else ""
    bearer = clean_text(change.bearer, "bearer", 2000, errors) if change.bearer else ""
    if basic and bearer:
        errors["basic_auth"] = "Give either basic credentials or a bearer token, not both."
    elif basic:
        if KINDS[row.delivery].credential != "basic_auth":
            errors["basic_auth"] = "Only an xAPI LRS endpoint takes basic credentials."
        elif ":" not in basic or basic.startswith(":"):
            errors["basic_auth"] = "Basic credentials look like USER:PASSWORD."
        else:
            changes.update(auth_kind="basic", auth_value=basic)
    elif bearer:
        if KINDS[row.delivery].signed:
            errors["bearer"] = "A webhook is authenticated by its signature, not a bearer token."
        else:
            changes.update(auth_kind="bearer", auth_value=bearer)
    elif change.remove_credentials:
        if KINDS[row.delivery].credential:
            errors[KINDS[row.delivery].credential] = "This endpoint needs credentials."
        else:
            changes.update(auth_kind="none", auth_value=None)
    size, wait = check_batch({"batch_size": change.batch_size, "batch_wait_ms": change.batch_wait_ms}, errors,
                             (row.batch_size or 1, row.batch_wait_ms or 200))
    if (size, wait) != (row.batch_size or 1, row.batch_wait_ms or 200):
        changes.update(batch_size=size, batch_wait_ms=wait)
    rate = check_rate_limit(change.rate_limit, errors, portal.settings.max_rate_limit, row.rate_limit or 0.0)
    if rate != (row.rate_limit or 0.0):
        changes["rate_limit"] = rate
    headers = check_custom_headers(change.custom_headers, errors)
    if headers is not None and headers != header_names(row, portal.box):
        changes["custom_headers"] = portal.box.seal(json.dumps(headers)) if headers else ""
    parts = check_payload_filter(change.payload_filter, row.protocol, errors)
    if parts is not None and parts != payload_filter_of(row):
        changes["payload_filter"] = json.dumps(parts)
    if errors:
        raise PortalError("Check the endpoint fields.", 400, errors)
    if changes.get("auth_value") and getattr(portal, "box", None) is not None:  # stored sealed, like the rest
        changes["auth_value"] = portal.box.seal(changes["auth_value"])
    if not changes:
        raise PortalError("Nothing to change: the endpoint is already like that.", 409)
    target = await portal.get_target(row.key)
    await update(row, **changes)
    fresh = portal.target_for(row, target.secrets if target else [])
    if target and not target.enabled and row.paused_at is None:  # stays disabled, with the deliverer's reason, until re-enabled
        fresh = msgspec.structs.replace(fresh, enabled=False, disabled_reason=target.disabled_reason,
                                        disabled_at=target.disabled_at)
    await portal.put_target(fresh)
    changed = sorted({"credentials" if k.startswith("auth") else "batching" if k.startswith("batch") else k
                      for k in changes})  # rate_limit, custom_headers, payload_filter by name
    await portal.audit(actor.email, "endpoint.edit", row.key, "changed " + ", ".join(changed))
    return changed


async def change_scope(portal: Portal, actor: Account, row: Integration, raw: dict[str, Any]) -> str:
    """A narrower scope applies at once; anything else becomes a request an administrator approves (the
    current grant keeps working meanwhile). Returns ``"applied"`` or ``"requested"``."""
    if row.status != "approved":
        raise PortalError(f"Only an approved integration's scope can be changed (this one is {row.status}).", 409)
    errors: dict[str, str] = {}
    wanted = check_scope(raw, set(portal.settings.sites), errors)
    if errors:
        raise PortalError("Check the scope.", 400, errors)
    current = granted_scope(row)
    # a form without the learner group / identity fields keeps them as granted
    if "learner_groups" not in raw:
        wanted.learner_groups = list(current.learner_groups)
    if "identity" not in raw:
        wanted.identity = list(current.identity)
    if wanted == current:
        raise PortalError("That is the scope you already have.", 409)
    await portal.refuse_size(actor, row, wanted)
    if not check_narrowing(current, wanted):
        row.granted = scope_json(wanted)
        # A wider request still waiting for an administrator stays as it is (it was silently dropped before).
        await update(row, granted=row.granted, **({} if row.scope_change else {"requested": row.granted}))
        if not is_push(row.delivery):  # issued .creds carry the old subjects: cut them off first
            await _revoke_credentials(portal, row, actor)
        await portal.activate(row, new_secret=False)  # then the narrower grant (and consumer filter)
        await portal.audit(actor.email, "scope.narrow", row.key, _scope_text(wanted))
        return "applied"
    await update(row, requested=scope_json(wanted), scope_change=True)
    await portal.audit(actor.email, "scope.request", row.key, _scope_text(wanted))
    return "requested"


async def _revoke_credentials(portal: Portal, row: Integration, actor: Account) -> None:
    """Every issued ``.creds`` of ``row`` revoked; the subscription itself stays open (``activate`` then
    writes the narrower grant): ``final=False`` keeps its NATS account re-openable."""
    await portal.cut_off(row, actor, final=False)


async def approve_scope_change(portal: Portal, actor: Account, row: Integration, narrowed: Scope | None) -> None:
    """The administrator grants a requested scope change (possibly narrowed, never wider than asked)."""
    from portal.services import requested_scope

    if row.status != "approved" or not row.scope_change:
        raise PortalError("There is no scope change waiting for approval.", 409)
    if narrowed is not None:
        granted = narrowed
    else:  # identity fields beyond those already granted need the administrator to name them
        kept = [f for f in requested_scope(row).identity if f in granted_scope(row).identity]
        granted = msgspec.structs.replace(requested_scope(row), identity=kept)
    errors = check_narrowing(requested_scope(row), granted)
    if errors:
        raise PortalError("The approved scope is not a narrowing of the request.", 400, errors)
    await portal.refuse_size(actor, row, granted)
    before = granted_scope(row).identity
    row.granted = scope_json(granted)
    await portal.activate(row, new_secret=False)
    await update(row, granted=row.granted, scope_change=False, decided_by=actor.email)
    await portal.audit(actor.email, "scope.approve", row.key, _scope_text(granted))
    if sorted(granted.identity) != sorted(before):
        await portal.audit(actor.email, "identity.approve", row.key,
                           f"identity fields approved: {', '.join(granted.identity) or 'none'}")


async def deny_scope_change(portal: Portal, actor: Account, row: Integration, reason: str) -> None:
    if row.status != "approved" or not row.scope_change:
        raise PortalError("There is no scope change waiting for approval.", 409)
    if not reason.strip():
        raise PortalError("Give the requester a reason.", 400, {"reason": "A reason is required."})
    current = granted_scope(row)
    await update(row, requested=scope_json(current), scope_change=False, decision_reason=reason, decided_by=actor.email)
    await portal.audit(actor.email, "scope.deny", row.key, reason)


# ---- signing-secret overlap ---------------------------------------------------------------------------
async def start_overlap(portal: Portal, row: Integration) -> dt.datetime:
    """After a rotation: the previous secret is accepted until now + ``secret_overlap_hours``."""
    until = now() + dt.timedelta(hours=portal.settings.secret_overlap_hours)
    await update(row, old_secret_until=until)
    return until


async def retire_expired(portal: Portal) -> int:
    """Retire every previous secret whose overlap has ended; returns how many (run every minute)."""
    count = 0
    rows = await Integration.objects().where((Integration.old_secret_until.is_not_null())
                                             & (Integration.old_secret_until < now()))
    for row in rows:
        try:
            target = await portal.get_target(row.key)
            if row.status == "approved" and target and len(target.secrets) > 1:
                await portal.put_target(msgspec.structs.replace(target, secrets=target.secrets[:1]))
                await portal.audit("system", "secret.retire", row.key, "overlap period over")
                count += 1
            await update(row, old_secret_until=None)
        except PortalError as exc:  # NATS down: try again next round
            log.warning("could not retire the old secret of %s: %s", row.key, exc.message)
    return count
