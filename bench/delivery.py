"""Delivery benchmark: hub + deliverers running as processes, local receivers, a nats-server of its own.

Every figure comes from the same run on the same server, so they compare with each other (the machines
differ by 3-4x from one another):

1. The hub's rate: ``--hub-events`` raw ``play_video`` events pre-published to ``lms.``, counted as xAPI
   statements arrive on ``xapi.`` (one protocol granted).
2. Throughput to one webhook (ordered per course, 20 courses, concurrency 16): half of ``--statements``
   pre-published to ``xapi.``, then drained by one deliverer.
3. Throughput to one batched xAPI LRS endpoint (batch 500): ``--statements`` statements, same way, counted by
   the statements the LRS stored.
4. End-to-end latency: raw events published to ``lms.`` at a steady rate through the hub and the deliverer to
   a signed webhook; latency = arrival at the receiver minus the event's own timestamp (the statement keeps
   it), so it covers publish, hub, stream, deliverer and POST. The rate is half of the webhook capacity
   measured in 2 unless ``--rate`` is given; the line says which.
5. The same webhook integration as in 2 delivered by two ``rthub deliver`` processes sharing its course
   partitions (``RTHUB_PARTITIONS=--partitions``, default 8; 2-4 run with one unpartitioned deliverer, the
   default deployment).

Usage: ``.venv/bin/python bench/delivery.py [--rate R] [--seconds 10] [--statements 50000] [--hub-events 20000]
[--partitions 8]``.
The last lines print ``hub_events_per_s=``, ``webhook_statements_per_s=``, ``lrs_statements_per_s=``,
``webhook_two_deliverers_per_s=``, ``p50_ms=``, ``p99_ms=``, then the ceilings and ratios of issue 20:
``webhook_passthrough_per_s=`` (fetch from XAPI, POST each with the deliverer's HTTP client, ack: 16 at once),
``batched_webhook_statements_per_s=`` (batch 500), ``webhook_to_passthrough_ratio=``,
``batched_webhook_to_hub_ratio=``, ``lrs_to_hub_ratio=``, ``two_to_one_ratio=`` (two partitioned deliverers
over one), ``e2e_capacity_per_s=`` (raw events published as fast as they go -> signed webhooks, hub and two
deliverers running), ``p99_at_half_ms=`` / ``p99_at_80_ms=`` (raw publish -> webhook at 50% / 80% of it),
``raw_p99_at_half_ms=`` (JetStream publish -> pull subscriber at the half rate) and their ratio.
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

from hub.core.grants import Grant, Target, put_grant  # noqa: E402
from hub.core.natsconn import connect  # noqa: E402
from hub.core.settings import HubSettings  # noqa: E402
from hub.core.streams import ensure_streams  # noqa: E402
from hub.core.subjects import TARGETS_BUCKET, subject  # noqa: E402
from hub.deliver.transport.signing import new_secret  # noqa: E402
from hub.ops.natsserver import NatsServer, free_port  # noqa: E402


class Sink:
    """A minimal HTTP/1.1 receiver: counts statements, records latency from the statement timestamp
    (``received``: what a receiver does with each request's statements; bench/tenants.py keeps arrival times)."""

    def __init__(self, lrs: bool = False):
        self.lrs, self.count, self.latencies, self.first, self.last = lrs, 0, [], 0.0, 0.0
        self.port = free_port()
        self.decoder = msgspec.json.Decoder()

    async def start(self, backlog: int = 100) -> Sink:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", self.port, backlog=backlog)
        return self

    def received(self, items: list, now: float) -> None:
        if not self.count:
            self.first = now
        self.count += len(items)
        self.last = now
        if not self.lrs:
            for st in items:
                self.latencies.append(now - dt.datetime.fromisoformat(st["timestamp"]).timestamp())

    async def serve(self, reader, writer) -> None:
        try:
            while await reader.readline():
                length = 0
                while (h := await reader.readline()) not in (b"\r\n", b""):
                    if h[:15].lower() == b"content-length:":
                        length = int(h[15:])
                body = await reader.readexactly(length)
                data = self.decoder.decode(body)
                items = data if isinstance(data, list) else [data]
                self.received(items, time.time())
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


async def publish_raw(js, site: str, event: dict, msg_id: str) -> asyncio.Future:
    """One raw tracking event on ``lms.<site>.BenchX.<course>.<name>``, as the LMS backend publishes it."""
    return await js.publish_async(subject("lms", site, "BenchX", event["context"]["course_id"], event["name"]),
                                  msgspec.json.encode(event), headers={"Nats-Msg-Id": msg_id})


def statement(n: int, sid: str) -> bytes:
    return msgspec.json.encode({
        "id": sid, "timestamp": dt.datetime.now(dt.UTC).isoformat(),
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
    ids = [str(uuid.uuid4()) for _ in range(n)]  # as the hub publishes: the statement id as Nats-Msg-Id
    futures = [await js.publish_async(subject("xapi", site, "BenchX", courses[i % 20], "play_video"),
                                      statement(i, ids[i]), headers={"Nats-Msg-Id": ids[i]}) for i in range(n)]
    await asyncio.gather(*futures)
    await wait_count(sink, n, 120)
    elapsed = sink.last - sink.first
    return sink.count / elapsed if elapsed > 0 else 0.0


async def webhook_passthrough(nc, js, sink: Sink, n: int, concurrency: int = 16) -> float:
    """The deliverer's ceiling: fetch from the XAPI stream, POST each statement with the deliverer's own HTTP
    client (``hub.deliver.transport.client.Client``, keep-alive) to the same kind of receiver, ack; ``concurrency``
    POSTs at once as the webhook integration (no ordering, signing, retry or state)."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    from hub.deliver.transport.client import Client

    site = "benchpass"
    await js.add_consumer("XAPI", ConsumerConfig(durable_name="benchpass", filter_subject=f"xapi.{site}.>",
                                                 ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW,
                                                 max_ack_pending=1000))
    courses = [f"course-v1:BenchX+P{i}+run" for i in range(20)]
    ids = [str(uuid.uuid4()) for _ in range(n)]
    futures = [await js.publish_async(subject("xapi", site, "BenchX", courses[i % 20], "play_video"),
                                      statement(i, ids[i]), headers={"Nats-Msg-Id": ids[i]}) for i in range(n)]
    await asyncio.gather(*futures)
    psub = await js.pull_subscribe_bind("benchpass", stream="XAPI")
    http = Client(connect_timeout=5, max_idle=concurrency)
    host = {"host": f"127.0.0.1:{sink.port}", "content-type": "application/json"}
    queue: asyncio.Queue = asyncio.Queue(maxsize=2 * concurrency)

    async def worker() -> None:
        while (msg := await queue.get()) is not None:
            await http.post("http", "127.0.0.1", sink.port, "127.0.0.1", "/hook", host, msg.data)
            await msg.ack()

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    fetched = 0
    while fetched < n:
        try:
            msgs = await psub.fetch(min(100, n - fetched), timeout=5)  # batch < max_ack_pending: it fills
        except TimeoutError:
            break
        for msg in msgs:
            await queue.put(msg)
        fetched += len(msgs)
    for _ in workers:
        await queue.put(None)
    await asyncio.gather(*workers)
    await http.aclose()
    await wait_count(sink, n, 30)
    elapsed = sink.last - sink.first
    return sink.count / elapsed if elapsed > 0 else 0.0


async def e2e_sink(js, site: str) -> Sink:
    """A webhook receiver with its own integration on ``site`` (signed, 16 at once, ordered per course)."""
    sink = await Sink().start()
    await integration(js, f"e2e{site}", "webhook", f"http://127.0.0.1:{sink.port}/hook", [site],
                      secrets=[new_secret()], max_concurrency=16)
    return sink


async def e2e_capacity(js, n: int) -> float:
    """Everything running: ``n`` raw events published to ``lms.`` as fast as they go, the rate at which they
    arrive as signed webhooks (first to last arrival). Each event has its own timestamp: statement ids derive
    from name, actor, time and object, and repeats are dropped as duplicates (before, 500 distinct events of
    25,000 arrived, and the "capacity" was 500 over the publishing time, ~250/s)."""
    sink = await e2e_sink(js, "benchcap")
    await asyncio.sleep(3)  # consumers created
    now = dt.datetime.now(dt.UTC)
    futures = []
    for i in range(n):
        event = play_video(f"course-v1:BenchX+C{i % 20}+run", i % 500, now + dt.timedelta(microseconds=i))
        futures.append(await publish_raw(js, "benchcap", event, f"cap-{i}"))
    await asyncio.gather(*futures)
    await wait_count(sink, n, 120)
    if sink.count < n:
        print(f"end-to-end capacity: only {sink.count} of {n} arrived within 120 s", flush=True)
    return sink.count / (sink.last - sink.first) if sink.last > sink.first else 0.0


async def e2e_p99(js, site: str, rate: float, seconds: float) -> float:
    """p99 in ms of raw publish -> webhook receipt at a steady ``rate`` (the first second is warm-up)."""
    sink = await e2e_sink(js, site)
    await asyncio.sleep(3)
    total = int(rate * seconds)
    began = time.monotonic()
    pending = []
    for i in range(total):
        if (delay := began + i / rate - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        event = play_video(f"course-v1:BenchX+{site}{i % 20}+run", 1000 + i % 500, dt.datetime.now(dt.UTC))
        pending.append(await publish_raw(js, site, event, f"{site}-{i}"))
    await asyncio.gather(*pending)
    await wait_count(sink, total, 60)
    if sink.count < total:
        print(f"p99 at {rate:.0f}/s: only {sink.count} of {total} arrived within 60 s", flush=True)
    lat = sorted(sink.latencies[int(rate):])
    return lat[int(len(lat) * 0.99)] * 1000 if lat else float("nan")


async def hub_rate(js, nc, n: int) -> float:
    """Raw events pre-published, then the rate at which the hub turns them into statements."""
    site = "benchhub"
    await put_grant(js, Grant(id="benchhub", consumer="bench", protocol="xapi", sites=[site]))
    arrived: list[float] = []

    async def on_statement(_msg) -> None:
        arrived.append(time.monotonic())

    tap = await nc.subscribe(f"xapi.{site}.>", cb=on_statement)
    await asyncio.sleep(1)  # the hub sees the grant
    now = dt.datetime.now(dt.UTC)
    futures = [await publish_raw(js, site, play_video(f"course-v1:BenchX+H{i % 20}+run", i % 500, now), f"hub-{i}")
               for i in range(n)]
    await asyncio.gather(*futures)
    deadline = time.monotonic() + 120
    while len(arrived) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await tap.unsubscribe()
    return (len(arrived) - 1) / (arrived[-1] - arrived[0]) if len(arrived) > 1 else 0.0


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
                       RTHUB_ALLOWED_NETWORKS="127.0.0.1/32", RTHUB_METRICS_PORT="-1", RTHUB_BATCH_SIZE="20",
                       RTHUB_SITES=msgspec.json.encode({site: "http://localhost:18000" for site in (
                           "default", "benchhub", "benchcap", "benchhalf", "bencheighty")}).decode())

            def start(cmd: str) -> None:
                procs.append(subprocess.Popen([sys.executable, "-m", "hub.cli", "--log-level", "WARNING", cmd],
                                              env=env, cwd=ROOT))

            start("hub")
            await asyncio.sleep(2)
            # 1. the hub alone (no deliverer yet competes for the CPU)
            hub_eps = await hub_rate(js, nc, args.hub_events)
            print(f"hub: {args.hub_events} raw events -> xAPI statements, events_per_s={hub_eps:.0f}")
            start("deliver")

            # 2. one webhook, ordered per course, one deliverer
            hook = await Sink().start()
            hook_rate = await throughput(js, hook, "hook", "webhook", args.statements // 2, max_concurrency=16,
                                         secrets=[new_secret()])
            print(f"webhook: delivered={hook.count} of {args.statements // 2} statements_per_s={hook_rate:.0f}")
            passthrough = await webhook_passthrough(nc, js, await Sink().start(), args.statements // 2)
            print(f"webhook pass-through (fetch, POST with the same client, ack): statements_per_s={passthrough:.0f}")

            # 2b. one webhook receiving batches (batch 500), same statements
            batched = await Sink().start()
            batched_rate = await throughput(js, batched, "hookb", "webhook", args.statements // 2,
                                            max_concurrency=16, batch_size=500, batch_wait_ms=50,
                                            secrets=[new_secret()])
            print(f"batched webhook (batch 500): delivered={batched.count} statements_per_s={batched_rate:.0f}")

            # 3. one batched LRS
            lrs = await Sink(lrs=True).start()
            lrs_rate = await throughput(js, lrs, "lrs", "lrs", args.statements, batch_size=500,
                                        batch_wait_ms=50, max_concurrency=16)
            print(f"lrs (batch 500): delivered={lrs.count} of {args.statements} statements_per_s={lrs_rate:.0f}")

            # 4. end-to-end latency at a steady rate
            rate = args.rate or max(50.0, hook_rate / 2)
            sink = await Sink().start()
            await integration(js, "lat", "webhook", f"http://127.0.0.1:{sink.port}/hook", ["default"],
                              secrets=[new_secret()], max_concurrency=16)
            hub_lat: list[float] = []

            async def on_statement(msg) -> None:  # where the hub's share of the latency ends
                ts = msgspec.json.decode(msg.data)["timestamp"]
                hub_lat.append(time.time() - dt.datetime.fromisoformat(ts).timestamp())

            tap = await nc.subscribe("xapi.default.>", cb=on_statement)
            await asyncio.sleep(3)  # consumers created
            total = int(rate * args.seconds)
            courses = [f"course-v1:BenchX+L{i}+run" for i in range(20)]
            began = time.monotonic()
            pending = []
            for i in range(total):
                due = began + i / rate
                if (delay := due - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                event = play_video(courses[i % 20], 1000 + i % 500, dt.datetime.now(dt.UTC))
                pending.append(await publish_raw(js, "default", event, f"lat-{i}"))
            await asyncio.gather(*pending)
            sent_rate = total / (time.monotonic() - began)
            await wait_count(sink, total, 60)
            lat = sorted(sink.latencies[int(rate):])  # the first second is warm-up
            p50 = lat[len(lat) // 2] * 1000 if lat else float("nan")
            p99 = lat[int(len(lat) * 0.99)] * 1000 if lat else float("nan")
            await tap.unsubscribe()
            hub_sorted = sorted(hub_lat[int(rate):]) or [float("nan")]
            print(f"latency at {rate:.0f} events/s ({'--rate' if args.rate else 'half the webhook capacity'}): "
                  f"published={total} at {sent_rate:.0f}/s delivered={sink.count} p50={p50:.1f}ms p99={p99:.1f}ms "
                  f"max={lat[-1] * 1000 if lat else 0:.1f}ms; hub share p50="
                  f"{hub_sorted[len(hub_sorted) // 2] * 1000:.1f}ms p99={hub_sorted[int(len(hub_sorted) * 0.99)] * 1000:.1f}ms")
            # 5. the same kind of webhook integration, delivered by two processes sharing its course partitions
            await asyncio.to_thread(stop, procs[1:])  # the single deliverer (the hub stays)
            del procs[1:]
            env["RTHUB_PARTITIONS"] = str(args.partitions)
            start("deliver")
            start("deliver")
            await asyncio.sleep(3)  # both announced: each takes half of the partitions of a new integration
            hook2 = await Sink().start()
            two_rate = await throughput(js, hook2, "hook2", "webhook", args.statements // 2, max_concurrency=16,
                                        secrets=[new_secret()])
            print(f"webhook, two deliverers ({args.partitions} course partitions): delivered={hook2.count} of "
                  f"{args.statements // 2} statements_per_s={two_rate:.0f}")
            # 6. end-to-end capacity (everything running: hub and two deliverers), then p99 at 50% and 80% of it,
            # beside the raw JetStream p99 at the half rate (publish -> pull subscriber, bench/pipeline.py)
            from bench.pipeline import raw_latency, raw_stream

            capacity = await e2e_capacity(js, args.statements // 2)
            print(f"end-to-end capacity (raw publish -> webhook, everything running): {capacity:.0f}/s")
            p99_half = await e2e_p99(js, "benchhalf", capacity / 2, args.seconds)
            p99_80 = await e2e_p99(js, "bencheighty", capacity * 0.8, args.seconds)
            await raw_stream(js)
            raw_half = await raw_latency(nc, js, int(capacity / 2), args.seconds)
            raw_p99_half = raw_half[int(len(raw_half) * 0.99)] if raw_half else float("nan")
            await nc.close()
            print(f"hub_events_per_s={hub_eps:.0f}")
            print(f"webhook_statements_per_s={hook_rate:.0f}")
            print(f"lrs_statements_per_s={lrs_rate:.0f}")
            print(f"webhook_two_deliverers_per_s={two_rate:.0f}")
            print(f"p50_ms={p50:.1f}")
            print(f"p99_ms={p99:.1f}")
            print(f"webhook_passthrough_per_s={passthrough:.0f}")
            print(f"batched_webhook_statements_per_s={batched_rate:.0f}")
            print(f"webhook_to_passthrough_ratio={hook_rate / passthrough:.2f}")
            print(f"batched_webhook_to_hub_ratio={batched_rate / hub_eps:.2f}")
            print(f"lrs_to_hub_ratio={lrs_rate / hub_eps:.2f}")
            print(f"two_to_one_ratio={two_rate / hook_rate:.2f}")
            print(f"e2e_capacity_per_s={capacity:.0f}")
            print(f"p99_at_half_ms={p99_half:.1f}")
            print(f"p99_at_80_ms={p99_80:.1f}")
            print(f"raw_p99_at_half_ms={raw_p99_half:.2f}")
            print(f"p99_at_half_to_raw_ratio={p99_half / raw_p99_half:.1f}")
        finally:
            await asyncio.to_thread(stop, procs)  # the deliverers close their connections to the sinks
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
    parser.add_argument("--rate", type=float, default=0.0,
                        help="raw events per second in the latency part (default: half the webhook capacity)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the latency part")
    parser.add_argument("--statements", type=int, default=50_000, help="statements for the LRS part (half: webhook)")
    parser.add_argument("--hub-events", type=int, default=20_000, help="raw events for the hub's rate")
    parser.add_argument("--partitions", type=int, default=8,
                        help="RTHUB_PARTITIONS of the deliverers (course partitions; 0: one process per ordered "
                             "integration)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
