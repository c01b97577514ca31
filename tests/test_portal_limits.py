"""Issue 19, item 6: sizes and rates the portal (and a direct subscriber) can no longer push past, with the
portal on a real operator-mode nats-server, a real SMTP server (aiosmtpd) and one that never answers.

Each test fails on the code before the fix: a 50 MB POST was accepted, deep JSON and a huge token id answered
500, anonymous requests grew the flash table without bound, ``/forgot`` took longer for a known address (it
sent the mail before answering), ``z9<dave@…>`` and ``a,b@…`` were accepted as addresses, replays could be
started without limit, an unresolvable host and an inside one were refused with different words, and a direct
subscriber could publish messages of any size.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import time

import httpx
import nats
import pytest
import pytest_asyncio
from nats.aio.client import RawCredentials

from hub.auth import AuthStore, ensure_consumer
from hub.auth.store import TENANT_MAX_PAYLOAD
from hub.core.creds import creds_inbox_prefix
from hub.core.grants import Grant, consumer_name
from hub.core.subjects import subject
from hub.deliver.settings import DeliverSettings
from hub.deliver.state.setup import ensure_delivery
from hub.deliver.transport import ssrf
from portal import flash
from portal.app import create_app
from portal.settings import PortalSettings
from portal.tables import FlashEntry
from tests.helpers import unique
from tests.mailbox import Mailbox
from tests.operator_kit import operator_fixtures

data_dir, op_server, admin_nc = operator_fixtures("portal-limits")
SITE = "s1"
COURSE = "course-v1:Org+Limits+1"
PASSWORD = "a long enough password"
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def mailbox():
    box = Mailbox().start()
    yield box
    box.stop()


@pytest.fixture(scope="module")
def silent_smtp():
    """A port that accepts connections and never says a word: an SMTP server that hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock.getsockname()[1]
    sock.close()


async def started(settings: PortalSettings):
    app = create_app(settings)
    for hook in app.on_startup:
        await hook(app)
    return app


async def stopped(app) -> None:
    for hook in app.on_shutdown:
        await hook(app)


def portal_settings(op_server, data_dir, **kw) -> PortalSettings:
    auth = AuthStore.ensure(data_dir)
    base = dict(
        nats_url=op_server.url,
        data_dir=str(data_dir),
        nats_creds=str(auth.service_creds("portal")),
        sites={SITE: ""},
        max_body_bytes=LIMIT,
        signup_per_hour=1000,
        replays_per_hour=2,
        public_url="http://portal.test",
        mail_from="portal@rthub.test",
        smtp_host="127.0.0.1",
        smtp_tls="none",
    )
    base.update(kw)
    return PortalSettings(**base)


@pytest_asyncio.fixture(scope="module")
async def app(op_server, data_dir, admin_nc, mailbox):
    await ensure_delivery(admin_nc.jetstream(), DeliverSettings(nats_url=op_server.url))
    app = await started(portal_settings(op_server, data_dir, smtp_port=mailbox.port))
    yield app
    await stopped(app)


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://portal.test", follow_redirects=False
    )


@pytest_asyncio.fixture(scope="module")
async def api(app):
    """An API client of a confirmed account, and the account."""
    portal = app.state.portal
    account = await portal.set_admin(f"{unique('owner')}@example.org", PASSWORD)
    token = await portal.create_token(account, "limits")
    async with client(app) as c:
        c.headers["authorization"] = f"Bearer {token}"
        c.account = account
        yield c


async def test_every_body_is_capped_with_413(app, api):
    big = {"name": "x" * (LIMIT + 10), "protocol": "xapi", "delivery": "direct", "sites": [SITE]}
    refused = await api.post("/api/v1/integrations", json=big)
    assert refused.status_code == 413 and f"at most {LIMIT} bytes" in refused.json()["error"]
    assert "RTHUB_MAX_BODY_BYTES" in refused.json()["error"]
    async with client(app) as anon:
        page = await anon.post("/signup", data={"email": "a@example.org", "name": "n" * (LIMIT + 10)})
        assert page.status_code == 413 and "RTHUB_MAX_BODY_BYTES" in page.text

        async def chunks():  # no Content-Length: counted as it arrives
            for _ in range(LIMIT // 4096 + 2):
                yield b"x" * 4096

        streamed = await anon.post("/forgot", content=chunks(), headers={"content-type": "text/plain"})
        assert streamed.status_code == 413
    ok = await api.post("/api/v1/integrations", json={**big, "name": "within the limit", "courses": [COURSE]})
    assert ok.status_code == 201, ok.text


async def test_deep_json_and_huge_ids_are_bad_requests_not_500(app, api):
    deep = (
        '{"name": "n", "protocol": "xapi", "delivery": "direct", "sites": ["s1"], "x": '
        + "[" * 1000
        + "]" * 1000
    )
    refused = await api.post(
        "/api/v1/integrations", content=deep + "}", headers={"content-type": "application/json"}
    )
    assert refused.status_code == 400 and "nested deeper than" in refused.json()["error"]
    async with client(app) as web:
        await web.get("/login")
        csrf = web.cookies.get("csrftoken")
        login = await web.post(
            "/login", data={"email": api.account.email, "password": PASSWORD, "_csrf_token": csrf}
        )
        assert login.status_code in (302, 303), login.text[:300]
        huge = await web.post("/tokens/99999999999999999999999999/revoke", data={"_csrf_token": csrf})
        assert huge.status_code == 400, huge.text[:300]


async def test_anonymous_requests_cannot_grow_the_flash_table(app, monkeypatch):
    monkeypatch.setattr(flash, "MAX_ENTRIES", 30)
    for _ in range(60):  # each a fresh browser: a new flash box, a stashed form, a "log in again" message
        async with client(app) as anon:
            await anon.get("/login")
            await anon.post(
                "/integrations", data={"name": "x" * 1000, "_csrf_token": anon.cookies.get("csrftoken")}
            )
    assert await FlashEntry.count() <= 30


async def test_addresses_are_parsed_display_names_and_lists_refused(app):
    async with client(app) as anon:
        await anon.get("/signup")
        for address in ("z9<dave@example.org>", "a,b@example.org", "dave@example.org,eve@example.org"):
            answer = await anon.post(
                "/signup",
                data={
                    "email": address,
                    "name": "n",
                    "password": PASSWORD,
                    "_csrf_token": anon.cookies.get("csrftoken"),
                },
            )
            assert answer.status_code == 400 and "no display name, no list" in answer.text, address


async def test_forgot_answers_without_waiting_for_the_mail(
    op_server, data_dir, admin_nc, silent_smtp, mailbox
):
    """With an SMTP server that never answers, a known address must answer as fast as an unknown one."""
    app = await started(portal_settings(op_server, data_dir, smtp_port=silent_smtp, smtp_timeout_s=5.0))
    try:
        known = f"{unique('known')}@example.org"
        await app.state.portal.set_admin(known, PASSWORD)
        async with client(app) as anon:
            await anon.get("/forgot")
            timings = {}
            for who in (f"{unique('nobody')}@example.org", known):
                t0 = time.monotonic()
                answer = await anon.post(
                    "/forgot", data={"email": who, "_csrf_token": anon.cookies.get("csrftoken")}
                )
                timings[who] = time.monotonic() - t0
                assert answer.status_code == 200 and "If " in answer.text
        assert timings[known] < 1.0, timings  # the mail (5 s SMTP timeout) is sent after the answer
    finally:
        await stopped(app)


async def test_one_replay_at_a_time_and_a_few_an_hour(app, api, admin_nc, data_dir):
    from portal.services import PortalError, operations
    from portal.validation import IntegrationSpec, Scope

    portal = app.state.portal
    root = api.account
    row = await portal.create_integration(
        root,
        IntegrationSpec(
            name="r", protocol="xapi", delivery="direct", scope=Scope(sites=[SITE], courses=[COURSE])
        ),
        approved_by=root,
    )
    row = await portal.get(row.key)
    js = admin_nc.jetstream()
    for n in range(3):
        await js.publish(subject("xapi", SITE, "Org", COURSE, "played"), json.dumps({"id": f"r{n}"}).encode())
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    first = await operations.perform(portal, root, row, "replay", {"since": since})
    assert first.count == 3
    with pytest.raises(PortalError, match="still running") as running:
        await operations.perform(portal, root, row, "replay", {"since": since})
    assert running.value.status == 409
    # the owner pulls the replay to its end; then a new one may start, until the hourly limit
    text = await portal.issue_creds(root, row)
    sub = await nats.connect(
        op_server_url(admin_nc),
        user_credentials=RawCredentials(text),
        inbox_prefix=creds_inbox_prefix(text),
        allow_reconnect=False,
    )
    try:
        replay = await sub.jetstream().pull_subscribe_bind(
            durable=consumer_name(row.key) + "_replay", stream="XAPI"
        )
        for msg in await replay.fetch(3, timeout=5):
            await msg.ack_sync()
    finally:
        await sub.close()
    again = await operations.perform(portal, root, row, "replay", {"since": since})
    assert again.count == 3
    await js.delete_consumer("XAPI", consumer_name(row.key) + "_replay")  # as if it had finished
    with pytest.raises(PortalError, match="RTHUB_REPLAYS_PER_HOUR") as limited:
        await operations.perform(portal, root, row, "replay", {"since": since})
    assert limited.value.status == 429
    refusals = [e for e in await portal.audit_log(20, key=row.key) if e.action == "delivery.replay.refused"]
    assert len(refusals) == 2


def op_server_url(nc) -> str:
    return nc.connected_url.geturl()


async def test_unresolvable_and_inside_hosts_get_the_same_refusal():
    with pytest.raises(ssrf.Refused) as unknown:
        await ssrf.resolve("https://no-such-host.invalid/hook", [], False)
    with pytest.raises(ssrf.Refused) as inside:
        await ssrf.resolve("https://localhost/hook", [], False)
    assert str(unknown.value) == ssrf.host_refusal("no-such-host.invalid")
    assert str(inside.value) == ssrf.host_refusal("localhost")
    assert str(unknown.value).replace("no-such-host.invalid", "H") == str(inside.value).replace(
        "localhost", "H"
    )


async def test_a_direct_subscriber_cannot_publish_large_messages(op_server, data_dir, admin_nc):
    auth = AuthStore.ensure(data_dir)
    grant = Grant(id=unique("pl"), consumer="c", protocol="xapi", sites=[SITE])
    await auth.activate_consumer(admin_nc, grant)
    await ensure_consumer(admin_nc.jetstream(), grant)
    text, _ = auth.consumer_creds(grant)
    errors: list[str] = []
    closed = asyncio.Event()

    async def on_error(exc):
        errors.append(str(exc))

    async def on_closed():
        closed.set()

    sub = await nats.connect(
        op_server.url,
        user_credentials=RawCredentials(text),
        allow_reconnect=False,
        inbox_prefix=creds_inbox_prefix(text),
        error_cb=on_error,
        closed_cb=on_closed,
    )
    try:
        pull = f"$JS.API.CONSUMER.MSG.NEXT.XAPI.{consumer_name(grant.id)}"
        await sub.publish(pull, b"x" * (TENANT_MAX_PAYLOAD * 3))
        await asyncio.wait_for(closed.wait(), 5)  # the server cut it off ("Maximum Payload Violation")
        # The server closed it (nats-py reports "Maximum Payload Violation", a reset socket, or nothing at all,
        # depending on which it reads first): the connection is gone, and not because of the credential.
        assert sub.is_closed
        # The same credential with a message under the limit stays connected: it is the size.
        ok = await nats.connect(
            op_server.url,
            user_credentials=RawCredentials(text),
            allow_reconnect=False,
            inbox_prefix=creds_inbox_prefix(text),
        )
        await ok.publish(pull, b"x" * (TENANT_MAX_PAYLOAD // 2))
        await ok.flush()
        assert ok.is_connected
        await ok.close()
    finally:
        if not sub.is_closed:
            await sub.close()


async def test_lists_and_text_fields_are_bounded_and_named(api):
    spec = {"name": "n", "protocol": "xapi", "delivery": "direct", "sites": [SITE]}
    many = await api.post("/api/v1/integrations", json={**spec, "orgs": [f"O{i}" for i in range(51)]})
    assert many.status_code == 400 and many.json()["errors"]["orgs"] == "At most 50 entries."
    long = await api.post("/api/v1/integrations", json={**spec, "courses": [COURSE], "name": "n" * 101})
    assert long.status_code == 400 and "At most 100 characters" in long.json()["errors"]["name"]


async def test_a_row_stored_before_the_size_limit_still_shows(app, api):
    """An integration approved before scopes were bounded (51 subjects, direct) keeps its page; writing it
    again is what the limit refuses."""
    from portal.services.provisioning import scope_json
    from portal.tables import Integration
    from portal.validation import IntegrationSpec, Scope

    portal = app.state.portal
    root = api.account
    spec = IntegrationSpec(name="old", protocol="xapi", delivery="direct", scope=Scope(sites=[SITE]))
    row = await portal.create_integration(root, spec, approved_by=root)
    wide = Scope(sites=[SITE], orgs=["Org", "O1", "O2"], courses=[f"course-v1:Org+C{i}+1" for i in range(17)])
    await Integration.update({Integration.granted: scope_json(wide)}).where(Integration.key == row.key)
    async with client(app) as web:
        await web.get("/login")
        csrf = web.cookies.get("csrftoken")
        await web.post("/login", data={"email": root.email, "password": PASSWORD, "_csrf_token": csrf})
        shown = await web.get(f"/integrations/{row.key}")
        assert shown.status_code == 200 and row.key in shown.text


async def test_a_direct_subscription_whose_account_was_not_loaded_shows_failing(app, api, data_dir):
    from portal.validation import IntegrationSpec, Scope

    portal = app.state.portal
    root = api.account
    spec = IntegrationSpec(name="skipped", protocol="xapi", delivery="direct", scope=Scope(sites=[SITE]))
    row = await portal.create_integration(root, spec, approved_by=root)
    # what AuthStore.tenant_jwts() leaves when a stored JWT is skipped at start
    (data_dir / "nats-auth" / "tenants" / f"{row.key}.refused").write_text(
        "1048577 bytes, more than the 262144 allowed\n"
    )
    async with client(app) as web:
        await web.get("/login")
        csrf = web.cookies.get("csrftoken")
        await web.post("/login", data={"email": root.email, "password": PASSWORD, "_csrf_token": csrf})
        state = (await web.get(f"/integrations/{row.key}/state.json")).json()
        assert state["state"] == "failing" and "not loaded" in state["headline"], state
        page = await web.get(f"/integrations/{row.key}")
        assert page.status_code == 200 and "not loaded when the server last started" in page.text
    # re-approving (here: re-opening the account) writes a fresh JWT and clears the mark
    AuthStore.ensure(data_dir).open_tenant(Grant(id=row.key, consumer="c", protocol="xapi", sites=[SITE]))
    assert not (data_dir / "nats-auth" / "tenants" / f"{row.key}.refused").exists()
