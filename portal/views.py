"""What the controllers show of an integration, shared by the owner's, the administrator's and the operations
pages (so no controller imports another): the detail page, the endpoint state, the JSON view."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import msgspec
from litestar import Request
from litestar.response import Template

from hub.auth.store import refused_reason
from hub.core.delivery_kinds import is_push
from portal.api_types import (
    IntegrationView,
)
from portal.deliveries import AttemptDetail, EndpointState, endpoint_state, read_attempt
from portal.guards import PortalDep, RowDep
from portal.services import (
    Portal,
    PortalError,
    endpoints,
    grant_of,
    granted_scope,
    now,
    public_view,
    requested_scope,
)
from portal.services.provisioning import header_names, payload_filter_of
from portal.tables import Integration
from portal.validation import PAYLOAD_PARTS
from portal.web import page


def unknown_warning(unknown: list[str]) -> str:
    return (f"No events were seen yet for {', '.join(unknown[:5])}{' and more' if len(unknown) > 5 else ''} on "
            "the chosen sites: check the course key (a course without activity yet is fine).")


async def detail_page(request: Request, portal: PortalDep, row: RowDep, secret: str | None = None,
                      admin: bool = False, status_code: int = 200, **extra: Any) -> Template:
    """The integration page (the owner's, or the administrator's with the decision form)."""
    state = await state_of(portal, row)
    extra.setdefault("kept_until", await endpoints.kept_until(portal, row))
    extra.setdefault("custom_headers", header_names(row, portal.box) if not admin else {})
    extra.setdefault("payload_filter", payload_filter_of(row))
    extra.setdefault("payload_parts", PAYLOAD_PARTS.get(row.protocol, ()))
    extra.setdefault("max_rate_limit", portal.settings.max_rate_limit)
    return page(request, "admin_integration.html" if admin else "integration.html", status=status_code, row=row,
                requested=requested_scope(row), granted=granted_scope(row), state=state, secret=secret,
                secrets=state.secrets, refresh_url=f"/integrations/{row.key}/state.json",
                example=portal.example(row) if not is_push(row.delivery) and row.status == "approved" else "",
                direct=await direct_help(portal, row) if not is_push(row.delivery) and row.status == "approved" else None,
                audit=await portal.audit_log(50, row.key), group_sizes=await _group_sizes(portal, row), **extra)


async def _group_sizes(portal: Portal, row) -> dict[str, int]:
    """Sizes of the integration's learner groups (names and sizes only: never the members)."""
    if not (requested_scope(row).learner_groups or granted_scope(row).learner_groups):
        return {}
    try:
        return await portal.group_sizes()
    except PortalError:  # NATS away: the page still shows the names
        return {}


async def direct_help(portal: Portal, row) -> dict[str, Any]:
    """What a direct subscriber needs besides the Python example: the CLI lines, a sample statement, subjects
    and when the newest downloaded credential expires."""
    from hub.core.grants import consumer_name
    from hub.deliver.actions import test_statement

    grant = grant_of(row, "", validate=False)
    _, sample = test_statement(row.protocol, row.key)
    issued = [e for e in await portal.audit_log(200, row.key) if e.action == "creds.issue"]
    last = issued[0].at if issued else None
    try:
        cli = portal.auth().example_nats_cli(grant, consumer_name(row.key), servers=portal.settings.nats_url_for_consumers(),
                                             creds_file=f"{row.key}.creds")
    except (PortalError, AttributeError):
        cli = ""
    return {"cli": cli, "sample": json.dumps(json.loads(sample), indent=2), "subjects": grant.filter_subjects(),
            "days": portal.settings.creds_days, "last_issued": last,
            "last_expires": last + dt.timedelta(days=portal.settings.creds_days) if last else None,
            "new_expires": now() + dt.timedelta(days=portal.settings.creds_days)}


async def state_of(portal: Portal, row) -> EndpointState:
    """The endpoint at a glance, with the signing-secret overlap of a webhook."""
    stats = await portal.status(row)
    state = endpoint_state(row.status, row.delivery, row.decision_reason, row.updated, stats)
    if state.state == "direct" and (refused := refused_reason(portal.settings.data_dir, row.key)):
        state.state, state.reason = "failing", refused
        state.headline = ("Failing: this subscription's NATS account was not loaded when the server last started "
                          f"({refused}). An administrator re-scopes or re-approves it to repair it.")
    state.secrets = await _safe_count(portal, row)
    if state.secrets > 1 and row.old_secret_until:
        state.old_secret_until = row.old_secret_until.timestamp()
    return state


async def _safe_count(portal: Portal, row) -> int:
    try:
        return await portal.secret_count(row)
    except PortalError:
        return 0


def view_of(row: Integration, owner_email: str | None = None) -> IntegrationView:
    return msgspec.convert(public_view(row, owner_email), IntegrationView)


def pretty(text: str) -> str:
    """A stored statement indented for reading (as it is when it is not JSON)."""
    import json

    try:
        return json.dumps(json.loads(text), indent=2)
    except ValueError:
        return text


async def attempt_detail(portal, row, attempt: str) -> AttemptDetail:
    """One attempt of ``row`` with its payload; 404 when it is not this integration's (or expired)."""

    from hub.deliver import actions
    from portal.services.integrations import payload_filter_of

    if row.status not in ("approved", "suspended"):
        raise PortalError("No such attempt.", 404)
    js = await portal.js()
    found = await read_attempt(js, row.key, attempt)
    if found is None:
        raise PortalError("No such attempt (or no longer kept).", 404)
    bodies = await actions.statements(js, row.key, [s for s in found.seqs if s > 0]) if any(found.seqs) else []
    payload = []
    for body in bodies:
        payload.append(body.decode("utf-8", "replace") if body is not None else None)
    return AttemptDetail(attempt=found, payload=payload, statements=len(found.ids),
                         payload_filter=payload_filter_of(row))


HEALTH_ROWS = 50  # the list computes health for this many integrations (each reads its delivery state)


async def health_of(portal: Portal, rows: list) -> dict[str, Any]:
    """``{integration id: {state, text, detail}}`` for the integrations list (approved and suspended ones)."""
    from portal.deliveries import health_text

    out: dict[str, Any] = {}
    for row in [r for r in rows if r.status in ("approved", "suspended")][:HEALTH_ROWS]:
        try:
            state = await state_of(portal, row)
        except PortalError:  # NATS away: the list still shows the integrations
            continue
        out[row.key] = {"state": state.state, "text": health_text(state), "detail": state}
    return out
