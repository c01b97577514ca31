"""Piccolo app config: the portal's tables and migrations (``piccolo migrations new portal --auto`` with
``PICCOLO_CONF=portal.piccolo_conf`` writes a new migration after a table change)."""

import os

from piccolo.conf.apps import AppConfig

from portal.tables import TABLES

APP_CONFIG = AppConfig(
    app_name="portal",
    migrations_folder_path=os.path.join(os.path.dirname(__file__), "migrations"),
    table_classes=list(TABLES),
    migration_dependencies=[],
    commands=[],
)
