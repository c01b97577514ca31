"""API tokens for programs: made (shown once), checked, listed, revoked."""

from __future__ import annotations

import datetime as dt

from portal import security
from portal.services.base import NotFound, PortalError, ServiceBase, now
from portal.tables import Account, ApiToken


class TokenService(ServiceBase):
    async def create_token(self, account: Account, name: str, days: float | None = None,
                           read_only: bool = False) -> str:
        """A new API token, optionally expiring after ``days`` and/or refused on every state-changing call."""
        token = security.new_api_token()
        expires = now() + dt.timedelta(days=days) if days else None
        await ApiToken(account=account.id, name=name or "token", prefix=token[:10], token_hash=security.sha256(token),
                       expires=expires, read_only=read_only).save()
        what = ("read-only" if read_only else "read-write") + (f", {days:g} days" if days else "")
        await self.audit(account.email, "token.create", detail=f"{name} ({token[:10]}..., {what})")
        return token

    async def token_access(self, token: str | None) -> tuple[Account, ApiToken] | None:
        """The account and token row of a valid (not revoked, not expired) API token."""
        if not token or len(token) > 200:
            return None
        row = await ApiToken.objects().get((ApiToken.token_hash == security.sha256(token)) & (ApiToken.revoked == False))  # noqa: E712
        if row is None or (row.expires is not None and row.expires < now()):
            return None
        account = await Account.objects().get(Account.id == row.account)
        return None if account is None else (account, row)

    async def list_tokens(self, account: Account) -> list[ApiToken]:
        return await ApiToken.objects().where(ApiToken.account == account.id).order_by(ApiToken.id)

    async def revoke_token(self, account: Account, token_id: int) -> None:
        if not 0 < token_id < 2**63:  # the database's integer range: a larger id is a bad request, not a 500
            raise PortalError("Not a token id: ids are whole numbers from 1 to 2^63-1.", 400)
        row = await ApiToken.objects().get((ApiToken.id == token_id) & (ApiToken.account == account.id))
        if row is None:
            raise NotFound("token")
        await ApiToken.update({ApiToken.revoked: True}).where(ApiToken.id == row.id)
        await self.audit(account.email, "token.revoke", detail=f"{row.name} ({row.prefix}...)")

