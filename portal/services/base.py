"""What every portal service shares: settings, the lazily opened NATS connection, the secret box, the audit
log, and the refusals (:class:`PortalError`) pages, API and CLI turn into answers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

from hub.core.natsconn import connect
from hub.core.secretbox import SecretBox
from portal import mail, ratelimit
from portal.settings import PortalSettings
from portal.tables import AuditEntry

log = logging.getLogger("rthub.portal.nats")


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


class ServiceBase:
    """State shared by the services; :class:`portal.services.Portal` combines them over one instance."""

    def __init__(self, settings: PortalSettings):
        self.settings = settings
        self._nc = None
        self._lock = asyncio.Lock()
        self._nats_error: str | None = None  # why the last connection attempt failed (None: it worked)
        self._nats_lost_logged = False
        self.box = SecretBox.from_settings(settings)
        # scrypt takes 128 MiB per hash: bound how many run at once, whatever the number of requests.
        self._hashing = asyncio.Semaphore(2)

    # ---- NATS ---------------------------------------------------------------------------------------
    async def nc(self):
        async with self._lock:
            if self._nc is None or self._nc.is_closed:
                try:
                    self._nc = await connect(self.settings, "rthub-portal", max_reconnect_attempts=-1,
                                             disconnected_cb=self._nats_lost, reconnected_cb=self._nats_back)
                except Exception as exc:  # noqa: BLE001 - reported to the person as "NATS unreachable"
                    if self._nats_error is None:
                        log.warning("NATS is unreachable: %s: %s", type(exc).__name__, exc)
                    self._nats_error = type(exc).__name__
                    raise PortalError(f"NATS is unreachable ({type(exc).__name__}); try again shortly.", 503) from None
                if self._nats_error is not None:
                    log.info("NATS is reachable again")
                self._nats_error = None
            return self._nc

    async def _nats_lost(self) -> None:
        closing = self._nc is not None and (self._nc.is_closed or self._nc.is_draining)
        if not self._nats_lost_logged and not closing:  # nats-py calls this on each failed reconnect, on close
            self._nats_lost_logged = True
            log.warning("NATS connection lost; pages and API answer 503 until it is back")

    async def _nats_back(self) -> None:
        self._nats_lost_logged = False
        log.info("NATS connection back")

    def nats_down(self) -> str | None:
        """Why NATS cannot be used right now (a message for the person), or None while it can. Cheap: read on
        every request by :func:`portal.outage.nats_gate` and by ``/health``."""
        nc = self._nc
        if nc is not None and nc.is_connected:
            return None
        if nc is not None and not nc.is_closed:
            return "NATS is unreachable (reconnecting); the portal works again as soon as it is back."
        if self._nats_error is not None:
            return f"NATS is unreachable ({self._nats_error}); the portal works again as soon as it is back."
        return None  # not connected yet: the first use connects (and answers 503 itself if that fails)

    async def keep_connected(self, interval: float = 1.0) -> None:
        """Connect now and, while no connection is open (NATS down at start-up, or a closed connection), try
        again every ``interval`` s: the portal recovers by itself. An open connection reconnects on its own."""
        while True:
            try:
                await self.nc()
            except PortalError:
                pass
            await asyncio.sleep(interval)

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

    # ---- audit --------------------------------------------------------------------------------------
    async def audit(self, actor: str, action: str, key: str = "", detail: str = "") -> None:
        await AuditEntry(actor=actor, action=action, integration=key, detail=detail[:2000]).save()

    async def audit_log(self, limit: int = 200, key: str | None = None) -> list[AuditEntry]:
        query = AuditEntry.objects().order_by(AuditEntry.id, ascending=False).limit(limit)
        if key:
            query = query.where(AuditEntry.integration == key)
        return await query

    # ---- mail --------------------------------------------------------------------------------------
    async def mail_allowed(self, email: str) -> bool:
        """At most ``mails_per_address_per_hour`` mails to one address: no form can flood a mailbox."""
        return await ratelimit.allow(ratelimit.key("mail", email), self.settings.mails_per_address_per_hour, 3600)

    async def send_mail(self, to: str, subject: str, body: str, key: str = "") -> bool:
        """Send, or audit the failure (``mail.failed``) and answer False: a mail never undoes what was done."""
        try:
            await mail.send(self.settings, to, subject, body)
            return True
        except mail.MailError as exc:
            await self.audit("system", "mail.failed", key, f"{subject[:60]}: {exc}")
            return False

