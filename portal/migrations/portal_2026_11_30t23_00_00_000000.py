"""Each scope of an integration becomes one JSON column (a ``Scope`` object): ``requested`` and ``granted``.
The next migration fills them from the eight list-in-text columns and drops those."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import JSON
from piccolo.columns.indexes import IndexMethod

ID = "2026-11-30T23:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "integration scopes as two JSON columns (requested, granted)"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="portal", description=DESCRIPTION)
    for column in ("requested", "granted"):
        manager.add_column(table_class_name="Integration", tablename="portal_integration", column_name=column,
                           db_column_name=column, column_class_name="JSON", column_class=JSON,
                           params={"default": "{}", "null": False, "primary_key": False, "unique": False,
                                   "index": False, "index_method": IndexMethod.btree, "choices": None,
                                   "db_column_name": None, "secret": False},
                           schema=None)
    return manager
