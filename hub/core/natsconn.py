"""One way for every service to connect to NATS: its URLs, its own credentials, reconnects forever."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client

from hub.core.settings import NatsSettings

log = logging.getLogger("rthub.nats")


async def connect(s: NatsSettings, name: str, **kwargs) -> Client:
    """Connect with the service's credentials file (operator mode) when one is configured.

    Errors are logged once per state: the first error while connected, then nothing more until the connection
    is back, when one line says how many followed (a reconnect attempt every 0.5 s logged a line each; an
    outage of a minute wrote over a hundred). ``disconnected_cb`` / ``reconnected_cb`` in ``kwargs`` still run."""
    state = {"errors": 0, "quiet": False}
    theirs_lost, theirs_back = kwargs.pop("disconnected_cb", None), kwargs.pop("reconnected_cb", None)

    async def on_error(exc: Exception) -> None:
        state["errors"] += 1
        if not state["quiet"]:
            state["quiet"] = True
            log.warning("nats error (%s): %s (further errors counted until the connection is back)", name, exc)

    async def on_lost() -> None:
        nc = state.get("nc")
        closing = nc is not None and (nc.is_closed or nc.is_draining)
        if not state["quiet"] and not closing:
            log.warning("nats (%s): connection lost; reconnecting", name)
        state["quiet"] = True  # the reconnect attempts that follow fail by design: no line each
        if theirs_lost is not None:
            await theirs_lost()

    async def on_back() -> None:
        if state["errors"]:
            log.info("nats (%s): connection back (%d errors meanwhile)", name, state["errors"])
        state["errors"], state["quiet"] = 0, False
        if theirs_back is not None:
            await theirs_back()

    opts = dict(servers=s.servers, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                error_cb=on_error, disconnected_cb=on_lost, reconnected_cb=on_back, connect_timeout=5)
    if s.nats_creds:
        from hub.core.creds import creds_inbox_prefix  # operator-mode users may only use their private inbox

        opts["user_credentials"] = s.nats_creds
        opts["inbox_prefix"] = creds_inbox_prefix(s.nats_creds) or "_INBOX"
    opts.update(kwargs)
    state["nc"] = nc = await nats.connect(**opts)
    tolerate_timed_out_flushes(nc)
    return nc


def tolerate_timed_out_flushes(nc: Client) -> None:
    """Keep the read loop alive after a ``flush()`` timed out.

    nats-py (2.16) leaves a timed-out flush's cancelled future in ``_pongs``; the PONG that comes later calls
    ``set_result`` on it, the InvalidStateError ends the read loop, and nothing reconnects: the connection
    still says "connected" and never reads again (a deliverer starting 5,000 integrations went silent that way;
    its pull loops drain their inboxes, and each drain flushes). The oldest PING gets the PONG as before; a
    future already done is only dropped. ``tests/test_core.py`` times a flush out on a stopped server."""
    if not hasattr(nc, "_pongs") or not hasattr(nc, "_process_pong"):
        return  # another nats-py: its own handler stays (the test above then fails, not production)

    async def process_pong() -> None:
        pongs = nc._pongs  # noqa: SLF001 - the list the parser's PONG handler pops (pinned nats-py < 2.17)
        if pongs:
            future = pongs.pop(0)
            if not future.done():
                future.set_result(True)
            nc._pongs_received += 1  # noqa: SLF001
            nc._pings_outstanding = 0  # noqa: SLF001

    nc._process_pong = process_pong  # noqa: SLF001
