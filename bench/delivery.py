"""Delivery benchmark: hub + deliverer running as processes, local receivers, a nats-server of its own.

1. End-to-end latency: raw ``play_video`` events published to ``lms.`` at a steady rate (default 1,000/s)
   through ``rthub hub`` and ``rthub deliver`` to a signed webhook; latency = arrival at the receiver minus
   the event's own timestamp (the statement keeps it), so it covers publish, hub, stream, deliverer and POST.
2. Throughput to one webhook (ordered per course, 20 courses): half of ``--statements`` pre-published to
   ``xapi.``, then drained by the deliverer.
3. Throughput to one batched xAPI LRS endpoint (batch 500): ``--statements`` statements, same way, counted by
   the statements the LRS stored.

Usage: ``.venv/bin/python bench/delivery.py [--rate 1000] [--seconds 10] [--statements 50000]``.
The last lines print ``webhook_statements_per_s=`` (part 2), ``p50_ms=``, ``p99_ms=`` (part 1) and
``statements_per_s=`` (part 3, batched LRS).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hub.deliver.signing import new_secret  # noqa: E402
from hub.grants import Grant, Target, put_grant  # noqa: E402
from hub.natsconn import connect  # noqa: E402
from hub.natsserver import NatsServer, free_port  # noqa: E402
from hub.settings import HubSettings  # noqa: E402
from hub.streams import TARGETS_BUCKET, ensure_streams  # noqa: E402
from hub.subjects import subject  # noqa: E402


class Sink:
    """A minimal HTTP/1.1 receiver: counts statements, records latency from the statement timestamp."""

    def __init__(self, lrs: bool = False):
        self.lrs, self.count, self.latencies, self.first, self.last = lrs, 0, [], 0.0, 0.0
        self.port = free_port()
        self.decoder = msgspec.json.Decoder()

    async def start(self) -> Sink:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", self.port)
        return self

    async def serve(self, reader, writer) -> None:
        try:
            while await reader.readline():
                length = 0
                while (h := await reader.readline()) not in (b"\r\n", b""):
                    if h[:15].lower() == b"content-length:":
                        length = int(h[15:])
                body = await reader.readexactly(length)
                now = time.time()
                data = self.decoder.decode(body)
                items = data if isinstance(data, list) else [data]
                if not self.count:
                    self.first = now
                self.count += len(items)
                self.last = now
                if not self.lrs:
                    for st in items:
                        self.latencies.append(now - dt.datetime.fromisoformat(st["timestamp"]).timestamp())
                reply = msgspec.json.encode([st["id"] for st in items]) if self.lrs else b""
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(reply) + reply)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def play_video(course: str, user: int, when: dt.datetime) -> dict:
    return {"name": "play_video", "timestamp": when.isoformat(),
            "context": {"course_id": course, "org_id": "BenchX", "user_id": user, "username": f"u{user}",
                        "event_source": "browser", "path": "/event", "host": "localhost:18000"},
            "data": {"id": "0b9e39477cf34507a7a48f74be381fdd", "code": "html5", "currentTime": 1.5,
                     "duration": 195}}


def statement(n: int) -> bytes:
    return msgspec.json.encode({
        "id": str(uuid.uuid4()), "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "actor": {"objectType": "Agent", "account": {"homePage": "http://lms", "name": f"u{n % 97}"}},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/experienced", "display": {"en": "experienced"}},
        "object": {"objectType": "Activity", "id": f"http://lms/xblock/{n}"}})


async def integration(js, gid: str, kind: str, url: str, sites: list[str], **kw) -> None:
    kv = await js.key_value(TARGETS_BUCKET)
    await kv.put(gid, msgspec.json.encode(Target(id=gid, kind=kind, url=url, **kw)))
    await put_grant(js, Grant(id=gid, consumer=gid, protocol="xapi", sites=sites, delivery=kind))


async def wait_count(sink: Sink, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while sink.count < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def throughput(js, sink: Sink, gid: str, kind: str, n: int, **kw) -> float:
    site = f"bench{gid}"
    courses = [f"course-v1:BenchX+T{i}+run" for i in range(20)]
    await integration(js, gid, kind, f"http://127.0.0.1:{sink.port}", [site], **kw)
    await asyncio.sleep(2)  # let the deliverer create the consumer (policy: new messages only)
    futures = [await js.publish_async(subject("xapi", site, "BenchX", courses[i % 20], "play_video"),
                                      statement(i)) for i in range(n)]
    await asyncio.gather(*futures)
    await wait_count(sink, n, 120)
    elapsed = sink.last - sink.first
    return sink.count / elapsed if elapsed > 0 else 0.0


async def run(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(free_port(), Path(tmp) / "nats", name="bench").start()
        procs: list[subprocess.Popen] = []
        try:
            settings = HubSettings(nats_url=server.url)
            nc = await connect(settings, "bench")
            js = nc.jetstream(publish_async_max_pending=4000)
            await ensure_streams(js, settings)
            env = {k: v for k, v in os.environ.items() if not k.startswith("RTHUB_")}
            env.update(RTHUB_NATS_URL=server.url, RTHUB_ID_SECRET="bench", RTHUB_DATA_DIR=str(Path(tmp) / "data"),
                       RTHUB_ALLOWED_NETWORKS="127.0.0.1/32", RTHUB_METRICS_PORT="-1", RTHUB_BATCH_SIZE="20")
            for cmd in ("hub", "deliver"):
                procs.append(subprocess.Popen([sys.executable, "-m", "hub.cli", "--log-level", "WARNING", cmd],
                                              env=env, cwd=ROOT))

            # 1. end-to-end latency at a steady rate
            sink = await Sink().start()
            await integration(js, "lat", "webhook", f"http://127.0.0.1:{sink.port}/hook", ["default"],
                              secrets=[new_secret()], max_concurrency=16)
            hub_lat: list[float] = []

            async def on_statement(msg) -> None:  # where the hub's share of the latency ends
                ts = msgspec.json.decode(msg.data)["timestamp"]
                hub_lat.append(time.time() - dt.datetime.fromisoformat(ts).timestamp())

            tap = await nc.subscribe("xapi.default.>", cb=on_statement)
            await asyncio.sleep(3)  # hub and deliverer start, consumers created
            total = int(args.rate * args.seconds)
            courses = [f"course-v1:BenchX+L{i}+run" for i in range(20)]
            start = time.monotonic()
            pending = []
            for i in range(total):
                due = start + i / args.rate
                if (delay := due - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                event = play_video(courses[i % 20], 1000 + i % 500, dt.datetime.now(dt.UTC))
                course = event["context"]["course_id"]
                pending.append(await js.publish_async(
                    subject("lms", "default", "BenchX", course, "play_video"), msgspec.json.encode(event),
                    headers={"Nats-Msg-Id": f"lat-{i}"}))
            await asyncio.gather(*pending)
            sent_rate = total / (time.monotonic() - start)
            await wait_count(sink, total, 60)
            lat = sorted(sink.latencies[int(args.rate):])  # the first second is warm-up
            p50 = lat[len(lat) // 2] * 1000 if lat else float("nan")
            p99 = lat[int(len(lat) * 0.99)] * 1000 if lat else float("nan")
            await tap.unsubscribe()
            hub_sorted = sorted(hub_lat[int(args.rate):]) or [float("nan")]
            print(f"hub only (raw publish -> statement on xapi.): p50={hub_sorted[len(hub_sorted) // 2] * 1000:.1f}ms "
                  f"p99={hub_sorted[int(len(hub_sorted) * 0.99)] * 1000:.1f}ms")
            print(f"latency: published={total} at {sent_rate:.0f}/s delivered={sink.count} "
                  f"p50={p50:.1f}ms p99={p99:.1f}ms max={lat[-1] * 1000 if lat else 0:.1f}ms")

            # 2. one webhook, ordered per course
            hook = await Sink().start()
            hook_rate = await throughput(js, hook, "hook", "webhook", args.statements // 2, max_concurrency=16,
                                         secrets=[new_secret()])
            print(f"webhook: delivered={hook.count} of {args.statements // 2} statements_per_s={hook_rate:.0f}")

            # 3. one batched LRS
            lrs = await Sink(lrs=True).start()
            lrs_rate = await throughput(js, lrs, "lrs", "lrs", args.statements, batch_size=500,
                                        batch_wait_ms=50, max_concurrency=16)
            print(f"lrs (batch 500): delivered={lrs.count} of {args.statements} statements_per_s={lrs_rate:.0f}")
            await nc.close()
            print(f"webhook_statements_per_s={hook_rate:.0f}")
            print(f"p50_ms={p50:.1f}")
            print(f"p99_ms={p99:.1f}")
            print(f"statements_per_s={lrs_rate:.0f}")
        finally:
            await asyncio.to_thread(stop, procs)  # the deliverer closes its connections to the sinks
            server.stop()


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="raw events per second in part 1")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of part 1")
    parser.add_argument("--statements", type=int, default=50_000, help="statements for the LRS part")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
