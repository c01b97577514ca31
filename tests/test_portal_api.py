"""Portal pages and JSON API through Litestar's test client, against the suite's real nats-server: accounts,
CSRF, rate-limited log-in, the request -> approve -> secret -> rotate -> suspend -> revoke cycle and what each
step writes to the grants and targets buckets, cross-consumer and unauthenticated access, hostile input."""

from __future__ import annotations

import logging
import re

import httpx
import msgspec
import pytest
import pytest_asyncio

from hub.core.grants import Target, decode_grant
from hub.core.secretbox import SecretBox
from hub.core.subjects import GRANTS_BUCKET, TARGETS_BUCKET
from portal.app import create_app
from portal.settings import PortalSettings
from portal.tables import Integration
from tests.helpers import unique, wait_for
from tests.mailbox import Mailbox, link

COURSE_A = "course-v1:edX+DemoX+Demo_Course"
COURSE_B = "course-v1:MITx+6.002x+2024_T1"
PASSWORD = "a long enough password"


@pytest.fixture(scope="module")
def mailbox():
    box = Mailbox().start()
    yield box
    box.stop()


@pytest.fixture(scope="module")
def settings(nats_server, tmp_path_factory, mailbox) -> PortalSettings:
    return PortalSettings(nats_url=nats_server.url, data_dir=str(tmp_path_factory.mktemp("portal")),
                          sites={"default": "http://localhost:18000", "campus": "https://campus.example.org"},
                          login_max_failures=3, smtp_host="127.0.0.1", smtp_port=mailbox.port, smtp_tls="none",
                          mail_from="portal@rthub.test", public_url="http://portal.test", signup_per_hour=1000)


def target_of(settings, raw: bytes) -> Target:
    """A target as the deliverer sees it: its secrets are sealed in KV, opened with the shared key."""
    return SecretBox.from_settings(settings).open_target(msgspec.json.decode(raw, type=Target))


async def read_target(app, js, key: str) -> Target:
    """The target of ``key`` in the targets bucket, opened as the deliverer reads it."""
    return target_of(app.state.settings, await kv_get(js, TARGETS_BUCKET, key))


@pytest_asyncio.fixture(scope="module")
async def app(settings, nc, mailbox):
    """The app with its start-up and shutdown hooks run in the test's own event loop (Litestar's
    AsyncTestClient runs the app in a thread with another loop, which a shared NATS client cannot follow)."""
    app = create_app(settings)
    app.state.mailbox = mailbox
    for hook in app.on_startup:
        await hook(app)
    yield app
    for hook in app.on_shutdown:
        await hook(app)


def Client(app) -> httpx.AsyncClient:  # noqa: N802 - reads like the class it stands for
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver.local",
                             follow_redirects=True)


@pytest_asyncio.fixture(scope="module")
async def admin(app):
    async with Client(app) as client:
        await app.state.portal.set_admin("root@example.org", PASSWORD)
        await login(client, "root@example.org", PASSWORD)
        yield client


async def csrf(client) -> str:
    if not client.cookies.get("csrftoken"):
        await client.get("/login")
    return client.cookies.get("csrftoken")


async def post(client, path: str, data: dict | None = None, **kw):
    body = dict(data or {})
    body["_csrf_token"] = await csrf(client)
    return await client.post(path, data=body, **kw)


async def login(client, email: str, password: str):
    return await post(client, "/login", {"email": email, "password": password})


async def new_consumer(app, email: str | None = None) -> httpx.AsyncClient:
    client = Client(app)
    email = email or f"{unique('c')}@example.org"
    response = await post(client, "/signup", {"email": email, "name": "Consumer", "password": PASSWORD})
    assert response.status_code == 200 and "Check your mail" in response.text, response.text[:500]
    await confirm(client, await app.state.mailbox.wait(email, "Confirm your e-mail"))
    client.email = email
    return client


async def confirm(client, mail, password: str = PASSWORD):
    """Follow the confirmation link of ``mail`` and confirm with ``password``; lands logged in."""
    url = link(mail, "/verify")
    token = url.split("token=", 1)[1]
    form = await client.get(url.replace("http://portal.test", ""))
    assert form.status_code == 200 and "Confirm your e-mail address" in form.text
    response = await post(client, "/verify", {"token": token, "password": password})
    assert response.status_code == 200 and str(response.url).split("?")[0].endswith("/integrations"), response.text[:500]
    return response


async def request_access(client, **fields) -> str:
    data = {"name": "Adaptive engine", "protocol": "xapi", "delivery": "webhook", "url": "https://hooks.example.org/in",
            "sites": "default", "courses": f"{COURSE_A}, {COURSE_B}", "reason": "personalised hints"}
    data.update(fields)
    response = await post(client, "/integrations", data)
    assert response.status_code == 200, response.text[:2000]
    key = re.search(r"/integrations/(i[0-9a-f]{16})", str(response.url)).group(1)
    return key


async def kv_get(js, bucket: str, key: str):
    kv = await js.key_value(bucket)
    try:
        entry = await kv.get(key)
    except Exception:  # noqa: BLE001 - missing or deleted
        return None
    return entry.value or None


async def test_signup_login_logout(app):
    client = await new_consumer(app)
    page = await client.get("/integrations")
    assert client.email in page.text and "My integrations" in page.text
    await post(client, "/logout")
    after = await client.get("/integrations")
    assert str(after.url).split("?")[0].endswith("/login") and client.email not in after.text
    again = await login(client, client.email, PASSWORD)
    assert str(again.url).endswith("/integrations")
    # The session cookie the login sets is out of scripts' reach and not sent by other sites' requests.
    set_cookie = [c for r in again.history for c in r.headers.get_list("set-cookie")]
    session = [c for c in set_cookie if c.split("=", 1)[0] == "rthub_session"]
    assert session and all("httponly" in c.lower() and "samesite=lax" in c.lower() for c in session), set_cookie
    # Signing up again with a registered address answers exactly like a new one; the owner gets a mail.
    dup = await post(client, "/signup", {"email": client.email.upper(), "name": "x", "password": PASSWORD})
    fresh = f"{unique('n')}@example.org"
    new = await post(client, "/signup", {"email": fresh, "name": "x", "password": PASSWORD})
    assert dup.status_code == new.status_code == 200
    assert dup.text.replace(client.email, "ADDRESS") == new.text.replace(fresh, "ADDRESS")
    notice = await app.state.mailbox.wait(client.email, "Your rthub portal account")
    assert "already has an account" in notice.get_content() and "/verify" not in notice.get_content()


async def test_session_cookie_flags(app):
    async with Client(app) as client:
        email = f"{unique('f')}@example.org"
        await post(client, "/signup", {"email": email, "name": "F", "password": PASSWORD})
        url = link(await app.state.mailbox.wait(email, "Confirm your e-mail"), "/verify")
        response = await post(client, "/verify", {"token": url.split("token=")[1], "password": PASSWORD},
                              follow_redirects=False)
        assert response.status_code == 303
        cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("rthub_session="))
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")


async def test_csrf_is_enforced_on_every_form(app):
    client = await new_consumer(app)
    token = await csrf(client)
    for path in ("/integrations", "/tokens", "/logout", "/login", "/signup"):
        missing = await client.post(path, data={"name": "x"})
        assert missing.status_code == 403, path
        forged = await client.post(path, data={"name": "x", "_csrf_token": token[:-4] + "AAAA"})
        assert forged.status_code == 403, path
    # still logged in: the rejected /logout changed nothing
    assert client.email in (await client.get("/integrations")).text


async def test_login_attempts_are_rate_limited(app):
    client = await new_consumer(app)
    email = client.email
    async with Client(app) as attacker:
        for _ in range(3):
            bad = await login(attacker, email, "wrong password!")
            assert bad.status_code == 401 and "Wrong e-mail address or password" in bad.text
        blocked = await login(attacker, email, PASSWORD)
        assert blocked.status_code == 429 and "Too many failed log-ins" in blocked.text
    # The stranger's failures slow down the stranger only: the owner, from their own address, logs in.
    owner = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("10.9.8.7", 40000)),
                              base_url="http://testserver.local", follow_redirects=True)
    async with owner:
        ok = await login(owner, email, PASSWORD)
        assert ok.status_code == 200 and str(ok.url).endswith("/integrations"), ok.text[:300]


async def test_request_approve_secret_rotate_suspend_revoke(app, admin, js, caplog):
    caplog.set_level(logging.DEBUG)
    consumer = await new_consumer(app)
    key = await request_access(consumer)
    page = (await consumer.get(f"/integrations/{key}")).text
    assert "pending" in page and "Waiting for an administrator" in page
    assert await kv_get(js, GRANTS_BUCKET, key) is None

    pending = await admin.get("/admin")
    assert key in pending.text and consumer.email in pending.text
    detail = await admin.get(f"/admin/integrations/{key}")
    assert "personalised hints" in detail.text
    # widening is refused with a clear message; narrowing to one course works
    wide = await post(admin, f"/admin/integrations/{key}/approve",
                      {"narrow": "1", "sites": "default", "courses": "course-v1:Other+X+Y"})
    assert wide.status_code == 400 and "only narrow" in wide.text
    ok = await post(admin, f"/admin/integrations/{key}/approve", {"narrow": "1", "sites": "default", "courses": COURSE_A})
    assert ok.status_code == 200 and "approved" in ok.text

    grant = decode_grant(await kv_get(js, GRANTS_BUCKET, key))
    assert grant.courses == [COURSE_A] and grant.sites == ["default"] and grant.protocol == "xapi"
    assert grant.delivery == "webhook" and grant.status == "active" and grant.consumer == consumer.email
    raw = await kv_get(js, TARGETS_BUCKET, key)
    assert b"whsec_" not in raw, "the signing secret is stored in plaintext in KV"
    target = target_of(app.state.settings, raw)
    assert target.kind == "webhook" and target.url == "https://hooks.example.org/in" and len(target.secrets) == 1
    secret = target.secrets[0]
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/=]{40,}", secret)

    first = await consumer.get(f"/integrations/{key}")
    assert secret in first.text and "show the current secret again" in first.text
    second = await consumer.get(f"/integrations/{key}")
    assert secret not in second.text and "whsec_" not in second.text
    assert secret not in (await admin.get(f"/admin/integrations/{key}")).text
    row = await Integration.objects().get(Integration.key == key)
    assert row.pending_secret is None

    rotated = await post(consumer, f"/integrations/{key}/rotate")
    new_secret = re.search(r'<pre id="secret">(whsec_[^<]+)</pre>', rotated.text).group(1)
    target = target_of(app.state.settings, await kv_get(js, TARGETS_BUCKET, key))
    assert target.secrets == [new_secret, secret]
    assert new_secret not in (await consumer.get(f"/integrations/{key}")).text
    await post(consumer, f"/integrations/{key}/retire")
    target = target_of(app.state.settings, await kv_get(js, TARGETS_BUCKET, key))
    assert target.secrets == [new_secret]

    await post(admin, f"/admin/integrations/{key}/suspend", {"reason": "abuse report"})
    assert decode_grant(await kv_get(js, GRANTS_BUCKET, key)).status == "suspended"
    assert target_of(app.state.settings, await kv_get(js, TARGETS_BUCKET, key)).enabled is False
    assert "abuse report" in (await consumer.get(f"/integrations/{key}")).text
    await post(admin, f"/admin/integrations/{key}/resume")
    assert decode_grant(await kv_get(js, GRANTS_BUCKET, key)).status == "active"
    target = target_of(app.state.settings, await kv_get(js, TARGETS_BUCKET, key))
    assert target.enabled and target.secrets == [new_secret]

    await post(admin, f"/admin/integrations/{key}/revoke", {"reason": "contract ended"})

    async def gone():
        return await kv_get(js, GRANTS_BUCKET, key) is None and await kv_get(js, TARGETS_BUCKET, key) is None

    await wait_for(gone, 1.0, "grant and target removed within a second")
    audit = (await admin.get("/admin/audit")).text
    for action in ("integration.request", "integration.approve", "secret.rotate", "integration.suspend",
                   "integration.resume", "integration.revoke"):
        assert action in audit
    assert "root@example.org" in audit and "contract ended" in audit
    for s in (secret, new_secret):
        assert s not in audit, "secret in the audit page"
        assert s not in caplog.text, "secret in the logs"


async def test_deny_needs_reason_and_is_shown(app, admin, js):
    consumer = await new_consumer(app)
    key = await request_access(consumer, delivery="direct", url="")
    no_reason = await post(admin, f"/admin/integrations/{key}/deny", {"reason": ""})
    assert no_reason.status_code == 400 and "reason" in no_reason.text.lower()
    await post(admin, f"/admin/integrations/{key}/deny", {"reason": "Please name a <b>course</b>"})
    page = (await consumer.get(f"/integrations/{key}")).text
    assert "denied" in page and "Please name a &lt;b&gt;course&lt;/b&gt;" in page
    assert await kv_get(js, GRANTS_BUCKET, key) is None
    again = await post(admin, f"/admin/integrations/{key}/approve")
    assert again.status_code == 409 and "Only a pending request" in again.text


async def test_consumer_cannot_see_or_change_anothers_integrations(app, admin, js):
    alice, mallory = await new_consumer(app), await new_consumer(app)
    key = await request_access(alice, name="Alice private engine")
    assert "Alice private engine" not in (await mallory.get("/integrations")).text
    page = await mallory.get(f"/integrations/{key}")
    assert page.status_code == 404 and "Alice private engine" not in page.text
    for action in ("rotate", "retire", "creds", "cancel"):
        response = await post(mallory, f"/integrations/{key}/{action}")
        assert response.status_code == 404, action
    for path in ("/admin", f"/admin/integrations/{key}", "/admin/audit"):
        response = await mallory.get(path)
        assert response.status_code == 403 and "Alice private engine" not in response.text, path
    for action in ("approve", "deny", "suspend", "resume", "revoke"):
        response = await post(mallory, f"/admin/integrations/{key}/{action}", {"reason": "x"})
        assert response.status_code == 403, action
    assert (await Integration.objects().get(Integration.key == key)).status == "pending"
    # the same through the API, with mallory's own token
    token = await make_token(mallory)
    headers = {"Authorization": f"Bearer {token}"}
    assert (await mallory.get(f"/api/v1/integrations/{key}", headers=headers)).status_code == 404
    assert key not in (await mallory.get("/api/v1/integrations", headers=headers)).text
    for action in ("rotate-secret", "creds", "cancel"):
        assert (await mallory.post(f"/api/v1/integrations/{key}/{action}", headers=headers)).status_code == 404
    assert (await mallory.post(f"/api/v1/admin/integrations/{key}/approve", headers=headers, json={})).status_code == 403
    assert (await mallory.get("/api/v1/admin/integrations", headers=headers)).status_code == 403


async def test_an_unconfirmed_account_cannot_request_access(app):
    """The ``verified`` guard answers before the body is read: an account whose address is no longer confirmed
    gets 403 with what to do, also for a body that would fail the field checks."""
    from portal.tables import Account

    consumer = await new_consumer(app)
    headers = {"Authorization": f"Bearer {await make_token(consumer)}"}
    await Account.update({Account.email_verified: False}).where(Account.email == consumer.email)
    for body in ({"name": ""}, {"name": "Engine", "protocol": "xapi", "delivery": "direct", "orgs": ["edX"]}):
        refused = await consumer.post("/api/v1/integrations", headers=headers, json=body)
        assert refused.status_code == 403 and "Confirm the owner's e-mail address" in refused.json()["error"]
    assert (await consumer.get("/api/v1/integrations", headers=headers)).json() == []
    assert not await Integration.objects().where(Integration.name == "Engine")


async def make_token(client) -> str:
    response = await post(client, "/tokens", {"name": "ci"})
    return re.search(r'<pre id="new-token">(rth_[^<]+)</pre>', response.text).group(1)


async def test_every_route_refuses_anonymous_visitors(app, admin):
    consumer = await new_consumer(app)
    key = await request_access(consumer)
    public = {"/", "/health", "/login", "/signup", "/verify", "/forgot", "/reset"}
    async with Client(app) as anon:
        token = await csrf(anon)
        checked = 0
        for route in app.routes:
            path = route.path
            if path in public or path.startswith(("/schema", "/static")):
                continue
            concrete = path.replace("{key:str}", key).replace("{action:str}", "approve").replace("{token_id:int}", "1")
            concrete = concrete.replace("{op:str}", "test-event")
            for method in route.methods - {"HEAD", "OPTIONS"}:
                if method == "GET":
                    response = await anon.get(concrete, follow_redirects=False)
                else:
                    kw = {"json": {}} if concrete.startswith("/api/") else {"data": {"_csrf_token": token, "reason": "x"}}
                    response = await anon.post(concrete, follow_redirects=False, **kw)
                if concrete.startswith("/api/") or concrete.endswith(".json"):  # programs and page scripts: 401
                    assert response.status_code == 401, (method, concrete)
                else:
                    assert response.status_code == 303 and "/login" in response.headers["location"], (method, concrete)
                assert "Adaptive engine" not in response.text
                checked += 1
        assert checked >= 25
    assert (await Integration.objects().get(Integration.key == key)).status == "pending"


async def test_json_api_with_tokens(app, admin, js):
    consumer = await new_consumer(app)
    token = await make_token(consumer)
    assert token not in (await consumer.get("/tokens")).text
    headers = {"Authorization": f"Bearer {token}"}
    me = await consumer.get("/api/v1/me", headers=headers)
    assert me.json() == {"email": consumer.email, "name": "Consumer", "admin": False}
    bad = await consumer.post("/api/v1/integrations", headers=headers,
                              json={"name": "", "protocol": "xapi", "delivery": "lrs", "url": "ftp://x", "sites": ["nowhere"]})
    assert bad.status_code == 400
    errors = bad.json()["errors"]
    assert set(errors) >= {"name", "url", "sites", "basic_auth"} and "http" in errors["url"]
    created = await consumer.post("/api/v1/integrations", headers=headers, json={
        "name": "LRS", "protocol": "xapi", "delivery": "lrs", "url": "https://lrs.example.org/xapi",
        "basic_auth": "key:s3cret", "orgs": ["edX"], "event_types": ["edx.video.played"], "reason": "research"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "pending" and "s3cret" not in created.text and body["auth"] == "basic"

    admin_token = await make_token(admin)
    admin_headers = {"Authorization": f"Bearer {admin_token}"}
    listed = await admin.get("/api/v1/admin/integrations?status=pending", headers=admin_headers)
    assert body["id"] in [r["id"] for r in listed.json()]
    approved = await admin.post(f"/api/v1/admin/integrations/{body['id']}/approve", headers=admin_headers, json={})
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    target = target_of(app.state.settings, await kv_get(js, TARGETS_BUCKET, body["id"]))
    assert target.kind == "lrs" and target.basic_auth == "key:s3cret" and target.secrets == []
    grant = decode_grant(await kv_get(js, GRANTS_BUCKET, body["id"]))
    assert grant.orgs == ["edX"] and grant.event_types == ["edx.video.played"]
    view = await consumer.get(f"/api/v1/integrations/{body['id']}", headers=headers)
    assert view.json()["granted"]["orgs"] == ["edX"] and "webhook_secret" not in view.json()
    assert "lag" in view.json()["status_detail"]

    audit = await admin.get(f"/api/v1/admin/audit?integration={body['id']}", headers=admin_headers)
    decisions = [e["action"] for e in audit.json() if not e["action"].startswith("mail.")]
    assert decisions[:2] == ["integration.approve", "integration.request"]
    assert "mail.notify" in [e["action"] for e in audit.json()]
    assert all("s3cret" not in e["detail"] for e in audit.json())

    tokens_page = await consumer.get("/tokens")
    token_id = re.search(r'/tokens/(\d+)/revoke', tokens_page.text).group(1)
    await post(consumer, f"/tokens/{token_id}/revoke")
    assert (await consumer.get("/api/v1/me", headers=headers)).status_code == 401
    assert (await consumer.get("/api/v1/me", headers={"Authorization": "Bearer rth_forged"})).status_code == 401


async def test_webhook_secret_via_api_shown_once(app, admin, js):
    consumer = await new_consumer(app)
    headers = {"Authorization": f"Bearer {await make_token(consumer)}"}
    created = await consumer.post("/api/v1/integrations", headers=headers, json={
        "name": "Hook", "protocol": "caliper", "delivery": "webhook", "url": "https://h.example.org/c",
        "courses": [COURSE_B]})
    key = created.json()["id"]
    await post(admin, f"/admin/integrations/{key}/approve")
    first = (await consumer.get(f"/api/v1/integrations/{key}", headers=headers)).json()
    target = target_of(app.state.settings, await kv_get(js, TARGETS_BUCKET, key))
    assert first["webhook_secret"] == target.secrets[0]
    assert "webhook_secret" not in (await consumer.get(f"/api/v1/integrations/{key}", headers=headers)).json()
    rotated = (await consumer.post(f"/api/v1/integrations/{key}/rotate-secret", headers=headers)).json()
    target = target_of(app.state.settings, await kv_get(js, TARGETS_BUCKET, key))
    assert target.secrets == [rotated["webhook_secret"], first["webhook_secret"]]
    cancelled = await consumer.post(f"/api/v1/integrations/{key}/cancel", headers=headers)
    assert cancelled.json()["status"] == "revoked"
    assert await kv_get(js, GRANTS_BUCKET, key) is None


async def test_hostile_input_is_escaped_or_refused(app, admin):
    consumer = await new_consumer(app)
    evil = "<script>alert('x')</script>\u00a0𝕏 זה ‮"[:-1] + "ok"
    key = await request_access(consumer, name=evil, reason="<img src=x onerror=alert(1)> '; DROP TABLE portal_account; --")
    for client, path in ((consumer, f"/integrations/{key}"), (consumer, "/integrations"), (admin, "/admin"),
                         (admin, f"/admin/integrations/{key}"), (admin, "/admin/audit")):
        text = (await client.get(path)).text
        assert "<script>alert" not in text and "<img src=x" not in text, path
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in (await consumer.get(f"/integrations/{key}")).text
    assert "&lt;img src=x onerror=alert(1)&gt;" in (await admin.get(f"/admin/integrations/{key}")).text
    long = await post(consumer, "/integrations", {"name": "n" * 5000, "protocol": "xapi", "delivery": "direct",
                                                  "courses": COURSE_A})
    assert long.status_code == 400 and "At most 100 characters" in long.text and "n" * 3000 not in long.text
    bidi = await post(consumer, "/integrations", {"name": "abc\u202eexe", "protocol": "xapi", "delivery": "direct",
                                                  "courses": COURSE_A})
    assert bidi.status_code == 400 and "text-direction" in bidi.text
    weird = await post(consumer, "/integrations", {"name": "x", "protocol": "<b>", "delivery": "direct",
                                                   "sites": "'; --", "courses": COURSE_A})
    assert weird.status_code == 400 and "Unknown site" in weird.text and "Choose xapi, caliper or cloudevents" in weird.text
    assert (await consumer.get("/integrations/%3Cscript%3E")).status_code == 404
    huge_email = await login(consumer, "a" * 10_000 + "@x.org", "p")
    assert huge_email.status_code == 401


async def test_openapi_and_health(app):
    async with Client(app) as client:
        schema = (await client.get("/schema/openapi.json")).json()
        assert "/api/v1/integrations" in schema["paths"] and "/api/v1/admin/integrations/{key}/{action}" in schema["paths"]
        assert (await client.get("/health")).json() == {"status": "ok"}


async def test_login_rehashes_an_older_password_hash(app):
    from portal import security
    from portal.tables import Account

    client = await new_consumer(app)
    await Account.update({Account.password_hash: security.hash_password(PASSWORD, n=2**14)}).where(
        Account.email == client.email)
    async with Client(app) as again:
        assert str((await login(again, client.email, PASSWORD)).url).endswith("/integrations")
    stored = (await Account.objects().get(Account.email == client.email)).password_hash
    assert stored.startswith(f"scrypt${2**17}$8$1$") and security.verify_password(PASSWORD, stored)


async def test_secrets_stored_in_the_clear_earlier_are_sealed_at_start(app, admin, js):
    consumer = await new_consumer(app)
    headers = {"Authorization": f"Bearer {await make_token(consumer)}"}
    key = (await consumer.post("/api/v1/integrations", headers=headers, json={
        "name": "Old LRS", "protocol": "xapi", "delivery": "lrs", "url": "https://lrs.example.org/old",
        "bearer": "old-plain-token-1234", "orgs": ["edX"]})).json()["id"]
    await post(admin, f"/admin/integrations/{key}/approve")
    # What an earlier version left: the token in the clear in the database and in the targets bucket.
    await Integration.update({Integration.auth_value: "old-plain-token-1234"}).where(Integration.key == key)
    kv = await js.key_value(TARGETS_BUCKET)
    await kv.put(key, msgspec.json.encode(Target(id=key, kind="lrs", url="https://lrs.example.org/old",
                                                 bearer="old-plain-token-1234")))
    assert await app.state.portal.seal_stored_secrets() >= 2
    row = await Integration.objects().get(Integration.key == key)
    raw = await kv_get(js, TARGETS_BUCKET, key)
    assert row.auth_value.startswith("fernet:") and b"old-plain-token-1234" not in raw
    assert target_of(app.state.settings, raw).bearer == "old-plain-token-1234"
    assert await app.state.portal.seal_stored_secrets() == 0


async def test_read_only_token_is_refused_on_every_state_changing_api_route(app, admin):
    consumer = await new_consumer(app)
    key = await request_access(consumer)
    response = await post(admin, "/tokens", {"name": "ro", "read_only": "1"})
    read_only = re.search(r'<pre id="new-token">(rth_[^<]+)</pre>', response.text).group(1)
    headers = {"Authorization": f"Bearer {read_only}"}
    checked = 0
    for route in app.routes:
        if not route.path.startswith("/api/"):
            continue
        concrete = route.path.replace("{key:str}", key).replace("{action:str}", "approve")
        for method in route.methods - {"GET", "HEAD", "OPTIONS"}:
            answer = await admin.request(method, concrete, headers=headers, json={})
            assert answer.status_code == 403 and "read-only" in answer.json()["error"], (method, concrete)
            checked += 1
    assert checked >= 5  # create, rotate-secret, creds, cancel, admin action
    assert (await admin.get("/api/v1/admin/integrations", headers=headers)).status_code == 200
    assert (await Integration.objects().get(Integration.key == key)).status == "pending"


async def test_every_api_response_has_a_typed_schema(app):
    """OpenAPI documents every JSON answer and body of /api/v1 with a named struct (or a list of them), refusals
    with the portal's own error shape, and no struct has an untyped field (``{}`` or a free-form object)."""
    async with Client(app) as client:
        schema = (await client.get("/schema/openapi.json")).json()
    components = schema["components"]["schemas"]

    def ref_of(s: dict) -> str | None:
        s = s.get("items", s) if s.get("type") == "array" else s
        alternatives = [a for a in s.get("oneOf", []) if a.get("type") != "null"]
        s = alternatives[0] if len(alternatives) == 1 else s  # an optional body: the struct or nothing
        return s["$ref"].rsplit("/", 1)[1] if "$ref" in s else None

    def untyped(s: dict) -> bool:
        if not s or s.get("additionalProperties") == {}:
            return True
        alternatives = s.get("oneOf") or s.get("anyOf")
        if alternatives:
            return any(untyped(a) for a in alternatives)
        if s.get("type") == "array":
            return untyped(s.get("items") or {})
        return "$ref" not in s and "type" not in s

    problems, named, operations = [], set(), 0
    for path, ops in schema["paths"].items():
        if not path.startswith("/api/v1"):
            continue
        for method, op in ops.items():
            operations += 1
            bodies = [("request", (op.get("requestBody") or {}).get("content") or {})]
            bodies += [(status, r.get("content") or {}) for status, r in op.get("responses", {}).items()]
            for where, content in bodies:
                for media, body in content.items():
                    if media != "application/json":
                        continue
                    name = ref_of(body["schema"])
                    if name is None:
                        problems.append(f"{method.upper()} {path} {where}: {body['schema']}")
                    elif where.startswith(("4", "5")) and name != "ApiError":
                        problems.append(f"{method.upper()} {path} {where}: {name}, not ApiError")
                    named.add(name or "")
            if not any(status.startswith("2") for status in op.get("responses", {})):
                problems.append(f"{method.upper()} {path}: no success response")
    seen: set[str] = {""}
    while named - seen:
        name = (named - seen).pop()
        seen.add(name)
        for field, s in components[name].get("properties", {}).items():
            if untyped(s):
                problems.append(f"{name}.{field}: {s}")
            for inner in [s, *(s.get("oneOf") or []), s.get("items") or {}]:
                if ref := ref_of(inner):
                    named.add(ref)
    assert operations >= 21 and {"ApiError", "IntegrationDetail", "StatusDetail", "ActionResult"} <= seen
    assert not problems, problems
