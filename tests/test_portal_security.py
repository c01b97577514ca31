"""Issue 9, portal side, against real components: two `rthub portal serve` processes sharing one data directory
(one trusts 127.0.0.1 as a proxy, one trusts none), a nats-server in operator mode, a real SMTP server
(aiosmtpd) and an in-process deliverer posting to a real HTTP receiver.

Revocation racing many `.creds` downloads; e-mail confirmation, reset and notification mails; log-in delay per
(e-mail, client) shared by both processes; sign-up that reveals nothing; sealed secrets at rest; expiring and
read-only API tokens; security headers, Secure cookies behind https, anchored CSRF exclusion."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import sqlite3
import stat
from pathlib import Path

import httpx
import msgspec
import nats
import pytest
from nats.js.errors import NotFoundError
from standardwebhooks import Webhook

from hub.auth import AuthStore
from hub.core.creds import creds_inbox_prefix
from hub.core.grants import Target, consumer_name
from hub.core.subjects import TARGETS_BUCKET, subject
from hub.ops.natsserver import free_port, wait_port
from tests.deliver_kit import deliverer
from tests.deliver_receivers import Receiver
from tests.helpers import rthub, rthub_env, rthub_popen, unique, wait_for
from tests.mailbox import Mailbox, body, link
from tests.operator_kit import operator_fixtures

COURSE = "course-v1:edX+Secure+2026"
PASSWORD = "security test password"
ADMIN = "secadmin@example.org"


# as a careless install would leave the data folder (0755): the portal tightens it to 0700
data_dir, op_server, admin_nc = operator_fixtures("portal-sec", mode=0o755)


@pytest.fixture(scope="module")
def mailbox():
    box = Mailbox().start()
    yield box
    box.stop()


@pytest.fixture(scope="module")
def portals(op_server, data_dir, admin_nc, mailbox):
    """``{"proxied": url, "direct": url}``: the same portal database behind two processes."""
    auth = AuthStore.ensure(data_dir)
    base = rthub_env(op_server.url, RTHUB_DATA_DIR=str(data_dir), RTHUB_NATS_CREDS=str(auth.service_creds("portal")),
                     RTHUB_SITES=json.dumps({"default": "http://localhost:18000"}), RTHUB_LOGIN_MAX_FAILURES="3",
                     RTHUB_SIGNUP_PER_HOUR="5", RTHUB_ALLOWED_NETWORKS='["127.0.0.1/32"]', **mailbox.env())
    made = rthub("portal", "create-admin", "--email", ADMIN, "--password-stdin", env=base,
                 input=(PASSWORD + "\n").encode())
    assert made.returncode == 0, made.stderr.decode()
    procs, urls = [], {}
    try:
        for name, trusted in (("proxied", "127.0.0.1"), ("direct", "")):
            port = free_port()
            env = dict(base, RTHUB_PORTAL_PORT=str(port), RTHUB_PUBLIC_URL=f"http://127.0.0.1:{port}",
                       RTHUB_FORWARDED_ALLOW_IPS=trusted)
            procs.append(rthub_popen("portal", "serve", env=env))
            wait_port(port, 30)
            urls[name] = f"http://127.0.0.1:{port}"
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        logs = b"".join(b"".join(p.communicate(timeout=15)) for p in procs)
        assert b"whsec_" not in logs and PASSWORD.encode() not in logs and b"SUAM" not in logs


_CLIENTS = itertools.count()


class Web:
    """A person's HTTP session with a portal: cookies, the CSRF form token, an optional client address (sent
    as X-Forwarded-For, believed only by the portal that trusts 127.0.0.1 as its proxy)."""

    def __init__(self, url: str, client: str | None = None):
        n = next(_CLIENTS)
        self.client = client or f"198.18.{n // 250}.{n % 250 + 1}"
        self.http = httpx.AsyncClient(base_url=url, follow_redirects=True, timeout=60,
                                      headers={"X-Forwarded-For": self.client})
        self.email = ""

    async def post(self, path: str, data: dict | None = None, **kw) -> httpx.Response:
        if not self.http.cookies.get("csrftoken"):
            await self.http.get("/login")
        return await self.http.post(path, data={**(data or {}), "_csrf_token": self.http.cookies.get("csrftoken")}, **kw)

    async def token(self, **fields) -> str:
        page = await self.post("/tokens", {"name": "t", **fields})
        return re.search(r'<pre id="new-token">(rth_[^<]+)</pre>', page.text).group(1)

    async def close(self) -> None:
        await self.http.aclose()


async def signed_up(url: str, mailbox: Mailbox, email: str | None = None) -> Web:
    """Sign up, follow the mailed link, confirm with the password: a logged-in consumer."""
    web = Web(url)
    web.email = email or f"{unique('s')}@example.org"
    done = await web.post("/signup", {"email": web.email, "name": "Sec", "password": PASSWORD})
    assert done.status_code == 200 and "Check your mail" in done.text, done.text[:300]
    url_ = link(await mailbox.wait(web.email, "Confirm your e-mail"), "/verify")
    token = url_.split("token=")[1]
    assert (await web.http.get(url_)).status_code == 200
    landed = await web.post("/verify", {"token": token, "password": PASSWORD})
    assert landed.status_code == 200 and landed.url.path == "/integrations", landed.text[:300]
    return web


async def admin_web(url: str) -> Web:
    web = Web(url)
    response = await web.post("/login", {"email": ADMIN, "password": PASSWORD})
    assert response.url.path == "/admin", response.text[:300]
    return web


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def can_receive(url: str, creds: Path, key: str, admin_js) -> bool:
    """True if this credential connects and pulls a statement of its grant from its durable consumer."""
    try:
        nc = await nats.connect(servers=[url], user_credentials=str(creds), inbox_prefix=creds_inbox_prefix(creds),
                                connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0)
    except Exception:  # noqa: BLE001 - refused (revoked): what we want
        return False
    try:
        await admin_js.publish(subject("xapi", "default", "edX", COURSE, "played"), b'{"id": "probe"}')
        sub = await nc.jetstream().pull_subscribe_bind(durable=consumer_name(key), stream="XAPI")
        return bool(await sub.fetch(1, timeout=2))
    except Exception:  # noqa: BLE001 - no consumer, no permission, timeout: nothing received
        return False
    finally:
        await nc.close()


# ---------------------------------------------------------------- 3. revocation cannot be undone
async def test_revocation_during_concurrent_creds_downloads(portals, mailbox, op_server, admin_nc, tmp_path):
    url = portals["proxied"]
    consumer, admin = await signed_up(url, mailbox), await admin_web(url)
    mine, ops = bearer(await consumer.token()), bearer(await admin.token())
    made = await consumer.http.post("/api/v1/integrations", headers=mine, json={
        "name": "Race", "protocol": "xapi", "delivery": "direct", "sites": ["default"], "courses": [COURSE]})
    key = made.json()["id"]
    assert (await admin.http.post(f"/api/v1/admin/integrations/{key}/approve", headers=ops, json={})).status_code == 200
    admin_js = admin_nc.jetstream()

    first = tmp_path / "first.creds"
    first.write_text((await consumer.http.post(f"/api/v1/integrations/{key}/creds", headers=mine)).text)
    assert await can_receive(op_server.url, first, key, admin_js), "the check must be able to see a working credential"

    issued: list[str] = [first.read_text()]
    refused: list[str] = []
    revoked = asyncio.Event()

    async def download() -> None:
        while not (revoked.is_set() and refused):
            response = await consumer.http.post(f"/api/v1/integrations/{key}/creds", headers=mine)
            if response.status_code == 200:
                issued.append(response.text)
            else:
                assert response.status_code == 409, response.text
                refused.append(response.json()["error"])
                if revoked.is_set():
                    return

    workers = [asyncio.create_task(download()) for _ in range(12)]
    await wait_for(lambda: len(issued) >= 15, 60, "downloads under way")
    answer = await admin.http.post(f"/api/v1/admin/integrations/{key}/revoke", headers=ops, json={"reason": "race"})
    revoked.set()
    await asyncio.gather(*workers)
    assert answer.status_code == 200 and answer.json()["status"] == "revoked", answer.text
    assert all("revoked" in r or "Credentials exist only" in r for r in refused), refused[:3]

    view = await consumer.http.get(f"/api/v1/integrations/{key}", headers=mine)
    assert view.json()["status"] == "revoked"
    with pytest.raises(NotFoundError):  # nothing re-created the durable consumer of the revoked integration
        await admin_js.consumer_info("XAPI", consumer_name(key))
    paths = []
    for i, text in enumerate(issued):
        assert "BEGIN NATS USER JWT" in text
        path = tmp_path / f"{i}.creds"
        path.write_text(text)
        paths.append(path)
    results = await asyncio.gather(*(can_receive(op_server.url, p, key, admin_js) for p in paths))
    assert not any(results), f"{sum(results)} of {len(paths)} issued credentials still receive after revocation"
    assert len(issued) >= 16


async def test_status_transitions_are_refused_after_the_fact(portals, mailbox):
    url = portals["direct"]
    consumer, admin = await signed_up(portals["proxied"], mailbox), await admin_web(url)
    mine, ops = bearer(await consumer.token()), bearer(await admin.token())
    key = (await consumer.http.post("/api/v1/integrations", headers=mine, json={
        "name": "T", "protocol": "xapi", "delivery": "direct", "sites": ["default"], "courses": [COURSE]})).json()["id"]
    cancelled = await consumer.http.post(f"/api/v1/integrations/{key}/cancel", headers=mine)
    assert cancelled.json()["status"] == "revoked"
    # Two different processes: whoever comes second finds the decision made and gets a 409 naming it.
    late = await admin.http.post(f"/api/v1/admin/integrations/{key}/approve", headers=ops, json={})
    assert late.status_code == 409 and "revoked" in late.json()["error"]
    resumed = await admin.http.post(f"/api/v1/admin/integrations/{key}/resume", headers=ops, json={})
    assert resumed.status_code == 409
    assert (await consumer.http.get(f"/api/v1/integrations/{key}", headers=mine)).json()["status"] == "revoked"


async def test_concurrent_decisions_one_wins_and_nats_agrees(portals, mailbox, admin_nc):
    """An administrator approving (one process) while the owner cancels (the other process), several times:
    exactly one wins each time, the loser gets 409, and grant and consumer exist exactly when approved."""
    consumer, admin = await signed_up(portals["proxied"], mailbox), await admin_web(portals["direct"])
    mine, ops = bearer(await consumer.token()), bearer(await admin.token())
    js = admin_nc.jetstream()
    grants = await js.key_value("rthub_grants")
    for _ in range(6):
        key = (await consumer.http.post("/api/v1/integrations", headers=mine, json={
            "name": "Both", "protocol": "xapi", "delivery": "direct", "sites": ["default"], "courses": [COURSE]})).json()["id"]
        approve, cancel = await asyncio.gather(
            admin.http.post(f"/api/v1/admin/integrations/{key}/approve", headers=ops, json={}),
            consumer.http.post(f"/api/v1/integrations/{key}/cancel", headers=mine))
        codes = sorted((approve.status_code, cancel.status_code))
        status = (await consumer.http.get(f"/api/v1/integrations/{key}", headers=mine)).json()["status"]
        if codes == [200, 200]:  # cancel came after the approval had fully landed: revoking it is legitimate
            assert status == "revoked"
        else:
            assert codes == [200, 409], (approve.text, cancel.text)
            assert status == ("approved" if approve.status_code == 200 else "revoked")
        try:
            has_grant = bool((await grants.get(key)).value)
        except Exception:  # noqa: BLE001 - deleted or never written
            has_grant = False
        try:
            await js.consumer_info("XAPI", consumer_name(key))
            has_consumer = True
        except NotFoundError:
            has_consumer = False
        assert has_grant == has_consumer == (status == "approved"), (key, status, has_grant, has_consumer)


# ---------------------------------------------------------------- 4. accounts
async def test_signup_reveals_nothing_and_confirmation_is_single_use(portals, mailbox):
    url = portals["proxied"]
    owner = await signed_up(url, mailbox)
    stranger = Web(url)
    fresh = f"{unique('f')}@example.org"
    known = await stranger.post("/signup", {"email": owner.email, "name": "Mallory", "password": "mallory's password"})
    new = await stranger.post("/signup", {"email": fresh, "name": "Mallory", "password": "mallory's password"})
    assert known.status_code == new.status_code == 200
    assert known.text.replace(owner.email, "X") == new.text.replace(fresh, "X")
    notice = await mailbox.wait(owner.email, "Your rthub portal account")
    assert "/verify" not in body(notice) and f"{url}/forgot" in body(notice)
    # The owner's password still works; the stranger's does not.
    assert (await Web(url).post("/login", {"email": owner.email, "password": PASSWORD})).url.path == "/integrations"
    assert (await Web(url).post("/login", {"email": owner.email, "password": "mallory's password"})).status_code == 401

    # Unconfirmed accounts cannot log in; the link needs the password of that sign-up, and works once.
    unconfirmed = Web(url)
    refused = await unconfirmed.post("/login", {"email": fresh, "password": "mallory's password"})
    assert refused.status_code == 403 and "Confirm your e-mail address first" in refused.text
    verify = link(await mailbox.wait(fresh, "Confirm your e-mail"), "/verify")
    token = verify.split("token=")[1]
    wrong = await unconfirmed.post("/verify", {"token": token, "password": PASSWORD})
    assert wrong.status_code == 401 and "not the password chosen" in wrong.text
    ok = await unconfirmed.post("/verify", {"token": token, "password": "mallory's password"})
    assert ok.url.path == "/integrations"
    again = await Web(url).post("/verify", {"token": token, "password": "mallory's password"})
    assert again.status_code == 400 and "already used" in again.text
    assert (await Web(url).http.get("/verify?token=forged")).status_code == 400


async def test_a_stranger_signing_up_first_with_your_address_gets_nothing(portals, mailbox):
    url = portals["proxied"]
    email = f"{unique('victim')}@example.org"
    stranger, victim = Web(url), Web(url)
    await stranger.post("/signup", {"email": email, "name": "Mallory", "password": "mallory's password"})
    await victim.post("/signup", {"email": email, "name": "Victim", "password": PASSWORD})
    first = link(await mailbox.wait(email, "Confirm your e-mail", count=1), "/verify").split("token=")[1]
    mine = link(await mailbox.wait(email, "Confirm your e-mail", count=2), "/verify").split("token=")[1]
    # The stranger's link is in the victim's mailbox, and without the stranger's password it confirms nothing.
    assert (await victim.post("/verify", {"token": first, "password": PASSWORD})).status_code == 401
    landed = await victim.post("/verify", {"token": mine, "password": PASSWORD})
    assert landed.url.path == "/integrations" and "Victim" in landed.text and "Mallory" not in landed.text
    assert (await stranger.post("/verify", {"token": first, "password": "mallory's password"})).status_code == 400
    assert (await Web(url).post("/login", {"email": email, "password": "mallory's password"})).status_code == 401


async def test_unconfirmed_account_cannot_request_access(portals, mailbox, data_dir):
    url = portals["proxied"]
    email = f"{unique('u')}@example.org"
    await Web(url).post("/signup", {"email": email, "name": "U", "password": PASSWORD})
    await mailbox.wait(email, "Confirm your e-mail")
    env = rthub_env("nats://127.0.0.1:1", RTHUB_DATA_DIR=str(data_dir))
    refused = await asyncio.to_thread(rthub, "integration", "add", "--name", "X", "--protocol", "xapi", "--course",
                                      COURSE, "--webhook-url", "https://h.example.org/x", "--owner", email, env=env)
    assert refused.returncode == 2 and b"has not confirmed its e-mail address" in refused.stderr


async def test_password_reset_by_mail(portals, mailbox, data_dir):
    url = portals["proxied"]
    person = await signed_up(url, mailbox)
    anon = Web(url)
    unknown = await anon.post("/forgot", {"email": f"{unique('nobody')}@example.org"})
    sent = await anon.post("/forgot", {"email": person.email})
    assert unknown.status_code == sent.status_code == 200 and "If " in sent.text
    reset_url = link(await mailbox.wait(person.email, "Reset your rthub portal password"), "/reset")
    token = reset_url.split("token=")[1]
    assert "Choose a new password" in (await anon.http.get(reset_url)).text
    short = await anon.post("/reset", {"token": token, "password": "short"})
    assert short.status_code == 400
    done = await anon.post("/reset", {"token": token, "password": "a brand new password"})
    assert done.url.path == "/login" and "Password changed" in done.text
    assert (await person.http.get("/integrations")).url.path == "/login", "old sessions end with a reset"
    assert (await Web(url).post("/login", {"email": person.email, "password": PASSWORD})).status_code == 401
    assert (await Web(url).post("/login", {"email": person.email, "password": "a brand new password"})
            ).url.path == "/integrations"
    reused = await anon.post("/reset", {"token": token, "password": "another new password"})
    assert reused.status_code == 400 and "already used" in reused.text

    # An expired link is refused: move its expiry into the past in the shared database.
    await anon.post("/forgot", {"email": person.email})
    late = link(await mailbox.wait(person.email, "Reset your rthub portal password", count=2), "/reset")
    with sqlite3.connect(data_dir / "portal.sqlite") as db:
        db.execute("UPDATE portal_mail_token SET expires = '2000-01-01 00:00:00+00:00' WHERE purpose = 'reset' "
                   "AND used = 0")
    expired = await anon.post("/reset", {"token": late.split("token=")[1], "password": "too late password"})
    assert expired.status_code == 400 and "expired" in expired.text


async def test_login_delay_is_per_email_and_client_and_shared_by_processes(portals, mailbox):
    victim = await signed_up(portals["proxied"], mailbox)
    attacker = Web(portals["proxied"], client="127.0.0.1")
    for _ in range(3):
        bad = await attacker.post("/login", {"email": victim.email, "password": "guess guess guess"})
        assert bad.status_code == 401
    blocked = await attacker.post("/login", {"email": victim.email, "password": PASSWORD})
    assert blocked.status_code == 429 and "Too many failed log-ins" in blocked.text
    # The other process, which sees the same client (it believes no proxy header), blocks it too.
    other = Web(portals["direct"], client="203.0.113.99")
    shared = await other.post("/login", {"email": victim.email, "password": PASSWORD})
    assert shared.status_code == 429, "the delay is kept in the database, not in one process"
    # The victim, from their own address, is not locked out by the stranger.
    own = Web(portals["proxied"], client="192.0.2.44")
    assert (await own.post("/login", {"email": victim.email, "password": PASSWORD})).url.path == "/integrations"


async def test_signup_is_rate_limited_per_client(portals):
    web = Web(portals["proxied"], client="192.0.2.200")
    answers = [(await web.post("/signup", {"email": f"{unique('r')}@example.org", "name": "R", "password": PASSWORD})
                ).status_code for _ in range(6)]
    assert answers == [200] * 5 + [429]


async def test_api_tokens_expire_and_read_only_tokens_change_nothing(portals, mailbox, data_dir):
    url = portals["proxied"]
    person = await signed_up(url, mailbox)
    read_only = bearer(await person.token(read_only="1"))
    writer = bearer(await person.token(days="30"))
    assert (await person.http.get("/api/v1/me", headers=read_only)).status_code == 200
    spec = {"name": "RO", "protocol": "xapi", "delivery": "direct", "sites": ["default"], "courses": [COURSE]}
    key = (await person.http.post("/api/v1/integrations", headers=writer, json=spec)).json()["id"]
    for path, payload in (("/api/v1/integrations", spec), (f"/api/v1/integrations/{key}/cancel", None),
                          (f"/api/v1/integrations/{key}/creds", None), (f"/api/v1/integrations/{key}/rotate-secret", None)):
        refused = await person.http.post(path, headers=read_only, json=payload)
        assert refused.status_code == 403 and "read-only" in refused.json()["error"], path
    assert (await person.http.get(f"/api/v1/integrations/{key}", headers=read_only)).json()["status"] == "pending"
    listed = await person.http.get("/tokens")
    assert "read-only" in listed.text and "never" in listed.text
    with sqlite3.connect(data_dir / "portal.sqlite") as db:
        db.execute("UPDATE portal_api_token SET expires = '2000-01-01 00:00:00+00:00' WHERE expires IS NOT NULL")
    assert (await person.http.get("/api/v1/me", headers=writer)).status_code == 401


# ---------------------------------------------------------------- secrets at rest, notifications, deliverer
async def test_sealed_secrets_are_delivered_and_auto_disable_is_mailed_once(portals, mailbox, admin_nc, data_dir,
                                                                            op_server):
    url = portals["proxied"]
    gone = asyncio.Event()
    rx = await Receiver(lambda r: (410, {}, b"gone") if gone.is_set() else (200, {}, b"ok")).start()
    consumer, admin = await signed_up(url, mailbox), await admin_web(url)
    mine, ops = bearer(await consumer.token()), bearer(await admin.token())
    key = (await consumer.http.post("/api/v1/integrations", headers=mine, json={
        "name": "Hook", "protocol": "xapi", "delivery": "webhook", "url": rx.url + "/in", "sites": ["default"],
        "courses": [COURSE]})).json()["id"]
    lrs = (await consumer.http.post("/api/v1/integrations", headers=mine, json={
        "name": "LRS", "protocol": "xapi", "delivery": "lrs", "url": "https://lrs.example.org/x",
        "basic_auth": "lrsuser:lrs-password-123", "sites": ["default"], "courses": [COURSE]})).json()["id"]
    for k in (key, lrs):
        assert (await admin.http.post(f"/api/v1/admin/integrations/{k}/approve", headers=ops, json={})).status_code == 200
    approved = await mailbox.wait(consumer.email, "approved")
    assert f"/integrations/{key}" in body(approved) or f"/integrations/{lrs}" in body(approved)
    secret = (await consumer.http.get(f"/api/v1/integrations/{key}", headers=mine)).json()["webhook_secret"]

    # At rest: neither the database nor the targets bucket holds a secret in the clear, nor its history.
    raw_db = (data_dir / "portal.sqlite").read_bytes()
    assert b"lrs-password-123" not in raw_db and secret.encode() not in raw_db
    kv = await admin_nc.jetstream().key_value(TARGETS_BUCKET)
    for k in (key, lrs):
        stored = (await kv.get(k)).value
        assert b"fernet:" in stored and b"lrs-password-123" not in stored and b"whsec_" not in stored
    rotated = (await consumer.http.post(f"/api/v1/integrations/{key}/rotate-secret", headers=mine)).json()
    assert rotated["webhook_secret"] != secret
    history = [e async for e in _history(kv, key)]
    assert len(history) == 1, "an earlier revision (older secrets) is still in the targets bucket"
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "portal.sqlite").stat().st_mode) == 0o600
    assert stat.S_IMODE((data_dir / "secrets.key").stat().st_mode) == 0o600

    # The deliverer opens the sealed secret with the shared key and signs with it; then the endpoint goes away.
    async with deliverer(admin_nc, op_server.url, data_dir=str(data_dir), retry_schedule=["0.05s"]) as d:
        await wait_for(lambda: key in d.runners, 10, "deliverer picks up the approved webhook")
        await admin_nc.jetstream().publish(subject("xapi", "default", "edX", COURSE, "played"), b'{"id": "s1"}',
                                           headers={"Nats-Msg-Id": unique("m")})
        await wait_for(lambda: len(rx.requests) >= 1, 10, "a signed delivery")
        req = rx.requests[0]
        Webhook(rotated["webhook_secret"]).verify(req.body, {k.lower(): v for k, v in req.headers.items()})
        gone.set()
        await admin_nc.jetstream().publish(subject("xapi", "default", "edX", COURSE, "played"), b'{"id": "s2"}',
                                           headers={"Nats-Msg-Id": unique("m")})

        async def disabled() -> bool:
            target = msgspec.json.decode((await kv.get(key)).value, type=Target)
            return not target.enabled

        await wait_for(disabled, 10, "the deliverer switches the target off after 410")
    await rx.stop()
    for _ in range(2):  # the portal notices when it reads the status, and mails once
        page = await consumer.http.get(f"/integrations/{key}")
        assert page.status_code == 200
    notice = await mailbox.wait(consumer.email, "switched off")
    reason = msgspec.json.decode((await kv.get(key)).value, type=Target).disabled_reason
    assert "410 Gone" in reason and f"Reason: {reason}" in body(notice)
    assert len(mailbox.to(consumer.email, "switched off")) == 1, "one notice, however often the status is read"

    # Suspension and denial are mailed too.
    await admin.http.post(f"/api/v1/admin/integrations/{lrs}/suspend", headers=ops, json={"reason": "audit pending"})
    suspended = await mailbox.wait(consumer.email, "suspended")
    assert "audit pending" in body(suspended)
    # Revocation purges the target: no revision with a value (a secret) is left in the bucket.
    await admin.http.post(f"/api/v1/admin/integrations/{lrs}/revoke", headers=ops, json={"reason": "over"})
    assert [e for e in [e async for e in _history(kv, lrs)] if e.value] == []
    other = (await consumer.http.post("/api/v1/integrations", headers=mine, json={
        "name": "Denied one", "protocol": "xapi", "delivery": "direct", "sites": ["default"], "courses": [COURSE]})).json()["id"]
    await admin.http.post(f"/api/v1/admin/integrations/{other}/deny", headers=ops, json={"reason": "too broad"})
    denied = await mailbox.wait(consumer.email, "denied")
    assert "too broad" in body(denied) and other in body(denied)


async def _history(kv, key):
    watcher = await kv.watch(key, include_history=True)
    try:
        async for entry in watcher:
            if entry is None:
                return
            yield entry
    finally:
        await watcher.stop()


# ---------------------------------------------------------------- HTTP
async def test_security_headers_cookies_and_anchored_csrf(portals, mailbox):
    async with httpx.AsyncClient(base_url=portals["proxied"]) as http:
        page = await http.get("/login")
        csp = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        # No inline script: every script is a same-origin file (script-src 'self').
        assert all(re.fullmatch(r'<script src="/static/[a-z0-9_.-]+\.js"( defer)?>', t)
                   for t in re.findall(r"<script[^>]*>", page.text)), page.text
        plain = [c for c in page.headers.get_list("set-cookie")]
        assert plain and all("secure" not in c.lower() for c in plain)
        for path in ("/api/v1/me", "/no/such/page", "/static/style.css", "/verify?token=forged"):
            response = await http.get(path)
            assert response.headers["x-frame-options"] == "DENY", path
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"], path
        # The OpenAPI viewer's inline script runs only because it carries this response's nonce.
        schema = await http.get("/schema")
        nonce = re.search(r"script-src 'nonce-([A-Za-z0-9_-]+)'", schema.headers["content-security-policy"]).group(1)
        tags = re.findall(r"<script[^>]*>", schema.text)
        assert tags and all(f'nonce="{nonce}"' in t for t in tags), tags
        assert "unsafe-inline" not in schema.headers["content-security-policy"].split("script-src")[1].split(";")[0]
        assert nonce not in (await http.get("/schema")).headers["content-security-policy"], "a nonce is used once"
    async with httpx.AsyncClient(base_url=portals["proxied"]) as http:  # a new visitor, behind an https proxy
        behind_https = await http.get("/login", headers={"X-Forwarded-Proto": "https"})
        cookies = behind_https.headers.get_list("set-cookie")
        assert cookies and all("; Secure" in c for c in cookies), cookies
    async with httpx.AsyncClient(base_url=portals["direct"]) as http:
        spoofed = await http.get("/login", headers={"X-Forwarded-Proto": "https"})
        assert all("secure" not in c.lower() for c in spoofed.headers.get_list("set-cookie")), \
            "a portal that trusts no proxy must not believe X-Forwarded-Proto"
    person = await signed_up(portals["proxied"], mailbox)
    # "/api/" inside a path is not the API: CSRF still applies there.
    for path in ("/integrations/api/cancel", "/admin/integrations/api/revoke"):
        response = await person.http.post(path, data={"reason": "x"})
        assert response.status_code == 403 and "nothing was changed" in response.text, path
