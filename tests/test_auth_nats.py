"""Operator mode against a real nats-server: service users, scoped consumer credentials, expiry, revocation,
restart. The server is this module's own (operator config), on a free port."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import time

import nats
import pytest
from nats.aio.client import RawCredentials

from hub.auth import AuthStore, ensure_consumer, jwt
from hub.core.creds import creds_inbox_prefix, creds_jwt
from hub.core.grants import Grant, consumer_name
from hub.core.settings import HubSettings
from hub.core.streams import ensure_streams
from hub.core.subjects import subject
from hub.ops.natsserver import NatsServer, free_port
from tests.helpers import unique, wait_for
from tests.operator_kit import operator_fixtures


class Probe:
    """A client that records the server's asynchronous errors (permission violations) and disconnects."""

    def __init__(self):
        self.errors: list[str] = []
        self.disconnected = asyncio.Event()
        self.nc: nats.NATS | None = None

    async def connect(self, url: str, creds, inbox: str | None, **kw) -> Probe:
        async def on_error(exc):
            self.errors.append(str(exc))

        async def on_disconnect():
            self.disconnected.set()

        opts = dict(servers=[url], user_credentials=creds, error_cb=on_error, disconnected_cb=on_disconnect,
                    connect_timeout=3, name="probe", max_reconnect_attempts=1)
        if inbox:
            opts["inbox_prefix"] = inbox
        opts.update(kw)
        self.nc = await nats.connect(**opts)
        return self

    def violated(self, subj: str) -> bool:
        """nats-py lower-cases the server's error text, so compare case-insensitively."""
        return any("permissions violation" in e.lower() and subj.lower() in e.lower() for e in self.errors)

    async def close(self):
        if self.nc and not self.nc.is_closed:
            await self.nc.close()


auth_dir, op_server, admin = operator_fixtures("auth", data_dir="auth_dir", admin="admin")


async def service(server, auth: AuthStore, name: str) -> Probe:
    path = auth.service_creds(name)
    return await Probe().connect(server.url, str(path), creds_inbox_prefix(path))


def test_store_is_private_and_stable(auth_dir, op_server):
    auth = AuthStore.ensure(auth_dir)
    again = AuthStore.ensure(auth_dir)
    assert (again.operator_pub, again.sys_pub, again.hub_pub) == (auth.operator_pub, auth.sys_pub, auth.hub_pub)
    assert stat.S_IMODE(os.stat(auth.path).st_mode) == 0o700
    for f in auth.path.rglob("*"):  # sites/ (LMS site accounts) and tenants/ are folders of the same kind
        assert stat.S_IMODE(os.stat(f).st_mode) == (0o700 if f.is_dir() else 0o600), f
    config = auth.server_config(auth_dir / "nats" / "resolver")
    assert "type: full" in config and auth.sys_pub in config and auth.hub_pub in config
    for seed in (auth.operator_seed, auth.sys_seed, auth.hub_seed):
        assert seed.decode() not in config


async def test_service_users_do_their_job_and_nothing_else(op_server, auth_dir, admin):
    auth = AuthStore.ensure(auth_dir)
    site = unique("s")
    raw_subj, xapi_subj = subject("lms", site, "Org", "c1", "play_video"), subject("xapi", site, "Org", "c1", "v")
    pubr, hub, deliverer = [await service(op_server, auth, n) for n in ("publisher", "hub", "deliverer")]
    try:
        ack = await pubr.nc.jetstream().publish(raw_subj, b'{"name":"play_video"}')
        assert ack.stream == "LMS_RAW"
        await pubr.nc.subscribe("xapi.>")
        await wait_for(lambda: pubr.violated('"xapi.>"'), 5, "publisher refused on xapi.>")
        await pubr.nc.subscribe("_INBOX.>")
        await wait_for(lambda: pubr.violated('"_INBOX.>"'), 5, "publisher refused on _INBOX.>")

        hjs = hub.nc.jetstream()
        assert (await hjs.publish(xapi_subj, b"{}")).stream == "XAPI"
        psub = await hjs.pull_subscribe(raw_subj, durable="hub", stream="LMS_RAW")
        got = await psub.fetch(1, timeout=5)
        assert got[0].subject == raw_subj
        await got[0].ack()
        await hub.nc.publish(subject("lms", site, "Org", "c1", "forged"), b"{}")
        await wait_for(lambda: hub.violated('"lms.'), 5, "hub refused on lms.>")
        grants = await hub.nc.jetstream(timeout=1).key_value("rthub_grants")
        with pytest.raises(nats.errors.TimeoutError):  # the refused publish is never acked
            await grants.put("forged", b"{}")
        await wait_for(lambda: hub.violated("$KV.rthub_grants.forged"), 5, "hub refused on KV write")

        await auth.push(admin, [auth.site_jwt(site)])  # a new site's account, as `rthub auth push` sends it
        site_pub = await Probe().connect(op_server.url, str(auth.service_creds("publisher", site=site)),
                                         creds_inbox_prefix(auth.service_creds("publisher", site=site)))
        try:
            assert (await site_pub.nc.jetstream().publish(raw_subj, b'{"name":"x"}')).stream == "LMS_RAW"
            other_site = subject("lms", unique("other"), "Org", "c1", "play_video")
            await site_pub.nc.publish(other_site, b"{}")
            await wait_for(lambda: site_pub.violated(other_site), 5, "per-site publisher refused on another site")
            await site_pub.nc.publish("$JS.API.STREAM.INFO.LMS_RAW", b"")
            await wait_for(lambda: site_pub.violated("STREAM.INFO.LMS_RAW"), 5, "publisher refused stream info")
        finally:
            await site_pub.close()

        heard: list[str] = []  # the deliverer's watch (hub/deliver/engine/watch.py): core subscriptions

        async def on_msg(msg) -> None:
            heard.append(msg.subject)

        await deliverer.nc.subscribe("xapi.>", cb=on_msg)
        await deliverer.nc.subscribe("redrive.>", cb=on_msg)
        await deliverer.nc.flush()
        await hjs.publish(xapi_subj, b"{}")
        await wait_for(lambda: xapi_subj in heard, 5, "the deliverer hears the protocol subjects")
        assert not deliverer.violated('"xapi.>"') and not deliverer.violated('"redrive.>"')
        await deliverer.nc.publish(xapi_subj, b"{}")
        await wait_for(lambda: deliverer.violated(f'"{xapi_subj}"'), 5, "deliverer refused on xapi publish")
        await deliverer.nc.publish("$JS.API.CONSUMER.MSG.NEXT.LMS_RAW.hub", b"")
        await wait_for(lambda: deliverer.violated("LMS_RAW.hub"), 5, "deliverer refused on the raw stream")
    finally:
        for p in (pubr, hub, deliverer):
            await p.close()


async def _consumer_client(op_server, auth: AuthStore, grant: Grant, expires_in=None) -> tuple[Probe, str, str]:
    nc = await nats.connect(op_server.url, user_credentials=str(auth.service_creds("admin")))
    try:
        text, user_pub = await auth.issue_consumer_creds(nc, grant, expires_in)
    finally:
        await nc.close()
    probe = await Probe().connect(op_server.url, RawCredentials(text), creds_inbox_prefix(text),
                                  allow_reconnect=False)
    return probe, user_pub, text


async def test_consumer_credential_is_scoped_to_its_grant(op_server, auth_dir, admin):
    auth = AuthStore.ensure(auth_dir)
    js = admin.jetstream()
    site = unique("s")
    mine = Grant(id=unique("g"), consumer="acme", protocol="xapi", sites=[site], courses=["course-v1:Org+A+1"])
    other = Grant(id=unique("g"), consumer="evil", protocol="xapi", sites=[site], courses=["course-v1:Org+B+1"])
    assert await ensure_consumer(js, mine) == consumer_name(mine.id)
    await ensure_consumer(js, other)
    info = await js.consumer_info("XAPI", consumer_name(mine.id))
    assert info.config.filter_subjects == mine.filter_subjects()

    probe, _, _ = await _consumer_client(op_server, auth, mine)
    try:
        cjs = probe.nc.jetstream()
        live: list[str] = []

        async def on_live(msg):
            live.append(msg.subject)

        await probe.nc.subscribe(mine.filter_subjects()[0], cb=on_live)
        await probe.nc.flush()
        subj_a = subject("xapi", site, "Org", "course-v1:Org+A+1", "played")
        subj_b = subject("xapi", site, "Org", "course-v1:Org+B+1", "played")
        await js.publish(subj_b, json.dumps({"id": "b"}).encode(), headers={"Nats-Msg-Id": unique("b")})
        await js.publish(subj_a, json.dumps({"id": "a"}).encode(), headers={"Nats-Msg-Id": unique("a")})

        psub = await cjs.pull_subscribe_bind(durable=consumer_name(mine.id), stream="XAPI")
        msgs = await psub.fetch(10, timeout=3)
        assert [json.loads(m.data)["id"] for m in msgs] == ["a"]
        await msgs[0].ack_sync()
        await wait_for(lambda: live == [subj_a], 5, "live feed of the granted course")

        await probe.nc.subscribe(subj_b)
        await wait_for(lambda: probe.violated(subj_b), 5, "refusal on another course's subject")
        await probe.nc.subscribe("_INBOX.>")
        await wait_for(lambda: probe.violated('"_INBOX.>"'), 5, "refusal on _INBOX.>")
        await probe.nc.subscribe("xapi.>")
        await wait_for(lambda: probe.violated('"xapi.>"'), 5, "refusal on all of xapi")

        stolen = await cjs.pull_subscribe_bind(durable=consumer_name(other.id), stream="XAPI")
        with pytest.raises(nats.errors.TimeoutError):
            await stolen.fetch(1, timeout=1)
        assert probe.violated(f"CONSUMER.MSG.NEXT.XAPI.{consumer_name(other.id)}")
        other_info = await js.consumer_info("XAPI", consumer_name(other.id))
        assert other_info.num_pending == 1 and other_info.delivered.consumer_seq == 0  # B untouched
        with pytest.raises(Exception):  # noqa: B017 - no JetStream API beyond its own pull/ack
            await cjs.consumer_info("XAPI", consumer_name(mine.id), timeout=1)
        with pytest.raises(Exception):  # noqa: B017 - its own account has no JetStream at all
            await cjs.stream_info("XAPI", timeout=1)
    finally:
        await probe.close()


async def test_expired_credential_is_refused(op_server, auth_dir, admin):
    auth = AuthStore.ensure(auth_dir)
    grant = Grant(id=unique("g"), consumer="acme", protocol="xapi", courses=["c"])
    await ensure_consumer(admin.jetstream(), grant)
    text, _ = await auth.issue_consumer_creds(admin, grant, expires_in=-5)
    with pytest.raises(Exception) as refused:  # noqa: B017
        await nats.connect(op_server.url, user_credentials=RawCredentials(text), allow_reconnect=False,
                           connect_timeout=3, inbox_prefix=creds_inbox_prefix(text))
    assert "authorization" in str(refused.value).lower() or "expired" in str(refused.value).lower()
    probe, _, _ = await _consumer_client(op_server, auth, grant, expires_in=1.5)
    try:
        assert probe.nc.is_connected
        await asyncio.wait_for(probe.disconnected.wait(), 5)  # cut off by the server at expiry
    finally:
        await probe.close()


async def test_revocation_cuts_a_live_client_and_refuses_reconnect(op_server, auth_dir, admin):
    auth = AuthStore.ensure(auth_dir)
    grant = Grant(id=unique("g"), consumer="acme", protocol="caliper", courses=["c"])
    await ensure_consumer(admin.jetstream(), grant)
    probe, user_pub, text = await _consumer_client(op_server, auth, grant)
    text_kept, kept_pub = auth.consumer_creds(grant)  # a second credential of the same grant stays valid
    try:
        assert probe.nc.is_connected
        started = time.monotonic()
        answer = await auth.revoke_consumer_users(admin, grant.id, [user_pub])
        assert answer.get("code") == 200, answer
        await asyncio.wait_for(probe.disconnected.wait(), 5)
        assert time.monotonic() - started < 2, "revocation took longer than the documented 2 s bound"
        assert user_pub in auth.tenant_claims(grant.id)["nats"]["revocations"]
        with pytest.raises(Exception):  # noqa: B017 - authorization violation
            await nats.connect(op_server.url, user_credentials=RawCredentials(text),
                               allow_reconnect=False, connect_timeout=3)
        ok = await nats.connect(op_server.url, user_credentials=RawCredentials(text_kept), allow_reconnect=False,
                                inbox_prefix=creds_inbox_prefix(text_kept))
        await ok.close()
    finally:
        await probe.close()


async def test_cli_issues_consumer_creds_and_revokes(op_server, auth_dir, admin, tmp_path):
    from hub.core.grants import put_grant
    from tests.helpers import rthub, rthub_env

    grant = Grant(id=unique("g"), consumer="acme", protocol="xapi", courses=["course-v1:Org+CLI+1"])
    await put_grant(admin.jetstream(), grant)
    env = rthub_env(op_server.url, RTHUB_DATA_DIR=str(auth_dir))
    out = tmp_path / "acme.creds"
    done = await asyncio.to_thread(rthub, "auth", "consumer-creds", grant.id, "--out", str(out),
                                   "--expires-days", "1", env=env)
    assert done.returncode == 0, done.stderr.decode()
    text = out.read_text()
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    seed = text.split("BEGIN USER NKEY SEED-----\n")[1].split("\n")[0]
    assert seed.startswith("SU") and seed not in (done.stdout + done.stderr).decode()
    assert "pull_subscribe_bind" in done.stdout.decode()
    user_pub = jwt.decode(creds_jwt(text))["sub"]
    assert jwt.decode(creds_jwt(text))["exp"] > time.time() + 86000
    info = await admin.jetstream().consumer_info("XAPI", consumer_name(grant.id))
    assert info.config.filter_subjects == grant.filter_subjects()

    probe = await Probe().connect(op_server.url, str(out), creds_inbox_prefix(out), allow_reconnect=False)
    try:
        done = await asyncio.to_thread(rthub, "auth", "revoke", user_pub, "--grant", grant.id, env=env)
        assert done.returncode == 0, done.stderr.decode()
        assert "jwt updated" in done.stdout.decode()
        await asyncio.wait_for(probe.disconnected.wait(), 5)
    finally:
        await probe.close()
    assert user_pub in AuthStore.ensure(auth_dir).tenant_claims(grant.id)["nats"]["revocations"]
    again = await asyncio.to_thread(rthub, "auth", "consumer-creds", grant.id, "--out", str(out), env=env)
    assert again.returncode == 0, again.stderr.decode()
    probe = await Probe().connect(op_server.url, str(out), creds_inbox_prefix(out), allow_reconnect=False)
    try:
        done = await asyncio.to_thread(rthub, "auth", "close", grant.id, env=env)
        assert done.returncode == 0 and "for good" in done.stdout.decode(), done.stderr.decode()
        await asyncio.wait_for(probe.disconnected.wait(), 5)
    finally:
        await probe.close()
    refused = await asyncio.to_thread(rthub, "auth", "consumer-creds", grant.id, "--out", str(out), env=env)
    assert refused.returncode != 0 and "for good" in (refused.stdout + refused.stderr).decode()
    bad = await asyncio.to_thread(rthub, "auth", "revoke", "not-a-key", env=env)
    assert bad.returncode == 2 and "not a NATS user public key" in bad.stderr.decode()


async def test_secrets_never_in_logs_or_config(op_server, auth_dir, admin, caplog):
    caplog.set_level(logging.DEBUG)
    auth = AuthStore.ensure(auth_dir)
    for name in ("hub", "deliverer", "portal"):  # service creds exist however this test is run
        auth.service_creds(name)
    grant = Grant(id=unique("g"), consumer="acme", protocol="xapi", courses=["c"])
    text, user_pub = await auth.issue_consumer_creds(admin, grant, 60)
    await auth.revoke_consumer_users(admin, grant.id, [user_pub])
    seeds = [auth.operator_seed.decode(), auth.sys_seed.decode(), auth.hub_seed.decode(),
             auth.signing_seed.decode(), auth._tenant_file(grant.id, ".nk").read_text(),
             text.split("BEGIN USER NKEY SEED-----\n")[1].split("\n")[0]]
    for creds_file in auth.path.glob("*.creds"):
        seeds.append(creds_file.read_text().split("BEGIN USER NKEY SEED-----\n")[1].split("\n")[0])
    assert len(seeds) >= 10 and all(s.startswith("S") for s in seeds)
    assert user_pub in caplog.text  # the log names the user, by public key only
    haystacks = [caplog.text, op_server.log_file.read_text(errors="replace"),
                 (op_server.store_dir / f"{op_server.name}.conf").read_text()]
    haystacks += [p.read_text(errors="replace") for p in (op_server.store_dir / "resolver").iterdir() if p.is_file()]
    for seed in seeds:
        for text_blob in haystacks:
            assert seed not in text_blob


async def test_restart_keeps_keys_streams_consumers_and_revocations(tmp_path):
    auth = AuthStore.ensure(tmp_path)
    config = auth.server_config(tmp_path / "nats" / "resolver")
    server = NatsServer(free_port(), tmp_path / "nats", config=config, name="restart").start()
    grant = Grant(id=unique("g"), consumer="acme", protocol="xapi", courses=["course-v1:Org+R+1"])
    subj = subject("xapi", "default", "Org", "course-v1:Org+R+1", "played")
    try:
        nc = await nats.connect(server.url, user_credentials=str(auth.service_creds("admin")))
        js = nc.jetstream()
        await ensure_streams(js, HubSettings(nats_url=server.url))
        await ensure_consumer(js, grant)
        kept, _ = await auth.issue_consumer_creds(nc, grant, 3600)
        revoked, revoked_pub = auth.consumer_creds(grant, 3600)
        await auth.revoke_consumer_users(nc, grant.id, [revoked_pub])
        await js.publish(subj, b'{"id":"before-restart"}')
        await nc.close()
    finally:
        server.stop()
    hub_creds = auth.service_creds("hub").read_text()

    again = AuthStore.ensure(tmp_path)
    assert (again.operator_pub, again.hub_pub) == (auth.operator_pub, auth.hub_pub)
    assert again.service_creds("hub").read_text() == hub_creds  # not re-issued
    server = NatsServer(server.port, tmp_path / "nats", config=again.server_config(tmp_path / "nats" / "resolver"),
                        name="restart").start()
    try:
        nc = await nats.connect(server.url, user_credentials=RawCredentials(kept), allow_reconnect=False,
                                inbox_prefix=creds_inbox_prefix(kept))
        psub = await nc.jetstream().pull_subscribe_bind(durable=consumer_name(grant.id), stream="XAPI")
        msgs = await psub.fetch(1, timeout=5)
        assert json.loads(msgs[0].data) == {"id": "before-restart"}
        await nc.close()
        with pytest.raises(Exception):  # noqa: B017 - still revoked after the restart
            await nats.connect(server.url, user_credentials=RawCredentials(revoked), allow_reconnect=False,
                               connect_timeout=3)
    finally:
        server.stop()


def _cluster_conf(name: str, route_ports: list[int], me: int) -> str:
    routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in route_ports if p != me)
    return f'cluster {{ name: "authc", listen: "127.0.0.1:{me}", routes: [{routes}] }}\n'


async def test_revocation_reaches_every_server_of_a_cluster(tmp_path):
    """Pushed through one server's system account, the account update cuts a client on another server."""
    auth = AuthStore.ensure(tmp_path)
    route_ports = [free_port(), free_port()]
    servers = []
    try:
        for i, rp in enumerate(route_ports):
            conf = auth.server_config(tmp_path / f"n{i}" / "resolver") + _cluster_conf(f"n{i}", route_ports, rp)
            servers.append(NatsServer(free_port(), tmp_path / f"n{i}", config=conf, name=f"authc{i}").start())
        admin_creds = str(auth.service_creds("admin"))
        a = await nats.connect(servers[0].url, user_credentials=admin_creds)
        b = await nats.connect(servers[1].url, user_credentials=admin_creds)
        seen: list[bytes] = []

        async def on_msg(msg):
            seen.append(msg.data)

        await b.subscribe("route.check", cb=on_msg)
        await b.flush()

        async def routed() -> bool:
            await a.publish("route.check", b"x")
            await a.flush()
            return bool(seen)

        await wait_for(routed, 15, "the two servers to form a cluster", interval=0.2)
        grant = Grant(id=unique("g"), consumer="acme", protocol="xapi", courses=["c"])
        text, user_pub = await auth.issue_consumer_creds(a, grant, 3600)  # account pushed to server 0 only
        probe = await Probe().connect(servers[1].url, RawCredentials(text), creds_inbox_prefix(text),
                                      allow_reconnect=False)
        try:
            await auth.close_consumer(a, grant.id)  # pushed to server 0 only
            await asyncio.wait_for(probe.disconnected.wait(), 5)
        finally:
            await probe.close()
        with pytest.raises(Exception):  # noqa: B017 - refused on the other server too
            await nats.connect(servers[1].url, user_credentials=RawCredentials(text), allow_reconnect=False,
                               connect_timeout=3)
        await a.close()
        await b.close()
    finally:
        for s in servers:
            s.stop()
