"""Typed JSON shapes of the API routes this module's users touch, so OpenAPI documents them (msgspec structs)."""

from __future__ import annotations

from typing import Any

import msgspec

from portal.validation import Scope


class IntegrationView(msgspec.Struct, kw_only=True):
    """An integration as its owner or an administrator sees it: never credentials or secrets. ``warnings``
    (after a request) names course keys the hub has not seen yet."""

    id: str
    name: str
    protocol: str
    delivery: str
    url: str | None
    auth: str
    status: str
    reason: str
    decision_reason: str
    decided_by: str
    requested: Scope
    granted: Scope | None
    consumer: str
    owner: str | None = None
    created: str | None = None
    updated: str | None = None
    warnings: dict[str, str] | None = None


class RotatedSecret(msgspec.Struct, kw_only=True):
    """A new webhook signing secret, shown once; the previous one is accepted until ``previous_secret_accepted_until``."""

    id: str
    webhook_secret: str
    previous_secret_accepted_until: str


class IntegrationDetail(IntegrationView, kw_only=True, omit_defaults=True):
    """One integration with its delivery figures (``hub.deliver.status``: delivered, lag, last error, dead
    letters, ``behind_since`` when it cannot keep up) and, once, the webhook secret made at approval."""

    status_detail: dict[str, Any] = {}
    webhook_secret: str | None = None


class Health(msgspec.Struct, kw_only=True):
    status: str


class Me(msgspec.Struct, kw_only=True):
    email: str
    name: str
    admin: bool


class AuditView(msgspec.Struct, kw_only=True):
    at: str
    actor: str
    action: str
    integration: str | None
    detail: str
