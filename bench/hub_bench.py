"""Hub-only throughput: N raw events preloaded on LMS_RAW, one in-process hub translates them into both
protocols; the clock runs from the first fetch to the last raw event processed.

Usage: ``python bench/hub_bench.py [N]``. Starts its own nats-server (free port, temp store). Last line:
``events_per_s=<n>`` (raw events per second, each yielding one xAPI statement and one Caliper event).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec  # noqa: E402

from hub.core.api import Header  # noqa: E402
from hub.core.grants import Grant, put_grant  # noqa: E402
from hub.core.natsconn import connect  # noqa: E402
from hub.core.protocols import NAMES as PROTOCOL_NAMES  # noqa: E402
from hub.core.publish import AckedPublisher  # noqa: E402
from hub.core.settings import HubSettings  # noqa: E402
from hub.core.streams import ensure_streams  # noqa: E402
from hub.core.subjects import subject  # noqa: E402
from hub.ops.natsserver import NatsServer, free_port  # noqa: E402
from hub.route.service import Hub  # noqa: E402

COURSE = "course-v1:edX+DemoX+Demo_Course"
NAMES = ("play_video", "pause_video", "seek_video", "edx.course.enrollment.activated")


def event(i: int) -> dict:
    return {"name": NAMES[i % len(NAMES)], "timestamp": f"2024-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}+00:00",
            "context": {"course_id": COURSE, "org_id": "edX", "user_id": i % 500, "session": "s1"},
            "data": {"id": "0b9e39477cf34507a7a48f74be381fdd", "currentTime": 1.5, "duration": 195,
                     "old_time": 1.0, "new_time": 20.0, "course_id": COURSE, "mode": "audit", "user_id": i % 500}}


async def main(n: int) -> None:
    server = NatsServer(free_port(), tempfile.mkdtemp(prefix="rthub-bench-")).start()
    try:
        s = HubSettings(nats_url=server.url, id_secret="bench", metrics_port=-1, data_dir=tempfile.mkdtemp())
        nc = await connect(s, "bench")
        js = nc.jetstream()
        await ensure_streams(js, s)
        for protocol in PROTOCOL_NAMES:
            await put_grant(js, Grant(id=protocol, consumer="bench", protocol=protocol, sites=["default"]))
        async with AckedPublisher(nc) as pub:
            acks = [await pub.publish(subject("lms", "default", "edX", COURSE, event(i)["name"]),
                                      msgspec.json.encode(event(i)), {Header.MSG_ID: str(i)}) for i in range(n)]
            await asyncio.gather(*acks)
        hub = await Hub(s).start()
        stop = asyncio.Event()

        async def until_done() -> None:
            while hub.metrics.get("received") < n:
                await asyncio.sleep(0.005)
            stop.set()

        start = time.perf_counter()
        await asyncio.gather(hub.run(stop), until_done())
        elapsed = time.perf_counter() - start
        translated = {p: hub.metrics.get("translated", protocol=p) for p in PROTOCOL_NAMES}
        print(f"{n} raw events in {elapsed:.2f} s; statements: {translated}", file=sys.stderr)
        await hub.close()
        await nc.close()
        print(f"events_per_s={n / elapsed:.0f}")
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000))
