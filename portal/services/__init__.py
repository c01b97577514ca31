"""What the portal does, independent of pages, API or CLI, one module per concern: accounts and sessions
(:mod:`.accounts`), API tokens (:mod:`.tokens`), integrations and their decisions (:mod:`.integrations`).
:class:`Portal` is the one object the app, the CLI and the tests hold; it combines the three services over
shared state (settings, NATS connection, secret box, audit log: :mod:`.base`)."""

from __future__ import annotations

from portal.services.accounts import AccountService
from portal.services.base import NotFound, PortalError, now
from portal.services.groups import GroupService
from portal.services.integrations import (
    SUSPENDED_REASON,
    TRANSITIONS,
    IntegrationService,
    grant_of,
    granted_scope,
    public_view,
    requested_scope,
)
from portal.services.tokens import TokenService


class Portal(AccountService, TokenService, IntegrationService, GroupService):
    """The portal's operations; holds its settings and a lazily opened NATS connection."""


__all__ = ["SUSPENDED_REASON", "TRANSITIONS", "NotFound", "Portal", "PortalError", "grant_of", "granted_scope", "now",
           "public_view", "requested_scope"]
