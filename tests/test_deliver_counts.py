"""Issue 20 item 11: the "delivered" count an operator reads (``rthub delivery-status``, the portal) is right
after faults. The counters were saved once a second, so a SIGKILL lost up to a second of counts. Real
``rthub deliver`` processes, a real receiver, the session's nats-server."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import nats.js.errors
import pytest

from hub.core.grants import consumer_name
from hub.deliver.state.integration_status import integration_status
from hub.deliver.state.setup import ensure_delivery
from tests.deliver_kit import integration, publish, remove, settings, statement
from tests.deliver_receivers import Receiver
from tests.helpers import rthub_env, wait_for

pytestmark = pytest.mark.slow


def _deliver(env: dict, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hub.cli", "deliver", "--metrics-port", "-1"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)


async def test_delivered_count_is_right_after_a_sigkill(js, nats_server, tmp_path):
    await ensure_delivery(js, settings(nats_server.url))
    rx = await Receiver().start()
    gid, site = await integration(js, "webhook", rx.url)
    env = rthub_env(nats_server.url, RTHUB_ALLOWED_NETWORKS="127.0.0.1/32", RTHUB_ACK_WAIT="2s",
                    RTHUB_LEASE_TTL="1s")
    log = open(tmp_path / "deliver.log", "ab")  # noqa: SIM115 - closed below
    procs = [_deliver(env, log)]
    sent: list[str] = []
    stop_flow = asyncio.Event()

    async def flow() -> None:
        i = 0
        while not stop_flow.is_set():
            course = f"c{i % 8}"
            st = statement(i, course)
            await publish(js, site, course, st)
            sent.append(st["id"])
            i += 1
            await asyncio.sleep(0.01)  # ~100 statements/s: a second of counts is ~100

    async def consumer_made() -> bool:  # the consumer delivers what is published after it was made
        try:
            await js.consumer_info("XAPI", consumer_name(gid))
        except nats.js.errors.NotFoundError:
            return False
        return True

    flowing = None
    try:
        await wait_for(consumer_made, 30, "the deliverer's consumer")
        flowing = asyncio.create_task(flow())
        await wait_for(lambda: len(rx.requests) >= 300, 30, "webhooks flowing")
        procs[0].kill()  # SIGKILL mid-flow
        procs[0].wait()
        procs.append(_deliver(env, log))
        at = len(sent)
        await wait_for(lambda: len(sent) >= at + 200, 20, "200 more sent")
        stop_flow.set()
        await flowing
        try:
            await wait_for(lambda: {r.headers["webhook-id"] for r in rx.requests} >= set(sent), 60,
                           f"all {len(sent)} delivered")
        except AssertionError:
            info = await js.consumer_info("XAPI", consumer_name(gid))
            got = {r.headers["webhook-id"] for r in rx.requests}
            raise AssertionError(f"{len(got)} of {len(sent)}; {len(rx.requests)} POSTs; {info.num_pending} pending, "
                                 f"{info.num_ack_pending} ack pending, {info.num_redelivered} redelivered; "
                                 f"{await integration_status(js, gid)}; missing "
                                 f"{sorted(sent.index(i) for i in set(sent) - got)}") from None

        async def counted() -> bool:
            return (await integration_status(js, gid))["delivered"] >= len(sent)

        await wait_for(counted, 10, "the count saved")
        delivered = (await integration_status(js, gid))["delivered"]
        # every statement counted once; a statement that was delivered twice (redelivered after the kill) may be
        # counted twice, never more than the POSTs the receiver got
        assert len(sent) <= delivered <= len(rx.requests), (len(sent), delivered, len(rx.requests))
    finally:
        stop_flow.set()
        if flowing:
            await asyncio.gather(flowing, return_exceptions=True)
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(20)
        log.close()
        await remove(js, gid)
        await rx.stop()
