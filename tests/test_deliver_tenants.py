"""Tenant scale (issue 20): many integrations in one deliverer, against a real nats-server and a real receiver.

An idle integration must cost nothing per integration: no pull request kept open on its consumers (its loops
doze until the watch wakes them), no KV write per lease and period (leases are kept by the process's
announcement). And what depends on those still works: the first statement of each integration arrives, a
stand-by takes the leases of a deliverer killed with SIGKILL, a redriven statement reaches a dozing runner.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

import pytest
import pytest_asyncio

from hub.core.grants import Grant, consumer_name, put_grant
from hub.core.natsconn import connect
from hub.core.settings import HubSettings, NatsSettings
from hub.core.streams import ensure_streams
from hub.core.subjects import DELIVERY_STATE_BUCKET, TARGETS_BUCKET, subject
from hub.deliver.actions import resend
from hub.deliver.service import Deliverer
from hub.deliver.state.setup import ensure_delivery
from hub.ops.natsserver import NatsServer, free_port
from tests.deliver_kit import publish, settings, statement
from tests.deliver_receivers import Receiver
from tests.helpers import rthub_env, unique, wait_for

MANY = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A nats-server of this module's own: the deliverers here must see only these integrations."""
    s = NatsServer(free_port(), tmp_path_factory.mktemp("tenants"), name="tenants").start()
    yield s
    s.stop()


@pytest_asyncio.fixture
async def conn(server):
    nc = await connect(HubSettings(nats_url=server.url), "tenants-test")
    await ensure_streams(nc.jetstream(), HubSettings(nats_url=server.url))
    yield nc
    await nc.close()


async def tenants(js, n: int, url: str) -> list[tuple[str, str]]:
    """``n`` ordered webhook integrations, each on its own site, posting to ``url/<grant id>``."""
    kv = await js.key_value(TARGETS_BUCKET)
    out = [(unique("g"), unique("site")) for _ in range(n)]

    async def one(gid: str, site: str) -> None:
        await kv.put(gid, json.dumps({"id": gid, "kind": "webhook", "url": f"{url}/{gid}"}).encode())
        await put_grant(
            js, Grant(id=gid, consumer="c-" + gid, protocol="xapi", sites=[site], delivery="webhook")
        )

    await asyncio.gather(*(one(g, s) for g, s in out))
    return out


async def all_consumers(js, stream: str) -> list:
    out = []
    while page := await js.consumers_info(stream, offset=len(out)):
        out += page
    return out


async def lease_revisions(js, gids: list[str]) -> dict[str, int]:
    state = await js.key_value(DELIVERY_STATE_BUCKET)
    return {gid: (await state.get(f"lease.{gid}")).revision for gid in gids}


async def test_many_integrations_idle_for_free_and_each_gets_its_first_statement(conn, server):
    js = conn.jetstream()
    s = settings(server.url)
    await ensure_delivery(js, s)
    rx = await Receiver().start()
    made = await tenants(js, MANY, rx.url)
    d = await Deliverer(conn, s).start()
    try:
        await wait_for(
            lambda: all(g in d.runners and d.runners[g].leader.is_set() for g, _ in made),
            60,
            f"the deliverer leads all {MANY} integrations",
        )

        async def no_open_pull_requests() -> bool:
            infos = await all_consumers(js, "XAPI")
            mine = {consumer_name(g) for g, _ in made}
            return sum(i.name in mine for i in infos) == MANY and all(
                not i.num_waiting for i in infos if i.name in mine
            )

        # Idle: every live loop dozes (before, each consumer kept a pull request open, heartbeats every second).
        await wait_for(no_open_pull_requests, 20, "no idle consumer with an open pull request", interval=0.2)
        # The runners' long-lived objects leave the collector's view once they have started (gc.freeze): full
        # collections walking them were the 100-200 ms tail of first deliveries at 1,000 integrations.
        await wait_for(lambda: d.frozen_at >= MANY, 10, "a collection and gc.freeze() after the start")
        # Leases are not rewritten per integration while the process announces itself.
        sample = [g for g, _ in made[:25]]
        before = await lease_revisions(js, sample)
        state = await js.key_value(DELIVERY_STATE_BUCKET)
        alive = (await state.get(f"alive.{d.process_id}")).revision
        await wait_for(lambda: _newer(state, f"alive.{d.process_id}", alive, 2), 10, "two more announcements")
        assert await lease_revisions(js, sample) == before

        sent = {}
        for gid, site in made:
            st = statement(0, "c1")
            sent[st["id"]] = gid
            await publish(js, site, "c1", st)
        await wait_for(
            lambda: len({r.json()["id"] for r in rx.requests}) >= MANY,
            30,
            f"the first statement of each of {MANY} integrations",
        )
        assert {
            r.json()["id"]: r.path.rsplit("/", 1)[1] for r in rx.requests
        } == sent  # each to its own endpoint
        assert d.watch.wakes >= MANY
    finally:
        await d.stop()
        await rx.stop()


async def _newer(state, key: str, revision: int, by: int) -> bool:
    return (await state.get(key)).revision >= revision + by


async def test_stand_by_takes_over_the_leases_of_a_killed_deliverer_and_redrive_wakes_a_dozing_runner(
    conn, server, tmp_path
):
    js = conn.jetstream()
    s = settings(server.url)  # ack_wait 2 s, lease_ttl 0.5 s: a take-over after about 3 s
    await ensure_delivery(js, s)
    rx = await Receiver().start()
    made = await tenants(js, 40, rx.url)
    gids = [g for g, _ in made]
    env = rthub_env(
        server.url,
        RTHUB_ALLOWED_NETWORKS="127.0.0.1/32",
        RTHUB_ACK_WAIT="2s",
        RTHUB_LEASE_TTL="0.5s",
        RTHUB_DATA_DIR=str(tmp_path / "data"),
    )
    log = open(tmp_path / "first.log", "ab")  # noqa: SIM115 - closed below
    first = subprocess.Popen(
        [sys.executable, "-m", "hub.cli", "deliver", "--metrics-port", "-1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    state = await js.key_value(DELIVERY_STATE_BUCKET)

    async def owners() -> set[str]:
        out = set()
        for gid in gids:
            try:
                entry = await state.get(f"lease.{gid}")
            except Exception:  # noqa: BLE001 - not taken yet
                return {""}
            out.add(json.loads(entry.value)["owner"] if entry.value else "")
        return out

    second_nc = await connect(NatsSettings(nats_url=server.url), "second")
    second = None
    try:
        await wait_for(
            lambda: _all_owned_by(owners, f"-{first.pid}-"),
            60,
            "the first deliverer holds every lease",
            interval=0.2,
        )
        second = await Deliverer(second_nc, s).start()
        await wait_for(lambda: all(g in second.runners for g in gids), 30, "the second deliverer stands by")
        assert not any(second.runners[g].leader.is_set() for g in gids)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        for _, site in made:
            await publish(js, site, "c1", statement(1, "c1"))
        await wait_for(
            lambda: all(second.runners[g].leader.is_set() for g in gids), 20, "the stand-by took every lease"
        )
        await wait_for(
            lambda: {r.path.rsplit("/", 1)[1] for r in rx.requests} >= set(gids),
            20,
            "every statement published after the kill delivered",
        )
        assert await owners() == {second.process_id}

        # Redrive: the runner dozes; a resend goes through redrive.<id>, which the watch hears.
        gid = gids[0]
        delivered = next(r for r in rx.requests if r.path.endswith(gid))
        last = subject("xapi", made[0][1], "Org", "course-v1:Org+c1+run", "play_video")
        seq = int((await js.get_last_msg("XAPI", last)).seq)
        count = sum(r.path.endswith(gid) for r in rx.requests)
        assert await resend(js, gid, seq) == delivered.json()["id"]
        await wait_for(
            lambda: sum(r.path.endswith(gid) for r in rx.requests) == count + 1,
            10,
            "the resent statement delivered again",
        )
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
        log.close()
        if second is not None:
            await second.stop()
        await second_nc.close()
        await rx.stop()


async def _all_owned_by(owners, marker: str) -> bool:
    found = await owners()
    return len(found) == 1 and marker in next(iter(found))
