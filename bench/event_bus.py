"""Event bus benchmark: this NATS JetStream backend vs edx-event-bus-redis, same run, same machine.

The bench starts a nats-server (JetStream, file storage) and a redis-server (append-only file, fsync every
second) of its own on free ports, then for each backend, in a worker process configured like an LMS (Django,
openedx-events, ``EVENT_BUS_PRODUCER_CONFIG`` for COURSE_ENROLLMENT_CREATED):

1. produce: ``--events`` signals sent as fast as possible; the time until the backend has stored them all
   (NATS: every publish acknowledged by JetStream; Redis: every XADD returned), ``produce_per_s``;
2. consume: openedx-events' ``consume_events`` command in a subprocess drains them through a receiver;
   ``consume_per_s`` from the first to the last receipt;
3. latency: ``--rate`` events per second for ``--seconds`` while the consumer runs; produce -> receiver latency
   = receipt time minus the event's own time (``metadata.time``), ``p50_ms``/``p99_ms``.

Usage: ``.venv/bin/python bench/event_bus.py [--events 5000] [--rate 200] [--seconds 10]``. Prints
``name=value`` lines per backend and the ratios ``nats_vs_redis_*`` (throughput: >1 is NATS faster; p99: <1
is NATS lower). Without redis-server on the PATH the Redis side is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "learning-course-enrollment-lifecycle"


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def _lines(path: Path) -> list[tuple[float, float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out.append((float(parts[0]), float(parts[1])))
    return out


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# ---------------------------------------------------------------------------------------------- worker
def worker(backend: str, events: int, rate: float, seconds: float, tmp: Path) -> dict:
    """One backend's three measurements, in this process (Django configured for ``backend``)."""
    tmp.mkdir(parents=True, exist_ok=True)
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.event_bus_site.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from datetime import UTC, datetime

    from opaque_keys.edx.keys import CourseKey
    from openedx_events.event_bus import get_producer
    from openedx_events.learning.data import CourseData, CourseEnrollmentData, UserData, UserPersonalData
    from openedx_events.learning.signals import COURSE_ENROLLMENT_CREATED

    course = CourseKey.from_string("course-v1:edX+DemoX+Demo_Course")

    def send(i: int) -> None:
        user = UserData(
            id=i, is_active=True, pii=UserPersonalData(username=f"u{i}", email=f"u{i}@example.org")
        )
        COURSE_ENROLLMENT_CREATED.send_event(
            enrollment=CourseEnrollmentData(
                user=user,
                course=CourseData(course_key=course, display_name="Demo"),
                mode="audit",
                is_active=True,
                creation_date=datetime.now(UTC),
            )
        )

    producer = get_producer()
    sent = [0]

    def stored() -> int:
        """NATS: publishes acknowledged by JetStream (the worker thread's count); Redis: XADD is synchronous in
        send(), so what was sent is stored."""
        return producer.stats().get("published", 0) if backend == "nats" else sent[0]

    def produce(n: int) -> None:
        for _ in range(n):
            send(sent[0])
            sent[0] += 1

    produce(1)  # warm up: the connection and the stream exist before anything is timed
    _wait(lambda: stored() >= 1, 30, f"{backend}: the first event stored")

    t0 = time.perf_counter()
    produce(events)
    _wait(lambda: stored() >= events + 1, 120, f"{backend}: {events} events stored")
    produce_s = time.perf_counter() - t0

    received = tmp / f"{backend}-received.txt"
    env = {**os.environ, "BENCH_RECEIVED": str(received), "PYTHONPATH": str(ROOT)}
    extra = {"consumer_name": "bench-1", "check_backlog": True} if backend == "redis" else {}
    cmd = [sys.executable, "-m", "django", "consume_events", "-t", TOPIC, "-g", "bench"]
    if extra:
        cmd += ["--extra", json.dumps(extra)]
    log = open(tmp / f"{backend}-consumer.log", "wb")  # noqa: SIM115
    consumer = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: len(_lines(received)) >= events + 1, 300, f"{backend}: {events} events consumed")
        got = _lines(received)
        consume_s = got[-1][1] - got[1][1]

        n = int(rate * seconds)
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # pacing the fixed rate, not synchronisation
            produce(1)
        _wait(lambda: len(_lines(received)) >= events + 1 + n, 120, f"{backend}: the fixed-rate events")
        lat = [(recv - sent_at) * 1000 for sent_at, recv in _lines(received)[events + 1 :]]
    finally:
        consumer.kill()
        consumer.wait()
    if hasattr(producer, "prepare_for_shutdown"):
        producer.prepare_for_shutdown()
    return {
        "produce_per_s": events / produce_s,
        "consume_per_s": (events - 1) / consume_s,
        "latencies_ms": lat,
    }


# ---------------------------------------------------------------------------------------------- servers
def start_redis(tmp: Path) -> tuple[subprocess.Popen, str] | None:
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    from hub.ops.natsserver import free_port

    port = free_port()  # never 6379: a machine's own Redis is left alone
    (tmp / "redis").mkdir()
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--dir",
            str(tmp / "redis"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import socket

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    _wait(up, 15, "redis-server")
    return proc, f"redis://127.0.0.1:{port}/0"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="alternate the backends this many times (the machine's "
        "load changes during a run; both see the same)",
    )
    ap.add_argument("--worker", choices=("nats", "redis"), help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.events, args.rate, args.seconds, Path(args.tmp))))
        return 0

    sys.path.insert(0, str(ROOT))
    from hub.ops.natsserver import NatsServer, free_port

    tmp = Path(tempfile.mkdtemp(prefix="rthub-eventbus-bench-"))
    nats = NatsServer(free_port(), tmp / "nats", name="eventbus-bench").start()
    redis = start_redis(tmp)
    results: dict[str, dict] = {}
    try:
        backends = {"nats": {"BENCH_NATS_URL": nats.url, "BENCH_SPOOL": str(tmp / "spool")}}
        if redis is None:
            print("redis: skipped (no redis-server on the PATH)")
        else:
            backends["redis"] = {"BENCH_REDIS_URL": redis[1]}
        runs: dict[str, list[dict]] = {b: [] for b in backends}
        for round_ in range(args.rounds):
            for backend, env in backends.items():
                env = {
                    **os.environ,
                    **env,
                    "BENCH_BACKEND": backend,
                    "BENCH_PREFIX": f"b{uuid.uuid4().hex[:8]}",
                    "PYTHONPATH": str(ROOT),
                }
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        backend,
                        "--events",
                        str(args.events),
                        "--rate",
                        str(args.rate),
                        "--seconds",
                        str(args.seconds),
                        "--tmp",
                        str(tmp / f"{backend}-{round_}"),
                    ],
                    env=env,
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                )
                if out.returncode != 0:
                    print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
                    raise SystemExit(f"{backend} worker failed")
                runs[backend].append(json.loads(out.stdout.strip().splitlines()[-1]))
        for backend, rs in runs.items():
            lat = [x for r in rs for x in r["latencies_ms"]]
            results[backend] = r = {
                "produce_per_s": sum(x["produce_per_s"] for x in rs) / len(rs),
                "consume_per_s": sum(x["consume_per_s"] for x in rs) / len(rs),
                "p50_ms": _percentile(lat, 0.5),
                "p99_ms": _percentile(lat, 0.99),
            }
            print(
                f"{backend}: {args.events} events x {args.rounds} rounds; latency at {args.rate:.0f}/s for "
                f"{args.seconds:.0f}s per round ({len(lat)} events)"
            )
            for key in ("produce_per_s", "consume_per_s", "p50_ms", "p99_ms"):
                print(f"{backend}_{key}={r[key]:.1f}")
        if "redis" in results:
            n, r = results["nats"], results["redis"]
            print(f"nats_vs_redis_produce={n['produce_per_s'] / r['produce_per_s']:.2f}")
            print(f"nats_vs_redis_consume={n['consume_per_s'] / r['consume_per_s']:.2f}")
            print(f"nats_vs_redis_p99={n['p99_ms'] / r['p99_ms']:.2f}")
    finally:
        nats.stop()
        if redis is not None:
            redis[0].terminate()
            redis[0].wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
