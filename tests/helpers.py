"""Test helpers: wait on a condition with a deadline (never sleep to synchronise), run ``rthub``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


async def wait_for(cond: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, what: str = "condition",
                   interval: float = 0.02) -> None:
    """Poll ``cond`` until it is true; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def consumer_settled(js, stream: str, durable: str) -> bool:
    """Everything delivered and acknowledged: no message left to deliver, none awaiting its ack."""
    info = await js.consumer_info(stream, durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def watchers_have(js, bucket: str, revision: int) -> bool:
    """Every live watcher of ``bucket`` (each an ordered consumer on its stream) was sent the entry at
    ``revision``: a service that filters by that bucket (the hubs by the grants) acts on it from now on. A watcher
    whose process died stays for nats-py's inactive threshold (5 min) without a subscriber: left out."""
    live = [i for i in await js.consumers_info(f"KV_{bucket}") if i.push_bound]
    return bool(live) and all((i.delivered.stream_seq or 0) >= revision for i in live)


def wait_sync(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def unique(prefix: str = "t") -> str:
    """A name no other test uses: tests share one nats-server, so each works in its own site/course."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def rthub_env(nats_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTHUB_")}
    env["RTHUB_NATS_URL"] = nats_url
    env.update(extra)
    return env


def rthub(*args: str, env: dict[str, str], input: bytes | None = None, timeout: float = 60,
          cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``rthub ARGS`` as a user would, in a subprocess."""
    return subprocess.run([sys.executable, "-m", "hub.cli", *args], env=env, input=input, capture_output=True,
                          timeout=timeout, cwd=cwd)


def rthub_popen(*args: str, env: dict[str, str], cwd: Path | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hub.cli", *args], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def shared_or_skip(*parts: str) -> Path:
    """A path in ../shared. Absent: a skip with the reason on a user's machine, a failure in CI (``CI`` set),
    where a missing checkout must not turn the conformance tests into silent skips."""
    import pytest

    path = SHARED.joinpath(*parts)
    if not path.exists():
        reason = f"reference material {path} is absent (../shared beside the project root)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so the conformance tests cannot run: provide ../shared")
        pytest.skip(reason)
    return path


def start_operator_nats(data_dir: Path, name: str):
    """A nats-server in operator mode (trust chain kept in ``data_dir``), on a free port."""
    from hub.auth import AuthStore
    from hub.ops.natsserver import NatsServer, free_port

    auth = AuthStore.ensure(data_dir)
    return NatsServer(free_port(), data_dir / "nats", config=auth.server_config(data_dir / "nats" / "resolver"),
                      name=name).start()


def all_settings() -> list[type]:
    """Every service's settings struct: what compose.yaml and the Tutor plugin may set."""
    from hub.core.settings import HubSettings
    from hub.deliver.settings import DeliverSettings
    from lms_publisher.settings import PublisherSettings
    from portal.settings import PortalSettings

    return [HubSettings, DeliverSettings, PortalSettings, PublisherSettings]
