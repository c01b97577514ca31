"""While NATS is away every portal route answers 503 with a message (pages an error page, the API an
``ApiError``), rather than hanging on a request that cannot work or failing with a 500; ``/health`` says
"degraded" and names what is down. Recovery needs no hand: the connection reconnects by itself and
:meth:`portal.services.base.ServiceBase.keep_connected` reopens one that could not be made."""

from __future__ import annotations

from hub.ops.storewatch import read_status
from portal.services import PortalError

# What answers even while NATS is away: the health check reports the outage, static files need nothing.
OPEN_PATHS = ("/health", "/static/")


def down(portal) -> list[str]:
    """The names of what the portal needs and cannot reach now (empty: all is well): "nats", and
    "jetstream-store" while ``rthub up`` says its nats-server's store is full (:mod:`hub.ops.storewatch`)."""
    out = ["nats"] if portal.nats_down() else []
    if store_full(portal):
        out.append("jetstream-store")
    return out


def store_full(portal) -> str | None:
    status = read_status(portal.settings.data_dir)
    return status.detail if status is not None and status.state != "ok" else None


def nats_gate(app):
    """ASGI middleware: refuse with 503 (through the app's exception handlers) while NATS is away."""

    async def gate(scope, receive, send):
        if scope["type"] == "http" and not scope.get("path", "").startswith(OPEN_PATHS):
            reason = scope["app"].state.portal.nats_down()
            if reason:
                raise PortalError(reason, 503)
        await app(scope, receive, send)

    return gate
