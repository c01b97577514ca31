"""What the operator commands that talk to NATS share: the two connection options and a connection per call."""

from __future__ import annotations

from hub.core.natsconn import connect
from hub.core.settings import StreamSettings, from_env
from hub.core.streams import ensure_streams


def add_nats_options(p) -> None:
    p.add_argument("--nats-url", help="NATS server URL (RTHUB_NATS_URL)")
    p.add_argument("--nats-creds", help="credentials file (RTHUB_NATS_CREDS)")


async def with_js(args, work, name: str, ensure_streams_first: bool = False):
    """``await work(js)`` on a connection opened for this call (settings from the options or ``RTHUB_*``)."""
    settings = from_env(StreamSettings, nats_url=args.nats_url, nats_creds=args.nats_creds)
    nc = await connect(settings, name)
    try:
        js = nc.jetstream()
        if ensure_streams_first:
            await ensure_streams(js, settings)
        return await work(js)
    finally:
        await nc.close()
