"""`rthub integration add|list|approve|revoke` and `rthub portal create-admin` in subprocesses, against the
suite's nats-server and a SQLite portal database; plus the same schema on PostgreSQL where reachable."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import msgspec
import pytest

from hub.core.grants import Target, decode_grant
from hub.core.secretbox import SecretBox
from hub.core.settings import from_env
from hub.core.subjects import GRANTS_BUCKET, TARGETS_BUCKET
from portal import db as portal_db
from portal.settings import PortalSettings
from tests.helpers import rthub, rthub_env, unique, wait_for
from tests.portal_pg import postgres_url

COURSE = "course-v1:edX+DemoX+Demo_Course"


@pytest.fixture(scope="module")
def env(nats_server, tmp_path_factory):
    return rthub_env(nats_server.url, RTHUB_DATA_DIR=str(tmp_path_factory.mktemp("portal-cli")))


async def kv_value(js, bucket, key):
    kv = await js.key_value(bucket)
    try:
        return (await kv.get(key)).value or None
    except Exception:  # noqa: BLE001 - missing or deleted
        return None


def opened(env, raw: bytes) -> Target:
    """The target as the deliverer reads it (secrets sealed in KV with the data directory's key)."""
    assert b"s3cret" not in raw and b"whsec_" not in raw, "a secret is stored in plaintext in KV"
    return SecretBox.from_settings(from_env(PortalSettings, env=env)).open_target(msgspec.json.decode(raw, type=Target))


def run(*args, env, ok=True, **kw):
    done = rthub(*args, env=env, **kw)
    if ok:
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done


async def test_add_lrs_list_revoke(env, js):
    user = unique("ops")
    out = run("integration", "add", "--name", "Campus LRS", "--protocol", "xapi", "--course", COURSE,
              "--lrs-url", "https://lrs.example.org/xapi", "--basic-auth", "key:s3cret", "--owner",
              f"{user}@example.org", env=env).stdout.decode()
    key = out.split()[1]
    assert out.startswith(f"integration {key} approved (xapi via lrs)") and "s3cret" not in out
    grant = decode_grant(await kv_value(js, GRANTS_BUCKET, key))
    assert grant.courses == [COURSE] and grant.delivery == "lrs" and grant.consumer == f"{user}@example.org"
    target = opened(env, await kv_value(js, TARGETS_BUCKET, key))
    assert target.kind == "lrs" and target.url == "https://lrs.example.org/xapi" and target.basic_auth == "key:s3cret"

    listed = json.loads(run("integration", "list", "--json", env=env).stdout)
    mine = next(r for r in listed if r["id"] == key)
    assert mine["status"] == "approved" and mine["granted"]["courses"] == [COURSE] and "s3cret" not in json.dumps(listed)
    assert key in run("integration", "list", "--status", "approved", env=env).stdout.decode()

    done = run("integration", "revoke", key, "--reason", "decommissioned", env=env)
    assert f"integration {key} revoked" in done.stdout.decode()

    async def gone():
        return await kv_value(js, GRANTS_BUCKET, key) is None and await kv_value(js, TARGETS_BUCKET, key) is None

    await wait_for(gone, 1.0, "grant and target removed")
    again = run("integration", "revoke", key, env=env, ok=False)
    assert again.returncode == 2 and b"already revoked" in again.stderr


async def test_owner_must_have_confirmed_its_address(env):
    from portal.services import Portal

    settings = from_env(PortalSettings, env=env)
    engine = await portal_db.migrate(settings)
    email = f"{unique('unconfirmed')}@example.org"
    await Portal(settings).create_account(email, "Not confirmed", "a password of sorts")
    await portal_db.close(engine)
    args = ("integration", "add", "--name", "X", "--protocol", "xapi", "--course", COURSE, "--webhook-url",
            "https://hooks.example.org/u", "--owner", email)
    refused = await asyncio.to_thread(run, *args, env=env, ok=False)
    assert refused.returncode == 2 and b"has not confirmed its e-mail address" in refused.stderr
    assert b"approved" not in refused.stdout
    allowed = await asyncio.to_thread(run, *args, "--allow-unverified-owner", env=env)
    assert b"approved (xapi via webhook)" in allowed.stdout


async def test_add_webhook_prints_secret_once_and_validates(env, js):
    out = run("integration", "add", "--name", "Hook", "--protocol", "caliper", "--org", "edX", "--event-type",
              "edx.video.played", "--webhook-url", "https://hooks.example.org/c", env=env).stdout.decode()
    key = out.split()[1]
    secret = out.split("webhook signing secret (shown once): ")[1].split()[0]
    target = opened(env, await kv_value(js, TARGETS_BUCKET, key))
    assert target.secrets == [secret] and secret.startswith("whsec_")
    assert secret not in run("integration", "list", "--json", env=env).stdout.decode()

    bad = run("integration", "add", "--name", "x", "--protocol", "xapi", "--site", "mars", "--webhook-url",
              "ftp://nope", env=env, ok=False)
    err = bad.stderr.decode()
    assert bad.returncode == 2 and "url: Not a valid http" in err and "Unknown site 'mars'" in err
    both = run("integration", "add", "--name", "x", "--protocol", "xapi", "--course", COURSE, "--direct",
               "--webhook-url", "https://h.example.org/", env=env, ok=False)
    assert both.returncode == 2 and b"exactly one of" in both.stderr


async def test_operator_commands_run_as_a_uid_without_a_passwd_entry(env, js):
    """The shipped image runs as uid 10001 with no passwd entry: ``getpass.getuser()`` raised KeyError there
    (issue 20 item 8). A user namespace maps us to such a uid (no USER/LOGNAME to fall back on)."""
    free_uid = 54321
    import pwd

    assert free_uid not in {p.pw_uid for p in pwd.getpwall()}
    bare = {k: v for k, v in env.items() if k not in ("USER", "LOGNAME", "LNAME", "USERNAME")}
    as_uid = ["unshare", "--user", f"--map-user={free_uid}", f"--map-group={free_uid}", sys.executable, "-m",
              "hub.cli"]
    cmd = [*as_uid, "integration", "add", "--name", "Nobody's", "--protocol", "xapi", "--course", COURSE,
           "--webhook-url", "https://hooks.example.org/n"]
    done = await asyncio.to_thread(subprocess.run, cmd, env=bare, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    key = done.stdout.decode().split()[1]
    assert decode_grant(await kv_value(js, GRANTS_BUCKET, key)).courses == [COURSE]
    cmd = [*as_uid, "integration", "suspend", key, "--reason", "uid check"]
    done = await asyncio.to_thread(subprocess.run, cmd, env=bare, capture_output=True, timeout=60)
    assert done.returncode == 0 and f"integration {key} suspended".encode() in done.stdout, done.stderr[-2000:]


async def test_create_admin_then_pending_approve_narrowed(env, js, tmp_path):
    made = run("portal", "create-admin", "--email", "ops@example.org", "--password-stdin", env=env,
               input=b"an admin password\n")
    assert b"administrator ops@example.org ready" in made.stdout
    short = run("portal", "create-admin", "--email", "x@example.org", "--password-stdin", env=env,
                input=b"short\n", ok=False)
    assert short.returncode == 2 and b"at least 10" in short.stderr

    # a consumer's pending request (made through the service layer, as the pages do), approved from the CLI
    from hub.core.settings import from_env
    from portal import db
    from portal.services import Portal
    from portal.settings import PortalSettings
    from portal.validation import validate_request

    settings = from_env(PortalSettings, env=env)
    spec, errors = validate_request({"name": "Req", "protocol": "xapi", "delivery": "webhook",
                                     "url": "https://h.example.org/x", "courses": [COURSE, "course-v1:a+b+c"]},
                                    set(settings.sites))
    assert errors == {}
    engine = await db.migrate(settings)
    portal = Portal(settings)
    account = await portal.create_account(f"{unique('u')}@example.org", "U", "consumer password", verified=True)
    key = (await portal.create_integration(account, spec)).key
    await portal.close()
    await db.close(engine)

    widen = await asyncio.to_thread(run, "integration", "approve", key, "--course", "course-v1:x+y+z", env=env, ok=False)
    assert widen.returncode == 2 and b"only narrow" in widen.stderr
    await asyncio.to_thread(run, "integration", "approve", key, "--course", COURSE, env=env)
    assert decode_grant(await kv_value(js, GRANTS_BUCKET, key)).courses == [COURSE]
    await asyncio.to_thread(run, "integration", "suspend", key, "--reason", "maintenance", env=env)
    assert decode_grant(await kv_value(js, GRANTS_BUCKET, key)).status == "suspended"


@pytest.fixture(scope="module")
def pg_url():
    """RTHUB_TEST_DATABASE_URL (else DATABASE_URL; compose's tests service points it at the postgres service),
    else a private server started for this module (tests/portal_pg.py)."""
    with postgres_url() as url:
        yield url


@pytest.mark.postgres
async def test_portal_on_postgresql(nats_server, js, tmp_path, pg_url):  # js: the streams and buckets exist
    import asyncpg

    # a database of its own (a schema is not enough: piccolo finds another schema's migration table, e.g. the
    # running portal's in compose, and then misses its own)
    name = unique("portal_")
    server = await asyncpg.connect(pg_url)
    await server.execute(f"CREATE DATABASE {name}")
    url = urlunsplit(urlsplit(pg_url)._replace(path=f"/{name}"))
    try:
        env = rthub_env(nats_server.url, RTHUB_DATA_DIR=str(tmp_path), RTHUB_DATABASE_URL=url)
        made = await asyncio.to_thread(run, "portal", "create-admin", "--email", "pg@example.org", "--password-stdin",
                                       env=env, input=b"postgres admin pw\n")
        assert b"ready" in made.stdout
        out = (await asyncio.to_thread(run, "integration", "add", "--name", "PG", "--protocol", "xapi", "--course",
                                       COURSE, "--webhook-url", "https://h.example.org/pg", env=env)).stdout.decode()
        key = out.split()[1]
        listed = json.loads((await asyncio.to_thread(run, "integration", "list", "--json", env=env)).stdout)
        assert [r["id"] for r in listed] == [key]
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT key, status FROM portal_integration")
            assert [(r["key"], r["status"]) for r in rows] == [(key, "approved")]
            migrations = len(list((Path(portal_db.__file__).parent / "migrations").glob("portal_*.py")))
            assert await conn.fetchval("SELECT count(*) FROM migration WHERE app_name = 'portal'") == migrations
        finally:
            await conn.close()
    finally:
        await server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await server.close()


async def test_pause_resume_and_attempts_from_the_command_line(env, js, nc, nats_server):
    """``rthub integration pause|resume|attempts`` (issue 24) against a real deliverer and receiver."""
    from tests.deliver_kit import deliverer, publish, statement
    from tests.deliver_receivers import Receiver

    rx = await Receiver(lambda r: (202, {"X-Seen": "yes"}, b"taken")).start()
    env = env | {"RTHUB_ALLOWED_NETWORKS": "127.0.0.1/32"}  # the receiver is local, as in the other delivery tests
    try:
        async with deliverer(nc, nats_server.url, data_dir=env["RTHUB_DATA_DIR"]):
            site = "default"
            out = (await asyncio.to_thread(run, "integration", "add", "--name", "CLI hook", "--protocol", "xapi",
                                           "--site", site, "--org", "CliOrg", "--webhook-url", rx.url + "/h",
                                           env=env)).stdout.decode()
            key = out.split()[1]
            first = statement()
            await publish(js, site, "c1", first, org="CliOrg")
            await wait_for(lambda: any(first["id"].encode() in r.body for r in rx.requests), 10, "delivered")

            async def attempts() -> list[str]:
                done = await asyncio.to_thread(run, "integration", "attempts", key, env=env)
                return done.stdout.decode().splitlines()

            lines: list[str] = []

            async def logged() -> bool:
                lines[:] = await attempts()
                return bool(lines)

            await wait_for(logged, 10, "an attempt listed")
            attempt_id = lines[0].split("\t")[0]
            assert "\tdelivered\t202\t" in lines[0]
            detail = json.loads((await asyncio.to_thread(run, "integration", "attempts", key, "--attempt", attempt_id,
                                                         env=env)).stdout)
            assert detail["attempt"]["response_headers"]["x-seen"] == "yes" and detail["attempt"]["response_body"] == "taken"

            paused = (await asyncio.to_thread(run, "integration", "pause", key, env=env)).stdout.decode()
            assert f"integration {key} paused; events kept until" in paused
            kept = [statement() for _ in range(5)]
            for st in kept:
                await publish(js, site, "c1", st, org="CliOrg")
            before = len(rx.requests)

            async def held() -> bool:
                info = await js.consumer_info("XAPI", f"rthub_{key}")
                return info.num_pending + info.num_ack_pending >= 5

            await wait_for(held, 10, "5 statements kept while paused")
            assert len(rx.requests) == before
            resumed = (await asyncio.to_thread(run, "integration", "resume", key, env=env)).stdout.decode()
            assert "resumed" in resumed
            await wait_for(lambda: all(any(st["id"].encode() in r.body for r in rx.requests) for st in kept), 20,
                           "the kept statements delivered after resume")
    finally:
        await rx.stop()


async def test_add_many_from_a_csv_or_json_file_in_one_run(env, js, tmp_path):
    """Bulk creation (issue 20): one process for many integrations; a bad row creates nothing."""
    user = unique("bulk")
    csv_file = tmp_path / "many.csv"
    csv_file.write_text("name,protocol,delivery,url,courses,event_types,owner\n" + "".join(
        f"Tenant {i},xapi,webhook,https://hooks.example.org/{i},{COURSE},play_video;pause_video,{user}@example.org\n"
        for i in range(30)))
    out = run("integration", "add", "--from", str(csv_file), env=env).stdout.decode()
    lines = [line for line in out.splitlines() if line.startswith("integration ")]
    assert len(lines) == 30 and out.strip().endswith("30 integration(s) added")
    for i, line in enumerate(lines):
        key, secret = line.split()[1], line.split("secret=")[1]
        grant = decode_grant(await kv_value(js, GRANTS_BUCKET, key))
        assert grant.courses == [COURSE] and grant.event_types == ["play_video", "pause_video"]
        assert grant.delivery == "webhook" and grant.consumer == f"{user}@example.org" and f"Tenant {i}" in line
        target = opened(env, await kv_value(js, TARGETS_BUCKET, key))
        assert target.url == f"https://hooks.example.org/{i}" and target.secrets == [secret]

    json_file = tmp_path / "many.json"
    json_file.write_text(json.dumps([
        {"name": "Hook", "protocol": "xapi", "delivery": "webhook", "url": "https://h.example.org/", "sites": ["mars"]},
        {"name": "LRS", "protocol": "xapi", "delivery": "lrs", "url": "https://lrs.example.org/x",
         "basic_auth": "k:s3cret", "courses": [COURSE]}]))
    bad_site = run("integration", "add", "--from", str(json_file), env=env, ok=False)
    assert bad_site.returncode == 2 and b"row 1" in bad_site.stderr and b"nothing created" in bad_site.stderr
    json_file.write_text(json.dumps([
        {"name": "Caliper hook", "protocol": "caliper", "delivery": "webhook", "url": "https://h.example.org/c",
         "orgs": ["edX"]},
        {"name": "LRS", "protocol": "xapi", "delivery": "lrs", "url": "https://lrs.example.org/x",
         "basic_auth": "k:s3cret", "courses": [COURSE]}]))
    out = run("integration", "add", "--from", str(json_file), env=env).stdout.decode()
    hook, lrs = [line for line in out.splitlines() if line.startswith("integration ")]
    assert "(caliper via webhook) Caliper hook secret=whsec_" in hook and "s3cret" not in out
    assert decode_grant(await kv_value(js, GRANTS_BUCKET, hook.split()[1])).orgs == ["edX"]
    assert opened(env, await kv_value(js, TARGETS_BUCKET, lrs.split()[1])).basic_auth == "k:s3cret"
