"""Portal settings (``RTHUB_*`` environment variables), plus the secret key kept in the data directory."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import msgspec

from hub.core.settings import NatsSettings, register


@register
class PortalSettings(NatsSettings, kw_only=True):
    """The portal web app (``rthub portal serve``) and the ``rthub integration`` commands.

    ``allowed_networks`` / ``https_only`` are the deliverer's (``RTHUB_ALLOWED_NETWORKS``, ``RTHUB_HTTPS_ONLY``),
    so a URL the deliverer would refuse is refused when typed. ``secret_overlap_hours``: how long a rotated-out
    webhook secret is still accepted before it is retired automatically.

    ``database_url`` empty means a SQLite file ``portal.sqlite`` in the data directory; a ``postgresql://`` URL
    (also taken from plain ``DATABASE_URL``) selects PostgreSQL. ``secret_key`` signs CSRF tokens; when empty
    one is generated once and kept in ``<data_dir>/portal-secret.key`` (mode 0600).

    Mail: ``smtp_host`` empty writes mails to ``<data_dir>/outbox`` and prints their links (development);
    ``smtp_tls`` is ``starttls`` (port 587), ``tls`` (465) or ``none``; the server's certificate is checked
    against the system's CAs, or ``smtp_ca_file`` (PEM). Links in mails start with ``public_url``
    (default ``http://<portal_host>:<portal_port>``). ``forwarded_allow_ips``: the proxies whose
    ``X-Forwarded-For``/``-Proto`` are believed (comma-separated addresses, ``*`` for any); empty trusts none,
    so the client address is the socket's. ``secrets_key`` seals endpoint secrets (``hub.core.secretbox``).
    """

    portal_host: str = "127.0.0.1"
    portal_port: int = 8080
    database_url: str = ""
    secret_key: str = ""
    cookie_secure: bool = False
    session_hours: float = 12.0
    sites: dict[str, str] = msgspec.field(default_factory=lambda: {"default": "http://localhost:18000"})
    creds_days: float = 30.0
    max_rate_limit: float = 100.0  # the highest rate_limit (POSTs per second) a consumer may set
    login_max_failures: int = 5
    login_window_s: float = 900.0
    public_nats_url: str = ""
    max_text: int = 2000
    replays_per_hour: int = 6  # replays one integration may start in an hour (one runs at a time)
    max_body_bytes: int = 1_048_576  # every request body, page or API: more is refused with 413 (portal/limits.py)
    login_delay_s: float = 5.0
    login_max_delay_s: float = 900.0
    signup_per_hour: int = 10
    mails_per_address_per_hour: int = 3
    forwarded_allow_ips: str = ""
    public_url: str = ""
    secrets_key: str = ""
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_tls: str = "starttls"
    smtp_ca_file: str = ""
    smtp_timeout_s: float = 15.0
    mail_from: str = "rthub portal <noreply@localhost>"
    verify_hours: float = 48.0
    reset_minutes: float = 60.0
    # Endpoint URLs are checked at submit with the deliverer's SSRF rules: same variables, same meaning.
    allowed_networks: list[str] = []
    https_only: bool = False
    secret_overlap_hours: float = 24.0

    def db_url(self) -> str:
        return self.database_url or os.environ.get("DATABASE_URL", "")

    def sqlite_path(self) -> Path:
        return Path(self.data_dir) / "portal.sqlite"

    def resolved_secret(self) -> str:
        """The configured secret key, else the one persisted in the data directory (created on first use)."""
        if self.secret_key:
            return self.secret_key
        path = Path(self.data_dir) / "portal-secret.key"
        if path.exists():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
        return key

    def allowed(self) -> list:
        """Private networks an endpoint URL may name literally (as the deliverer's ``allowed_networks``)."""
        from hub.deliver.transport.ssrf import networks

        return networks(self.allowed_networks)

    def base_url(self) -> str:
        """Where people reach the portal (links in mails)."""
        return (self.public_url or f"http://{self.portal_host}:{self.portal_port}").rstrip("/")

    def nats_url_for_consumers(self) -> str:
        """The NATS URL printed in copy-paste examples (the public one when the portal sits behind a proxy)."""
        return self.public_nats_url or self.servers[0]
