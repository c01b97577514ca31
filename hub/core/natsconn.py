"""One way for every service to connect to NATS: its URLs, its own credentials, reconnects forever."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client

from hub.core.settings import NatsSettings

log = logging.getLogger("rthub.nats")


async def connect(s: NatsSettings, name: str, **kwargs) -> Client:
    """Connect with the service's credentials file (operator mode) when one is configured."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error (%s): %s", name, exc)

    opts = dict(servers=s.servers, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                error_cb=on_error, connect_timeout=5)
    if s.nats_creds:
        from hub.core.creds import creds_inbox_prefix  # operator-mode users may only use their private inbox

        opts["user_credentials"] = s.nats_creds
        opts["inbox_prefix"] = creds_inbox_prefix(s.nats_creds) or "_INBOX"
    opts.update(kwargs)
    return await nats.connect(**opts)
