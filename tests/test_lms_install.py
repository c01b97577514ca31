"""Issue 20 item 9: an LMS-only install (``pip install rthub`` / the ``lms`` extra, what the openedx image gets)
runs ``rthub --help``, plain ``rthub`` and the commands docs/lms.md documents, in a clean venv with none of the
server extra (prometheus_client was imported at CLI start-up and crashed it)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, unique
from tests.test_publish import raw_messages

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lms_venv(tmp_path_factory):
    venv = tmp_path_factory.mktemp("lms-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # a copy of the sources: building in place would leave build/ and egg-info beside the editable install
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"], check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{src}[lms]"], capture_output=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return venv


def run(venv, *args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RTHUB_", "VIRTUAL_ENV", "PYTHONPATH"))}
    return subprocess.run([str(venv / "bin" / "rthub"), *args], capture_output=True, timeout=120,
                          env={**base, **(env or {})}, cwd=cwd)


def test_the_lms_install_has_no_server_packages(lms_venv):
    for module in ("prometheus_client", "litestar", "httpx", "cryptography"):
        found = subprocess.run([str(lms_venv / "bin" / "python"), "-c", f"import {module}"], capture_output=True)
        assert found.returncode != 0, f"{module} is installed: the test would not show anything"


def test_help_and_plain_rthub_work(lms_venv, tmp_path):
    helped = run(lms_venv, "--help", cwd=tmp_path)
    out = helped.stdout.decode()
    assert helped.returncode == 0, helped.stderr.decode()[-2000:]
    assert "publish" in out and "demo" in out and "not in this install: hub, portal" in out
    plain = run(lms_venv, cwd=tmp_path)
    assert plain.returncode == 2 and b"usage: rthub" in plain.stderr and b"Traceback" not in plain.stderr
    server = run(lms_venv, "hub", cwd=tmp_path)
    assert server.returncode == 2 and b"Traceback" not in server.stderr
    assert b"`rthub hub` is not in this install (it needs the server extra" in server.stderr
    for command in ("publish", "demo"):
        sub = run(lms_venv, command, "--help", cwd=tmp_path)
        assert sub.returncode == 0 and f"usage: rthub {command}".encode() in sub.stdout, sub.stderr[-2000:]


async def test_publish_and_demo_reach_the_raw_stream(lms_venv, nats_server, js, tmp_path):
    site = unique("lms")
    log = tmp_path / "tracking.log"
    event = {"name": "play_video", "timestamp": "2024-03-01T10:00:00+00:00", "event_source": "browser",
             "context": {"course_id": "course-v1:edX+DemoX+Demo_Course", "org_id": "edX", "user_id": 3},
             "event": json.dumps({"id": "v1", "currentTime": 1})}
    log.write_text(json.dumps(event) + "\n")
    env = {"RTHUB_NATS_URL": nats_server.url}
    done = await asyncio.to_thread(run, lms_venv, "publish", "--site", site, "--json", str(log), env=env,
                                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads(done.stdout)["published"] == 1
    demo_site = unique("demo")
    demo = await asyncio.to_thread(run, lms_venv, "demo", "--count", "5", "--site", demo_site, env=env,
                                   cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr.decode()[-2000:]
    assert len(await raw_messages(js, site)) == 1 and len(await raw_messages(js, demo_site)) == 5
