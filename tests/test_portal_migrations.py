"""The scope migration on a database made by the earlier migrations, with rows in it: every integration keeps
its requested and granted scope, and the eight list-in-text columns are gone. On SQLite always; on PostgreSQL
at RTHUB_TEST_DATABASE_URL / DATABASE_URL, else on a private server this module starts (never :5432)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from piccolo.apps.migrations.commands.forwards import ForwardsMigrationManager
from piccolo.columns import Boolean, Integer, Text, Varchar
from piccolo.table import Table

from hub.core.settings import from_env
from portal import db
from portal.settings import PortalSettings
from portal.validation import Scope
from tests.helpers import unique
from tests.portal_pg import postgres_url

BEFORE = "2026-11-30T19:45:00:000000"  # the last migration before the scope columns changed
OLD_FIELDS = ("sites", "orgs", "courses", "event_types")  # the scope fields of that time (not learner groups)
OLD_COLUMNS = [f"{p}_{f}" for p in ("req", "grant") for f in OLD_FIELDS]


class OldAccount(Table, tablename="portal_account"):
    email = Varchar(length=254)
    name = Varchar(length=200)
    password_hash = Varchar(length=300)
    is_admin = Boolean()
    email_verified = Boolean()


class OldIntegration(Table, tablename="portal_integration"):
    """The columns an integration had before: scope lists as JSON text."""

    key = Varchar(length=64)
    owner = Integer()
    name = Varchar(length=200)
    protocol = Varchar(length=16)
    delivery = Varchar(length=16)
    status = Varchar(length=16)
    scope_change = Boolean()
    req_sites = Text()
    req_orgs = Text()
    req_courses = Text()
    req_event_types = Text()
    grant_sites = Text()
    grant_orgs = Text()
    grant_courses = Text()
    grant_event_types = Text()


COURSE = "course-v1:edX+DemoX+Demo_Course"
ROWS = {  # key: (status, requested, granted) as the old columns held them
    "pending1": ("pending", Scope(sites=["lms.example.org"], orgs=["edX"]), Scope()),
    "approved1": ("approved", Scope(orgs=["edX", "MITx"], courses=[COURSE], event_types=["video"]),
                  Scope(orgs=["edX"], courses=[COURSE], event_types=["video"])),
    "widened1": ("approved", Scope(sites=["lms.example.org", "other.example.org"]), Scope(sites=["lms.example.org"])),
}


async def _old_database(settings: PortalSettings):
    """A portal database migrated up to :data:`BEFORE`, holding the :data:`ROWS` in the old columns."""
    engine = db.engine_for(settings)
    db.bind(engine)
    for table in (OldAccount, OldIntegration):
        table._meta.db = engine
    result = await ForwardsMigrationManager(app_name="portal", migration_id=BEFORE).run()
    assert result.success, result.message
    await OldAccount.insert(OldAccount(email="owner@example.org", name="Owner", password_hash="!disabled",
                                       is_admin=False, email_verified=True))
    owner = (await OldAccount.select(OldAccount.id).first())["id"]
    for key, (status, requested, granted) in ROWS.items():
        values = {f"req_{f}": _text(getattr(requested, f)) for f in OLD_FIELDS}
        values |= {f"grant_{f}": _text(getattr(granted, f)) for f in OLD_FIELDS}
        await OldIntegration.insert(OldIntegration(key=key, owner=owner, name=key, protocol="xapi", delivery="webhook",
                                                   status=status, scope_change=key == "widened1", **values))
    # What an old row may hold too: an empty text where a list was expected.
    await OldIntegration.update({OldIntegration.grant_event_types: ""}).where(OldIntegration.key == "pending1")
    return engine


def _text(values: list[str]) -> str:
    import json

    return json.dumps(values)


async def _migrate_and_check(settings: PortalSettings, columns_now) -> None:
    from portal.services import granted_scope, public_view, requested_scope
    from portal.tables import Integration

    engine = await _old_database(settings)
    try:
        assert set(OLD_COLUMNS) <= set(await columns_now())
        await db.migrate(settings)  # the rest, as the portal runs them at start-up
        rows = {r.key: r for r in await Integration.objects()}
        assert set(rows) == set(ROWS)
        for key, (status, requested, granted) in ROWS.items():
            assert rows[key].status == status
            assert requested_scope(rows[key]) == requested, key
            assert granted_scope(rows[key]) == granted, key
        view = public_view(rows["approved1"])
        assert view["requested"]["orgs"] == ["edX", "MITx"] and view["granted"]["orgs"] == ["edX"]
        assert rows["widened1"].scope_change is True
        # issue 24's endpoint settings: old rows get no limit, no headers, every part, not paused
        assert view["rate_limit"] == 0 and view["custom_headers"] == {} and view["payload_filter"] == []
        assert all(r.paused_at is None and r.rate_limit == 0 for r in rows.values())
        left = set(await columns_now())
        assert not set(OLD_COLUMNS) & left and {"requested", "granted"} <= left
        # And the new columns are written as they are read.
        await Integration.update({Integration.granted: '{"sites": ["x.example.org"]}'}).where(
            Integration.key == "pending1")
        assert granted_scope(await Integration.objects().get(Integration.key == "pending1")).sites == ["x.example.org"]
    finally:
        await db.close(engine)


async def test_scope_migration_on_sqlite(tmp_path):
    settings = from_env(PortalSettings, data_dir=str(tmp_path), database_url="")

    async def columns_now():
        rows = await OldIntegration.raw("PRAGMA table_info(portal_integration)")
        return [r["name"] for r in rows]

    await _migrate_and_check(settings, columns_now)


# ---------------------------------------------------------------- PostgreSQL
@pytest.fixture(scope="module")
def pg_url():
    with postgres_url() as url:
        yield url


@pytest.mark.postgres
async def test_scope_migration_on_postgresql(pg_url, tmp_path):
    import asyncpg

    name = unique("portal_mig_")
    server = await asyncpg.connect(pg_url)
    await server.execute(f"CREATE DATABASE {name}")
    url = urlunsplit(urlsplit(pg_url)._replace(path=f"/{name}"))
    try:
        settings = from_env(PortalSettings, data_dir=str(tmp_path), database_url=url)

        async def columns_now():
            rows = await OldIntegration.raw("SELECT column_name FROM information_schema.columns "
                                            "WHERE table_name = 'portal_integration'")
            return [r["column_name"] for r in rows]

        await _migrate_and_check(settings, columns_now)
        migrations = len(list((Path(db.__file__).parent / "migrations").glob("portal_*.py")))
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM migration WHERE app_name = 'portal'") == migrations
        finally:
            await conn.close()
    finally:
        await server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await server.close()
