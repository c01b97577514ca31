"""Portal tables (piccolo). The engine is bound at start-up by :func:`portal.db.bind`, so one code base serves
SQLite (default, a file in the data directory) and PostgreSQL (``DATABASE_URL``)."""

from __future__ import annotations

from piccolo.columns import JSON, Boolean, ForeignKey, Integer, Real, Text, Timestamptz, Varchar
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table


class Account(Table, tablename="portal_account"):
    """A person: consumer (default) or administrator. Password is a scrypt hash, never the password."""

    email = Varchar(length=254, unique=True, index=True)
    name = Varchar(length=200)
    password_hash = Varchar(length=300)
    is_admin = Boolean(default=False)
    created = Timestamptz(default=TimestamptzNow())
    email_verified = Boolean(default=False)


class WebSession(Table, tablename="portal_session"):
    """A login session; the cookie holds a random token, the table only its SHA-256."""

    token_hash = Varchar(length=64, unique=True, index=True)
    account = ForeignKey(references=Account)
    created = Timestamptz(default=TimestamptzNow())
    expires = Timestamptz(default=TimestamptzNow())


class ApiToken(Table, tablename="portal_api_token"):
    """A bearer token for programs (``rth_...``), shown once; the table keeps its SHA-256 and a short prefix."""

    account = ForeignKey(references=Account)
    name = Varchar(length=100)
    prefix = Varchar(length=16)
    token_hash = Varchar(length=64, unique=True, index=True)
    created = Timestamptz(default=TimestamptzNow())
    revoked = Boolean(default=False)
    expires = Timestamptz(null=True, default=None)
    read_only = Boolean(default=False)


class Integration(Table, tablename="portal_integration"):
    """One consumer's request for events and, once approved, its grant (``key`` = grant id).

    ``requested`` and ``granted`` are each one JSON object, a :class:`portal.validation.Scope` (``sites``,
    ``orgs``, ``courses``, ``event_types``): as asked, and as approved (possibly narrowed); read and written only
    through ``portal.services.integrations`` (``requested_scope``, ``granted_scope``, ``scope_json``).
    ``pending_secret`` holds a new webhook secret only until its single display. ``issued_users`` lists the
    public keys of every direct-subscription credential issued, so revocation can cut them all off.
    """

    key = Varchar(length=64, unique=True, index=True)
    owner = ForeignKey(references=Account)
    name = Varchar(length=200)
    protocol = Varchar(length=16)
    delivery = Varchar(length=16)
    url = Varchar(length=2048, null=True, default=None)
    auth_kind = Varchar(length=16, default="none")
    auth_value = Text(null=True, default=None)
    batch_size = Integer(default=1)  # statements per POST (push deliveries); > 1 = batched
    batch_wait_ms = Integer(default=200)
    requested = JSON(default="{}")
    granted = JSON(default="{}")
    reason = Text(default="")
    status = Varchar(length=16, default="pending", index=True)
    decision_reason = Text(default="")
    decided_by = Varchar(length=254, default="")
    pending_secret = Text(null=True, default=None)
    issued_users = Text(default="[]")
    creds_issued = Integer(default=0)
    old_secret_until = Timestamptz(null=True, default=None)  # the rotated-out webhook secret is retired then
    scope_change = Boolean(default=False)  # requested holds a wider scope the owner asked for, awaiting an admin
    created = Timestamptz(default=TimestamptzNow())
    updated = Timestamptz(default=TimestamptzNow())
    disabled_notified = Text(default="")
    rate_limit = Real(default=0.0)  # POSTs per second the deliverer sends at most (0 = no limit)
    custom_headers = Text(default="")  # sealed JSON object {name: value}, added to every request
    payload_filter = Text(default="[]")  # JSON list of top-level parts dropped before signing
    paused_at = Timestamptz(null=True, default=None)  # paused by its owner since then (events are kept)


class IssuedCredential(Table, tablename="portal_issued_cred"):
    """One direct-subscription credential handed out (its NATS user public key), so revocation finds every one.

    A row is inserted (never rewritten) per download: concurrent downloads and a revocation cannot lose one.
    """

    integration = ForeignKey(references=Integration, index=True)
    user_pub = Varchar(length=64)
    created = Timestamptz(default=TimestamptzNow())
    revoked = Boolean(default=False)


class MailToken(Table, tablename="portal_mail_token"):
    """A single-use link sent by mail: ``verify`` (sign-up; carries the password and name chosen then) or
    ``reset``."""

    account = ForeignKey(references=Account, index=True)
    purpose = Varchar(length=16)
    token_hash = Varchar(length=64, unique=True, index=True)
    password_hash = Varchar(length=300, null=True, default=None)
    account_name = Varchar(length=200, null=True, default=None)
    expires = Timestamptz(default=TimestamptzNow())
    used = Boolean(default=False)


class Throttle(Table, tablename="portal_throttle"):
    """Failure / attempt counters shared by every portal process (log-in delay, sign-up rate).

    ``key`` is a SHA-256 of what is counted (e.g. e-mail + client address), never the e-mail itself.
    """

    key = Varchar(length=64, unique=True, index=True)
    hits = Integer(default=0)
    window_start = Timestamptz(default=TimestamptzNow())
    blocked_until = Timestamptz(null=True, default=None)


class AuditEntry(Table, tablename="portal_audit"):
    """Who did what, when, to which integration (never a secret)."""

    at = Timestamptz(default=TimestamptzNow(), index=True)
    actor = Varchar(length=254)
    action = Varchar(length=40)
    integration = Varchar(length=64, default="")
    detail = Text(default="")


class FlashEntry(Table, tablename="portal_flash"):
    """One thing to show on the next page of the browser whose box id hashes to ``box``."""

    box = Varchar(length=64, index=True)
    kind = Varchar(length=16)  # info | error | warning | secret | token | form
    path = Varchar(length=300, default="")  # for ``form``: the page it fills
    text = Text(default="")
    created = Timestamptz(default=TimestamptzNow())

class FormOnce(Table, tablename="portal_once"):
    """A once-token of a rendered form, claimed by its first submission; ``location`` is where it led."""

    token = Varchar(length=64, unique=True, index=True)
    location = Varchar(length=300, default="")
    created = Timestamptz(default=TimestamptzNow())

class LagSample(Table, tablename="portal_lag"):
    """The lag of one integration at one minute (kept 24 h), for the lag chart."""

    integration = Varchar(length=64, index=True)
    at = Timestamptz(default=TimestamptzNow(), index=True)
    lag = Integer(default=0)


TABLES = (Account, WebSession, ApiToken, Integration, AuditEntry, IssuedCredential, MailToken, Throttle, FlashEntry,
          FormOnce, LagSample)
