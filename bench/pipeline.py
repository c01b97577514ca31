"""Pipeline benchmark: in-LMS backend -> LMS_RAW -> hub(s) -> XAPI and CALIPER streams, against the raw
JetStream ceiling measured in the same run on the same nats-server.

1. Raw ceiling, throughput: N events pre-published to a stream of their own (file storage, like LMS_RAW), then
   a nats-py pull subscriber ``fetch``es them in batches of the hub's batch size and ``ack``s each (no wait for
   the ack's confirmation, as the hub); the clock runs from the first fetch to the last ack flushed.
2. Throughput with one hub process, then with two: N events are sent through ``NatsBackend.send()`` and the
   clock stops when both protocol streams hold a statement for every one of them.
3. Raw ceiling, latency at 1,000 events/s: ``js.publish_async`` of the same events to that stream, received by
   a pull subscriber that keeps one pull request outstanding (each message arrives as soon as it is stored).
4. Latency at 1,000 events/s: ``send()`` to a plain nats-py subscriber of the course's xAPI subject.
Latencies skip the first second (warm-up).
5. Learner groups (issue 22): one hub's throughput as in 2, events of 100,000 distinct learners, without groups
   and then with 100,000 members in 1,000 groups loaded in ``rthub_learners`` and a group grant per protocol
   (one group: its members' statements get their group copies too), in the order without, with, with, without
   (the second "without" has the members loaded but no grant uses a group, so the hub looks nothing up): the
   means give ``groups_ratio=`` (with / without; 1.0 = no slower). The shared machine's load
   moves these end-to-end figures by tens of percent, so the hub's own CPU per event is measured too, in this
   process with no NATS (``Hub._translate`` over 20,000 events, best of 5, alternated 3 times):
   ``groups_cpu_ratio=`` (with / without; 1.0 = no slower).

The hub's ceiling (issue 20): bench/passthrough.py, a process that fetches the raw events as the hub does,
publishes one message per protocol with the same headers and acks (no parsing or translation), fed the same
way (``send()`` while it runs). Hub and pass-through alternate, twice each; the best of each is kept.

Runs its own nats-server (free port, temp store). Usage: ``python bench/pipeline.py [N]`` (default 50,000).
The last lines are ``raw_fetch_ack_per_s=``, ``events_per_s=`` (one hub), ``hub_to_raw_ratio=``,
``passthrough_per_s=``, ``hub_to_passthrough_ratio=``, ``passthrough_to_raw_ratio=``,
``raw_p99_ms=``, ``p99_ms=`` (send() to subscriber) and ``p99_to_raw_ratio=``: ratios hold up better than
absolute figures on a shared machine.
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
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig  # noqa: E402

from hub.core.grants import Grant, put_grant  # noqa: E402
from hub.core.natsconn import connect  # noqa: E402
from hub.core.protocols import NAMES as PROTOCOL_NAMES  # noqa: E402
from hub.core.settings import HubSettings  # noqa: E402
from hub.core.streams import ensure_streams  # noqa: E402
from hub.core.subjects import RAW_STREAM, filter_subject  # noqa: E402
from hub.ops.natsserver import NatsServer, free_port  # noqa: E402
from lms_publisher.backend import NatsBackend  # noqa: E402

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def event(course: str, i: int, user: int | None = None) -> dict:
    # xAPI ids derive from verb + actor + timestamp (the Open edX recipe), not the course: each stage gets its
    # own learner, or its statements would be dropped as duplicates of the previous stage's.
    return {"name": "play_video", "timestamp": (T0 + dt.timedelta(milliseconds=i)).isoformat(),
            "data": {"id": "0b9e39477cf34507a7a48f74be381fdd", "currentTime": i % 195, "duration": 195,
                     "code": "b7xgknqkQk8"},
            "context": {"course_id": course, "org_id": "edX", "user_id": zlib.crc32(course.encode()) if user is None else user,
                        "username": "edx",
                        "event_source": "browser", "session": "993110e9c27848a545da74a74114158d",
                        "agent": "Mozilla/5.0", "host": "localhost:18000", "ip": "10.0.0.1", "path": "/event",
                        "page": f"http://localhost:18000/courses/{course}/courseware/"}}


PYSPY = os.environ.get("BENCH_PYSPY")  # a folder: each hub / pass-through runs under `py-spy record` (raw stacks)


def profiled(cmd: list[str], name: str) -> list[str]:
    if not PYSPY:
        return cmd
    return ["py-spy", "record", "-r", "250", "-f", "raw", "-o", f"{PYSPY}/{name}-{uuid.uuid4().hex[:4]}.txt", "--",
            *cmd]


def start_hubs(url: str, n: int, log_dir: Path) -> list[subprocess.Popen]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTHUB_")}
    env.update(RTHUB_NATS_URL=url, RTHUB_ID_SECRET="bench")
    return [subprocess.Popen(profiled([sys.executable, "-m", "hub.cli", "hub"], "hub"), env=env, cwd=ROOT,
                             stdout=open(log_dir / f"hub{i}.log", "ab"), stderr=subprocess.STDOUT)
            for i in range(n)]


def stop_hubs(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.send_signal(signal.SIGINT if PYSPY else signal.SIGTERM)  # py-spy writes its profile on SIGINT
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            print(f"hub {p.pid} did not stop within 30 s of SIGTERM; killed", file=sys.stderr)
            p.kill()
            p.wait()


_runs = iter(range(1, 1000))


async def load_members(js, members: int, groups: int) -> None:
    """``members`` learners of site ``default`` in ``groups`` groups (learner u in group ``g<u % groups>``),
    written straight to the learners bucket's subjects (what ``rthub group import`` writes, faster)."""
    from hub.core.groups import Group, Learner, learner_key, put_group

    for g in range(groups):
        await put_group(js, Group(name=f"g{g}", site="default"))
    for u in range(1, members + 1):
        await js.publish_async(f"$KV.rthub_learners.{learner_key('default', str(u))}",
                               msgspec.json.encode(Learner(groups=[f"g{u % groups}"])))
        if u % 5000 == 0:
            await js.publish_async_completed()
    await js.publish_async_completed()


async def stored(js, stream: str, course: str) -> int:
    prefix = "xapi" if stream == "XAPI" else "caliper"
    info = await js.stream_info(stream, subjects_filter=filter_subject(prefix, course=course))
    return sum((info.state.subjects or {}).values())


async def grant_course(js, course: str) -> None:
    for protocol in PROTOCOL_NAMES:
        await put_grant(js, Grant(id=uuid.uuid4().hex[:12], consumer="bench", protocol=protocol, courses=[course]))


def start_passthrough(url: str, log_dir: Path) -> list[subprocess.Popen]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTHUB_")}
    return [subprocess.Popen(profiled([sys.executable, str(ROOT / "bench" / "passthrough.py"), url], "passthrough"),
                             env=env, cwd=ROOT,
                             stdout=open(log_dir / "passthrough.log", "ab"), stderr=subprocess.STDOUT)]


async def throughput(url: str, js, hubs: int, n: int, tmp: Path, learners: int = 0, groups: list[str] = (),
                     passthrough: bool = False) -> float:
    """Events per second from the first ``send()`` until both protocol streams hold one message per event,
    through ``hubs`` hubs, or (``passthrough``) through bench/passthrough.py fed the same way; ``learners``:
    events of that many distinct users; ``groups``: a grant per protocol restricted to these learner groups is
    added (the plain grants stay what is counted)."""
    course = f"course-v1:edX+{'P' if passthrough else 'T'}{hubs}{uuid.uuid4().hex[:6]}+2024"
    await grant_course(js, course)
    for protocol in PROTOCOL_NAMES if groups else ():
        await put_grant(js, Grant(id=uuid.uuid4().hex[:12], consumer="bench-group", protocol=protocol,
                                  courses=[course], learner_groups=list(groups)))
    # The hub's and the pass-through's durable consumers outlive their processes: without a purge each run would
    # also work off the raw events the previous runs (of the other) left in its consumer.
    await js.purge_stream(RAW_STREAM)
    logs = [tmp / "passthrough.log"] if passthrough else [tmp / f"hub{i}.log" for i in range(hubs)]
    ready = b"passthrough ready" if passthrough else b"hub running"
    for log in logs:
        log.unlink(missing_ok=True)
    procs = start_passthrough(url, tmp) if passthrough else start_hubs(url, hubs, tmp)
    try:
        # hub start-up (imports, consumer, grant and learner mirrors loaded) is not what is measured
        deadline = time.monotonic() + 120
        while not all(log.exists() and ready in log.read_bytes() for log in logs):
            if time.monotonic() > deadline:
                raise RuntimeError("hubs did not start within 120 s")
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        # statement ids derive from actor and time: with the same learners in every run, each run gets its own
        # hours, or its statements would be dropped as duplicates of the previous run's
        shift = next(_runs) * 10 * n
        events = [event(course, shift + i, 1 + i % learners if learners else None) for i in range(n)]
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


RAW_BENCH_STREAM = "RAWBENCH"  # the raw ceiling's own stream: the hubs never see it


async def raw_stream(js) -> None:
    await js.add_stream(StreamConfig(name=RAW_BENCH_STREAM, subjects=["rawbench.>"], storage=StorageType.FILE,
                                     duplicate_window=120))


async def raw_fetch_ack(nc, js, n: int, batch: int) -> float:
    """Messages per second a plain pull subscriber fetches and acks, with N messages already stored."""
    course = f"course-v1:edX+R{uuid.uuid4().hex[:6]}+2024"
    subject = f"rawbench.fetch.{course}"
    for i in range(n):
        await js.publish_async(subject, msgspec.json.encode(event(course, i)))
    await js.publish_async_completed()
    psub = await js.pull_subscribe(subject, durable="rawfetch", stream=RAW_BENCH_STREAM,
                                   config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=4 * batch))
    done = 0
    started = time.perf_counter()
    while done < n:
        msgs = await psub.fetch(batch, timeout=5)
        for msg in msgs:
            await msg.ack()
        done += len(msgs)
    await nc.flush()
    elapsed = time.perf_counter() - started
    await psub.unsubscribe()
    return n / elapsed


async def raw_latency(nc, js, rate: int = 1000, seconds: float = 10.0) -> list[float]:
    """Publish (``js.publish_async``) -> pull subscriber latency in ms, at a steady rate."""
    course = f"course-v1:edX+P{uuid.uuid4().hex[:6]}+2024"
    subject = f"rawbench.latency.{course}"
    total = int(rate * seconds)
    await js.add_consumer(RAW_BENCH_STREAM, ConsumerConfig(durable_name="rawlat", ack_policy=AckPolicy.EXPLICIT,
                                                           filter_subject=subject))
    sent: dict[str, float] = {}
    lat: list[float] = []

    async def on_msg(msg) -> None:
        if not msg.reply:  # a status message (the request's end), not a stored message
            return
        t = sent.get(msgspec.json.decode(msg.data)["timestamp"])
        if t is not None:
            lat.append((time.perf_counter() - t) * 1000)
        await msg.ack()

    sub = await nc.subscribe(nc.new_inbox(), cb=on_msg)
    request = {"batch": total, "expires": int((seconds + 30) * 1e9)}
    await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{RAW_BENCH_STREAM}.rawlat", msgspec.json.encode(request),
                     reply=sub.subject)
    await nc.flush()
    start = time.perf_counter()
    for i in range(total):
        e = event(course, i)
        sent[e["timestamp"]] = time.perf_counter()
        await js.publish_async(subject, msgspec.json.encode(e))
        delay = start + (i + 1) / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    await js.publish_async_completed()
    deadline = time.monotonic() + 20
    while len(lat) < total and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await sub.unsubscribe()
    return sorted(lat[int(rate * 1):])  # the first second warms up


def hub_cpu_per_event(n: int, with_groups: bool, rounds: int = 5) -> float:
    """Microseconds of the hub's own work per raw event (``Hub._translate``: decode, filter, learner lookup,
    translate to every protocol), in this process, no NATS: the machine's other load cannot tilt it. With
    groups: 100,000 members in 1,000 groups in the membership index and a group grant per protocol."""
    import types

    from hub.core.grants import GrantIndex
    from hub.core.groups import Learner
    from hub.route.service import Hub

    hub = Hub(HubSettings(id_secret="bench", metrics_port=-1))
    course = "course-v1:edX+CPU+2024"
    grants = [Grant(id=f"p{p}", consumer="b", protocol=p, courses=[course]) for p in PROTOCOL_NAMES]
    if with_groups:
        grants += [Grant(id=f"g{p}", consumer="b", protocol=p, courses=[course], learner_groups=["g1"])
                   for p in PROTOCOL_NAMES]
        for u in range(1, 100_001):
            hub.membership.apply(("default", str(u)), Learner(groups=[f"g{u % 1000}"]))
    hub.grants = types.SimpleNamespace(index=GrantIndex(grants))
    subj = f"lms.default.edX.{course}.play_video"
    msgs = [types.SimpleNamespace(subject=subj, data=msgspec.json.encode(event(course, i, 1 + i % 100_000)))
            for i in range(n)]
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()  # this process's CPU: other processes' load does not count
        for msg in msgs:
            hub._translate(msg)
        best = min(best, time.process_time() - started)
    return best / n * 1e6


def p99(lat: list[float]) -> float:
    return lat[int(len(lat) * 0.99)]


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        server = NatsServer(free_port(), tmp / "nats", name="bench").start()
        try:
            settings = HubSettings(nats_url=server.url)
            nc = await connect(settings, "bench")
            js = nc.jetstream()
            await ensure_streams(js, settings)
            await raw_stream(js)
            raw = await raw_fetch_ack(nc, js, n, settings.batch_size)
            print(f"raw JetStream fetch+ack: {raw:.0f} msgs/s", file=sys.stderr, flush=True)
            # hub and pass-through alternate, twice each: the machine's drift falls on both alike
            hub_runs, pass_runs = [], []
            for _ in range(2):
                pass_runs.append(await throughput(server.url, js, 1, n, tmp, passthrough=True))
                print(f"pass-through: {pass_runs[-1]:.0f} events/s", file=sys.stderr, flush=True)
                hub_runs.append(await throughput(server.url, js, 1, n, tmp))
                print(f"one hub: {hub_runs[-1]:.0f} events/s", file=sys.stderr, flush=True)
            one, passthrough = max(hub_runs), max(pass_runs)
            two = await throughput(server.url, js, 2, n, tmp)
            print(f"two hubs: {two:.0f} events/s", file=sys.stderr, flush=True)
            # A B B A: the shared machine drifts (and streams grow) over the run; this order cancels a linear drift
            plain = [await throughput(server.url, js, 1, n, tmp, learners=100_000)]
            await load_members(js, 100_000, 1_000)
            grouped = [await throughput(server.url, js, 1, n, tmp, learners=100_000, groups=["g1"]) for _ in range(2)]
            plain.append(await throughput(server.url, js, 1, n, tmp, learners=100_000))
            print(f"groups: without {plain} with 100,000 members in 1,000 groups {grouped} events/s",
                  file=sys.stderr, flush=True)
            cpu = {g: [] for g in (False, True)}
            for _ in range(3):  # alternated
                for g in (False, True):
                    cpu[g].append(hub_cpu_per_event(min(n, 20_000), g))
            raw_lat = await raw_latency(nc, js)
            print(f"raw publish -> pull subscriber p99: {p99(raw_lat):.2f} ms", file=sys.stderr, flush=True)
            lat = await latency(server.url, nc, js, tmp)
            await nc.close()
        finally:
            server.stop()
    print(f"events={n} raw events -> xAPI + Caliper, backend send() to both streams stored")
    print(f"events_per_s_two_hubs={two:.0f}")
    print(f"latency_samples={len(lat)} raw_latency_samples={len(raw_lat)} at 1000 events/s")
    print(f"raw_p50_ms={raw_lat[len(raw_lat) // 2]:.2f}")
    print(f"p50_ms={lat[len(lat) // 2]:.2f}")
    print(f"raw_fetch_ack_per_s={raw:.0f}")
    print(f"events_per_s={one:.0f}")
    print(f"hub_to_raw_ratio={one / raw:.2f}")
    print(f"passthrough_per_s={passthrough:.0f}")
    print(f"hub_to_passthrough_ratio={one / passthrough:.2f}")
    print(f"passthrough_to_raw_ratio={passthrough / raw:.2f}")
    print(f"raw_p99_ms={p99(raw_lat):.2f}")
    print(f"p99_ms={p99(lat):.2f}")
    print(f"p99_to_raw_ratio={p99(lat) / p99(raw_lat):.2f}")
    print(f"events_per_s_100k_learners={sum(plain) / 2:.0f}")
    print(f"events_per_s_100k_members_1000_groups={sum(grouped) / 2:.0f}")
    print(f"groups_ratio={sum(grouped) / sum(plain):.2f}")
    print(f"hub_us_per_event={min(cpu[False]):.1f}")
    print(f"hub_us_per_event_100k_members_1000_groups={min(cpu[True]):.1f}")
    print(f"groups_cpu_ratio={min(cpu[True]) / min(cpu[False]):.3f}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000))
