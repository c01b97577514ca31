"""Batched push delivery chosen in the portal: ``batch_size`` (statements per POST) and ``batch_wait_ms``."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Integer
from piccolo.columns.indexes import IndexMethod

ID = "2026-11-30T23:40:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "integration batching: batch_size, batch_wait_ms"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="portal", description=DESCRIPTION)
    for column, default in (("batch_size", 1), ("batch_wait_ms", 200)):
        manager.add_column(table_class_name="Integration", tablename="portal_integration", column_name=column,
                           db_column_name=column, column_class_name="Integer", column_class=Integer,
                           params={"default": default, "null": False, "primary_key": False, "unique": False,
                                   "index": False, "index_method": IndexMethod.btree, "choices": None,
                                   "db_column_name": None, "secret": False},
                           schema=None)
    return manager
