"""Integrations: requests and decisions (the one table of allowed status changes, :data:`TRANSITIONS`); the
NATS side of each decision is :mod:`.provisioning`'s. Every decision is written to the audit log."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any, NamedTuple

import msgspec

from hub.core.delivery_kinds import DIRECT, KINDS, is_push
from hub.core.grants import PAUSED_REASON, consumer_name
from hub.core.subjects import PROTOCOL_STREAMS
from portal import security
from portal.services.base import NotFound, PortalError, now
from portal.services.provisioning import (
    SUSPENDED_REASON,
    ProvisioningService,
    grant_of,
    granted_scope,
    header_names,
    payload_filter_of,
    requested_scope,
    scope_json,
)
from portal.tables import Account, Integration, IssuedCredential
from portal.validation import IntegrationSpec, Scope, check_narrowing, check_scope_size

log = logging.getLogger("rthub.portal")


class DuplicateRequest(PortalError):
    """The same request (name, protocol, delivery, URL, scope) is already pending for this owner: a resubmitted
    form (Back + submit) or a retried API call; ``key`` is the pending one."""

    def __init__(self, key: str):
        super().__init__(f"You already asked for exactly this: request {key} is pending.", 409)
        self.key = key


class Transition(NamedTuple):
    frm: frozenset[str]  # the statuses the decision applies to
    to: str  # the status it makes
    refusal: str  # the 409 answer for any other status ({status}: the current one)


# Every status change an integration may make, by the decision that makes it; anything else is refused (409).
# "revoke" of a pending request is its owner cancelling it.
TRANSITIONS: dict[str, Transition] = {
    "approve": Transition(frozenset({"pending"}), "approved", "Only a pending request can be approved (this one is "
                          "{status})."),
    "deny": Transition(frozenset({"pending"}), "denied", "Only a pending request can be denied (this one is {status})."),
    "suspend": Transition(frozenset({"approved"}), "suspended", "Only an approved integration can be suspended (this "
                          "one is {status})."),
    "resume": Transition(frozenset({"suspended"}), "approved", "Only a suspended integration can be resumed (this one "
                         "is {status})."),
    "revoke": Transition(frozenset({"pending", "approved", "suspended"}), "revoked", "This integration is already "
                         "{status}."),
}


def check_transition(row: Integration, decision: str) -> Transition:
    """The transition ``decision`` makes from ``row``'s status, or the 409 refusal."""
    step = TRANSITIONS[decision]
    if row.status not in step.frm:
        raise PortalError(step.refusal.format(status=row.status), 409)
    return step


def public_view(row: Integration, owner_email: str | None = None, box=None, reveal: bool = False) -> dict[str, Any]:
    """An integration as shown to its owner or an admin: never the endpoint credentials or secrets. Custom
    headers (opened with ``box``) show their values only with ``reveal`` (to the owner, who chose them)."""
    headers = header_names(row, box) if box is not None else {}
    if not reveal:
        headers = dict.fromkeys(headers, "(set)")
    return {
        "id": row.key, "name": row.name, "protocol": row.protocol, "delivery": row.delivery, "url": row.url,
        "auth": row.auth_kind, "batch_size": row.batch_size or 1, "batch_wait_ms": row.batch_wait_ms or 200,
        "rate_limit": row.rate_limit or 0.0, "custom_headers": headers,
        "payload_filter": payload_filter_of(row),
        "paused_since": row.paused_at.isoformat() if row.paused_at else None,
        "status": row.status, "reason": row.reason,
        "decision_reason": row.decision_reason, "decided_by": row.decided_by,
        "requested": msgspec.to_builtins(requested_scope(row)),
        "granted": msgspec.to_builtins(granted_scope(row)) if row.status not in ("pending", "denied") else None,
        "consumer": consumer_name(row.key), "owner": owner_email,
        "created": row.created.isoformat() if row.created else None,
        "updated": row.updated.isoformat() if row.updated else None,
    }



class IntegrationService(ProvisioningService):
    async def seal_stored_secrets(self) -> int:
        """Seal credentials stored in the clear by an earlier version (run at start-up); returns how many."""
        rows = await Integration.select(Integration.id, Integration.auth_value, Integration.pending_secret).where(
            Integration.auth_value.is_not_null() | Integration.pending_secret.is_not_null())
        count = 0
        for r in rows:
            changes = {col: self.box.seal(r[col._meta.name]) for col in (Integration.auth_value, Integration.pending_secret)
                       if r[col._meta.name] and not r[col._meta.name].startswith("fernet:")}
            if changes:
                await Integration.update(changes).where(Integration.id == r["id"])
                count += 1
        for row in await Integration.objects().where(Integration.status.is_in(["approved", "suspended"])
                                                     & (Integration.delivery != DIRECT.name)):
            try:
                target = await self.get_target(row.key, sealed=True)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                # Not a target this version can read (written around the portal): skipped, never fatal at
                # start; the deliverer does not deliver it either. Approving or editing again rewrites it.
                log.error("integration %s: stored target unreadable (%s); skipped", row.key, exc)
                await self.audit("system", "target.invalid", row.key, str(exc)[:500])
                continue
            if target is not None and target != self.box.seal_target(target):
                await self.put_target(target)  # put_target seals what is still in the clear
                count += 1
        return count

    # ---- integrations -------------------------------------------------------------------------------
    async def create_integration(self, owner: Account, spec: IntegrationSpec, approved_by: Account | None = None,
                                 allow_unverified: bool = False) -> Integration:
        if not owner.email_verified and not allow_unverified:
            raise PortalError("Confirm the owner's e-mail address before requesting access "
                              "(the link is in the mail sent at sign-up).", 403)
        for same in await Integration.objects().where(
                (Integration.owner == owner.id) & (Integration.status == "pending") & (Integration.name == spec.name)
                & (Integration.protocol == spec.protocol) & (Integration.delivery == spec.delivery)):
            if same.url == spec.url and requested_scope(same) == spec.scope:  # JSON compared here (PostgreSQL's
                raise DuplicateRequest(same.key)                             # json type has no "=")
        row = Integration(
            key=security.new_integration_key(), owner=owner.id, name=spec.name, protocol=spec.protocol,
            delivery=spec.delivery, url=spec.url, auth_kind=spec.auth_kind, auth_value=self.box.seal(spec.auth_value),
            batch_size=spec.batch_size, batch_wait_ms=spec.batch_wait_ms,
            rate_limit=spec.rate_limit, payload_filter=json.dumps(spec.payload_filter),
            custom_headers=self.box.seal(json.dumps(spec.custom_headers)) if spec.custom_headers else "",
            requested=scope_json(spec.scope),
            reason=spec.reason, status="pending",
        )
        await row.save()
        await self.audit(owner.email, "integration.request", row.key,
                         f"{spec.protocol} via {spec.delivery}; {_scope_text(spec.scope)}")
        if approved_by is not None:  # an operator's own command: what it names (identity too) is approved
            await self.approve(approved_by, row.key, spec.scope)
            row = await Integration.objects().get(Integration.key == row.key)
        return row

    async def get(self, key: str, account: Account | None = None) -> Integration:
        """The integration ``key``; with ``account`` only if that account owns it (or is an administrator)."""
        row = await Integration.objects().get(Integration.key == str(key)[:64])
        if row is None or (account is not None and not account.is_admin and row.owner != account.id):
            raise NotFound()
        return row

    async def get_owned(self, key: str, account: Account) -> Integration:
        """Only the owner's own integration (administrators use the admin routes)."""
        row = await Integration.objects().get(Integration.key == str(key)[:64])
        if row is None or row.owner != account.id:
            raise NotFound()
        return row

    async def list_for(self, owner: Account) -> list[Integration]:
        return await Integration.objects().where(Integration.owner == owner.id).order_by(Integration.id, ascending=False)

    async def list_all(self, status: str | None = None) -> list[Integration]:
        query = Integration.objects().order_by(Integration.id, ascending=False)
        if status:
            query = query.where(Integration.status == status)
        return await query

    async def owner_emails(self) -> dict[int, str]:
        return {r["id"]: r["email"] for r in await Account.select(Account.id, Account.email)}

    async def _set(self, row: Integration, *, status: str | None = None, **changes: Any) -> bool:
        """Write only ``changes`` (never the whole row); with ``status`` only while the row still has it."""
        values = {getattr(Integration, k): v for k, v in changes.items()}
        values[Integration.updated] = now()
        where = Integration.id == row.id
        if status is not None:
            where = where & (Integration.status == status)
        done = await Integration.update(values).where(where).returning(Integration.id)
        if done:
            for k, v in changes.items():
                setattr(row, k, v)
        return bool(done)

    async def _transition(self, row: Integration, decision: str, **changes: Any) -> Integration:
        """Make ``decision`` (a key of :data:`TRANSITIONS`) from the status ``row`` was read with, writing only
        the changed columns, in one conditional update (``WHERE id = ? AND status = <expected>``) inside a
        transaction.

        Someone else changing the status first (a concurrent revoke, approve or cancel) makes this a 409:
        the decision that won stays, nothing is overwritten.
        """
        frm, to = row.status, check_transition(row, decision).to
        async with Integration._meta.db.transaction():
            done = await Integration.update({Integration.status: to, Integration.updated: now(),
                                             **{getattr(Integration, k): v for k, v in changes.items()}}
                                            ).where((Integration.id == row.id) & (Integration.status == frm)
                                                    ).returning(Integration.id)
        if not done:
            raise PortalError(f"This integration changed meanwhile (it is now {await self._status_of(row)}); "
                              "reload the page and try again.", 409)
        for k, v in changes.items():
            setattr(row, k, v)
        row.status = to
        return row

    async def _status_of(self, row: Integration) -> str:
        got = await Integration.select(Integration.status).where(Integration.id == row.id).first()
        return got["status"] if got else "deleted"

    async def _settle(self, row: Integration, actor: Account) -> None:
        """After writing NATS for the status we set, re-read it: if a concurrent decision changed it meanwhile,
        apply what the current status needs (our writes may have landed after theirs)."""
        for _ in range(3):
            current = await Integration.objects().get(Integration.id == row.id)
            if current is None or current.status == row.status:
                return
            log.warning("integration %s changed to %s while being made %s; applying %s", row.key, current.status,
                        row.status, current.status)
            if current.status == "approved":
                await self.activate(current, new_secret=False)
            elif current.status == "suspended":
                await self.deactivate(current)
                await self.cut_off(current, actor, final=False)
            elif current.status in ("revoked", "denied"):
                await self.remove_from_nats(current)
                await self.cut_off(current, actor)
            row = current

    async def approve(self, actor: Account, key: str, narrowed: Scope | None = None) -> Integration:
        row = await self.get(key)
        check_transition(row, "approve")  # before the scope checks: a decided request answers 409, not 400
        # Identity fields flow only when the approving administrator names them (narrowed); a plain approval
        # grants the request without them.
        granted = narrowed if narrowed is not None else msgspec.structs.replace(requested_scope(row), identity=[])
        errors = check_narrowing(requested_scope(row), granted)
        if errors:
            raise PortalError("The approved scope is not a narrowing of the request.", 400, errors)
        await self.refuse_size(actor, row, granted)
        await self._transition(row, "approve", granted=scope_json(granted), decided_by=actor.email,
                               decision_reason="")
        try:
            secret = await self.activate(row, new_secret=True)
        except Exception:
            # NATS refused or unreachable: hand the request back to the queue (unless it changed meanwhile).
            await Integration.update({Integration.status: "pending", Integration.updated: now()}).where(
                (Integration.id == row.id) & (Integration.status == "approved"))
            with contextlib.suppress(Exception):
                await self.remove_from_nats(row)
            raise
        if secret:
            await self._set(row, status="approved", pending_secret=self.box.seal(secret))
        await self.audit(actor.email, "integration.approve", row.key, _scope_text(granted))
        if granted.identity:
            await self.audit(actor.email, "identity.approve", row.key,
                             f"identity fields approved: {', '.join(granted.identity)}")
        await self._settle(row, actor)
        if await self._status_of(row) == "approved":  # not when a concurrent cancel won meanwhile
            await self.notify(row, "approved", note=narrowing_note(requested_scope(row), granted))
        return row

    async def refuse_size(self, actor: Account, row: Integration, scope: Scope) -> None:
        """A scope too large for the row's delivery kind: refused (400, naming the limit), and audited."""
        errors: dict[str, str] = {}
        check_scope_size(scope, row.delivery, errors)
        if errors:
            await self.audit(actor.email, "scope.refused", row.key, errors["scope"])
            raise PortalError("The scope is too large.", 400, errors)

    async def deny(self, actor: Account, key: str, reason: str) -> Integration:
        row = await self.get(key)
        check_transition(row, "deny")  # before asking for a reason
        if not reason.strip():
            raise PortalError("Give the requester a reason.", 400, {"reason": "A reason is required."})
        await self._transition(row, "deny", decided_by=actor.email, decision_reason=reason)
        await self.audit(actor.email, "integration.deny", row.key, reason)
        await self.notify(row, "denied", reason)
        return row

    async def suspend(self, actor: Account, key: str, reason: str) -> Integration:
        row = await self.get(key)
        await self._transition(row, "suspend", decided_by=actor.email, decision_reason=reason)
        await self.deactivate(row)
        await self.audit(actor.email, "integration.suspend", row.key, reason)
        await self.cut_off(row, actor, final=False)
        await self._settle(row, actor)
        await self.notify(row, "suspended", reason)
        return row

    async def resume(self, actor: Account, key: str) -> Integration:
        row = await self.get(key)
        await self._transition(row, "resume", decided_by=actor.email, decision_reason="")
        await self.activate(row, new_secret=False)
        await self.audit(actor.email, "integration.resume", row.key)
        await self._settle(row, actor)
        return row

    async def revoke(self, actor: Account, key: str, reason: str, row: Integration | None = None) -> Integration:
        row = row or await self.get(key)
        # The status changes first: from here on no download issues for it (issue_creds re-checks it).
        await self._transition(row, "revoke", decided_by=actor.email, decision_reason=reason, pending_secret=None)
        await self.remove_from_nats(row)
        await self.audit(actor.email, "integration.revoke", row.key, reason)
        await self.cut_off(row, actor)
        return row

    async def decide(self, actor: Account, key: str, action: str, reason: str = "",
                     narrowed: Scope | None = None) -> Integration:
        """An administrator's decision (the admin page, the JSON API and nothing else dispatch it): ``approve``
        (``narrowed``: grant less than asked), ``deny``, ``suspend``, ``resume``, ``revoke``. On an approved
        integration with a scope change waiting, approve and deny answer that change."""
        from portal.services import endpoints

        if action in ("approve", "deny"):
            row = await self.get(key)
            if row.scope_change and row.status == "approved":
                if action == "approve":
                    await endpoints.approve_scope_change(self, actor, row, narrowed)
                else:
                    await endpoints.deny_scope_change(self, actor, row, reason)
                return row
            return await (self.approve(actor, key, narrowed) if action == "approve" else self.deny(actor, key, reason))
        if action == "suspend":
            return await self.suspend(actor, key, reason)
        if action == "resume":
            return await self.resume(actor, key)
        if action == "revoke":
            return await self.revoke(actor, key, reason)
        raise NotFound("action")

    async def take_pending_secret(self, row: Integration) -> str | None:
        """The webhook secret made at approval, returned once and then forgotten by the portal."""
        if not row.pending_secret:
            return None
        # Only the request that clears it shows it: two tabs opened at once cannot both see it.
        done = await Integration.update({Integration.pending_secret: None}).where(
            (Integration.id == row.id) & (Integration.pending_secret == row.pending_secret)).returning(Integration.id)
        secret, row.pending_secret = row.pending_secret, None
        if not done:
            return None
        await self.audit("system", "secret.shown", row.key, "webhook signing secret displayed once")
        return self.box.open(secret)

    async def reveal_secret(self, actor: Account, row: Integration) -> str:
        """The current signing secret again, for its owner (like Svix's "reveal"): delivery starts at approval,
        so an owner who missed the single display is not locked out of verifying it. Audited."""
        if not KINDS[row.delivery].signed or row.status != "approved":
            raise PortalError("Only an approved webhook integration has a signing secret.", 409)
        target = await self.get_target(row.key)
        if target is None or not target.secrets:
            raise PortalError("The hub has no signing secret for this integration yet; try again shortly.", 409)
        await self.audit(actor.email, "secret.reveal", row.key, "signing secret shown again to its owner")
        return target.secrets[0]

    async def rotate_secret(self, actor: Account, row: Integration) -> str:
        """New secret first, the previous one still accepted until retired (Standard Webhooks rotation)."""
        if not KINDS[row.delivery].signed or row.status != "approved":
            raise PortalError("Only an approved webhook integration has a signing secret to rotate.", 409)
        old = await self.get_target(row.key)
        secret = security.new_webhook_secret()
        await self.put_target(self.target_for(row, [secret, *(old.secrets[:1] if old else [])]))
        await self.audit(actor.email, "secret.rotate", row.key, "new signing secret; previous kept until retired")
        return secret

    async def retire_old_secret(self, actor: Account, row: Integration) -> None:
        old = await self.get_target(row.key)
        if not KINDS[row.delivery].signed or row.status != "approved" or not old or len(old.secrets) < 2:
            raise PortalError("There is no previous signing secret to retire.", 409)
        await self.put_target(self.target_for(row, old.secrets[:1]))
        await self.audit(actor.email, "secret.retire", row.key, "previous signing secret no longer accepted")

    async def secret_count(self, row: Integration) -> int:
        if not KINDS[row.delivery].signed or row.status != "approved":
            return 0
        target = await self.get_target(row.key, sealed=True)
        return len(target.secrets) if target else 0

    async def issue_creds(self, actor: Account, row: Integration) -> str:
        """A fresh ``.creds`` for a direct subscription; earlier ones stay valid until expiry or revocation.

        Races with a revocation are closed by order: the issued key is recorded first, then the status is read
        again; if it is no longer approved, the key just issued is revoked (and the consumer this call may have
        re-created is removed) before answering 409. A revocation that read the keys before ours was recorded
        is therefore always followed by this re-check.
        """
        row = await Integration.objects().get(Integration.id == row.id) or row
        if is_push(row.delivery) or row.status != "approved":
            raise PortalError("Credentials exist only for an approved direct-subscription integration.", 409)
        store = self.auth_store()
        grant = grant_of(row, await self.consumer_label(row))
        try:  # under the store's lock: refused once the account is closed (suspended or revoked meanwhile)
            creds, user_pub = store.consumer_creds(grant, self.settings.creds_days * 86400)
        except self.auth().AuthError as exc:
            raise PortalError(f"No credentials: {exc}.", 409) from None
        await IssuedCredential(integration=row.id, user_pub=user_pub).save()
        await Integration.update({Integration.creds_issued: Integration.creds_issued + 1}).where(Integration.id == row.id)
        status = await self._status_of(row)
        if status != "approved":
            log.warning("integration %s became %s while issuing a credential: revoking it", row.key, status)
            if status in ("revoked", "denied"):
                await self.remove_from_nats(row)
            await self.revoke_users(row, actor, [user_pub])
            await IssuedCredential.update({IssuedCredential.revoked: True}).where(
                (IssuedCredential.integration == row.id) & (IssuedCredential.user_pub == user_pub))
            await self.audit(actor.email, "creds.revoke", row.key, f"user {user_pub[:8]}... issued during {status}")
            raise PortalError(f"This integration is now {status}: no credentials.", 409)
        await self.audit(actor.email, "creds.issue", row.key, f"user {user_pub[:8]}..., {self.settings.creds_days:g} days")
        return creds

    def example(self, row: Integration, creds_file: str | None = None) -> str:
        """Copy-paste nats-py subscriber for a direct integration (written by hub.auth)."""
        try:
            auth = self.auth()
        except PortalError as exc:
            return exc.message
        return auth.example_subscriber(grant_of(row, "", validate=False), consumer_name(row.key),
                                       servers=self.settings.nats_url_for_consumers(),
                                       creds_file=creds_file or f"{row.key}.creds")

    async def notify(self, row: Integration, event: str, reason: str = "", note: str = "") -> None:
        """Mail the owner about a decision; a mail failure is audited, never undoes the decision. ``note``: what
        else the owner must know (a narrowed scope)."""
        owner = await Account.objects().get(Account.id == row.owner)
        if owner is None or owner.password_hash == "!disabled":  # operator-managed owners have no mailbox here
            return
        what, text = _NOTICES[event]
        body = (f"Integration “{row.name}” ({row.key}) was {what}.\n\n{text}\n"
                + (f"\n{note}\n" if note else "")
                + (f"\nReason: {reason}\n" if reason else "")
                + (_scope_notice(granted_scope(row)) if event == "approved" else "")
                + f"\n{self.settings.base_url()}/integrations/{row.key}\n")
        if await self.send_mail(owner.email, f"rthub: integration {row.name[:60]} {what}", body, row.key):
            await self.audit("system", "mail.notify", row.key, f"{event} notice to the owner")

    async def _notice_disabled(self, row: Integration, out: dict[str, Any]) -> None:
        """The deliverer switches a failing target off in the targets bucket; the portal notices it here, when
        it reads the status, and mails the owner once per reason (conditional update: one process sends)."""
        reason = out.get("disabled_reason") or ""
        if row.status != "approved" or out.get("enabled") is not False or not reason or reason in (SUSPENDED_REASON,
                                                                                                 PAUSED_REASON):
            return
        done = await Integration.update({Integration.disabled_notified: reason[:2000]}).where(
            (Integration.id == row.id) & (Integration.disabled_notified != reason[:2000])).returning(Integration.id)
        if done:
            row.disabled_notified = reason[:2000]
            await self.audit("deliverer", "integration.disabled", row.key, reason)
            await self.notify(row, "disabled", reason)

    async def _direct_status(self, js, row: Integration, out: dict[str, Any]) -> dict[str, Any]:
        """``pending`` (not yet pulled), ``awaiting_ack`` (pulled, not acked), ``lag`` (both) and ``last_ack``
        (when the subscriber last acknowledged) of a direct subscription's durable consumer."""
        try:
            info = await js.consumer_info(PROTOCOL_STREAMS[row.protocol], consumer_name(row.key))
        except Exception:  # noqa: BLE001 - no consumer (yet): nothing to show
            return out
        out.update(pending=info.num_pending, awaiting_ack=info.num_ack_pending,
                   lag=(info.num_pending or 0) + (info.num_ack_pending or 0),
                   last_ack=_epoch(info.ack_floor.last_active) if info.ack_floor else None)
        return out

    async def status(self, row: Integration) -> dict[str, Any]:
        """Delivery figures: ``hub.deliver.state.integration_status`` when installed, else the durable consumer's backlog."""
        out: dict[str, Any] = {"delivered": None, "lag": None, "last_error": None, "dead_letters": None}
        if row.status not in ("approved", "suspended"):
            return out
        try:
            js = await self.js()
        except PortalError as exc:
            out["last_error"] = exc.message
            return out
        if not is_push(row.delivery):  # a direct subscription: its consumer's backlog and last ack
            return await self._direct_status(js, row, out)
        try:
            from hub.deliver.state.integration_status import integration_status
        except ModuleNotFoundError:
            integration_status = None
        if integration_status is not None:
            with contextlib.suppress(Exception):
                got = await integration_status(js, row.key)
                out.update({k: v for k, v in dict(got).items() if k != "secrets"})
                if out.get("lag") is None and "num_pending" in out:
                    out["lag"] = out["num_pending"]
        if integration_status is not None and "enabled" in out:
            await self._notice_disabled(row, out)
            return out
        try:
            info = await js.consumer_info(PROTOCOL_STREAMS[row.protocol], consumer_name(row.key))
            out["lag"] = info.num_pending
            out["delivered"] = info.delivered.stream_seq if info.delivered else None
            out["awaiting_ack"] = info.num_ack_pending
        except Exception:  # noqa: BLE001 - no consumer yet (deliverer not started)
            out["lag"] = None
        return out


def _epoch(value: Any) -> float | None:
    """A consumer's ``last_active`` (a datetime, or the server's RFC 3339 text with nanoseconds) as epoch
    seconds; ``None`` for never (the server's zero time)."""
    import datetime as dt
    import re

    if isinstance(value, str):
        m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", value)
        if not m:
            return None
        value = dt.datetime.fromisoformat(m[1] + "." + (m[2] or "0")[:6].ljust(6, "0")
                                          + ("+00:00" if m[3] == "Z" else m[3]))
    if not isinstance(value, dt.datetime):
        return None
    return value.timestamp() if value.year > 1970 else None


_NOTICES = {
    "approved": ("approved", "Your request was approved. Open it for its credentials or signing secret:"),
    "denied": ("denied", "Your request was denied."),
    "suspended": ("suspended", "An administrator suspended it: deliveries and credentials are stopped until it "
                               "is resumed."),
    "disabled": ("switched off", "The deliverer switched deliveries off automatically, for the reason below. "
                                 "The events are kept: fix the endpoint, then press Re-enable on the integration "
                                 "page to receive them."),
}


def _scope_notice(scope: Scope) -> str:
    """What the approval mail says about learner groups and personal data (identity fields)."""
    out = ""
    if scope.learner_groups:
        out += f"\nRestricted to the learners of group(s): {', '.join(scope.learner_groups)}.\n"
    if scope.identity:
        out += (f"\nIdentity fields approved by an administrator: {', '.join(scope.identity)}. They are added to "
                "each statement under the extension urn:rthub:identity; handle them as personal data.\n")
    else:
        out += "\nIdentities stay anonymized: no identity field was approved.\n"
    return out


def narrowing_note(requested: Scope, granted: Scope) -> str:
    """For the approval mail: what the administrator granted less than asked (empty when all was granted)."""
    parts = []
    for field in ("sites", "orgs", "courses", "event_types", "learner_groups"):
        asked, got = getattr(requested, field, []), getattr(granted, field, [])
        if set(asked) != set(got):
            label = field.replace("_", " ")
            parts.append(f"- {label}: you asked for {', '.join(asked) or 'any'}; granted {', '.join(got) or 'any'}")
    if not parts:
        return ""
    return "The administrator narrowed the scope you asked for:\n" + "\n".join(parts)


def _scope_text(scope: Scope) -> str:
    parts = [f"{k}={','.join(v)}" for k, v in msgspec.to_builtins(scope).items() if v]
    return "; ".join(parts) or "nothing"
