"""`rthub up` as a user runs it: everything starts, demo events are translated live, Ctrl-C stops it all."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading

import httpx
import pytest

from hub.ops.natsserver import free_port, port_free
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


def test_a_port_left_in_time_wait_is_free():
    """A health probe's connection, closed by the server side first, leaves the listener's port in TIME_WAIT
    for a minute; ``rthub up`` restarted at once must take that port again (issue 20 item 2)."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nats-server, uvicorn, asyncio do
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server side closes first: its end goes to TIME_WAIT
        client.recv(1)
        client.close()
    states = open("/proc/net/tcp").read().split("\n")[1:]
    assert any(f":{port:04X} " in line and line.split()[3] == "06" for line in states), "no TIME_WAIT socket"
    assert port_free(port)
    with socket.socket() as s:  # and a listener there is still refused
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        assert not port_free(port)


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
        assert re.search(r'rthub_translated_total\{protocol="xapi",service="hub"\} [1-9]', metrics)
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


# ---- issue 13 items 2, 8, 9: restarts, children that die with `rthub up`, default ports taken -------------

def _children(pid: int) -> dict[int, str]:
    """Direct children of ``pid`` with their command lines (from /proc)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            cmd = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out[int(entry)] = cmd
    return out


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


class Up:
    """`rthub up` in a subprocess with its stdout and stderr collected line by line."""

    def __init__(self, *args: str, cwd=None, env=None):
        self.proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "up", *args], cwd=cwd,
                                     env=env or rthub_env("nats://unused:1"), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, ls=lines: ls.extend(iter(s.readline, "")), daemon=True).start()

    def text(self) -> str:
        return "".join(self.out) + "".join(self.err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def _ports() -> list[str]:
    nats_port, portal_port, metrics_port = free_port(), free_port(), free_port()
    while not port_free(metrics_port + 1):
        metrics_port = free_port()
    return ["--nats-port", str(nats_port), "--portal-port", str(portal_port), "--metrics-port", str(metrics_port)]


def test_up_restarts_crashed_children_and_its_nats_server_and_they_die_with_it(tmp_path):
    args = _ports()
    up = Up("--data-dir", str(tmp_path / "data"), *args)
    seen: dict[int, str] = {}
    try:
        wait_sync(lambda: "Ctrl-C stops everything" in up.text(), 90, "rthub up started")
        seen.update(_children(up.proc.pid))
        deliver = next(pid for pid, cmd in seen.items() if "hub.cli deliver" in cmd)
        nats = next(pid for pid, cmd in seen.items() if "nats-server" in cmd)
        assert len(seen) == 4, seen  # nats-server, hub, deliverer, portal
        os.kill(deliver, signal.SIGKILL)
        wait_sync(lambda: "deliver exited with -9; restarting in 1 s" in up.text(), 10, "the crash logged")
        wait_sync(lambda: any("hub.cli deliver" in c and p != deliver for p, c in _children(up.proc.pid).items()),
                  15, "a new deliverer")
        os.kill(nats, signal.SIGKILL)
        wait_sync(lambda: "nats-server restarted" in up.text(), 30, "nats-server restarted")
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(args[1]))) == 0
        assert up.proc.poll() is None  # nothing stopped
        seen.update(_children(up.proc.pid))
        # the OOM killer or a closed terminal: SIGKILL to `rthub up` alone, not its process group
        up.proc.send_signal(signal.SIGKILL)
        up.proc.wait()
        wait_sync(lambda: not any(_alive(p) for p in seen), 30, "every child of rthub up gone")
    finally:
        left = {p: c for p, c in seen.items() if _alive(p)}
        up.kill()
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        if left:
            print(f"still running after rthub up was killed (now killed): {left}")


def test_up_demo_through_a_nats_server_crash_logs_state_changes_not_tracebacks_and_restarts_on_its_ports(tmp_path):
    """Issue 20 items 6 and 2: the demo's live-count client says once that NATS is away and once that it is
    back (its default error callback printed a traceback per reconnect attempt); and `rthub up` stopped after
    /health probes starts again at once on the same explicit ports."""
    args = _ports()
    metrics_port = int(args[5])
    data = str(tmp_path / "data")
    up = Up("--demo", "--demo-rate", "20", "--no-portal", "--no-deliver", "--data-dir", data, *args)
    try:
        wait_sync(lambda: "Ctrl-C stops everything" in up.text(), 90, "rthub up started")
        wait_sync(lambda: re.search(r"live: [1-9]\d* xAPI", up.text()), 60, "a live count")
        nats = next(pid for pid, cmd in _children(up.proc.pid).items() if "nats-server" in cmd)
        os.kill(nats, signal.SIGKILL)
        wait_sync(lambda: "live count resumed: NATS back" in up.text(), 60, "the live count back after the restart")
        for _ in range(5):  # probes, as a health check makes them
            assert httpx.get(f"http://127.0.0.1:{metrics_port}/health").status_code in (200, 503)
    finally:
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(30) == 0
    text = up.text()
    assert "Traceback" not in text, text[-3000:]
    assert text.count("live count paused: NATS connection lost") == 1, text[-3000:]
    assert re.search(r"live count resumed: NATS back after \d+ s \(\d+ failed connection attempts\)", text)
    assert json.loads((tmp_path / "data" / "nats-status.json").read_text())["state"] == "ok"  # the store watch
    again = Up("--no-portal", "--no-deliver", "--data-dir", data, *args)  # at once, same ports
    try:
        wait_sync(lambda: "Ctrl-C stops everything" in again.text() or again.proc.poll() is not None, 90,
                  "rthub up started again")
        assert again.proc.poll() is None, again.text()
    finally:
        again.proc.send_signal(signal.SIGINT)
        assert again.proc.wait(30) == 0


@pytest.mark.parametrize("after", [1, 3])
def test_sigterm_during_start_up_leaves_no_orphan(tmp_path, after):
    up = Up("--data-dir", str(tmp_path / "data"), *_ports())
    seen: dict[int, str] = {}
    try:
        def spawned() -> bool:
            seen.update(_children(up.proc.pid))
            return len(seen) >= after

        wait_sync(spawned, 60, f"{after} child(ren) spawned")
        up.proc.send_signal(signal.SIGTERM)
        while up.proc.poll() is None:
            seen.update(_children(up.proc.pid))
        assert up.proc.wait(30) == 0
        assert "Ctrl-C stops everything" not in up.text()  # it really was stopped during start-up
        wait_sync(lambda: not any(_alive(p) for p in seen), 20, f"no orphan left ({seen})")
    finally:
        up.kill()
        for pid in seen:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_taken_default_ports_are_replaced_and_written_for_the_other_commands(tmp_path):
    """Default ports taken (as by another nats-server on 4222) and none asked for: `up` picks free ones, says so,
    and `rthub grant` run from the same folder finds NATS and the admin creds through .rthub/up.json."""
    from hub.ops.up import DEFAULT_PORTS

    held = []
    for port in (*DEFAULT_PORTS.values(), DEFAULT_PORTS["metrics"] + 1):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
            held.append(s)
        except OSError:
            s.close()  # taken already: just as good
    env = {k: v for k, v in rthub_env("x").items() if not k.startswith("RTHUB_")}
    up = Up("--no-deliver", cwd=tmp_path, env=env)
    try:
        wait_sync(lambda: "Ctrl-C stops everything" in up.text(), 90, "rthub up started")
        out = up.text()
        for name, port in DEFAULT_PORTS.items():
            assert re.search(rf"default {name if name != 'metrics' else 'hub metrics'} port {port} is taken: "
                             r"using \d+", out, re.I), out
        info = json.loads((tmp_path / ".rthub" / "up.json").read_text())
        nats_port = int(info["nats_url"].rsplit(":", 1)[1])
        assert nats_port != DEFAULT_PORTS["nats"] and f"nats-server  nats://127.0.0.1:{nats_port}" in out
        assert info["nats_creds"].endswith("admin.creds")
        assert httpx.get(info["portal"] + "health").status_code == 200
        assert httpx.get(info["hub_metrics"].replace("/metrics", "/health")).text == "ok\n"
        added = rthub("grant", "add", "--consumer", "folder", "--protocol", "xapi", "--site", "default",
                      env=env, cwd=tmp_path)
        assert added.returncode == 0, added.stderr.decode()
        gid = json.loads(added.stdout)["id"]
        listed = rthub("grant", "list", env=env, cwd=tmp_path)
        assert gid in listed.stdout.decode()
        # an explicit port that is taken stays an error
        taken = rthub("up", "--data-dir", str(tmp_path / "other"), "--portal-port", str(nats_port), env=env)
        assert taken.returncode == 2 and f"port {nats_port} is already taken" in taken.stderr.decode()
    finally:
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(30) == 0
        for s in held:
            s.close()
    assert not (tmp_path / ".rthub" / "up.json").exists()  # stale addresses are not left behind


@pytest.mark.slow
def test_demo_waits_out_a_nats_outage(tmp_path):
    """The demo used to exit after five failed publish retries (~10 s into an outage), which stopped `rthub up`."""
    import asyncio

    from hub.ops.natsserver import NatsServer
    from lms_publisher.demo import run_demo
    from lms_publisher.settings import PublisherSettings
    from tests.helpers import wait_for

    server = NatsServer(free_port(), tmp_path / "nats", name="demo-outage").start()

    async def drill() -> None:
        settings = PublisherSettings(nats_url=server.url, publish_ack_timeout_s=1.0)
        stop, sent = asyncio.Event(), [0]
        task = asyncio.create_task(run_demo(settings, 50, stop=stop, on_batch=lambda n: sent.__setitem__(0, n)))
        try:
            await wait_for(lambda: sent[0] >= 50, 30, "demo publishing")
            server.stop()
            await asyncio.sleep(20)  # the outage is the test (longer than publish_records' own retries)
            assert not task.done(), task.exception()
            before = sent[0]
            server.start()
            await wait_for(lambda: sent[0] >= before + 100, 30, "demo publishing again after the outage")
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

    try:
        asyncio.run(drill())
    finally:
        server.stop()
