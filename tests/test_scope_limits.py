"""Issue 19, item 2: no tenant input may stop the server or its next start.

A scope expands into sites x orgs x courses x event types filter subjects. Earlier a consumer narrowing its own
grant to 50 x 50 x 50 produced 125,000 filters (the JetStream API stalled for minutes), and a direct
subscription of 10 x 10 x 10 produced a ~1 MB account JWT the server refused and could not start with again.
Here, against a real operator-mode nats-server: the largest scope the limits allow works end to end, the next
one up is refused naming the limit (request, narrowing and approval) and audited, and a stored account JWT
the server would refuse does not keep the server from starting again.
"""

from __future__ import annotations

import json
import time

import nats
import pytest
import pytest_asyncio
from nats.aio.client import RawCredentials

from hub.auth import AuthStore, ensure_consumer
from hub.auth.store import MAX_ACCOUNT_JWT_BYTES
from hub.core.creds import creds_inbox_prefix
from hub.core.grants import MAX_FILTERS_DIRECT, MAX_FILTERS_PUSH, Grant, consumer_name, expansion
from hub.core.settings import HubSettings
from hub.core.streams import ensure_streams
from hub.core.subjects import subject
from hub.ops.natsserver import NatsServer, free_port
from portal.validation import Scope, validate_request
from tests.helpers import start_operator_nats, unique, wait_sync

SITE = "s1"


def courses(n: int, tag: str = "C") -> list[str]:
    return [f"course-v1:Org+{tag}{i}+1" for i in range(n)]


def orgs(n: int) -> list[str]:
    return ["Org", *(f"O{i}" for i in range(n - 1))]


def test_expansion_counts_before_building_and_validate_names_the_limit():
    dims, count = expansion(sites=[SITE], orgs=orgs(5), courses=courses(50))
    assert count == 250 and [len(d) for d in dims] == [1, 5, 50, 1] and dims[3] == ["*"]
    assert (
        expansion(orgs=orgs(50), courses=courses(50), event_types=[f"e{i}" for i in range(50)])[1] == 125_000
    )
    ok = Grant(
        id="g",
        consumer="c",
        protocol="xapi",
        delivery="webhook",
        sites=[SITE],
        orgs=orgs(5),
        courses=courses(50),
    )
    assert ok.validate().filter_count() == MAX_FILTERS_PUSH == len(ok.filter_subjects())
    with pytest.raises(ValueError, match=f"at most {MAX_FILTERS_PUSH}"):
        Grant(
            id="g", consumer="c", protocol="xapi", delivery="webhook", orgs=orgs(6), courses=courses(42)
        ).validate()
    Grant(id="g", consumer="c", protocol="xapi", orgs=orgs(5), courses=courses(10)).validate()
    with pytest.raises(ValueError, match=f"at most {MAX_FILTERS_DIRECT}"):
        Grant(id="g", consumer="c", protocol="xapi", orgs=orgs(3), courses=courses(17)).validate()
    # A value "*" stays a literal (encoded) token, never a wildcard.
    assert Grant(id="g", consumer="c", protocol="xapi", orgs=["*"]).filter_subjects() != ["xapi.*.*.*.*"]


def test_request_form_refuses_the_next_size_up_naming_the_limit():
    base = {
        "name": "n",
        "protocol": "xapi",
        "delivery": "webhook",
        "url": "https://hooks.example.org/in",
        "sites": SITE,
    }
    spec, errors = validate_request({**base, "orgs": orgs(5), "courses": courses(50)}, {SITE})
    assert spec is not None and errors == {}
    spec, errors = validate_request({**base, "orgs": orgs(6), "courses": courses(42)}, {SITE})
    assert (
        spec is None
        and "252 filter subjects" in errors["scope"]
        and f"at most {MAX_FILTERS_PUSH}" in errors["scope"]
    )
    spec, errors = validate_request(
        {**base, "delivery": "direct", "orgs": orgs(3), "courses": courses(17)}, {SITE}
    )
    assert spec is None and f"at most {MAX_FILTERS_DIRECT}" in errors["scope"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("limits")


@pytest.fixture(scope="module")
def server(data_dir):
    srv = start_operator_nats(data_dir, "limits")
    yield srv
    srv.stop()


@pytest_asyncio.fixture(scope="module")
async def admin(server, data_dir):
    auth = AuthStore.ensure(data_dir)
    nc = await nats.connect(server.url, user_credentials=str(auth.service_creds("admin")))
    await ensure_streams(nc.jetstream(), HubSettings(nats_url=server.url))
    yield nc
    await nc.close()


@pytest_asyncio.fixture
async def portal(server, data_dir, admin):
    from portal import db
    from portal.services import Portal
    from portal.settings import PortalSettings

    auth = AuthStore.ensure(data_dir)
    settings = PortalSettings(
        nats_url=server.url,
        data_dir=str(data_dir),
        database_url="",
        sites={SITE: ""},
        nats_creds=str(auth.service_creds("portal")),
    )
    engine = await db.migrate(settings)
    p = Portal(settings)
    p.root = await p.set_admin(f"{unique('root')}@example.org", "a long enough password")
    yield p
    await p.close()
    await db.close(engine)


async def refused_in_audit(portal, key: str) -> list[str]:
    return [
        e.detail for e in await portal.audit_log(50) if e.action == "scope.refused" and e.integration == key
    ]


async def test_largest_scopes_work_and_the_next_size_up_is_refused_at_approval(portal, admin, data_dir):
    from portal.services import PortalError
    from portal.validation import IntegrationSpec

    root = portal.root
    direct = IntegrationSpec(
        name="big",
        protocol="xapi",
        delivery="direct",
        scope=Scope(sites=[SITE], orgs=orgs(5), courses=courses(10)),
    )
    row = await portal.create_integration(root, direct, approved_by=root)
    auth = AuthStore.ensure(data_dir)
    assert auth.tenant_is_open(row.key)
    assert len((auth.path / "tenants" / f"{row.key}.jwt").read_text()) < MAX_ACCOUNT_JWT_BYTES
    text = await portal.issue_creds(root, await portal.get(row.key))  # the account was accepted by the server
    sub = await nats.connect(
        admin.connected_url.geturl(),
        user_credentials=RawCredentials(text),
        inbox_prefix=creds_inbox_prefix(text),
        allow_reconnect=False,
    )
    ident = unique("big")
    await admin.jetstream().publish(
        subject("xapi", SITE, "O3", courses(10)[9], "played"), json.dumps({"id": ident}).encode()
    )
    psub = await sub.jetstream().pull_subscribe_bind(durable=consumer_name(row.key), stream="XAPI")
    assert [json.loads(m.data)["id"] for m in await psub.fetch(5, timeout=5)] == [ident]
    await sub.close()

    too_big = IntegrationSpec(
        name="bigger",
        protocol="xapi",
        delivery="direct",
        scope=Scope(sites=[SITE], orgs=orgs(3), courses=courses(17)),
    )
    row2 = await portal.create_integration(root, too_big)
    with pytest.raises(PortalError) as refused:
        await portal.approve(root, row2.key)
    assert refused.value.status == 400 and f"at most {MAX_FILTERS_DIRECT}" in refused.value.errors["scope"]
    assert (await portal.get(row2.key)).status == "pending" and auth.tenant_claims(row2.key) is None
    assert any("51 filter subjects" in d for d in await refused_in_audit(portal, row2.key))

    # A push integration: 250 filters are one consumer the server creates at once; 252 are refused.
    push = Grant(
        id=unique("p"),
        consumer="c",
        protocol="xapi",
        delivery="webhook",
        sites=[SITE],
        orgs=orgs(5),
        courses=courses(50),
    )
    started = time.monotonic()
    await ensure_consumer(admin.jetstream(), push)
    info = await admin.jetstream().consumer_info("XAPI", consumer_name(push.id))
    assert len(info.config.filter_subjects) == 250 and time.monotonic() - started < 5
    wide = IntegrationSpec(
        name="w",
        protocol="xapi",
        delivery="webhook",
        url="https://hooks.example.org/in",
        scope=Scope(sites=[SITE], orgs=orgs(6), courses=courses(42)),
    )
    row3 = await portal.create_integration(root, wide)
    with pytest.raises(PortalError, match="too large") as refused:
        await portal.approve(root, row3.key, Scope(sites=[SITE], orgs=orgs(6), courses=courses(42)))
    assert f"at most {MAX_FILTERS_PUSH}" in refused.value.errors["scope"]


async def test_owner_narrowing_to_a_huge_product_is_refused_and_audited(portal):
    from portal.services import PortalError, endpoints
    from portal.validation import IntegrationSpec

    root = portal.root
    spec = IntegrationSpec(name="n", protocol="xapi", delivery="direct", scope=Scope(sites=[SITE]))
    row = await portal.create_integration(root, spec, approved_by=root)
    raw = {"sites": SITE, "orgs": orgs(3), "courses": courses(17)}  # a narrowing of "any", 51 subjects
    with pytest.raises(PortalError) as refused:
        await endpoints.change_scope(portal, root, await portal.get(row.key), raw)
    assert f"at most {MAX_FILTERS_DIRECT}" in refused.value.errors["scope"]
    assert any("51 filter subjects" in d for d in await refused_in_audit(portal, row.key))
    assert json.loads((await portal.get(row.key)).granted)["orgs"] == []
    ok = {"sites": SITE, "orgs": orgs(5), "courses": courses(10)}
    assert await endpoints.change_scope(portal, root, await portal.get(row.key), ok) == "applied"


async def test_a_stored_account_jwt_the_server_would_refuse_does_not_stop_the_next_start(tmp_path):
    first = start_operator_nats(tmp_path, "limits-first")
    auth = AuthStore.ensure(tmp_path)
    grant = Grant(
        id=unique("keep"), consumer="c", protocol="xapi", sites=[SITE], orgs=orgs(5), courses=courses(10)
    )
    try:
        nc = await nats.connect(first.url, user_credentials=str(auth.service_creds("admin")))
        await ensure_streams(nc.jetstream(), HubSettings(nats_url=first.url))
        await auth.activate_consumer(nc, grant)
        await ensure_consumer(nc.jetstream(), grant)
        text, _ = auth.consumer_creds(grant)
        await nc.close()
    finally:
        first.stop()
    # What an earlier version left behind for a 10 x 10 x 10 grant: a ~1 MB account JWT; and a damaged file.
    (auth.path / "tenants" / "oversized.jwt").write_text("x" * (MAX_ACCOUNT_JWT_BYTES + 1))
    (auth.path / "tenants" / "garbled.jwt").write_text("not.a.jwt")
    again = NatsServer(
        free_port(),
        tmp_path / "nats",
        config=auth.server_config(tmp_path / "nats" / "resolver"),
        name="limits-again",
    ).start()
    try:
        refused = auth.refused_tenants()
        assert set(refused) == {"oversized", "garbled"} and "more than the" in refused["oversized"]
        sub = await nats.connect(
            again.url,
            user_credentials=RawCredentials(text),
            inbox_prefix=creds_inbox_prefix(text),
            allow_reconnect=False,
        )
        psub = await sub.jetstream().pull_subscribe_bind(durable=consumer_name(grant.id), stream="XAPI")
        with pytest.raises(nats.errors.TimeoutError):  # the subscriber's consumer answers (nothing new yet)
            await psub.fetch(1, timeout=1)
        await sub.close()
    finally:
        again.stop()


def test_rthub_up_starts_again_with_an_oversized_stored_account_jwt(tmp_path):
    """The whole stack, as `rthub up` runs it: first start, a subscriber account left ~1 MB by an earlier
    version, second start. It comes up, says which direct subscription is failing, and stops cleanly."""
    import signal

    from tests.test_up import Up, _ports

    first = Up("--data-dir", str(tmp_path), "--no-deliver", "--no-portal", *_ports())
    try:
        wait_sync(lambda: "Ctrl-C stops everything" in first.text(), 90, "rthub up started")
    finally:
        first.proc.send_signal(signal.SIGINT)
        assert first.proc.wait(30) == 0
    tenants = tmp_path / "nats-auth" / "tenants"
    tenants.mkdir(mode=0o700, exist_ok=True)
    (tenants / "i0123456789abcdef.jwt").write_text("x" * (MAX_ACCOUNT_JWT_BYTES * 4))
    again = Up("--data-dir", str(tmp_path), "--no-deliver", "--no-portal", *_ports())
    try:
        wait_sync(
            lambda: "Ctrl-C stops everything" in again.text() or again.proc.poll() is not None, 90, "restart"
        )
        out = again.text()
        assert "Ctrl-C stops everything" in out, out
        assert "direct subscription i0123456789abcdef is failing" in out and "more than the" in out
    finally:
        again.proc.send_signal(signal.SIGINT)
        assert again.proc.wait(30) == 0
