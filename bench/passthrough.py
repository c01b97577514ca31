"""The hub's ceiling for bench/pipeline.py: a pass-through on the same subjects, run as its own process like a hub.

Fetches raw events from ``LMS_RAW`` exactly as the hub does (``hub.core.pull.PullStream``, a durable consumer
with the hub's settings, batches of ``RTHUB_BATCH_SIZE``), publishes one message per protocol with the same
headers (``Nats-Msg-Id``) and the raw body untouched to ``<protocol>.<site>.<org>.<course>.<event>`` through
``hub.core.publish.AckedPublisher`` (one ``AckBatch`` per batch, like the hub), and acks each raw message once
its two publishes are acked. No parsing, no translation, no grants. Usage (bench/pipeline.py starts it):
``python bench/passthrough.py NATS_URL``; SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy  # noqa: E402

from hub.core.natsconn import connect  # noqa: E402
from hub.core.protocols import NAMES as PROTOCOLS  # noqa: E402
from hub.core.publish import AckBatch, AckedPublisher  # noqa: E402
from hub.core.pull import PullStream  # noqa: E402
from hub.core.settings import HubSettings  # noqa: E402
from hub.core.subjects import RAW_STREAM  # noqa: E402

DURABLE = "passthrough"


async def run(url: str) -> None:
    s = HubSettings(nats_url=url)
    nc = await connect(s, "bench-passthrough", skip_subject_validation=True)
    js = nc.jetstream()
    await js.add_consumer(RAW_STREAM, ConsumerConfig(
        durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW,
        ack_wait=s.hub_ack_wait_s, max_ack_pending=max(4 * s.batch_size, 2000)))
    publisher = await AckedPublisher(nc).start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    pull = await PullStream(nc, RAW_STREAM, DURABLE, batch=2 * s.batch_size, threshold=s.batch_size,
                            max_batch=s.batch_size, expires=s.hub_pull_expires_s).start()
    stop_task = asyncio.create_task(stop.wait())
    stop_task.add_done_callback(lambda _: pull.stop())
    settling: set[asyncio.Task] = set()

    async def finish(msgs, batch: AckBatch) -> None:
        await batch.wait(s.hub_publish_timeout_s)
        for msg in msgs:
            await msg.ack()

    print("passthrough ready", flush=True)
    async for msgs in pull:
        batch = AckBatch()
        for msg in msgs:
            rest = msg.subject.split(".", 1)[1]
            msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
            for protocol in PROTOCOLS:
                await publisher.publish(f"{protocol}.{rest}", msg.data, {"Nats-Msg-Id": f"{protocol}-{msg_id}"}, batch)
        task = asyncio.create_task(finish(msgs, batch))
        settling.add(task)
        task.add_done_callback(settling.discard)
        if len(settling) >= 2:  # the hub's _IN_FLIGHT
            await asyncio.wait(settling, return_when=asyncio.FIRST_COMPLETED)
    if settling:
        await asyncio.wait(settling)
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1]))
