"""Endpoint settings a consumer chooses (issue 24): ``rate_limit``, ``custom_headers``, ``payload_filter``, and
``paused_at`` (paused by its owner)."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Real, Text, Timestamptz
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-04T12:50:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "integration rate_limit, custom_headers, payload_filter, paused_at"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="portal", description=DESCRIPTION)
    for column, cls, default, null in (("rate_limit", Real, 0.0, False), ("custom_headers", Text, "", False),
                                       ("payload_filter", Text, "[]", False), ("paused_at", Timestamptz, None, True)):
        manager.add_column(table_class_name="Integration", tablename="portal_integration", column_name=column,
                           db_column_name=column, column_class_name=cls.__name__, column_class=cls,
                           params={"default": default, "null": null, "primary_key": False, "unique": False,
                                   "index": False, "index_method": IndexMethod.btree, "choices": None,
                                   "db_column_name": None, "secret": False},
                           schema=None)
    return manager
