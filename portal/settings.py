"""Portal settings (``RTHUB_*`` environment variables), plus the secret key kept in the data directory."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import msgspec

from hub.settings import NatsSettings, register


@register
class PortalSettings(NatsSettings, kw_only=True):
    """The portal web app (``rthub portal serve``) and the ``rthub integration`` commands.

    ``allowed_networks`` / ``https_only`` are the deliverer's (``RTHUB_ALLOWED_NETWORKS``, ``RTHUB_HTTPS_ONLY``),
    so a URL the deliverer would refuse is refused when typed. ``secret_overlap_hours``: how long a rotated-out
    webhook secret is still accepted before it is retired automatically.

    ``database_url`` empty means a SQLite file ``portal.sqlite`` in the data directory; a ``postgresql://`` URL
    (also taken from plain ``DATABASE_URL``) selects PostgreSQL. ``secret_key`` signs CSRF tokens; when empty
    one is generated once and kept in ``<data_dir>/portal-secret.key`` (mode 0600).
    """

    portal_host: str = "127.0.0.1"
    portal_port: int = 8080
    database_url: str = ""
    secret_key: str = ""
    cookie_secure: bool = False
    session_hours: float = 12.0
    sites: dict[str, str] = msgspec.field(default_factory=lambda: {"default": "http://localhost:18000"})
    creds_days: float = 30.0
    login_max_failures: int = 5
    login_window_s: float = 900.0
    public_nats_url: str = ""
    max_text: int = 2000
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

    def nats_url_for_consumers(self) -> str:
        """The NATS URL printed in copy-paste examples (the public one when the portal sits behind a proxy)."""
        return self.public_nats_url or self.servers[0]
