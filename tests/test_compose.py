"""compose.yaml cannot rot unseen, and the composed topology works: run against ``rthub cluster up`` here,
or against the real composed stack when ``RTHUB_STACK_NATS_URL`` is set (compose.yaml's ``tests`` profile).
Both run NATS in operator mode: every client here connects with a service's ``.creds``."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
import yaml
from eventtracking.tracker import Tracker

from hub.auth import AuthStore
from hub.cli import build_parser
from hub.core.grants import Grant, delete_grant, put_grant
from hub.core.natsconn import connect
from hub.core.settings import HubSettings, env_names
from hub.core.subjects import GRANTS_BUCKET, RAW_STREAM, filter_subject
from hub.ops.natsserver import port_free
from lms_publisher.backend import NatsBackend
from tests.helpers import ROOT, all_settings, rthub_env, unique, wait_for, watchers_have

COMPOSE = ROOT / "compose.yaml"
# variables set in compose.yaml that no rthub settings struct reads, each documented in docs/deployment.md
OTHER_VARS = {
    "postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"},
    "portal": {"DATABASE_URL"},  # read by the portal as the fallback for RTHUB_DATABASE_URL
    # point the stack tests at the composed stack; switch on tests/compose; the receivers' subnet; the database
    "tests": {"RTHUB_STACK_NATS_URL", "RTHUB_STACK_PUBLISHER_CREDS", "RTHUB_COMPOSE_TESTS", "RTHUB_RECEIVERS_SUBNET",
              "RTHUB_TEST_DATABASE_URL"},
    "nats-auth-init": set(),
}
INIT = "nats-auth-init"
STREAMS_INIT = "streams-init"  # creates the R3 streams once the cluster is healthy, before any service starts
AUTH_CONF = "/etc/nats/rthub/auth.conf"  # where every NATS node reads the generated operator config
# which AuthStore user each rthub service connects as
SERVICE_USER = {"hub": "hub", "deliver": "deliverer", "portal": "portal", "demo": "publisher", "streams": "admin"}
TEST_IMAGE = "rthub-test:local"  # the Dockerfile's test target: the tests service and the receivers it delivers to
RECEIVERS = ("webhook", "lrs")


def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_every_rthub_service_runs_a_real_subcommand():
    parser = build_parser()
    checked = 0
    for name, svc in services().items():
        if svc.get("image") != "rthub:local":
            continue
        command = svc["command"]
        if name == "tests":
            assert command[:3] == ["python", "-m", "pytest"]
            continue
        if name == INIT:
            for line in init_rthub_commands():
                assert callable(parser.parse_args(line).func), line
            continue
        assert command[0] == "rthub", name
        args = parser.parse_args(command[1:])  # exits (fails the test) on an unknown subcommand or option
        assert callable(args.func), name
        checked += 1
    assert checked == 7  # streams-init, 2 hubs, 2 deliverers, portal, demo: nothing silently dropped
    assert {s["command"][1] for s in services().values() if s.get("image") == "rthub:local"} >= {
        "hub", "deliver", "portal", "demo"}


def test_every_variable_set_is_one_the_settings_read():
    known = env_names(*all_settings())
    docs = (ROOT / "docs" / "deployment.md").read_text()
    for name, svc in services().items():
        for var in svc.get("environment") or {}:
            assert var in known or var in OTHER_VARS.get(name, set()), f"{name} sets {var}, which nothing reads"
            assert f"`{var}`" in docs, f"{var} (set by {name}) is not documented in docs/deployment.md"


def test_topology_replicas_health_and_restart():
    svcs = services()
    assert {"nats-1", "nats-2", "nats-3", "postgres", "hub-1", "hub-2", "deliverer-1", "deliverer-2", "portal",
            "demo"} <= set(svcs)
    for node in ("nats-1", "nats-2", "nats-3"):
        cmd = svcs[node]["command"]
        assert cmd[cmd.index("--routes") + 1].count("nats://") == 3
        assert "--jetstream" in cmd and svcs[node]["healthcheck"]
    for name, svc in svcs.items():
        if name == "tests" or name in RECEIVERS:
            assert svc["profiles"] == ["tests"] and svc["image"] == TEST_IMAGE
            continue
        if name in (INIT, STREAMS_INIT):  # one-shot steps every long-running service waits for
            assert svc["restart"] == "no"
            continue
        assert svc["restart"] == "unless-stopped", name
        if svc.get("image") == "rthub:local":
            assert svc["depends_on"][STREAMS_INIT] == {"condition": "service_completed_successfully"}, name
        if name != "demo":
            assert svc.get("healthcheck"), f"{name} has no health check"
        env = svc.get("environment") or {}
        if svc.get("image") == "rthub:local":
            assert env["RTHUB_STREAM_REPLICAS"] == "3"
            assert env["RTHUB_NATS_URL"].count("nats://") == 3


def init_rthub_commands() -> list[list[str]]:
    """Every ``rthub ...`` invocation in the init service's script (``$$(...)`` substitutions included)."""
    script = services()[INIT]["command"][-1]
    found = re.findall(r"rthub ([^>)\"\n]+)", script)
    assert found, script
    return [shlex.split(cmd) for cmd in found]


def test_the_test_receivers_stop_on_sigterm(tmp_path):
    """Issue 20 item 12: `docker compose stop` sends SIGTERM to the receiver (PID 1 of its container): it must
    stop at once with exit 0, not wait for the 10 s kill (exit 137)."""
    from hub.ops.natsserver import free_port, wait_port

    for kind in ("webhook", "lrs"):
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "tests.compose.receivers", kind, str(port)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_port(port, 20)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err.decode()[-2000:]
        assert f"{kind} receiver stopped".encode() in out


def test_operator_mode_wired():
    """An init service creates the trust chain and the server config; every NATS node loads that config and
    depends on the init; every rthub service depends on it too and connects with its own creds file."""
    svcs = services()
    init = svcs[INIT]
    script = init["command"][-1]
    commands = [" ".join(c) for c in init_rthub_commands()]
    assert "auth init" in commands
    server_config = next(c for c in init_rthub_commands() if c[:2] == ["auth", "server-config"])
    resolver_dir = server_config[server_config.index("--resolver-dir") + 1]
    # the generated text lands where the nodes read it: <volume>/auth.conf
    conf_vol = next(v.split(":")[0] for v in init["volumes"] if v.split(":")[1] == "/nats-conf")
    assert re.search(r"server-config .*> /nats-conf/auth\.conf", script) and "mv /nats-conf/auth.conf.tmp " \
        "/nats-conf/auth.conf" in script
    assert init["restart"] == "no" and init["environment"]["RTHUB_DATA_DIR"] == "/data"
    store_vol = next(v.split(":")[0] for v in init["volumes"] if v.split(":")[1] == "/data/nats-auth")
    for node in ("nats-1", "nats-2", "nats-3"):
        svc = svcs[node]
        cmd = svc["command"]
        assert cmd[cmd.index("-c") + 1] == AUTH_CONF, node
        assert f"{conf_vol}:{Path(AUTH_CONF).parent}:ro" in svc["volumes"], node
        # the resolver directory is inside the node's own data volume: one per node
        data = next(v for v in svc["volumes"] if v.startswith(f"{node}:"))
        assert resolver_dir.startswith(data.split(":")[1] + "/"), (node, resolver_dir)
        assert cmd[cmd.index("--store_dir") + 1] == data.split(":")[1]
        assert svc["depends_on"][INIT] == {"condition": "service_completed_successfully"}, node
        assert store_vol not in " ".join(svc["volumes"]), f"{node} must not see the private keys"
    # each creds file the init copies, by destination path inside the init container
    copied = {dest: user for user, dest in re.findall(r"cp \"\$\$\(rthub auth creds (\w+)(?: --site \S+)?\)\" (\S+)", script)}
    assert "auth creds publisher --site default" in script  # the LMS's creds: one site only
    assert "mv /data/nats-auth/operator.nk /operator/" in script  # the portal's volume keeps no operator seed
    assert len(copied) >= 4, script
    mounts = {v.split(":")[0]: v.split(":")[1] for v in init["volumes"]}
    for name, svc in svcs.items():
        if svc.get("image") not in ("rthub:local", TEST_IMAGE) or name == INIT or name in RECEIVERS:
            continue
        assert svc["depends_on"][INIT] == {"condition": "service_completed_successfully"}, name
        creds = svc["environment"].get("RTHUB_NATS_CREDS")
        assert creds, f"{name} connects without credentials"
        user = "admin" if name == "tests" else SERVICE_USER[svc["command"][1]]
        # the file comes from a volume the init fills: find which, and which user's creds it holds there
        vol, target = max(((v.split(":")[0], v.split(":")[1]) for v in svc["volumes"]
                           if creds.startswith(v.split(":")[1] + "/")), key=lambda m: len(m[1]))  # innermost mount
        if vol == store_vol:  # the portal mounts the store itself (it issues consumer credentials)
            assert name == "portal" and creds == f"{target}/{user}.creds"
            assert f"rthub auth creds {user}" in script
            continue
        assert copied[mounts[vol] + creds[len(target):]] == user, name
        named = [v for v in svc["volumes"] if not v.startswith(("/", ".", "$"))]  # bind mounts aside (tests only)
        assert named == [f"{vol}:{target}:ro"], f"{name} should mount its own creds only"
        assert name == "tests" or named == svc["volumes"], name
        others = [n for n, o in svcs.items() if n not in (name, INIT) and f"{vol}:" in " ".join(o.get("volumes", []))]
        assert all(svcs[o]["environment"].get("RTHUB_NATS_CREDS") == creds for o in others), \
            f"{vol} shared with {others}"
    stack_creds = svcs["tests"]["environment"]["RTHUB_STACK_PUBLISHER_CREDS"]
    assert copied[mounts["creds-tests"] + stack_creds[len("/creds"):]] == "publisher"


# ---- the running topology ------------------------------------------------------------------------------

def _free_base() -> int:
    for _ in range(200):
        base = random.randrange(20000, 40000)
        if all(port_free(p) for p in (base, base + 1, base + 2, base + 100, base + 101, base + 102)):
            return base
    raise RuntimeError("no free port range")


@dataclass
class Stack:
    url: str
    admin_creds: str
    publisher_creds: str
    data_dir: Path | None  # the local cluster's data directory (holds the auth store); None for compose

    @property
    def node_urls(self) -> list[str]:
        return self.url.split(",")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The composed stack, else a fresh ``rthub cluster up`` (3 nodes in operator mode, 2 hubs, no portal/demo)."""
    if os.environ.get("RTHUB_STACK_NATS_URL"):
        yield Stack(os.environ["RTHUB_STACK_NATS_URL"], os.environ["RTHUB_NATS_CREDS"],
                    os.environ["RTHUB_STACK_PUBLISHER_CREDS"], None)
        return
    base = _free_base()
    data = tmp_path_factory.mktemp("cluster")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub.cli", "cluster", "up", "--data-dir", str(data), "--base-port", str(base),
         "--portal-port", "0", "--demo-rate", "0", "--deliverers", "1", "--metrics-port", str(base + 200)],
        env=rthub_env("", RTHUB_ID_SECRET="test-secret"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    try:
        for raw in proc.stdout:
            lines.append(raw.decode())
            if "Ctrl-C stops everything" in lines[-1]:
                break
        url = next((ln.split("=", 1)[1].strip() for ln in lines if "RTHUB_NATS_URL=" in ln), None)
        assert url, "".join(lines)
        assert "operator mode" in "".join(lines)
        auth = data / "nats-auth"
        yield Stack(url, str(auth / "admin.creds"), str(auth / "publisher-default.creds"), data)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
        assert proc.returncode == 0, out
        assert "restarting" not in "".join(lines) + out, "a service crashed and was restarted:\n" + out


@pytest.mark.slow
async def test_stack_lms_backend_to_statements(stack, tmp_path):
    """LMS backend -> R3 raw stream -> two hubs -> xAPI and Caliper subjects: every event once, by id."""
    settings = HubSettings(nats_url=stack.url, nats_creds=stack.admin_creds)
    nc = await connect(settings, "stack-test")
    js = nc.jetstream()
    info = await js.stream_info(RAW_STREAM)
    assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2
    course = f"course-v1:edX+{unique('stack')}+2024"
    gid = unique("stack")
    got: dict[str, list[str]] = {"xapi": [], "caliper": []}

    async def on_msg(msg):
        got[msg.subject.split(".", 1)[0]].append(json.loads(msg.data)["id"])

    revision = 0
    for protocol in got:
        await nc.subscribe(filter_subject(protocol, course=course), cb=on_msg)
        revision = await put_grant(js, Grant(id=f"{gid}-{protocol}", consumer="stack", protocol=protocol,
                                             courses=[course]))
    # the hubs drop what no grant they know covers: publish once both have been sent the two grants
    try:
        await wait_for(lambda: watchers_have(js, GRANTS_BUCKET, revision), 30, "both hubs watching the new grants",
                       0.2)
    except AssertionError as exc:  # which watcher is behind, and since when
        infos = await js.consumers_info(f"KV_{GRANTS_BUCKET}")
        raise AssertionError(f"{exc} (revision {revision}): " + "; ".join(
            f"{i.name} delivered={i.delivered.stream_seq} pending={i.num_pending} ack_pending={i.num_ack_pending}"
            f" push_bound={i.push_bound} deliver_subject={i.config.deliver_subject} created={i.created}"
            f" last_active={i.delivered.last_active}" for i in infos)) from None
    backend = NatsBackend(nats_url=stack.url, nats_creds=stack.publisher_creds, spool_dir=str(tmp_path),
                          site="default")
    n = 300
    try:
        tracker = Tracker(backends={"rthub": backend})
        tracker.enter_context("r", {"course_id": course, "org_id": "edX",
                                    "user_id": 3, "username": "edx"})
        for i in range(n):
            tracker.emit("play_video", {"id": "v1", "currentTime": i, "duration": 195})
        try:
            await wait_for(lambda: len(got["xapi"]) >= n and len(got["caliper"]) >= n, 60, "statements of both protocols")
        except AssertionError as exc:  # say what arrived and what the hubs dropped, to tell a drop from a stall
            raise AssertionError(f"{exc}: {len(got['xapi'])} xAPI, {len(got['caliper'])} Caliper of {n};"
                                 f" hubs: {_hub_counters(stack)}") from None
        await wait_for(lambda: backend.counts["published"] == n, 10, "acks")
    finally:
        backend.close()
        for protocol in got:
            await delete_grant(js, f"{gid}-{protocol}")
        await nc.close()
    assert len(got["xapi"]) == n and len(set(got["xapi"])) == n
    assert len(got["caliper"]) == n and len(set(got["caliper"])) == n


def _hub_counters(stack: Stack) -> dict[str, list[str]]:
    """The filter/error counters of each compose hub (its /metrics), for a failure message."""
    import urllib.request

    out = {}
    for host in ("hub-1", "hub-2") if stack.data_dir is None else ():
        try:
            text = urllib.request.urlopen(f"http://{host}:9464/metrics", timeout=5).read().decode()
        except OSError as exc:
            out[host] = [f"unreachable: {exc}"]
            continue
        out[host] = [ln for ln in text.splitlines() if ln.startswith(("rthub_filtered", "rthub_internal_errors",
                                                                      "rthub_publish_errors", "rthub_processed"))]
    return out


async def _refused(url: str, **opts) -> str:
    """Connect once; return the server's refusal (fails the test if the connection is accepted)."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(f"{type(exc).__name__}: {exc}")

    try:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3,
                                error_cb=on_error, **opts)
    except Exception as exc:  # noqa: BLE001 - the refusal is what this returns
        return " ".join([f"{type(exc).__name__}: {exc}", *errors])
    await nc.close()
    raise AssertionError(f"{url} accepted a connection with {sorted(opts) or 'no credentials'}")


@pytest.mark.slow
async def test_stack_operator_mode(stack):
    """Every node refuses a client without credentials; a service's creds file connects, may do its job and
    nothing else (the publisher adds raw events of its site, reads nothing, may not subscribe to statements)."""
    for url in stack.node_urls:
        assert "authorization violation" in (await _refused(url)).lower()
    denied: list[str] = []

    async def on_error(exc: Exception) -> None:
        denied.append(str(exc))

    settings = HubSettings(nats_url=stack.url, nats_creds=stack.publisher_creds)
    nc = await connect(settings, "stack-publisher", error_cb=on_error)
    try:
        ack = await nc.jetstream().publish(f"lms.default.edX.{unique('c')}.stack_probe", b"{}")
        assert ack.stream == RAW_STREAM  # the HUB account's stream, not $G
        with pytest.raises(Exception):  # noqa: B017 - not even account or stream info
            await nc.jetstream().account_info(timeout=1)
        await nc.subscribe("xapi.>")
        await nc.flush()
        await wait_for(lambda: any("permissions violation" in e.lower() and "xapi.>" in e for e in denied), 5,
                       "the server refusing the publisher's subscription to xapi.>")
    finally:
        await nc.close()


@pytest.mark.slow
async def test_stack_revocation_reaches_every_node(stack):
    """An account JWT update pushed through the system account on one node cuts off a user on another node."""
    if stack.data_dir is None:
        pytest.skip("needs the auth store, which in compose only nats-auth-init and the portal mount")
    auth = AuthStore.ensure(stack.data_dir)
    grant = Grant(id=unique("revoke"), consumer="stack", protocol="xapi", courses=["course-v1:edX+Rev+2024"])
    auth.open_tenant(grant)
    await auth.push(None, [auth.hub_jwt, auth.open_tenant(grant)], servers=[stack.node_urls[0]])
    creds, user = auth.consumer_creds(grant, expires_in=300)
    opts = AuthStore.consumer_connect_options(grant, creds)
    closed: list[bool] = []

    async def on_closed() -> None:
        closed.append(True)

    nc = await nats.connect(stack.node_urls[2], allow_reconnect=False, closed_cb=on_closed, **opts)
    try:
        await nc.flush()
        answer = (await auth.push(None, [auth.close_tenant(grant.id)], servers=[stack.node_urls[0]]))[0]
        assert answer.get("code") == 200, answer
        await wait_for(lambda: bool(closed), 5, "the revoked user on the third node being disconnected")
        assert "authorization violation" in (await _refused(stack.node_urls[2], **opts)).lower()
    finally:
        await nc.close()


def test_secrets_required_and_ports_on_loopback():
    """No working default secret: compose refuses to start without them; published ports are configurable and
    bound to 127.0.0.1 unless the operator says otherwise; metrics listen beyond the container's loopback."""
    text = COMPOSE.read_text()
    svcs = services()
    for var in ("RTHUB_ID_SECRET", "RTHUB_SECRET_KEY", "RTHUB_SECRETS_KEY", "POSTGRES_PASSWORD"):
        assert re.search(rf"\${{{var}:\?[^}}]+}}", text), var
        assert not re.search(rf"\${{{var}:?-", text), f"{var} has a default"
    assert svcs["hub-1"]["environment"]["RTHUB_ID_SECRET"].startswith("${RTHUB_ID_SECRET:?")
    assert svcs["portal"]["environment"]["RTHUB_SECRET_KEY"].startswith("${RTHUB_SECRET_KEY:?")
    for name in ("portal", "deliverer-1", "deliverer-2"):  # the portal seals endpoint secrets, deliverers open them
        assert svcs[name]["environment"]["RTHUB_SECRETS_KEY"].startswith("${RTHUB_SECRETS_KEY:?"), name
    assert ":${POSTGRES_PASSWORD:?" in svcs["portal"]["environment"]["DATABASE_URL"]
    published = {name: svc["ports"] for name, svc in svcs.items() if svc.get("ports")}
    assert published == {"nats-1": ["${RTHUB_BIND_ADDRESS:-127.0.0.1}:${RTHUB_NATS_PORT:-4222}:4222"],
                         "portal": ["${RTHUB_BIND_ADDRESS:-127.0.0.1}:${RTHUB_PORTAL_PORT:-8080}:8080"]}
    assert "${RTHUB_NATS_PORT:-4222}" in svcs["portal"]["environment"]["RTHUB_PUBLIC_NATS_URL"]
    for name in ("hub-1", "hub-2", "deliverer-1", "deliverer-2"):
        assert svcs[name]["environment"]["RTHUB_METRICS_HOST"] == "0.0.0.0", name
    build = yaml.safe_load(text)["x-rthub-image"]["build"]
    assert build == {"context": ".", "target": "prod"} and (ROOT / "Dockerfile").exists()
    assert "dockerfile_inline" not in text


def test_the_unprivileged_image_owns_every_volume_it_writes():
    """The prod image runs as uid 10001: a fresh named volume takes the owner of the image's directory, so every
    volume an rthub service mounts writable must be a directory the Dockerfile creates for that user."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    made = re.search(r"RUN mkdir -p ([^&]+?)&& chown -R 10001:10001 ([^&]+?) &&", dockerfile, re.S)
    assert made, "the Dockerfile creates the mount points for uid 10001"
    owned = set(made.group(1).replace("\\", " ").split()) | set(made.group(2).split())
    for name, svc in services().items():
        if svc.get("image") != "rthub:local":
            continue
        for volume in svc.get("volumes", []):
            source, target, *mode = volume.split(":")
            if source.startswith((".", "/")) or mode == ["ro"]:
                continue  # bind mounts and read-only volumes are not written
            assert target in owned or any(target.startswith(d + "/") for d in owned), (name, target)
