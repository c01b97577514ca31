"""``rthub cluster up``: the compose.yaml topology as local processes, for machines without a container engine.

Three nats-server processes on loopback form one JetStream cluster (R3 streams: ``RTHUB_STREAM_REPLICAS=3``),
then two hubs, two deliverers, the portal and the demo publisher start, every one pointed at all three URLs.
Like ``rthub up`` and compose.yaml, the servers run in operator mode: one trust chain in
``<data_dir>/nats-auth`` (``hub.auth.AuthStore``), the same operator/resolver config on every node (each with its
own resolver directory, so account JWT updates pushed through the system account reach every node), and every
service connects with its own least-privilege ``.creds`` file. :class:`Cluster` is also what the fault drills use
to kill a stream leader.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hub.core.settings import HubSettings
from hub.ops.natsserver import NatsServer, free_port, port_free, wait_port
from hub.ops.up import spawn, stop_all

CLUSTER_NAME = "rthub"
# service process name (as in compose.yaml) -> the AuthStore user it connects as
SERVICE_USERS = {"hub": "hub", "deliverer": "deliverer", "portal": "portal", "demo": "publisher"}


class Cluster:
    """``size`` nats-servers with JetStream, clustered over loopback routes.

    ``operator=True`` (the default) runs them in operator mode with the trust chain of ``auth_dir`` (default
    ``base_dir``): every node gets the same ``AuthStore.server_config`` text and its own resolver directory.
    ``operator=False`` runs them without authentication.
    """

    def __init__(self, base_dir: Path | str, client_ports: list[int] | None = None,
                 route_ports: list[int] | None = None, size: int = 3, operator: bool = True,
                 auth_dir: Path | str | None = None):
        self.base_dir = Path(base_dir)
        self.client_ports = client_ports or [free_port() for _ in range(size)]
        self.route_ports = route_ports or [free_port() for _ in range(size)]
        self.auth = None
        if operator:
            from hub.auth import AuthStore

            self.auth = AuthStore.ensure(auth_dir if auth_dir is not None else self.base_dir)
            self.creds("publisher")  # its site's account must be in the config every node starts with
        routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.route_ports)
        self.nodes = []
        for i, port in enumerate(self.client_ports):
            store = self.base_dir / f"n{i + 1}"
            config = (f'cluster {{ name: "{CLUSTER_NAME}", listen: "127.0.0.1:{self.route_ports[i]}", '
                      f"routes: [{routes}] }}\n")
            if self.auth:
                config += self.auth.server_config(store / "resolver")
            self.nodes.append(NatsServer(port, store, name=f"n{i + 1}", config=config, parent_death=True))

    def creds(self, user: str) -> str | None:
        """Path of a user's ``.creds`` (``hub``, ``deliverer``, ``portal``, ``publisher``, ``admin``); ``None``
        without operator mode."""
        if not self.auth:
            return None
        site = os.environ.get("RTHUB_SITE", "default") if user == "publisher" else None
        return str(self.auth.service_creds(user, site=site))

    def service_env(self, service: str) -> dict[str, str]:
        """``RTHUB_NATS_CREDS`` for a service process (``hub``, ``deliverer``, ``portal``, ``demo``)."""
        creds = self.creds(SERVICE_USERS[service])
        return {"RTHUB_NATS_CREDS": creds} if creds else {}

    @property
    def url(self) -> str:
        """All client URLs, comma-separated: what every service's ``RTHUB_NATS_URL`` is set to."""
        return ",".join(n.url for n in self.nodes)

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def node(self, server_name: str) -> NatsServer:
        return next(n for n in self.nodes if n.name == server_name)

    def settings(self, **kw) -> HubSettings:
        """Settings for a client of the whole cluster; in operator mode it connects as ``admin``."""
        kw.setdefault("nats_creds", self.creds("admin"))
        return HubSettings(nats_url=self.url, stream_replicas=len(self.nodes), **kw)

    async def ready(self, timeout: float = 60.0) -> None:
        """Wait for a JetStream meta leader, then create the R3 streams (retrying while the cluster settles)."""
        from hub.core.natsconn import connect
        from hub.core.streams import ensure_streams

        settings = self.settings()
        nc = await connect(settings, "rthub-cluster")
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + timeout
            while True:
                try:
                    await ensure_streams(js, settings)
                    return
                except Exception:  # noqa: BLE001 - no meta leader yet / stream leaders being elected
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
        finally:
            await nc.close()


def run(args) -> int:
    data_dir = Path(args.data_dir).resolve()
    base = args.base_port
    client_ports = [base, base + 1, base + 2]
    route_ports = [base + 100, base + 101, base + 102]
    taken = [p for p in client_ports + route_ports if not port_free(p)]
    if taken:
        print(f"rthub cluster up: ports {taken} are taken; choose others with --base-port N "
              f"(uses N..N+2 for clients, N+100..N+102 for routes)", file=sys.stderr)
        return 2
    # the trust chain lives in <data_dir>/nats-auth, as with `rthub up` (the portal issues consumer creds from it)
    cluster = Cluster(data_dir / "cluster", client_ports, route_ports, operator=not args.no_auth,
                      auth_dir=data_dir).start()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "RTHUB_NATS_CREDS"}
    env.update(RTHUB_NATS_URL=cluster.url, RTHUB_STREAM_REPLICAS="3", RTHUB_DATA_DIR=str(data_dir))
    envs = {svc: {**env, **cluster.service_env(svc)} for svc in SERVICE_USERS}
    children: dict[str, subprocess.Popen] = {}
    service_of: dict[str, str] = {}

    def start(name: str, service: str, cmd: list[str]) -> None:
        service_of[name] = service
        children[name] = spawn(cmd, envs[service], logs / f"{name}.log")
    try:
        print("waiting for the JetStream cluster to elect a leader...", flush=True)
        asyncio.run(cluster.ready())
        for i in range(args.hubs):
            start(f"hub-{i + 1}", "hub", ["hub", "--metrics-port", str(args.metrics_port + i)])
        for i in range(args.deliverers):
            start(f"deliverer-{i + 1}", "deliverer", ["deliver"])
        if args.portal_port:
            start("portal", "portal", ["portal", "serve", "--port", str(args.portal_port)])
            wait_port(args.portal_port, 30)
        if args.demo_rate > 0:
            start("demo", "demo", ["demo", "--rate", str(args.demo_rate)])
        print("rthub cluster is up:")
        for node in cluster.nodes:
            print(f"  nats {node.name}      {node.url}  (routes 127.0.0.1:{route_ports[cluster.nodes.index(node)]}, "
                  f"data {node.store_dir})")
        for name, proc in children.items():
            extra = ""
            if name.startswith("hub-"):
                extra = f"  metrics http://127.0.0.1:{args.metrics_port + int(name[4:]) - 1}/metrics"
            elif name == "portal":
                extra = f"  http://127.0.0.1:{args.portal_port}/"
            print(f"  {name:<13} pid {proc.pid}{extra}")
        if cluster.auth:
            print(f"  credentials   {cluster.auth.path} (operator mode; admin creds: {cluster.creds('admin')})")
        else:
            print("  credentials   none: --no-auth, any client may connect")
        print(f"  RTHUB_NATS_URL={cluster.url}")
        print(f"  logs in {logs}; Ctrl-C stops everything.", flush=True)

        stop = {"now": False}

        def on_signal(signum, frame) -> None:
            stop["now"] = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop["now"]:
            for name, proc in list(children.items()):
                if proc.poll() is not None:  # restart policy "always", as in compose.yaml
                    print(f"rthub cluster: {name} exited with {proc.returncode}; restarting", file=sys.stderr,
                          flush=True)
                    children[name] = spawn(proc.args[3:], envs[service_of[name]], logs / f"{name}.log")
            time.sleep(0.5)
        print("stopping...", flush=True)
        return 0
    finally:
        stop_all(children)
        cluster.stop()


def add_parser(sub) -> None:
    p = sub.add_parser("cluster", help="run the production topology locally: 3-node NATS cluster and services")
    csub = p.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    up = csub.add_parser("up", help="3 nats-servers clustered on loopback, 2 hubs, 2 deliverers, portal, demo")
    up.add_argument("--data-dir", default=os.environ.get("RTHUB_DATA_DIR", ".rthub"), help="state and logs")
    up.add_argument("--base-port", type=int, default=14222,
                    help="client ports N..N+2, route ports N+100..N+102 (default 14222)")
    up.add_argument("--hubs", type=int, default=2)
    up.add_argument("--deliverers", type=int, default=2)
    up.add_argument("--portal-port", type=int, default=8080, help="0 = no portal")
    up.add_argument("--metrics-port", type=int, default=9470, help="hub N serves metrics on this port + N - 1")
    up.add_argument("--demo-rate", type=float, default=20.0, help="demo events per second (0 = no demo publisher)")
    up.add_argument("--no-auth", action="store_true",
                    help="run the servers without operator-mode authentication (any local client may connect)")
    up.set_defaults(func=run)
