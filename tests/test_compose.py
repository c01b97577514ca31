"""compose.yaml cannot rot unseen, and the composed topology works: run against ``rthub cluster up`` here,
or against the real composed stack when ``RTHUB_STACK_NATS_URL`` is set (compose.yaml's ``tests`` profile)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import pytest
import yaml
from eventtracking.tracker import Tracker

from hub.cli import build_parser
from hub.grants import Grant, delete_grant, put_grant
from hub.natsconn import connect
from hub.natsserver import port_free
from hub.settings import HubSettings, env_names
from hub.streams import RAW_STREAM
from hub.subjects import filter_subject
from lms_publisher.backend import NatsBackend
from tests.helpers import ROOT, rthub_env, unique, wait_for

COMPOSE = ROOT / "compose.yaml"
# variables set in compose.yaml that no rthub settings struct reads, each documented in docs/deployment.md
OTHER_VARS = {
    "postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"},
    "portal": {"DATABASE_URL"},  # read by the portal as the fallback for RTHUB_DATABASE_URL
    "tests": {"RTHUB_STACK_NATS_URL"},  # tells tests/test_compose.py to test the composed stack
}


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
        assert command[0] == "rthub", name
        args = parser.parse_args(command[1:])  # exits (fails the test) on an unknown subcommand or option
        assert callable(args.func), name
        checked += 1
    assert checked == 6  # 2 hubs, 2 deliverers, portal, demo: nothing silently dropped
    assert {s["command"][1] for s in services().values() if s.get("image") == "rthub:local"} >= {
        "hub", "deliver", "portal", "demo"}


def test_every_variable_set_is_one_the_settings_read():
    known = env_names()
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
        if name == "tests":
            assert svc["profiles"] == ["tests"]
            continue
        assert svc["restart"] == "unless-stopped", name
        if name != "demo":
            assert svc.get("healthcheck"), f"{name} has no health check"
        env = svc.get("environment") or {}
        if svc.get("image") == "rthub:local":
            assert env["RTHUB_STREAM_REPLICAS"] == "3"
            assert env["RTHUB_NATS_URL"].count("nats://") == 3


# ---- the running topology ------------------------------------------------------------------------------

def _free_base() -> int:
    for _ in range(200):
        base = random.randrange(20000, 40000)
        if all(port_free(p) for p in (base, base + 1, base + 2, base + 100, base + 101, base + 102)):
            return base
    raise RuntimeError("no free port range")


@pytest.fixture(scope="module")
def stack_url(tmp_path_factory):
    """The composed stack's NATS URL, else a fresh ``rthub cluster up`` (3 nodes, 2 hubs, no portal/demo)."""
    if os.environ.get("RTHUB_STACK_NATS_URL"):
        yield os.environ["RTHUB_STACK_NATS_URL"]
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
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
        assert proc.returncode == 0, out
        assert "restarting" not in "".join(lines) + out, "a service crashed and was restarted:\n" + out


@pytest.mark.slow
async def test_stack_lms_backend_to_statements(stack_url, tmp_path):
    """LMS backend -> R3 raw stream -> two hubs -> xAPI and Caliper subjects: every event once, by id."""
    settings = HubSettings(nats_url=stack_url)
    nc = await connect(settings, "stack-test")
    js = nc.jetstream()
    info = await js.stream_info(RAW_STREAM)
    assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2
    course = f"course-v1:edX+{unique('stack')}+2024"
    gid = unique("stack")
    got: dict[str, list[str]] = {"xapi": [], "caliper": []}

    async def on_msg(msg):
        got[msg.subject.split(".", 1)[0]].append(json.loads(msg.data)["id"])

    for protocol in got:
        await nc.subscribe(filter_subject(protocol, course=course), cb=on_msg)
        await put_grant(js, Grant(id=f"{gid}-{protocol}", consumer="stack", protocol=protocol, courses=[course]))
    backend = NatsBackend(nats_url=stack_url, spool_dir=str(tmp_path), site="default")
    n = 300
    try:
        tracker = Tracker(backends={"rthub": backend})
        tracker.enter_context("r", {"course_id": course, "org_id": "edX",
                                    "user_id": 3, "username": "edx"})
        for i in range(n):
            tracker.emit("play_video", {"id": "v1", "currentTime": i, "duration": 195})
        await wait_for(lambda: len(got["xapi"]) >= n and len(got["caliper"]) >= n, 60, "statements of both protocols")
        await wait_for(lambda: backend.counts["published"] == n, 10, "acks")
    finally:
        backend.close()
        for protocol in got:
            await delete_grant(js, f"{gid}-{protocol}")
        await nc.close()
    assert len(got["xapi"]) == n and len(set(got["xapi"])) == n
    assert len(got["caliper"]) == n and len(set(got["caliper"])) == n
