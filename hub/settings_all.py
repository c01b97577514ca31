"""Imports every module that declares a settings struct, so ``hub.settings.env_names()`` sees them all."""

import importlib

for _mod in ("hub.settings", "hub.deliver.settings", "portal.settings", "lms_publisher.settings"):
    try:
        importlib.import_module(_mod)
    except ModuleNotFoundError:
        pass
