"""Micro-benchmark of the in-LMS backend's ``send()``: the time an LMS request thread spends per event.

Runs against a nats-server of its own (free port, temp store) so the worker thread publishes for real while
``send()`` is timed. Usage: ``python bench/send.py [N]`` (N events, default 20,000). Last lines:
``send_p50_us=``, ``send_p99_us=`` (target: median under 20 us).
"""

from __future__ import annotations

import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hub.ops.natsserver import NatsServer, free_port  # noqa: E402
from lms_publisher.backend import NatsBackend  # noqa: E402
from lms_publisher.demo import generate  # noqa: E402


def main(n: int = 20_000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(free_port(), Path(tmp) / "nats", name="bench").start()
        try:
            import asyncio

            from hub.core.natsconn import connect
            from hub.core.settings import HubSettings
            from hub.core.streams import ensure_streams

            async def setup():
                nc = await connect(HubSettings(nats_url=server.url), "bench")
                await ensure_streams(nc.jetstream(), HubSettings())
                await nc.close()

            asyncio.run(setup())
            backend = NatsBackend(nats_url=server.url, spool_dir=str(Path(tmp) / "spool"), site="bench")
            events = [e for _, e in zip(range(n), generate(5, 50, seed=1), strict=False)]
            now = dt.datetime.now(dt.UTC)
            for e in events:  # what event-tracking hands a backend: a datetime timestamp
                e["timestamp"] = now
            size = sum(len(str(e)) for e in events) / n
            samples = []
            clock = time.perf_counter_ns
            for e in events:
                t0 = clock()
                backend.send(e)
                samples.append(clock() - t0)
                if len(samples) % 1000 == 0:
                    time.sleep(0.01)  # ~ a busy LMS, not a flood: the queue stays short
            backend.close()
            samples.sort()
            print(f"events={n} avg_event_chars={size:.0f} published={backend.counts['published']} "
                  f"spooled={backend.counts['spooled']}")
            print(f"send_mean_us={statistics.fmean(samples) / 1000:.1f}")
            print(f"send_p50_us={samples[len(samples) // 2] / 1000:.1f}")
            print(f"send_p99_us={samples[int(len(samples) * 0.99)] / 1000:.1f}")
        finally:
            server.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
