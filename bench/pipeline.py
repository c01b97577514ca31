"""Pipeline benchmark: in-LMS backend -> LMS_RAW -> hub(s) -> XAPI and CALIPER streams.

1. Throughput with one hub process, then with two: N events are sent through ``NatsBackend.send()`` and the
   clock stops when both protocol streams hold a statement for every one of them.
2. Latency at 1,000 events/s: ``send()`` to a plain nats-py subscriber of the course's xAPI subject.

Runs its own nats-server (free port, temp store). Prints ``events_per_s=`` (one hub), ``p50_ms=`` and
``p99_ms=`` as the last lines. Usage: ``python bench/pipeline.py [N]``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from hub.grants import Grant, put_grant  # noqa: E402
from hub.natsconn import connect  # noqa: E402
from hub.natsserver import NatsServer, free_port  # noqa: E402
from hub.settings import HubSettings  # noqa: E402
from hub.streams import ensure_streams  # noqa: E402
from hub.subjects import filter_subject  # noqa: E402
from lms_publisher.backend import NatsBackend  # noqa: E402

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def event(course: str, i: int) -> dict:
    # xAPI ids derive from verb + actor + timestamp (the Open edX recipe), not the course: each stage gets its
    # own learner, or its statements would be dropped as duplicates of the previous stage's.
    return {"name": "play_video", "timestamp": (T0 + dt.timedelta(milliseconds=i)).isoformat(),
            "data": {"id": "0b9e39477cf34507a7a48f74be381fdd", "currentTime": i % 195, "duration": 195,
                     "code": "b7xgknqkQk8"},
            "context": {"course_id": course, "org_id": "edX", "user_id": zlib.crc32(course.encode()), "username": "edx",
                        "event_source": "browser", "session": "993110e9c27848a545da74a74114158d",
                        "agent": "Mozilla/5.0", "host": "localhost:18000", "ip": "10.0.0.1", "path": "/event",
                        "page": f"http://localhost:18000/courses/{course}/courseware/"}}


def start_hubs(url: str, n: int, log_dir: Path) -> list[subprocess.Popen]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTHUB_")}
    env.update(RTHUB_NATS_URL=url, RTHUB_ID_SECRET="bench")
    return [subprocess.Popen([sys.executable, "-m", "hub.cli", "hub"], env=env, cwd=ROOT,
                             stdout=open(log_dir / f"hub{i}.log", "ab"), stderr=subprocess.STDOUT)
            for i in range(n)]


def stop_hubs(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            print(f"hub {p.pid} did not stop within 30 s of SIGTERM; killed", file=sys.stderr)
            p.kill()
            p.wait()


async def stored(js, stream: str, course: str) -> int:
    prefix = "xapi" if stream == "XAPI" else "caliper"
    info = await js.stream_info(stream, subjects_filter=filter_subject(prefix, course=course))
    return sum((info.state.subjects or {}).values())


async def grant_course(js, course: str) -> None:
    for protocol in ("xapi", "caliper"):
        await put_grant(js, Grant(id=uuid.uuid4().hex[:12], consumer="bench", protocol=protocol, courses=[course]))


async def throughput(url: str, js, hubs: int, n: int, tmp: Path) -> float:
    course = f"course-v1:edX+T{hubs}{uuid.uuid4().hex[:6]}+2024"
    await grant_course(js, course)
    procs = start_hubs(url, hubs, tmp)
    try:
        await asyncio.sleep(3)  # hub start-up (imports, consumer, grant watch) is not what is measured
        events = [event(course, i) for i in range(n)]
        backend = NatsBackend(nats_url=url, spool_dir=str(tmp / f"spool{hubs}"), queue_size=n + 1)
        started = time.perf_counter()
        for e in events:
            backend.send(e)
        while (await stored(js, "XAPI", course)) < n or (await stored(js, "CALIPER", course)) < n:
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        backend.close()
        return n / elapsed
    finally:
        stop_hubs(procs)


async def latency(url: str, nc, js, tmp: Path, rate: int = 1000, seconds: float = 10.0) -> list[float]:
    course = f"course-v1:edX+L{uuid.uuid4().hex[:6]}+2024"
    await grant_course(js, course)
    procs = start_hubs(url, 1, tmp)
    sent: dict[str, float] = {}
    lat: list[float] = []

    async def on_msg(msg) -> None:
        ts = msgspec.json.decode(msg.data)["timestamp"]
        t = sent.get(ts)
        if t is not None:
            lat.append((time.perf_counter() - t) * 1000)

    await nc.subscribe(filter_subject("xapi", course=course), cb=on_msg)
    backend = NatsBackend(nats_url=url, spool_dir=str(tmp / "spool-lat"))
    try:
        await asyncio.sleep(3)
        total = int(rate * seconds)
        start = time.perf_counter()
        for i in range(total):
            e = event(course, i)
            sent[e["timestamp"]] = time.perf_counter()
            backend.send(e)
            delay = start + (i + 1) / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        deadline = time.monotonic() + 20
        while len(lat) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return sorted(lat[int(rate * 1):])  # the first second warms up
    finally:
        backend.close()
        stop_hubs(procs)


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        server = NatsServer(free_port(), tmp / "nats", name="bench").start()
        try:
            settings = HubSettings(nats_url=server.url)
            nc = await connect(settings, "bench")
            js = nc.jetstream()
            await ensure_streams(js, settings)
            one = await throughput(server.url, js, 1, n, tmp)
            print(f"one hub: {one:.0f} events/s", file=sys.stderr, flush=True)
            two = await throughput(server.url, js, 2, n, tmp)
            print(f"two hubs: {two:.0f} events/s", file=sys.stderr, flush=True)
            lat = await latency(server.url, nc, js, tmp)
            await nc.close()
        finally:
            server.stop()
    print(f"events={n} raw events -> xAPI + Caliper, backend send() to both streams stored")
    print(f"events_per_s_two_hubs={two:,.0f}".replace(",", ""))
    print(f"latency_samples={len(lat)} at 1000 events/s")
    print(f"events_per_s={one:.0f}")
    print(f"p50_ms={lat[len(lat) // 2]:.2f}")
    print(f"p99_ms={lat[int(len(lat) * 0.99)]:.2f}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000))
