"""Accounts and web sessions: passwords (scrypt, bounded concurrency), log-in with progressive delays,
administrators. The mail flows (sign-up, confirmation, reset) are in :mod:`portal.accounts`."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import math
from typing import Any

from portal import ratelimit, security
from portal.services.base import PortalError, ServiceBase, now
from portal.tables import Account, WebSession

log = logging.getLogger("rthub.portal")


class AccountService(ServiceBase):
    async def hash_password(self, password: str) -> str:
        async with self._hashing:
            return await asyncio.to_thread(security.hash_password, password)

    async def verify_password(self, password: str, stored: str) -> bool:
        async with self._hashing:
            return await asyncio.to_thread(security.verify_password, password, stored)

    async def create_account(self, email: str, name: str, password: str, is_admin: bool = False,
                             verified: bool = False) -> Account:
        email = email.strip().lower()
        if await Account.exists().where(Account.email == email):
            raise PortalError("An account with that e-mail address already exists.", 409,
                              {"email": "Already registered; log in instead."})
        pw_hash = await self.hash_password(password)
        account = Account(email=email, name=name, password_hash=pw_hash, is_admin=is_admin,
                          email_verified=verified or is_admin)
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
        values: dict[Any, Any] = {Account.is_admin: True, Account.email_verified: True}
        if password:
            values[Account.password_hash] = await self.hash_password(password)
        await Account.update(values).where(Account.id == account.id)
        await self.audit(account.email, "account.promote", detail="admin")
        return await Account.objects().get(Account.id == account.id)

    async def login(self, email: str, password: str, client: str) -> str:
        """A session token for good credentials.

        Failures delay further tries of that e-mail *from that client address* (progressively, shared by all
        portal processes through the database), and, more loosely, of that address: someone elsewhere cannot
        lock the owner out. An account whose e-mail is not confirmed cannot log in.
        """
        s = self.settings
        email = email.strip().lower()[:254]
        pair, spray = ratelimit.key("login", email, client), ratelimit.key("login-client", client)
        wait = max(await ratelimit.blocked_for(pair), await ratelimit.blocked_for(spray))
        if wait > 0:
            raise PortalError(f"Too many failed log-ins; try again in {math.ceil(wait)} seconds.", 429)
        account = await Account.objects().get(Account.email == email)
        ok = await self.verify_password(password, account.password_hash if account else _dummy_hash())
        if not account or not ok:
            await ratelimit.failed(pair, s.login_max_failures, s.login_delay_s, s.login_max_delay_s, s.login_window_s)
            await ratelimit.failed(spray, s.login_max_failures * 4, s.login_delay_s, s.login_max_delay_s,
                                   s.login_window_s)
            await ratelimit.prune(s.login_window_s)
            log.info("failed login from %s", client)
            raise PortalError("Wrong e-mail address or password.", 401)
        await ratelimit.clear(pair)
        if not account.email_verified:
            raise PortalError("Confirm your e-mail address first: follow the link in the mail we sent you "
                              "(or use “Forgot password” to get a new one).", 403)
        if security.needs_rehash(account.password_hash):
            await Account.update({Account.password_hash: await self.hash_password(password)}).where(
                (Account.id == account.id) & (Account.password_hash == account.password_hash))
        return await self.new_session(account)

    async def new_session(self, account: Account) -> str:
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


@functools.cache
def _dummy_hash() -> str:
    """Checked when the e-mail is unknown, so a wrong e-mail takes as long as a wrong password."""
    return security.hash_password("not-a-real-password")

