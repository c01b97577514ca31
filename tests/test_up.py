"""`rthub up` as a user runs it: everything starts, demo events are translated live, Ctrl-C stops it all."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading

import httpx

from hub.natsserver import free_port, port_free
from tests.helpers import rthub, rthub_env, wait_sync


def test_taken_nats_port_is_explained(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = rthub("up", "--data-dir", str(tmp_path), "--nats-port", str(port), env=rthub_env("nats://unused:1"))
    assert result.returncode == 2
    err = result.stderr.decode()
    assert f"port {port} is already taken" in err and "--nats-port" in err and "--nats-url" in err


def test_up_demo_translates_live_and_stops_cleanly(tmp_path):
    nats_port, portal_port, metrics_port = free_port(), free_port(), free_port()
    while not port_free(metrics_port + 1):
        metrics_port = free_port()
    env = rthub_env("nats://unused:1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub.cli", "up", "--demo", "--data-dir", str(tmp_path / "data"),
         "--nats-port", str(nats_port), "--portal-port", str(portal_port), "--metrics-port", str(metrics_port),
         "--demo-rate", "50"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    try:
        def counted() -> bool:
            for line in lines:
                m = re.match(r"live: (\d+) xAPI statements, (\d+) Caliper events", line)
                if m and int(m.group(1)) > 0 and int(m.group(2)) > 0:
                    return True
            return False

        wait_sync(counted, 90, "a live count of translated demo statements")
        out = "".join(lines)
        assert f"nats-server  nats://127.0.0.1:{nats_port}" in out
        assert f"http://127.0.0.1:{portal_port}/" in out
        assert httpx.get(f"http://127.0.0.1:{metrics_port}/health").text == "ok\n"
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert re.search(r'rthub_translated_total\{service="hub",protocol="xapi"\} [1-9]', metrics)
        assert httpx.get(f"http://127.0.0.1:{portal_port}/health").status_code == 200
        assert "Sign up" in httpx.get(f"http://127.0.0.1:{portal_port}/signup").text
        # operator mode: the embedded server refuses a client without credentials
        import asyncio

        import nats

        async def anonymous():
            try:
                nc = await nats.connect(f"nats://127.0.0.1:{nats_port}", max_reconnect_attempts=0,
                                        allow_reconnect=False, connect_timeout=2)
            except Exception as exc:  # noqa: BLE001
                return str(exc)
            await nc.close()
            return "connected"

        assert asyncio.run(anonymous()) != "connected"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    for port in (nats_port, portal_port):  # nothing listens any more (a bind could still hit TIME_WAIT)
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"something still listens on {port}"
