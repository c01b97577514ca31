"""The composed system end to end, against the running containers: the LMS backend (in this container) publishes
to the 3-node cluster, both hubs translate, both deliverers deliver to the webhook and LRS services, a direct
subscriber with portal-issued creds gets its scope only (the portal on PostgreSQL, driven in Chromium), and
fault drills kill one NATS node, one hub and one deliverer mid-flow, then count every statement end to end.

What "nothing lost, duplicates only where documented" means here (docs/deployment.md, "Fault drills"):
- the XAPI stream holds every statement exactly once (statement ids are ``Nats-Msg-Id``: a re-translation after
  a crash is dropped by JetStream's duplicate window);
- the LRS and the webhook receive every statement; delivery is at least once, so a statement whose delivery
  was in flight when a process or node died may arrive again, with the same id (``webhook-id``) — counted and
  reported, and only allowed in the drills;
- the LRS stores each id once (it de-duplicates by id, as LRSs do)."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import nats
import pytest
import pytest_asyncio
from standardwebhooks import Webhook

from hub.core.creds import creds_inbox_prefix
from hub.core.grants import consumer_name
from hub.core.subjects import RAW_STREAM, filter_subject, parse_subject
from tests.compose.stack import LRS, ORG, PORTAL, WEBHOOK, Flow, Stack
from tests.helpers import unique, wait_for

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN = unique("run")  # receiver paths of this run: a stack that ran the tests before keeps its integrations
FIGURES: dict[str, dict] = {}


def new_course() -> str:
    return f"course-v1:{ORG}+{unique('c')}+2024"


@pytest_asyncio.fixture(scope="module")
async def delivery(stack, portal):
    """A webhook and an LRS integration (xAPI, the whole test organisation), approved in the portal."""
    hook = await portal.integration(name="compose webhook", protocol="xapi", delivery="webhook",
                                    url=f"{WEBHOOK}/{RUN}/hook", orgs=[ORG], reason="compose tests")
    lrs = await portal.integration(name="compose LRS", protocol="xapi", delivery="lrs", url=f"{LRS}/{RUN}/xapi",
                                   basic_auth="lrs:secret", orgs=[ORG], reason="compose tests")
    assert hook["webhook_secret"].startswith("whsec_")
    yield hook, lrs
    for integration in (hook, lrs):
        await portal.revoke(integration["id"])


async def run_flow(stack: Stack, n: int, at: dict | None = None, timeout: float = 120) -> Flow:
    """Emit ``n`` events of a new course, wait until every statement is in the stream, the webhook and the LRS."""
    flow = Flow(new_course(), n)
    await stack.emit(flow.course, n, at=at)

    async def complete() -> bool:
        try:
            flow.stream_ids = await stack.stored("xapi", flow.course)
        except (TimeoutError, nats.errors.Error) as exc:  # a stream leader moving: look again
            print(f"stream not readable yet ({type(exc).__name__})")
            return False
        flow.webhook_ids = await stack.delivered_ids(WEBHOOK, f"/{RUN}/", flow.course)
        flow.lrs_ids = await stack.delivered_ids(LRS, f"/{RUN}/", flow.course)
        return all(len(set(ids)) >= n for ids in (flow.stream_ids, flow.webhook_ids, flow.lrs_ids))

    try:
        await wait_for(complete, timeout, f"{n} statements in the stream, at the webhook and at the LRS", 1.0)
    except AssertionError:
        raise AssertionError(f"stream {len(set(flow.stream_ids))}, webhook {len(set(flow.webhook_ids))}, "
                             f"LRS {len(set(flow.lrs_ids))} of {n}") from None
    return flow


def check_counts(flow: Flow, name: str, duplicates_allowed: bool) -> None:
    """Every statement exactly once in the stream, every one delivered; duplicates only when allowed."""
    stream = set(flow.stream_ids)
    assert len(flow.stream_ids) == flow.n and len(stream) == flow.n, "the stream must hold each statement once"
    assert set(flow.webhook_ids) == stream and set(flow.lrs_ids) == stream
    dup_hook = len(flow.webhook_ids) - flow.n
    dup_lrs = len(flow.lrs_ids) - flow.n
    FIGURES[name] = {"events": flow.n, "stream": len(flow.stream_ids), "webhook": len(flow.webhook_ids),
                     "lrs_posted": len(flow.lrs_ids), "webhook_duplicates": dup_hook, "lrs_duplicates": dup_lrs}
    print(f"\n{name}: {json.dumps(FIGURES[name])}")
    if not duplicates_allowed:
        assert dup_hook == 0 and dup_lrs == 0, FIGURES[name]


async def test_lms_to_webhook_and_lrs_both_hubs_share_the_work(stack, delivery):
    hook, _ = delivery
    hubs = ("hub-1", "hub-2")
    before = {h: await stack.metric(h, 9464, "received") for h in hubs}
    flow = await run_flow(stack, 600)
    check_counts(flow, "steady", duplicates_allowed=False)
    info = await stack.js.stream_info(RAW_STREAM)
    assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2
    # both hubs pulled from the shared consumer (metrics scraped across the compose network: bound 0.0.0.0)
    delta = {h: await stack.metric(h, 9464, "received") - before[h] for h in hubs}
    assert all(d > 0 for d in delta.values()), delta
    assert sum(delta.values()) >= flow.n, delta
    assert await stack.metric("deliverer-1", 9465, "delivered") + await stack.metric("deliverer-2", 9465,
                                                                                       "delivered") >= 2 * flow.n
    # the webhook's signature checks out with the secret the portal showed once
    headers, body = (await stack.received(WEBHOOK, f"/{RUN}/"))[-1]
    Webhook(hook["webhook_secret"]).verify(body, headers)
    assert headers["webhook-id"] == json.loads(body)["id"]


async def test_portal_on_postgresql_browser_direct_subscription(stack, docker, portal, tmp_path):
    """Sign-up to live statements in Chromium against the portal service (PostgreSQL): the consumer gets
    exactly its course's statements from the LMS, nothing of another course, and is refused elsewhere."""
    from playwright.async_api import async_playwright

    assert "postgres" in (await docker.env("portal"))["DATABASE_URL"]
    mine, other = new_course(), new_course()
    email, password = f"{unique('b')}@compose.example.org", "compose browser password"

    async def submit(page, fields: dict[str, str], button: str = "button[type=submit]"):
        for name, value in fields.items():
            await page.fill(f"[name={name}]", value)
        async with page.expect_navigation():
            await page.click(button)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            consumer = await (await browser.new_context(accept_downloads=True)).new_page()
            await consumer.goto(PORTAL + "/signup")
            await submit(consumer, {"email": email, "name": "Compose consumer", "password": password})
            assert "Check your mail" in await consumer.inner_text("h1")
            # no SMTP server configured: the portal writes its mails to the outbox in its data volume
            verify = urlsplit(await mail_link(docker, email, "/verify"))
            await consumer.goto(PORTAL + verify.path + (f"?{verify.query}" if verify.query else ""))
            await submit(consumer, {"password": password}, "#confirm")
            assert consumer.url.split("?")[0].endswith("/integrations")
            await consumer.click("text=Request access to events")
            await consumer.check("input[name=protocol][value=xapi]")
            await consumer.select_option("select[name=delivery]", "direct")
            await submit(consumer, {"name": "Live feed", "courses": mine, "reason": "compose browser flow"})
            assert await consumer.inner_text("#status") == "pending"
            key = consumer.url.split("/integrations/")[1].split("?")[0]

            admin = await (await browser.new_context()).new_page()
            await admin.goto(PORTAL + "/login")
            await submit(admin, {"email": portal.email, "password": portal.password})
            await admin.goto(f"{PORTAL}/admin/integrations/{key}")
            async with admin.expect_navigation():
                await admin.click("#approve")
            assert await admin.inner_text("#status") == "approved"

            await consumer.reload()
            assert await consumer.inner_text("#status") == "approved"
            assert consumer_name(key) in await consumer.inner_text("#example")
            async with consumer.expect_download() as info:
                await consumer.click("#download-creds")
            creds = tmp_path / f"{key}.creds"
            await (await info.value).save_as(creds)
        finally:
            await browser.close()

    await receive_scope_only(stack, creds, key, mine, other)


async def mail_link(docker, address: str, path: str) -> str:
    """The ``path`` link (with its token) of the mail to ``address`` in the portal container's outbox."""
    found: list[str] = []

    async def arrived() -> bool:
        for raw in (await docker.files("portal", "/data/outbox")).values():
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            if address in msg["To"]:
                text = msg.get_body(("plain",)).get_content()
                found.extend(re.findall(r"https?://\S+" + re.escape(path) + r"\S*", text))
        return bool(found)

    await wait_for(arrived, 15, f"a mail with a {path} link to {address} in the portal's outbox", 0.5)
    return found[0]


async def receive_scope_only(stack: Stack, creds: Path, key: str, mine: str, other: str) -> None:
    errors: list[str] = []

    async def on_error(exc):
        errors.append(str(exc).lower())

    nc = await nats.connect(os.environ["RTHUB_STACK_NATS_URL"].split(","), user_credentials=str(creds),
                            inbox_prefix=creds_inbox_prefix(creds), error_cb=on_error, connect_timeout=5)
    try:
        sub = await nc.jetstream().pull_subscribe_bind(durable=consumer_name(key), stream="XAPI")
        n = 50
        await stack.emit(other, n)
        await stack.emit(mine, n)
        got: list = []
        deadline = time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            try:
                msgs = await sub.fetch(n, timeout=2)
            except nats.errors.TimeoutError:
                continue
            for m in msgs:
                got.append(m)
                await m.ack()
        assert len(got) == n, f"{len(got)} of {n} statements of the granted course"
        assert {parse_subject(m.subject)[3] for m in got} == {mine}
        assert len({json.loads(m.data)["id"] for m in got}) == n
        assert all(mine in json.dumps(json.loads(m.data)) for m in got)
        with pytest.raises(nats.errors.TimeoutError):
            await sub.fetch(1, timeout=3)  # nothing of the other course, nothing more
        await nc.subscribe(filter_subject("xapi", course=other))
        await nc.flush()
        await wait_for(lambda: any("permissions violation" in e for e in errors), 5, "refused on another course")
    finally:
        await nc.close()


# ---- fault drills: kill one container mid-flow, restart it afterwards, count every statement -------------

async def drill(stack: Stack, docker, service: str, name: str, n: int = 600) -> Flow:
    killed: list[str] = []

    async def kill() -> None:
        target = service
        if service == "nats-leader":  # the node leading the raw stream: the hardest one to lose
            target = (await stack.js.stream_info(RAW_STREAM)).cluster.leader
        killed.append(target)
        await docker.kill(target)

    t0 = time.monotonic()
    try:
        flow = await run_flow(stack, n, at={n // 3: kill()}, timeout=180)
    finally:
        for target in killed:
            await docker.start(target)
    check_counts(flow, name, duplicates_allowed=True)
    FIGURES[name].update(killed=killed[0], seconds=round(time.monotonic() - t0, 1))
    print(f"{name}: {json.dumps(FIGURES[name])}")
    return flow


async def test_operator_commands_in_the_portal_container(stack, docker):
    """Issue 20 item 8: the image runs as uid 10001 without a passwd entry, where every ``rthub integration``
    command crashed (``getpass.getuser()``). Run them as an operator does: in the portal container."""
    code, out, err = await docker.exec(
        "portal", "rthub", "integration", "add", "--name", "from the container", "--protocol", "xapi", "--org", ORG,
        "--webhook-url", f"{WEBHOOK}/{RUN}/cli")
    assert code == 0 and "approved (xapi via webhook)" in out, err[-2000:]
    key = out.split()[1]
    for args, said in ((["suspend", key, "--reason", "compose check"], "suspended"), (["resume", key], "approved"),
                       (["revoke", key, "--reason", "compose check"], "revoked")):
        code, out, err = await docker.exec("portal", "rthub", "integration", *args)
        assert code == 0 and f"integration {key} {said}" in out, (args, err[-2000:])
    code, out, err = await docker.exec("portal", "rthub", "integration", "list", "--json")
    assert code == 0, err[-2000:]
    assert next(r for r in json.loads(out) if r["id"] == key)["status"] == "revoked"
    code, out, _ = await docker.exec("portal", "id", "-u")
    assert out.strip() == "10001"


async def test_drill_kill_nats_node(stack, docker, delivery):
    await drill(stack, docker, "nats-leader", "drill nats node")


async def test_drill_kill_hub(stack, docker, delivery):
    await drill(stack, docker, "hub-1", "drill hub")


async def test_drill_kill_deliverer(stack, docker, delivery):
    await drill(stack, docker, "deliverer-1", "drill deliverer")


async def test_stack_whole_again_after_drills(stack, docker, delivery):
    """Every service is back and healthy, and a flow after the drills is exact again (no duplicates)."""
    for service in ("nats-1", "nats-2", "nats-3", "hub-1", "hub-2", "deliverer-1", "deliverer-2", "portal"):
        assert await docker.healthy_check(service)(), service
    check_counts(await run_flow(stack, 200), "after drills", duplicates_allowed=False)
