"""Flash messages and once-tokens (portal/flash.py), until when a rotated-out webhook secret is accepted, and
a scope change awaiting an administrator, and the lag samples of the 24 h chart."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Boolean, Integer, Text, Timestamptz, Varchar
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.columns.indexes import IndexMethod

ID = "2026-11-30T19:45:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "flash messages, once-tokens, old secret overlap, scope change requests"


def _params(**over):
    params = {"default": "", "null": False, "primary_key": False, "unique": False, "index": False,
              "index_method": IndexMethod.btree, "choices": None, "db_column_name": None, "secret": False}
    params.update(over)
    return params


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="portal", description=DESCRIPTION)
    manager.add_table(class_name="FlashEntry", tablename="portal_flash", schema=None, columns=None)
    manager.add_table(class_name="FormOnce", tablename="portal_once", schema=None, columns=None)
    manager.add_table(class_name="LagSample", tablename="portal_lag", schema=None, columns=None)
    columns = [
        ("FlashEntry", "portal_flash", "box", Varchar, _params(length=64, index=True)),
        ("FlashEntry", "portal_flash", "kind", Varchar, _params(length=16)),
        ("FlashEntry", "portal_flash", "path", Varchar, _params(length=300)),
        ("FlashEntry", "portal_flash", "text", Text, _params()),
        ("FlashEntry", "portal_flash", "created", Timestamptz, _params(default=TimestamptzNow())),
        ("FormOnce", "portal_once", "token", Varchar, _params(length=64, unique=True, index=True)),
        ("FormOnce", "portal_once", "location", Varchar, _params(length=300)),
        ("FormOnce", "portal_once", "created", Timestamptz, _params(default=TimestamptzNow())),
        ("Integration", "portal_integration", "old_secret_until", Timestamptz, _params(default=None, null=True)),
        ("Integration", "portal_integration", "scope_change", Boolean, _params(default=False)),
        ("LagSample", "portal_lag", "integration", Varchar, _params(length=64, index=True)),
        ("LagSample", "portal_lag", "at", Timestamptz, _params(default=TimestamptzNow(), index=True)),
        ("LagSample", "portal_lag", "lag", Integer, _params(default=0)),
    ]
    for class_name, tablename, column, column_class, params in columns:
        manager.add_column(table_class_name=class_name, tablename=tablename, column_name=column,
                           db_column_name=column, column_class_name=column_class.__name__,
                           column_class=column_class, params=params, schema=None)
    return manager
