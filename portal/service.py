"""Kept for callers outside the portal package (bench, hub tests): the services live in :mod:`portal.services`."""

from portal.services import *  # noqa: F403
from portal.services import __all__  # noqa: F401
from portal.services.integrations import _scope_text, scope_json  # noqa: F401
