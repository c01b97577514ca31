"""Accounts and web sessions: passwords (scrypt, bounded concurrency), log-in with progressive delays,
administrators, and the flows that go through the mailbox (sign-up with e-mail confirmation, password reset).

Sign-up answers the same whether the address is registered or not, and sends one mail either way; links are
single-use, expire, and only their SHA-256 is stored. Confirming a sign-up asks for the password chosen at
that sign-up (bound to its link): a stranger who signs up with someone else's address first cannot make the
owner confirm the stranger's password by a click, and a mail scanner that opens links confirms nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import math
from typing import Any

from portal import ratelimit, security
from portal.services.base import PortalError, ServiceBase, now
from portal.tables import Account, MailToken, WebSession

log = logging.getLogger("rthub.portal")
_background: set[asyncio.Task] = set()  # forgot-password mails under way (a reference keeps each alive)
VERIFY, RESET = "verify", "reset"


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

    # ---- the mailbox flows ------------------------------------------------------------------------
    async def signup(self, email: str, name: str, password: str, client: str) -> None:
        """Register (unconfirmed) or, for a known address, tell its owner; the caller shows the same page either way."""
        s = self.settings
        if not await ratelimit.allow(ratelimit.key("signup", client), s.signup_per_hour, 3600):
            raise PortalError("Too many sign-ups from your address; try again in an hour.", 429)
        email = email.strip().lower()
        pw_hash = await self.hash_password(password)  # always: both answers take as long
        account = await Account.objects().get(Account.email == email)
        if account is None:
            try:
                account = Account(email=email, name=name, password_hash=pw_hash, email_verified=False)
                await account.save()
                await self.audit(email, "account.create", detail="consumer (unconfirmed)")
            except Exception:  # noqa: BLE001 - the same address signed up concurrently: treat it as known
                account = await Account.objects().get(Account.email == email)
                if account is None:
                    raise
        if not await self.mail_allowed(email):
            log.info("sign-up mail skipped: too many mails to that address this hour")
            return
        base = s.base_url()
        if account.email_verified:
            await self.send_mail(email, "Your rthub portal account",
                        "Someone (perhaps you) tried to sign up to the rthub portal with this address, which already "
                        f"has an account.\n\nLog in: {base}/login\nForgot your password? {base}/forgot\n\n"
                        "If it was not you, you can ignore this mail.\n")
            return
        token = await _new_link(account, VERIFY, dt.timedelta(hours=s.verify_hours), password_hash=pw_hash, name=name)
        await self.send_mail(email, "Confirm your e-mail address for the rthub portal",
                    f"Confirm your address to finish signing up (you will be asked for the password you chose):\n\n"
                    f"{base}/verify?token={token}\n\nThe link works once and for {s.verify_hours:g} hours. If you did not "
                    "sign up just now, ignore this mail: without the password nobody can use it.\n")

    async def check_link(self, token: str, purpose: str) -> None:
        """Refuses (400) a link that is not valid, expired or used."""
        await _take(token, purpose)

    async def confirm(self, token: str, password: str, client: str) -> str:
        """Confirm the address of a sign-up link with that sign-up's password; returns a session token."""
        row = await _take(token, VERIFY)
        pair = ratelimit.key("verify", str(row.id), client)
        if await ratelimit.blocked_for(pair) > 0:
            raise PortalError("Too many wrong passwords; try again later.", 429)
        if not row.password_hash or not await self.verify_password(password, row.password_hash):
            s = self.settings
            await ratelimit.failed(pair, s.login_max_failures, s.login_delay_s, s.login_max_delay_s, s.login_window_s)
            raise PortalError("That is not the password chosen at this sign-up.", 401, {"password": "Wrong password."})
        await _use(row)
        confirmed = {Account.email_verified: True, Account.password_hash: row.password_hash}
        if row.account_name:
            confirmed[Account.name] = row.account_name  # the name of this sign-up, not of an earlier one
        await Account.update(confirmed).where(Account.id == row.account)
        # Every other sign-up link of this address is void now.
        await MailToken.update({MailToken.used: True}).where((MailToken.account == row.account) & (MailToken.purpose == VERIFY))
        account = await Account.objects().get(Account.id == row.account)
        await self.audit(account.email, "account.verify", detail="e-mail address confirmed")
        return await self.new_session(account)

    async def forgot(self, email: str, client: str) -> None:
        """Mail a reset link if the address has an account; same answer either way."""
        s = self.settings
        if not await ratelimit.allow(ratelimit.key("forgot", client), s.signup_per_hour, 3600):
            raise PortalError("Too many requests from your address; try again in an hour.", 429)
        email = email.strip().lower()[:254]
        # The lookup and the mail happen after the answer: a known address must not take longer to answer than
        # an unknown one (39-50 ms against 6-9 ms with SMTP told who has an account).
        task = asyncio.get_running_loop().create_task(self._send_reset(email))
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _send_reset(self, email: str) -> None:
        try:
            await self._reset_mail(email)
        except Exception:  # noqa: BLE001 - nobody waits for this: log it, the person can ask again
            log.exception("password-reset mail for a forgot request failed")

    async def _reset_mail(self, email: str) -> None:
        s = self.settings
        account = await Account.objects().get(Account.email == email)
        if account is None or not await self.mail_allowed(email):
            return
        await MailToken.update({MailToken.used: True}).where((MailToken.account == account.id) & (MailToken.purpose == RESET))
        token = await _new_link(account, RESET, dt.timedelta(minutes=s.reset_minutes))
        await self.send_mail(email, "Reset your rthub portal password",
                    f"Choose a new password here:\n\n{s.base_url()}/reset?token={token}\n\nThe link works once and for "
                    f"{s.reset_minutes:g} minutes. If you did not ask for it, ignore this mail: your password stays.\n")

    async def reset_password(self, token: str, password: str) -> None:
        """Set a new password from a reset link; this also confirms the address and ends every session."""
        row = await _take(token, RESET)
        pw_hash = await self.hash_password(password)
        await _use(row)
        await Account.update({Account.password_hash: pw_hash, Account.email_verified: True}).where(Account.id == row.account)
        await WebSession.delete().where(WebSession.account == row.account)
        account = await Account.objects().get(Account.id == row.account)
        await self.audit(account.email, "account.reset", detail="password reset by mail; sessions ended")


async def _new_link(account: Account, purpose: str, lifetime: dt.timedelta, password_hash: str | None = None,
                    name: str | None = None) -> str:
    token = security.new_session_token()
    await MailToken(account=account.id, purpose=purpose, token_hash=security.sha256(token),
                    password_hash=password_hash, account_name=name, expires=now() + lifetime).save()
    return token


async def _take(token: str, purpose: str) -> MailToken:
    """The still-valid link ``token`` (not used, not expired), or a 400 refusal."""
    if not token or len(token) > 200:
        raise PortalError("This link is not valid.", 400)
    row = await MailToken.objects().get((MailToken.token_hash == security.sha256(token)) & (MailToken.purpose == purpose))
    if row is None or row.used or row.expires < now():
        raise PortalError("This link has expired or was already used; ask for a new one.", 400)
    return row


async def _use(row: MailToken) -> None:
    """Mark the link used; only one request can (conditional update), a second answers 400."""
    done = await MailToken.update({MailToken.used: True}).where(
        (MailToken.id == row.id) & (MailToken.used == False)).returning(MailToken.id)  # noqa: E712
    if not done:
        raise PortalError("This link has expired or was already used; ask for a new one.", 400)


@functools.cache
def _dummy_hash() -> str:
    """Checked when the e-mail is unknown, so a wrong e-mail takes as long as a wrong password."""
    return security.hash_password("not-a-real-password")

