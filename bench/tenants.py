"""Tenant scale: does the first delivery to a webhook depend on how many other integrations exist?

For each N of ``--tenants`` (default 100, 1000, 5000), in a nats-server of its own: N webhook integrations, each
on its own site, all pointing at one local receiver; one ``rthub deliver`` process; then

1. ``ready_s``: from the deliverer's start until its ``integrations_delivering`` gauge reads N;
2. ``idle_cpu_percent``: the deliverer's CPU (user + system, % of one core) over ``--idle-seconds`` with no
   traffic, once it runs every integration;
3. one statement per integration, published at ``--rate`` per second straight to its protocol subject;
   ``first_delivery_p50_ms`` / ``first_delivery_p99_ms``: publish -> arrival at the receiver, per integration.

Usage: ``.venv/bin/python bench/tenants.py [--tenants 100,1000,5000] [--rate 200] [--idle-seconds 10]``.
Each N prints ``tenants=``, ``ready_s=``, ``idle_cpu_percent=``, ``first_delivery_p50_ms=``,
``first_delivery_p99_ms=``, ``delivered=`` and ``posts=``; the last lines print the growth against the smallest N
measured in the same run (``p99_ratio_<N>_to_<smallest>=``, ``idle_cpu_ratio_<N>_to_<smallest>=``).
"""

from __future__ import annotations

import argparse
import asyncio
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

from bench.delivery import Sink  # noqa: E402
from hub.core.grants import Grant, Target, put_grant  # noqa: E402
from hub.core.natsconn import connect  # noqa: E402
from hub.core.settings import HubSettings  # noqa: E402
from hub.core.streams import ensure_streams  # noqa: E402
from hub.core.subjects import TARGETS_BUCKET, subject  # noqa: E402
from hub.deliver.transport.signing import new_secret  # noqa: E402
from hub.ops.natsserver import NatsServer, free_port  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


class Receiver(Sink):
    """bench/delivery.py's receiver, keeping the first arrival time of each statement id and the POST count."""

    def __init__(self):
        super().__init__()
        self.arrived: dict[str, float] = {}
        self.posts = 0

    async def start(self) -> Receiver:
        await super().start(backlog=4096)
        return self

    def received(self, items: list, now: float) -> None:
        self.posts += 1
        for st in items:
            self.arrived.setdefault(st["id"], now)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


async def gauge(port: int, name: str) -> float | None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        text = (await reader.read()).decode()
        writer.close()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"rthub_{name}{{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


async def create(js, n: int, url: str) -> list[tuple[str, str]]:
    kv = await js.key_value(TARGETS_BUCKET)
    out = [(f"t{i}", f"tenant{i}") for i in range(n)]

    async def one(gid: str, site: str) -> None:
        await kv.put(
            gid,
            msgspec.json.encode(Target(id=gid, kind="webhook", url=f"{url}/{gid}", secrets=[new_secret()])),
        )
        await put_grant(js, Grant(id=gid, consumer=gid, protocol="xapi", sites=[site], delivery="webhook"))

    for i in range(0, n, 200):
        await asyncio.gather(*(one(g, s) for g, s in out[i : i + 200]))
    return out


async def measure(n: int, args) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(free_port(), Path(tmp) / "nats", name="tenants").start()
        proc = None
        try:
            settings = HubSettings(nats_url=server.url)
            nc = await connect(settings, "bench")
            js = nc.jetstream(publish_async_max_pending=4000)
            await ensure_streams(js, settings)
            receiver = await Receiver().start()
            tenants = await create(js, n, f"http://127.0.0.1:{receiver.port}/hook")
            metrics_port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("RTHUB_")}
            env.update(
                RTHUB_NATS_URL=server.url,
                RTHUB_DATA_DIR=str(Path(tmp) / "data"),
                RTHUB_ALLOWED_NETWORKS="127.0.0.1/32",
                RTHUB_METRICS_PORT=str(metrics_port),
            )
            began = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "hub.cli", "--log-level", "WARNING", "deliver"], env=env, cwd=ROOT
            )
            ready = float("nan")
            while time.monotonic() - began < args.ready_timeout and proc.poll() is None:
                if (await gauge(metrics_port, "integrations_delivering") or 0) >= n:
                    ready = time.monotonic() - began
                    break
                await asyncio.sleep(0.5)
            result = {"tenants": n, "ready_s": ready}
            if ready != ready:  # not ready: nothing more is measurable
                print(
                    f"tenants={n}: the deliverer did not run every integration within {args.ready_timeout:.0f} s "
                    f"(delivering={await gauge(metrics_port, 'integrations_delivering')})",
                    flush=True,
                )
                return result | {
                    "idle_cpu_percent": float("nan"),
                    "first_delivery_p50_ms": float("nan"),
                    "first_delivery_p99_ms": float("nan"),
                    "delivered": 0,
                    "posts": 0,
                }
            await asyncio.sleep(args.settle)  # start-up work (consumer creation, first pulls) is over
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            await asyncio.sleep(args.idle_seconds)
            idle = 100 * (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
            sent: dict[str, float] = {}
            pending = []
            start = time.monotonic()
            for i, (gid, site) in enumerate(tenants):
                if (delay := start + i / args.rate - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                sid = str(uuid.uuid4())
                body = msgspec.json.encode(
                    {
                        "id": sid,
                        "timestamp": "2024-05-01T10:00:00Z",
                        "actor": {"objectType": "Agent", "account": {"homePage": "http://lms", "name": "u1"}},
                        "verb": {"id": "http://adlnet.gov/expapi/verbs/experienced"},
                        "object": {"objectType": "Activity", "id": f"http://lms/{gid}"},
                    }
                )
                sent[sid] = time.time()
                pending.append(
                    await js.publish_async(
                        subject("xapi", site, "Org", "course-v1:Org+C+run", "play_video"),
                        body,
                        headers={"Nats-Msg-Id": sid},
                    )
                )
            await asyncio.gather(*pending)
            deadline = time.monotonic() + args.deliver_timeout
            while time.monotonic() < deadline and not all(s in receiver.arrived for s in sent):
                await asyncio.sleep(0.1)
            lat = [(receiver.arrived[s] - t) * 1000 for s, t in sent.items() if s in receiver.arrived]
            lat += [args.deliver_timeout * 1000] * (
                len(sent) - len(lat)
            )  # never arrived: counted at the timeout
            await nc.close()
            return result | {
                "idle_cpu_percent": idle,
                "first_delivery_p50_ms": percentile(lat, 0.5),
                "first_delivery_p99_ms": percentile(lat, 0.99),
                "delivered": sum(s in receiver.arrived for s in sent),
                "posts": receiver.posts,
            }
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(proc.wait, 30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            server.stop()


async def run(args) -> None:
    results = []
    for n in (int(x) for x in args.tenants.split(",")):
        r = await measure(n, args)
        results.append(r)
        for key in (
            "tenants",
            "ready_s",
            "idle_cpu_percent",
            "first_delivery_p50_ms",
            "first_delivery_p99_ms",
            "delivered",
            "posts",
        ):
            value = r[key]
            print(f"{key}={value:.1f}" if isinstance(value, float) else f"{key}={value}", flush=True)
    base = results[0]
    for r in results[1:]:
        for key, short in (("first_delivery_p99_ms", "p99"), ("idle_cpu_percent", "idle_cpu")):
            ratio = r[key] / base[key] if base[key] else float("nan")
            print(f"{short}_ratio_{r['tenants']}_to_{base['tenants']}={ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", default="100,1000,5000", help="numbers of integrations, comma-separated")
    parser.add_argument(
        "--rate", type=float, default=200.0, help="statements per second (one per integration)"
    )
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="window of the idle CPU measure")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds between ready and the idle measure"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=600.0, help="seconds to wait for every integration"
    )
    parser.add_argument(
        "--deliver-timeout", type=float, default=60.0, help="seconds to wait for the deliveries"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
