"""Account flows that go through the mailbox: sign-up with e-mail confirmation, password reset, and the
owner's notifications (approved, denied, suspended, deliveries switched off).

Sign-up answers the same whether the address is registered or not, and sends one mail either way; links are
single-use, expire, and only their SHA-256 is stored. Confirming a sign-up asks for the password chosen at
that sign-up (bound to its link): a stranger who signs up with someone else's address first cannot make the
owner confirm the stranger's password by a click, and a mail scanner that opens links confirms nothing.
"""

from __future__ import annotations

import datetime as dt
import logging

from portal import mail, ratelimit, security
from portal.services import Portal, PortalError, now
from portal.tables import Account, Integration, MailToken, WebSession

log = logging.getLogger("rthub.portal.accounts")
VERIFY, RESET = "verify", "reset"


async def _new_link(account: Account, purpose: str, lifetime: dt.timedelta, password_hash: str | None = None,
                    name: str | None = None) -> str:
    token = security.new_session_token()
    await MailToken(account=account.id, purpose=purpose, token_hash=security.sha256(token),
                    password_hash=password_hash, account_name=name, expires=now() + lifetime).save()
    return token


async def _mail_allowed(portal: Portal, email: str) -> bool:
    """At most ``mails_per_address_per_hour`` mails to one address: the form cannot be used to flood a mailbox."""
    return await ratelimit.allow(ratelimit.key("mail", email), portal.settings.mails_per_address_per_hour, 3600)


async def _send(portal: Portal, to: str, subject: str, body: str, key: str = "") -> bool:
    try:
        await mail.send(portal.settings, to, subject, body)
        return True
    except mail.MailError as exc:
        await portal.audit("system", "mail.failed", key, f"{subject[:60]}: {exc}")
        return False


async def signup(portal: Portal, email: str, name: str, password: str, client: str) -> None:
    """Register (unconfirmed) or, for a known address, tell its owner; the caller shows the same page either way."""
    s = portal.settings
    if not await ratelimit.allow(ratelimit.key("signup", client), s.signup_per_hour, 3600):
        raise PortalError("Too many sign-ups from your address; try again in an hour.", 429)
    email = email.strip().lower()
    pw_hash = await portal.hash_password(password)  # always: both answers take as long
    account = await Account.objects().get(Account.email == email)
    if account is None:
        try:
            account = Account(email=email, name=name, password_hash=pw_hash, email_verified=False)
            await account.save()
            await portal.audit(email, "account.create", detail="consumer (unconfirmed)")
        except Exception:  # noqa: BLE001 - the same address signed up concurrently: treat it as known
            account = await Account.objects().get(Account.email == email)
            if account is None:
                raise
    if not await _mail_allowed(portal, email):
        log.info("sign-up mail skipped: too many mails to that address this hour")
        return
    base = s.base_url()
    if account.email_verified:
        await _send(portal, email, "Your rthub portal account",
                    "Someone (perhaps you) tried to sign up to the rthub portal with this address, which already "
                    f"has an account.\n\nLog in: {base}/login\nForgot your password? {base}/forgot\n\n"
                    "If it was not you, you can ignore this mail.\n")
        return
    token = await _new_link(account, VERIFY, dt.timedelta(hours=s.verify_hours), password_hash=pw_hash, name=name)
    await _send(portal, email, "Confirm your e-mail address for the rthub portal",
                f"Confirm your address to finish signing up (you will be asked for the password you chose):\n\n"
                f"{base}/verify?token={token}\n\nThe link works once and for {s.verify_hours:g} hours. If you did not "
                "sign up just now, ignore this mail: without the password nobody can use it.\n")


async def _take(token: str, purpose: str) -> MailToken:
    """The still-valid link ``token`` (not used, not expired), or a 400 refusal."""
    if not token or len(token) > 200:
        raise PortalError("This link is not valid.", 400)
    row = await MailToken.objects().get((MailToken.token_hash == security.sha256(token)) & (MailToken.purpose == purpose))
    if row is None or row.used or row.expires < now():
        raise PortalError("This link has expired or was already used; ask for a new one.", 400)
    return row


async def check_link(token: str, purpose: str) -> None:
    await _take(token, purpose)


async def _use(row: MailToken) -> None:
    """Mark the link used; only one request can (conditional update), a second answers 400."""
    done = await MailToken.update({MailToken.used: True}).where(
        (MailToken.id == row.id) & (MailToken.used == False)).returning(MailToken.id)  # noqa: E712
    if not done:
        raise PortalError("This link has expired or was already used; ask for a new one.", 400)


async def confirm(portal: Portal, token: str, password: str, client: str) -> str:
    """Confirm the address of a sign-up link with that sign-up's password; returns a session token."""
    row = await _take(token, VERIFY)
    pair = ratelimit.key("verify", str(row.id), client)
    if await ratelimit.blocked_for(pair) > 0:
        raise PortalError("Too many wrong passwords; try again later.", 429)
    if not row.password_hash or not await portal.verify_password(password, row.password_hash):
        s = portal.settings
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
    await portal.audit(account.email, "account.verify", detail="e-mail address confirmed")
    return await portal.new_session(account)


async def forgot(portal: Portal, email: str, client: str) -> None:
    """Mail a reset link if the address has an account; same answer either way."""
    s = portal.settings
    if not await ratelimit.allow(ratelimit.key("forgot", client), s.signup_per_hour, 3600):
        raise PortalError("Too many requests from your address; try again in an hour.", 429)
    email = email.strip().lower()[:254]
    account = await Account.objects().get(Account.email == email)
    if account is None or not await _mail_allowed(portal, email):
        return
    await MailToken.update({MailToken.used: True}).where((MailToken.account == account.id) & (MailToken.purpose == RESET))
    token = await _new_link(account, RESET, dt.timedelta(minutes=s.reset_minutes))
    await _send(portal, email, "Reset your rthub portal password",
                f"Choose a new password here:\n\n{s.base_url()}/reset?token={token}\n\nThe link works once and for "
                f"{s.reset_minutes:g} minutes. If you did not ask for it, ignore this mail: your password stays.\n")


async def reset(portal: Portal, token: str, password: str) -> None:
    """Set a new password from a reset link; this also confirms the address and ends every session."""
    row = await _take(token, RESET)
    pw_hash = await portal.hash_password(password)
    await _use(row)
    await Account.update({Account.password_hash: pw_hash, Account.email_verified: True}).where(Account.id == row.account)
    await WebSession.delete().where(WebSession.account == row.account)
    account = await Account.objects().get(Account.id == row.account)
    await portal.audit(account.email, "account.reset", detail="password reset by mail; sessions ended")


_NOTICES = {
    "approved": ("approved", "Your request was approved. Open it for its credentials or signing secret:"),
    "denied": ("denied", "Your request was denied."),
    "suspended": ("suspended", "An administrator suspended it: deliveries and credentials are stopped until it "
                               "is resumed."),
    "disabled": ("switched off", "Deliveries were switched off automatically because the endpoint kept failing. "
                                 "Fix the endpoint, then contact an administrator."),
}


async def notify(portal: Portal, row: Integration, event: str, reason: str = "") -> None:
    owner = await Account.objects().get(Account.id == row.owner)
    if owner is None or owner.password_hash == "!disabled":  # operator-managed owners have no mailbox here
        return
    what, text = _NOTICES[event]
    body = (f"Integration “{row.name}” ({row.key}) was {what}.\n\n{text}\n"
            + (f"\nReason: {reason}\n" if reason else "")
            + f"\n{portal.settings.base_url()}/integrations/{row.key}\n")
    if await _send(portal, owner.email, f"rthub: integration {row.name[:60]} {what}", body, row.key):
        await portal.audit("system", "mail.notify", row.key, f"{event} notice to the owner")
