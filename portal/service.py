"""What the portal does, independent of pages, API or CLI: accounts, sessions, tokens, integrations and the
NATS side of decisions (grant in ``rthub_grants``, push target in ``rthub_targets``, direct-subscription
consumer and credentials through ``hub.auth``). Every decision is written to the audit log."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from typing import Any

import msgspec

from hub.grants import Grant, Target, consumer_name, delete_grant, put_grant
from hub.natsconn import connect
from hub.streams import PROTOCOL_STREAMS, TARGETS_BUCKET
from portal import security
from portal.settings import PortalSettings
from portal.tables import Account, ApiToken, AuditEntry, Integration, WebSession
from portal.validation import IntegrationSpec, Scope, check_narrowing

log = logging.getLogger("rthub.portal")


class PortalError(Exception):
    """A refusal with a message for the person (``status`` is the HTTP status to answer with)."""

    def __init__(self, message: str, status: int = 400, errors: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.status, self.errors = message, status, errors or {}


class NotFound(PortalError):
    def __init__(self, what: str = "integration"):
        super().__init__(f"No such {what}.", 404)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _load(text: str | None) -> list[str]:
    return json.loads(text or "[]")


def _dump(values: list[str]) -> str:
    return json.dumps(list(values))


def requested_scope(row: Integration) -> Scope:
    return Scope(sites=_load(row.req_sites), orgs=_load(row.req_orgs), courses=_load(row.req_courses),
                 event_types=_load(row.req_event_types))


def granted_scope(row: Integration) -> Scope:
    return Scope(sites=_load(row.grant_sites), orgs=_load(row.grant_orgs), courses=_load(row.grant_courses),
                 event_types=_load(row.grant_event_types))


def grant_of(row: Integration, consumer: str, status: str = "active") -> Grant:
    scope = granted_scope(row)
    return Grant(id=row.key, consumer=consumer, protocol=row.protocol, sites=scope.sites, orgs=scope.orgs,
                 courses=scope.courses, event_types=scope.event_types, delivery=row.delivery,
                 status=status).validate()


def public_view(row: Integration, owner_email: str | None = None) -> dict[str, Any]:
    """An integration as shown to its owner or an admin: never the endpoint credentials or secrets."""
    return {
        "id": row.key, "name": row.name, "protocol": row.protocol, "delivery": row.delivery, "url": row.url,
        "auth": row.auth_kind, "status": row.status, "reason": row.reason,
        "decision_reason": row.decision_reason, "decided_by": row.decided_by,
        "requested": msgspec.to_builtins(requested_scope(row)),
        "granted": msgspec.to_builtins(granted_scope(row)) if row.status not in ("pending", "denied") else None,
        "consumer": consumer_name(row.key), "owner": owner_email,
        "created": row.created.isoformat() if row.created else None,
        "updated": row.updated.isoformat() if row.updated else None,
    }


class Portal:
    """The portal's operations; holds its settings and a lazily opened NATS connection."""

    def __init__(self, settings: PortalSettings):
        self.settings = settings
        self._nc = None
        self._lock = asyncio.Lock()
        # Per e-mail (guessing one password) and, looser, per address (spraying many accounts; NAT-shared).
        self.limiter = security.LoginLimiter(settings.login_max_failures, settings.login_window_s)
        self.ip_limiter = security.LoginLimiter(settings.login_max_failures * 4, settings.login_window_s)

    # ---- NATS ---------------------------------------------------------------------------------------
    async def nc(self):
        async with self._lock:
            if self._nc is None or self._nc.is_closed:
                try:
                    self._nc = await connect(self.settings, "rthub-portal", max_reconnect_attempts=-1)
                except Exception as exc:  # noqa: BLE001 - reported to the person as "NATS unreachable"
                    raise PortalError(f"NATS is unreachable ({type(exc).__name__}); try again shortly.", 503) from None
            return self._nc

    async def js(self):
        return (await self.nc()).jetstream()

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.drain()
        self._nc = None

    def auth(self):
        """The NATS-credential store (``hub.auth``), or a clear refusal when it is not installed."""
        try:
            import hub.auth as auth_mod
        except ModuleNotFoundError:
            raise PortalError("Direct NATS subscription is not available on this hub (no hub.auth).", 503) from None
        return auth_mod

    # ---- accounts, sessions, tokens -----------------------------------------------------------------
    async def create_account(self, email: str, name: str, password: str, is_admin: bool = False) -> Account:
        email = email.strip().lower()
        if await Account.exists().where(Account.email == email):
            raise PortalError("An account with that e-mail address already exists.", 409,
                              {"email": "Already registered; log in instead."})
        pw_hash = await asyncio.to_thread(security.hash_password, password)
        account = Account(email=email, name=name, password_hash=pw_hash, is_admin=is_admin)
        await account.save()
        await self.audit(email, "account.create", detail="admin" if is_admin else "consumer")
        return account

    async def set_admin(self, email: str, password: str | None, name: str = "Administrator") -> Account:
        """Create the administrator, or promote an existing account (and reset its password if given)."""
        account = await Account.objects().get(Account.email == email.strip().lower())
        if account is None:
            if not password:
                raise PortalError("A new administrator needs a password.")
            return await self.create_account(email, name, password, is_admin=True)
        account.is_admin = True
        if password:
            account.password_hash = await asyncio.to_thread(security.hash_password, password)
        await account.save()
        await self.audit(account.email, "account.promote", detail="admin")
        return account

    async def login(self, email: str, password: str, client: str) -> str:
        """A session token for good credentials; failures are counted per address and per e-mail."""
        email = email.strip().lower()[:254]
        wait = max(self.limiter.blocked_for(email), self.ip_limiter.blocked_for(client))
        if wait > 0:
            raise PortalError(f"Too many failed log-ins; try again in {int(wait // 60) + 1} minute(s).", 429)
        account = await Account.objects().get(Account.email == email)
        ok = await asyncio.to_thread(security.verify_password, password,
                                     account.password_hash if account else _DUMMY_HASH)
        if not account or not ok:
            self.limiter.failed(email)
            self.ip_limiter.failed(client)
            log.info("failed login from %s", client)
            raise PortalError("Wrong e-mail address or password.", 401)
        self.limiter.succeeded(email)
        token = security.new_session_token()
        expires = now() + dt.timedelta(hours=self.settings.session_hours)
        await WebSession(token_hash=security.sha256(token), account=account.id, expires=expires).save()
        return token

    async def session_account(self, token: str | None) -> Account | None:
        if not token or len(token) > 200:
            return None
        row = await WebSession.objects().get(WebSession.token_hash == security.sha256(token))
        if row is None or row.expires < now():
            return None
        return await Account.objects().get(Account.id == row.account)

    async def logout(self, token: str | None) -> None:
        if token:
            await WebSession.delete().where(WebSession.token_hash == security.sha256(token))

    async def create_token(self, account: Account, name: str) -> str:
        token = security.new_api_token()
        await ApiToken(account=account.id, name=name or "token", prefix=token[:10],
                       token_hash=security.sha256(token)).save()
        await self.audit(account.email, "token.create", detail=f"{name} ({token[:10]}...)")
        return token

    async def token_account(self, token: str | None) -> Account | None:
        if not token or len(token) > 200:
            return None
        row = await ApiToken.objects().get((ApiToken.token_hash == security.sha256(token)) & (ApiToken.revoked == False))  # noqa: E712
        return None if row is None else await Account.objects().get(Account.id == row.account)

    async def list_tokens(self, account: Account) -> list[ApiToken]:
        return await ApiToken.objects().where(ApiToken.account == account.id).order_by(ApiToken.id)

    async def revoke_token(self, account: Account, token_id: int) -> None:
        row = await ApiToken.objects().get((ApiToken.id == token_id) & (ApiToken.account == account.id))
        if row is None:
            raise NotFound("token")
        row.revoked = True
        await row.save()
        await self.audit(account.email, "token.revoke", detail=f"{row.name} ({row.prefix}...)")

    # ---- audit --------------------------------------------------------------------------------------
    async def audit(self, actor: str, action: str, key: str = "", detail: str = "") -> None:
        await AuditEntry(actor=actor, action=action, integration=key, detail=detail[:2000]).save()

    async def audit_log(self, limit: int = 200, key: str | None = None) -> list[AuditEntry]:
        query = AuditEntry.objects().order_by(AuditEntry.id, ascending=False).limit(limit)
        if key:
            query = query.where(AuditEntry.integration == key)
        return await query

    # ---- integrations -------------------------------------------------------------------------------
    async def create_integration(self, owner: Account, spec: IntegrationSpec, approved_by: Account | None = None,
                                 ) -> Integration:
        row = Integration(
            key=security.new_integration_key(), owner=owner.id, name=spec.name, protocol=spec.protocol,
            delivery=spec.delivery, url=spec.url, auth_kind=spec.auth_kind, auth_value=spec.auth_value,
            req_sites=_dump(spec.scope.sites), req_orgs=_dump(spec.scope.orgs),
            req_courses=_dump(spec.scope.courses), req_event_types=_dump(spec.scope.event_types),
            reason=spec.reason, status="pending",
        )
        await row.save()
        await self.audit(owner.email, "integration.request", row.key,
                         f"{spec.protocol} via {spec.delivery}; {_scope_text(spec.scope)}")
        if approved_by is not None:
            await self.approve(approved_by, row.key)
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

    async def _consumer_label(self, row: Integration) -> str:
        owner = await Account.objects().get(Account.id == row.owner)
        return owner.email if owner else f"account-{row.owner}"

    async def _save(self, row: Integration, **changes: Any) -> None:
        for k, v in changes.items():
            setattr(row, k, v)
        row.updated = now()
        await row.save()

    def _target(self, row: Integration, secrets: list[str], enabled: bool = True) -> Target:
        return Target(id=row.key, kind=row.delivery, url=row.url or "", secrets=secrets,
                      basic_auth=row.auth_value if row.auth_kind == "basic" else None,
                      bearer=row.auth_value if row.auth_kind == "bearer" else None, enabled=enabled,
                      disabled_reason=None if enabled else "suspended by an administrator")

    async def _get_target(self, key: str) -> Target | None:
        kv = await (await self.js()).key_value(TARGETS_BUCKET)
        try:
            entry = await kv.get(key)
        except Exception:  # noqa: BLE001 - KeyNotFoundError / deleted
            return None
        return msgspec.json.decode(entry.value, type=Target) if entry.value else None

    async def _put_target(self, target: Target) -> None:
        kv = await (await self.js()).key_value(TARGETS_BUCKET)
        await kv.put(target.id, msgspec.json.encode(target))

    async def _delete_target(self, key: str) -> None:
        kv = await (await self.js()).key_value(TARGETS_BUCKET)
        with contextlib.suppress(Exception):
            await kv.delete(key)

    async def _activate(self, row: Integration, new_secret: bool) -> str | None:
        """Write grant (+ target or durable consumer); returns a new webhook secret when one was made."""
        js = await self.js()
        grant = grant_of(row, await self._consumer_label(row))
        secret = None
        if row.delivery == "direct":
            await self.auth().ensure_consumer(js, grant)
            await self._auth_store().activate_consumer(await self.nc(), grant)
        else:
            old = await self._get_target(row.key)
            secrets = old.secrets if old and old.secrets else []
            if row.delivery == "webhook" and (new_secret or not secrets):
                secret = security.new_webhook_secret()
                secrets = [secret]
            await self._put_target(self._target(row, secrets))
        await put_grant(js, grant)
        return secret

    async def approve(self, actor: Account, key: str, narrowed: Scope | None = None) -> Integration:
        row = await self.get(key)
        if row.status not in ("pending",):
            raise PortalError(f"Only a pending request can be approved (this one is {row.status}).", 409)
        granted = narrowed if narrowed is not None else requested_scope(row)
        errors = check_narrowing(requested_scope(row), granted)
        if errors:
            raise PortalError("The approved scope is not a narrowing of the request.", 400, errors)
        row.grant_sites, row.grant_orgs = _dump(granted.sites), _dump(granted.orgs)
        row.grant_courses, row.grant_event_types = _dump(granted.courses), _dump(granted.event_types)
        secret = await self._activate(row, new_secret=True)
        await self._save(row, status="approved", decided_by=actor.email, decision_reason="",
                         pending_secret=secret)
        await self.audit(actor.email, "integration.approve", row.key, _scope_text(granted))
        return row

    async def deny(self, actor: Account, key: str, reason: str) -> Integration:
        row = await self.get(key)
        if row.status != "pending":
            raise PortalError(f"Only a pending request can be denied (this one is {row.status}).", 409)
        if not reason.strip():
            raise PortalError("Give the requester a reason.", 400, {"reason": "A reason is required."})
        await self._save(row, status="denied", decided_by=actor.email, decision_reason=reason)
        await self.audit(actor.email, "integration.deny", row.key, reason)
        return row

    def _auth_store(self):
        return self.auth().AuthStore.ensure(self.settings.data_dir)

    async def _cut_off(self, row: Integration, actor: Account, final: bool = True) -> None:
        """Close a direct subscription's NATS account: every credential issued for ``row`` revoked, no import
        left (``final``: never reopened). Called after the grant is gone; a failed push is audited and logged,
        never swallowed silently."""
        if row.delivery != "direct":
            return
        users = _load(row.issued_users)
        try:
            await self._auth_store().close_consumer(await self.nc(), row.key, final=final)
        except Exception as exc:  # noqa: BLE001 - reported below; the grant is already removed
            log.error("revoking credentials of %s failed: %s", row.key, exc)
            await self.audit(actor.email, "creds.revoke_failed", row.key, f"{type(exc).__name__}: {exc}"[:500])
            raise PortalError(f"The grant is removed, but pushing the credential revocation failed ({exc}).", 502) from None
        await self.audit(actor.email, "creds.revoke", row.key, f"{len(users)} credential(s) revoked")

    async def migrate_direct_access(self) -> int:
        """Bring every direct subscription into its own NATS account (start-up; idempotent): approved ones are
        opened, suspended and revoked ones closed. Credentials issued by earlier versions inside the data account
        were revoked by ``AuthStore.ensure``; their owners download new ``.creds``. Returns how many changed."""
        store = self._auth_store()
        changed = 0
        rows = await Integration.objects().where(Integration.delivery == "direct")
        for row in rows:
            claims = store.tenant_claims(row.key)
            is_open = bool(claims and claims["nats"].get("imports"))
            if row.status == "approved" and claims is None:
                grant = grant_of(row, await self._consumer_label(row))
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

    async def suspend(self, actor: Account, key: str, reason: str) -> Integration:
        row = await self.get(key)
        if row.status != "approved":
            raise PortalError(f"Only an approved integration can be suspended (this one is {row.status}).", 409)
        js = await self.js()
        await put_grant(js, grant_of(row, await self._consumer_label(row), status="suspended"))
        if row.delivery != "direct":
            old = await self._get_target(row.key)
            await self._put_target(self._target(row, old.secrets if old else [], enabled=False))
        await self._save(row, status="suspended", decided_by=actor.email, decision_reason=reason)
        await self.audit(actor.email, "integration.suspend", row.key, reason)
        await self._cut_off(row, actor, final=False)
        await self._save(row, issued_users="[]")
        return row

    async def resume(self, actor: Account, key: str) -> Integration:
        row = await self.get(key)
        if row.status != "suspended":
            raise PortalError(f"Only a suspended integration can be resumed (this one is {row.status}).", 409)
        await self._activate(row, new_secret=False)
        await self._save(row, status="approved", decided_by=actor.email, decision_reason="")
        await self.audit(actor.email, "integration.resume", row.key)
        return row

    async def revoke(self, actor: Account, key: str, reason: str, row: Integration | None = None) -> Integration:
        row = row or await self.get(key)
        if row.status in ("revoked", "denied"):
            raise PortalError(f"This integration is already {row.status}.", 409)
        if row.status in ("approved", "suspended"):
            js = await self.js()
            await delete_grant(js, row.key)
            await self._delete_target(row.key)
            with contextlib.suppress(Exception):
                await js.delete_consumer(PROTOCOL_STREAMS[row.protocol], consumer_name(row.key))
        await self._save(row, status="revoked", decided_by=actor.email, decision_reason=reason, pending_secret=None)
        await self.audit(actor.email, "integration.revoke", row.key, reason)
        await self._cut_off(row, actor)
        await self._save(row, issued_users="[]")
        return row

    async def take_pending_secret(self, row: Integration) -> str | None:
        """The webhook secret made at approval, returned once and then forgotten by the portal."""
        secret = row.pending_secret
        if secret:
            await Integration.update({Integration.pending_secret: None}).where(Integration.id == row.id)
            row.pending_secret = None
            await self.audit("system", "secret.shown", row.key, "webhook signing secret displayed once")
        return secret

    async def rotate_secret(self, actor: Account, row: Integration) -> str:
        """New secret first, the previous one still accepted until retired (Standard Webhooks rotation)."""
        if row.delivery != "webhook" or row.status != "approved":
            raise PortalError("Only an approved webhook integration has a signing secret to rotate.", 409)
        old = await self._get_target(row.key)
        secret = security.new_webhook_secret()
        await self._put_target(self._target(row, [secret, *(old.secrets[:1] if old else [])]))
        await self.audit(actor.email, "secret.rotate", row.key, "new signing secret; previous kept until retired")
        return secret

    async def retire_old_secret(self, actor: Account, row: Integration) -> None:
        old = await self._get_target(row.key)
        if row.delivery != "webhook" or row.status != "approved" or not old or len(old.secrets) < 2:
            raise PortalError("There is no previous signing secret to retire.", 409)
        await self._put_target(self._target(row, old.secrets[:1]))
        await self.audit(actor.email, "secret.retire", row.key, "previous signing secret no longer accepted")

    async def secret_count(self, row: Integration) -> int:
        if row.delivery != "webhook" or row.status != "approved":
            return 0
        target = await self._get_target(row.key)
        return len(target.secrets) if target else 0

    async def issue_creds(self, actor: Account, row: Integration) -> str:
        """A fresh ``.creds`` for a direct subscription; earlier ones stay valid until expiry or revocation."""
        if row.delivery != "direct" or row.status != "approved":
            raise PortalError("Credentials exist only for an approved direct-subscription integration.", 409)
        store = self._auth_store()
        grant = grant_of(row, await self._consumer_label(row))
        try:
            creds, user_pub = store.consumer_creds(grant, self.settings.creds_days * 86400)
        except self.auth().AuthError as exc:  # closed (suspended/revoked meanwhile) or never opened
            raise PortalError(f"No credentials: {exc}.", 409) from None
        users = _load(row.issued_users)
        users.append(user_pub)
        await self._save(row, issued_users=_dump(users), creds_issued=(row.creds_issued or 0) + 1)
        await self.audit(actor.email, "creds.issue", row.key, f"user {user_pub[:8]}..., {self.settings.creds_days:g} days")
        return creds

    def example(self, row: Integration, creds_file: str | None = None) -> str:
        """Copy-paste nats-py subscriber for a direct integration (written by hub.auth)."""
        try:
            auth = self.auth()
        except PortalError as exc:
            return exc.message
        return auth.example_subscriber(grant_of(row, ""), consumer_name(row.key),
                                       servers=self.settings.nats_url_for_consumers(),
                                       creds_file=creds_file or f"{row.key}.creds")

    async def status(self, row: Integration) -> dict[str, Any]:
        """Delivery figures: ``hub.deliver.status`` when installed, else the durable consumer's backlog."""
        out: dict[str, Any] = {"delivered": None, "lag": None, "last_error": None, "dead_letters": None}
        if row.status not in ("approved", "suspended"):
            return out
        try:
            js = await self.js()
        except PortalError as exc:
            out["last_error"] = exc.message
            return out
        try:
            from hub.deliver.status import integration_status
        except ModuleNotFoundError:
            integration_status = None
        if integration_status is not None:
            with contextlib.suppress(Exception):
                got = await integration_status(js, row.key)
                out.update({k: v for k, v in dict(got).items() if k != "secrets"})
                if out.get("lag") is None and "num_pending" in out:
                    out["lag"] = out["num_pending"]
                return out
        try:
            info = await js.consumer_info(PROTOCOL_STREAMS[row.protocol], consumer_name(row.key))
            out["lag"] = info.num_pending
            out["delivered"] = info.delivered.stream_seq if info.delivered else None
            out["awaiting_ack"] = info.num_ack_pending
        except Exception:  # noqa: BLE001 - no consumer yet (deliverer not started)
            out["lag"] = None
        return out


def _scope_text(scope: Scope) -> str:
    parts = [f"{k}={','.join(v)}" for k, v in msgspec.to_builtins(scope).items() if v]
    return "; ".join(parts) or "nothing"


_DUMMY_HASH = security.hash_password("not-a-real-password", n=2**15)
