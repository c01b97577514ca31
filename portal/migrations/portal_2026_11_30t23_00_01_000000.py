"""Copy every integration's scope from the list-in-text columns (``req_sites`` ... ``grant_event_types``) into
the JSON columns added by the previous migration, then drop the old columns. Piccolo runs a migration's raw
steps before its column changes, so the copy here sees both sets of columns."""

import json

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import JSON, Text
from piccolo.engine.finder import engine_finder
from piccolo.table import Table

ID = "2026-11-30T23:00:01:000000"
VERSION = "1.38.0"
DESCRIPTION = "fill the scope JSON columns, drop the eight list-in-text scope columns"

FIELDS = ("sites", "orgs", "courses", "event_types")
OLD = {"req": "requested", "grant": "granted"}


class Integration(Table, tablename="portal_integration", schema=None):
    """The table as it is between the two migrations (only the columns this one reads and writes)."""

    req_sites = Text()
    req_orgs = Text()
    req_courses = Text()
    req_event_types = Text()
    grant_sites = Text()
    grant_orgs = Text()
    grant_courses = Text()
    grant_event_types = Text()
    requested = JSON()
    granted = JSON()


def _list(text):
    values = json.loads(text or "[]")
    return [str(v) for v in values] if isinstance(values, list) else []


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="portal", description=DESCRIPTION)

    async def copy_scopes():
        Integration._meta.db = engine_finder()  # the database being migrated (not one seen earlier in-process)
        columns = [getattr(Integration, f"{prefix}_{field}") for prefix in OLD for field in FIELDS]
        for row in await Integration.select(Integration.id, *columns):
            scopes = {new: json.dumps({f: _list(row[f"{prefix}_{f}"]) for f in FIELDS}) for prefix, new in OLD.items()}
            await Integration.update({Integration.requested: scopes["requested"],
                                      Integration.granted: scopes["granted"]}).where(Integration.id == row["id"])

    manager.add_raw(copy_scopes)
    for prefix in OLD:
        for field in FIELDS:
            manager.drop_column(table_class_name="Integration", tablename="portal_integration",
                                column_name=f"{prefix}_{field}", db_column_name=f"{prefix}_{field}", schema=None)
    return manager
