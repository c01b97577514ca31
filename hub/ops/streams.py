"""``rthub streams``: every stream and bucket of every service (the hub's and the deliverer's), created in one
step above the kernel, so the kernel never imports the services it serves."""

from __future__ import annotations

import asyncio
import logging
import time

import nats.errors

from hub.core.natsconn import connect
from hub.core.settings import from_env
from hub.core.streams import ensure_streams
from hub.deliver.settings import DeliverSettings
from hub.deliver.state.setup import ensure_delivery

log = logging.getLogger("rthub.streams")


async def ensure_all(timeout: float) -> None:
    """Every stream and bucket (the hub's and the deliverer's), retried until the cluster answers: a deployment's
    one-shot init step, so services never race to create R3 streams while the meta leader is being elected."""
    settings = from_env(DeliverSettings)
    deadline = time.monotonic() + timeout
    nc = await connect(settings, "rthub-streams")
    try:
        js = nc.jetstream()
        while True:
            try:
                await ensure_streams(js, settings)
                await ensure_delivery(js, settings)
                return
            except (
                nats.errors.Error,
                TimeoutError,
            ) as exc:  # no meta leader yet / stream leaders being elected
                if time.monotonic() > deadline:
                    raise
                log.warning("streams not ready yet (%s: %s); retrying", type(exc).__name__, exc)
                await asyncio.sleep(1)
    finally:
        await nc.close()


def add_parser(sub) -> None:
    p = sub.add_parser(
        "streams",
        help="create or update every stream and bucket, waiting for the cluster (compose's streams-init)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")

    def run(args) -> int:
        asyncio.run(ensure_all(args.timeout))
        print("streams and buckets ready")
        return 0

    p.set_defaults(func=run)
