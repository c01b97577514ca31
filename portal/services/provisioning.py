"""Provisioning: every NATS side effect of an integration's life cycle, in one service. Approving writes the
grant and the push target (or opens the direct subscription's account and durable consumer), suspending
switches them off, revoking removes them and cuts off issued credentials. The integration service decides
*when* (its table of transitions), this one does *what* on NATS; endpoint edits and background jobs call the
same methods. Also the pure functions from a portal row to what NATS holds (:func:`grant_of`, the target)."""

from __future__ import annotations

import contextlib
import json
import logging

import msgspec

from hub.core.delivery_kinds import DIRECT, KINDS, is_push
from hub.core.grants import PAUSED_REASON, Grant, Target, consumer_name, delete_grant, put_grant
from hub.core.subjects import PROTOCOL_STREAMS, TARGETS_BUCKET
from portal import security
from portal.services.base import PortalError, ServiceBase
from portal.tables import Account, Integration, IssuedCredential
from portal.validation import Scope

log = logging.getLogger("rthub.portal")

SUSPENDED_REASON = "suspended by an administrator"


def _load(text: str | None) -> list[str]:
    return json.loads(text or "[]")


def scope_json(scope: Scope) -> str:
    """A scope as stored in ``Integration.requested`` / ``Integration.granted``."""
    return msgspec.json.encode(scope).decode()


def _scope_of(value: str | dict | None) -> Scope:
    if isinstance(value, dict):  # a JSON column some driver decoded already
        return msgspec.convert(value, Scope)
    return msgspec.json.decode(value or "{}", type=Scope)


def requested_scope(row: Integration) -> Scope:
    return _scope_of(row.requested)


def granted_scope(row: Integration) -> Scope:
    return _scope_of(row.granted)


def grant_of(row: Integration, consumer: str, status: str = "active", validate: bool = True) -> Grant:
    """The grant ``row`` stands for; ``validate=False`` only to show it (a row stored before today's limits,
    e.g. on scope size, must still display, never be written)."""
    scope = granted_scope(row)
    grant = Grant(id=row.key, consumer=consumer, protocol=row.protocol, sites=scope.sites, orgs=scope.orgs,
                  courses=scope.courses, event_types=scope.event_types, learner_groups=scope.learner_groups,
                  identity=scope.identity, delivery=row.delivery, status=status)
    return grant.validate() if validate else grant


def payload_filter_of(row: Integration) -> list[str]:
    return json.loads(row.payload_filter or "[]")


def header_names(row: Integration, box=None) -> dict[str, str]:
    """The custom headers of ``row`` (stored sealed), opened with ``box``."""
    text = row.custom_headers or ""
    return json.loads(box.open(text) or "{}") if text and box is not None else {}


class ProvisioningService(ServiceBase):
    async def consumer_label(self, row: Integration) -> str:
        owner = await Account.objects().get(Account.id == row.owner)
        return owner.email if owner else f"account-{row.owner}"

    def target_for(self, row: Integration, secrets: list[str], enabled: bool = True) -> Target:
        """The push target ``row`` describes; a paused one (by its owner) is switched off with
        :data:`PAUSED_REASON` (a suspension's reason wins)."""
        auth_value = self.box.open(row.auth_value)
        paused = row.paused_at is not None
        reason = None if enabled and not paused else SUSPENDED_REASON if not enabled else PAUSED_REASON
        return Target(id=row.key, kind=row.delivery, url=row.url or "", secrets=secrets,
                      basic_auth=auth_value if row.auth_kind == "basic" else None,
                      bearer=auth_value if row.auth_kind == "bearer" else None, enabled=enabled and not paused,
                      batch_size=row.batch_size or 1, batch_wait_ms=row.batch_wait_ms or 200,
                      rate_limit_per_s=float(row.rate_limit or 0.0), custom_headers=header_names(row, self.box),
                      payload_filter=payload_filter_of(row), disabled_reason=reason,
                      disabled_at=row.paused_at.timestamp() if paused and enabled else None)

    async def get_target(self, key: str, sealed: bool = False) -> Target | None:
        kv = await (await self.js()).key_value(TARGETS_BUCKET)
        try:
            entry = await kv.get(key)
        except Exception:  # noqa: BLE001 - KeyNotFoundError / deleted
            return None
        if not entry.value:
            return None
        target = msgspec.json.decode(entry.value, type=Target)
        return target if sealed else self.box.open_target(target)

    async def put_target(self, target: Target) -> None:
        """Write the target with its secrets sealed, as a roll-up: no earlier revision (old secrets) is kept."""
        js = await self.js()
        await js.publish(f"$KV.{TARGETS_BUCKET}.{target.id}", msgspec.json.encode(self.box.seal_target(target)),
                         headers={"Nats-Rollup": "sub"})

    async def delete_target(self, key: str) -> None:
        kv = await (await self.js()).key_value(TARGETS_BUCKET)
        with contextlib.suppress(Exception):
            await kv.purge(key)

    async def activate(self, row: Integration, new_secret: bool) -> str | None:
        """Write grant (+ target or durable consumer); returns a new webhook secret when one was made."""
        js = await self.js()
        grant = grant_of(row, await self.consumer_label(row))
        secret = None
        if not is_push(row.delivery):
            await self.auth().ensure_consumer(js, grant)
            await self.auth_store().activate_consumer(await self.nc(), grant)
        else:
            old = await self.get_target(row.key)
            secrets = old.secrets if old and old.secrets else []
            if KINDS[row.delivery].signed and (new_secret or not secrets):
                secret = security.new_webhook_secret()
                secrets = [secret]
            await self.put_target(self.target_for(row, secrets))
        await put_grant(js, grant)
        return secret

    async def deactivate(self, row: Integration) -> None:
        """Suspended: grant kept as suspended, push target switched off (secrets kept)."""
        js = await self.js()
        await put_grant(js, grant_of(row, await self.consumer_label(row), status="suspended"))
        if is_push(row.delivery):
            old = await self.get_target(row.key)
            await self.put_target(self.target_for(row, old.secrets if old else [], enabled=False))

    async def remove_from_nats(self, row: Integration) -> None:
        """Revoked or denied: grant, target (purged) and durable consumer gone."""
        js = await self.js()
        await delete_grant(js, row.key)
        await self.delete_target(row.key)
        with contextlib.suppress(Exception):
            await js.delete_consumer(PROTOCOL_STREAMS[row.protocol], consumer_name(row.key))

    def auth_store(self):
        return self.auth().AuthStore.ensure(self.settings.data_dir)

    async def cut_off(self, row: Integration, actor: Account, final: bool = True) -> None:
        """Close a direct subscription's NATS account: every credential issued for ``row`` revoked, no import left
        (``final``: never reopened; suspension is not final). The issued keys are read from the database at call
        time only to mark and count them: the account's ``*`` revocation covers every key, recorded or not. A
        failed push is audited and logged, never swallowed silently."""
        if is_push(row.delivery):
            return
        rows = await IssuedCredential.select(IssuedCredential.id, IssuedCredential.user_pub).where(
            (IssuedCredential.integration == row.id) & (IssuedCredential.revoked == False))  # noqa: E712
        legacy = await Integration.select(Integration.issued_users).where(Integration.id == row.id).first()
        users = list(dict.fromkeys([r["user_pub"] for r in rows] + _load(legacy["issued_users"] if legacy else None)))
        try:
            await self.auth_store().close_consumer(await self.nc(), row.key, final=final)
        except Exception as exc:  # noqa: BLE001 - reported below; the grant is already removed
            log.error("revoking credentials of %s failed: %s", row.key, exc)
            await self.audit(actor.email, "creds.revoke_failed", row.key, f"{type(exc).__name__}: {exc}"[:500])
            raise PortalError(f"The grant is removed, but pushing the credential revocation failed ({exc}).", 502) from None
        if rows:
            await IssuedCredential.update({IssuedCredential.revoked: True}).where(
                IssuedCredential.id.is_in([r["id"] for r in rows]))
        if legacy and _load(legacy["issued_users"]):
            await Integration.update({Integration.issued_users: "[]"}).where(Integration.id == row.id)
        await self.audit(actor.email, "creds.revoke", row.key, f"{len(users)} credential(s) revoked")

    async def revoke_users(self, row: Integration, actor: Account, users: list[str]) -> None:
        """Revoke single credentials of a direct subscription (its account stays as it is)."""
        try:
            await self.auth_store().revoke_consumer_users(await self.nc(), row.key, users)
        except Exception as exc:  # noqa: BLE001 - reported below
            log.error("revoking credentials of %s failed: %s", row.key, exc)
            await self.audit(actor.email, "creds.revoke_failed", row.key, f"{type(exc).__name__}: {exc}"[:500])
            raise PortalError(f"Pushing the credential revocation failed ({exc}).", 502) from None

    async def migrate_direct_access(self) -> int:
        """Bring every direct subscription into its own NATS account (start-up; idempotent): approved ones are
        opened, suspended and revoked ones closed. Credentials issued by earlier versions inside the data account
        were revoked by ``AuthStore.ensure``; their owners download new ``.creds``. Returns how many changed."""
        store = self.auth_store()
        changed = 0
        rows = await Integration.objects().where(Integration.delivery == DIRECT.name)
        for row in rows:
            claims = store.tenant_claims(row.key)
            is_open = bool(claims and claims["nats"].get("imports"))
            try:
                grant = grant_of(row, await self.consumer_label(row)) if row.status == "approved" else None
            except ValueError as exc:  # a stored scope today's limits refuse: skipped, never fatal at start
                await self.audit("system", "grant.invalid", row.key, str(exc)[:500])
                continue
            if grant is not None and (claims is None or (is_open and _imports(claims) != _wanted(grant))):
                # new, or opened by an earlier version without today's imports (the replay consumer)
                await self.auth().ensure_consumer(await self.js(), grant)
                await store.activate_consumer(await self.nc(), grant)
            elif row.status in ("suspended", "revoked") and (is_open or claims is None):
                await store.close_consumer(await self.nc(), row.key, final=row.status == "revoked")
            else:
                continue
            changed += 1
            await self.audit("system", "creds.migrate", row.key, f"direct access moved to its own account ({row.status})")
        if changed:
            log.info("moved %d direct subscription(s) into their own NATS accounts", changed)
        return changed


def _imports(claims: dict) -> set[tuple[str, str]]:
    return {(i["subject"], i.get("local_subject", i["subject"])) for i in claims["nats"].get("imports", [])}


def _wanted(grant: Grant) -> set[tuple[str, str]]:
    from hub.auth.permissions import tenant_imports

    return {(subj, local) for _, subj, _, local in tenant_imports(grant)}
