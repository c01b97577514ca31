"""Piccolo's configuration module. ``DB`` starts from the environment's settings; :func:`portal.db.bind`
replaces it with the engine of the settings the app was created with."""

from piccolo.conf.apps import AppRegistry

from hub.core.settings import from_env
from portal.db import engine_for
from portal.settings import PortalSettings

DB = engine_for(from_env(PortalSettings))
APP_REGISTRY = AppRegistry(apps=["portal.piccolo_app"])
