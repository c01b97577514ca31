"""A consumer's integrations: request one, see it, rotate or retire its webhook signing secret, download
direct-subscription credentials, cancel it (pages and the JSON API, both over :class:`portal.services.Portal`).
Only the owner reaches an integration here (guard ``owner``); administrators use :mod:`.admin`."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.controller import Controller
from litestar.params import JSONBody
from litestar.response import Redirect, Template

from portal import catalog, courses, flash
from portal.api_types import (
    ERRORS,
    IntegrationDetail,
    IntegrationRequest,
    IntegrationView,
    RotatedSecret,
    WebhookSecret,
)
from portal.deliveries import EndpointState, endpoint_state, fmt
from portal.guards import PortalDep, RowDep, SettingsDep, UserDep, api_signed_in, owner, signed_in, verified
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
from portal.services.integrations import DuplicateRequest, header_names, payload_filter_of
from portal.tables import Integration
from portal.validation import PAYLOAD_PARTS, split_list, validate_request
from portal.web import flash_box, flash_session, form_of, go, once_claimed, page


class IntegrationPages(Controller):
    guards = [signed_in]

    @get("/integrations")
    async def mine(self, request: Request, user: UserDep, portal: PortalDep) -> Template:
        return page(request, "integrations.html", rows=await portal.list_for(user))

    @get("/integrations/new")
    async def new_form(self, request: Request, portal: PortalDep) -> Template:
        kept = (request.state.get("flash") or flash.EMPTY)["form"]
        return page(request, "integration_new.html", form=kept or {"protocol": "xapi", "delivery": "webhook"},
                    errors={}, known_courses=courses.for_sites(await courses.known_courses(portal), []))

    @post("/integrations", guards=[verified])
    async def create(self, request: Request, user: UserDep, settings: SettingsDep, portal: PortalDep
                     ) -> Template | Redirect:
        raw = await form_of(request)
        spec, errors = validate_request(raw, set(settings.sites), settings.max_text, settings.allowed(),
                                       max_rate=settings.max_rate_limit)
        if spec and spec.url:
            await endpoints.check_endpoint_url(spec.url, settings, errors)
        known = await courses.known_courses(portal)
        unknown = courses.unknown_courses(known, spec.scope.sites if spec else [], spec.scope.courses if spec else [])
        if errors:
            # Echo what was typed (escaped by Jinja) so it can be fixed, bounded, and never the credentials.
            shown = {k: (v[:2048] if isinstance(v, str) else [x[:200] for x in v[:50]])
                     for k, v in raw.items() if k not in ("basic_auth", "bearer", "_csrf_token", "_once")}
            return page(request, "integration_new.html", status=400, form=shown, errors=errors,
                        known_courses=courses.for_sites(known, split_list(raw.get("sites"))))
        if again := await once_claimed(request, raw, "/integrations"):
            return again
        try:
            row = await portal.create_integration(user, spec)
        except DuplicateRequest as dup:  # Back + submit again: show the pending request, make no second one
            await flash.done(raw.get("_once"), f"/integrations/{dup.key}")
            return await go(request, f"/integrations/{dup.key}", dup.message, kind="warning")
        await flash.done(raw.get("_once"), f"/integrations/{row.key}")
        if unknown:
            await flash.put(flash_box(request), flash_session(request), "warning", unknown_warning(unknown))
        if odd := catalog.unknown_event_types(spec.protocol, spec.scope.event_types):
            await flash.put(flash_box(request), flash_session(request), "warning",
                            catalog.unknown_types_warning(odd, spec.protocol))
        return await go(request, f"/integrations/{row.key}", "Request sent: an administrator will review it.")

    @get("/integrations/{key:str}", guards=[owner])
    async def show(self, request: Request, portal: PortalDep, row: RowDep) -> Template:
        secret = await portal.take_pending_secret(row) or (request.state.get("flash") or flash.EMPTY)["secret"]
        return await detail_page(request, portal, row, secret=secret)

    @post("/integrations/{key:str}/rotate", guards=[owner])
    async def rotate(self, request: Request, user: UserDep, portal: PortalDep, row: RowDep) -> Redirect:
        here = f"/integrations/{row.key}"
        raw = await form_of(request)
        if again := await once_claimed(request, raw, here):
            return again
        secret = await portal.rotate_secret(user, row)
        until = await endpoints.start_overlap(portal, row)
        await flash.done(raw.get("_once"), here)
        return await go(request, here, "New signing secret made; the previous one is still accepted "
                        f"until {fmt(until.timestamp())} or until you retire it.", secret=secret)

    @post("/integrations/{key:str}/secret", guards=[owner])
    async def reveal(self, request: Request, user: UserDep, portal: PortalDep, row: RowDep) -> Redirect:
        secret = await portal.reveal_secret(user, row)
        return await go(request, f"/integrations/{row.key}", "Your current signing secret is shown below.",
                        secret=secret)

    @post("/integrations/{key:str}/retire", guards=[owner])
    async def retire(self, request: Request, user: UserDep, portal: PortalDep, row: RowDep) -> Redirect:
        await portal.retire_old_secret(user, row)
        await endpoints.update(row, old_secret_until=None)
        return await go(request, f"/integrations/{row.key}", "The previous signing secret is no longer accepted.")

    @post("/integrations/{key:str}/creds", guards=[owner])
    async def download_creds(self, user: UserDep, portal: PortalDep, row: RowDep) -> Response:
        creds = await portal.issue_creds(user, row)
        return Response(creds, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{row.key}.creds"',
                                 "Cache-Control": "no-store"})

    @post("/integrations/{key:str}/cancel", guards=[owner])
    async def cancel(self, request: Request, user: UserDep, portal: PortalDep, row: RowDep) -> Redirect:
        await portal.revoke(user, row.key, "cancelled by its owner", row=row)
        return await go(request, f"/integrations/{row.key}", "Integration cancelled.")


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
                example=portal.example(row) if row.delivery == "direct" and row.status == "approved" else "",
                direct=await direct_help(portal, row) if row.delivery == "direct" and row.status == "approved" else None,
                audit=await portal.audit_log(50, row.key), **extra)


async def direct_help(portal: Portal, row) -> dict[str, Any]:
    """What a direct subscriber needs besides the Python example: the CLI lines, a sample statement, subjects
    and when the newest downloaded credential expires."""
    from hub.core.grants import consumer_name
    from hub.deliver.actions import test_statement

    grant = grant_of(row, "")
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
    state.secrets = await _safe_count(portal, row)
    if state.secrets > 1 and row.old_secret_until:
        state.old_secret_until = row.old_secret_until.timestamp()
    return state


async def _safe_count(portal: Portal, row) -> int:
    try:
        return await portal.secret_count(row)
    except PortalError:
        return 0


class IntegrationApi(Controller):
    path = "/api/v1"
    tags = ["api"]
    guards = [api_signed_in]

    @get("/integrations", responses=ERRORS)
    async def list_mine(self, user: UserDep, portal: PortalDep) -> list[IntegrationView]:
        return [view_of(r) for r in await portal.list_for(user)]

    @post("/integrations", responses=ERRORS, status_code=201, guards=[verified])
    async def create(self, user: UserDep, settings: SettingsDep, portal: PortalDep,
                     data: JSONBody[IntegrationRequest]) -> IntegrationView:
        raw = msgspec.to_builtins(data)
        spec, errors = validate_request(raw, set(settings.sites), settings.max_text, settings.allowed(),
                                       max_rate=settings.max_rate_limit)
        if spec and spec.url:
            await endpoints.check_endpoint_url(spec.url, settings, errors)
        if errors:
            raise PortalError("Invalid integration request.", 400, errors)
        view = public_view(await portal.create_integration(user, spec), box=portal.box, reveal=True)
        unknown = courses.unknown_courses(await courses.known_courses(portal), spec.scope.sites, spec.scope.courses)
        warnings = {"courses": unknown_warning(unknown)} if unknown else {}
        if odd := catalog.unknown_event_types(spec.protocol, spec.scope.event_types):
            warnings["event_types"] = catalog.unknown_types_warning(odd, spec.protocol)
        if warnings:
            view["warnings"] = warnings
        return msgspec.convert(view, IntegrationView)

    @get("/integrations/{key:str}", responses=ERRORS, guards=[owner])
    async def show(self, portal: PortalDep, row: RowDep) -> IntegrationDetail:
        view = public_view(row, box=portal.box, reveal=True)
        view["status_detail"] = await portal.status(row)
        secret = await portal.take_pending_secret(row)
        if secret:
            view["webhook_secret"] = secret
        return msgspec.convert(view, IntegrationDetail)

    @post("/integrations/{key:str}/rotate-secret", responses=ERRORS, status_code=200, guards=[owner])
    async def rotate(self, user: UserDep, portal: PortalDep, row: RowDep) -> RotatedSecret:
        secret = await portal.rotate_secret(user, row)
        until = await endpoints.start_overlap(portal, row)
        return RotatedSecret(id=row.key, webhook_secret=secret, previous_secret_accepted_until=until.isoformat())

    @post("/integrations/{key:str}/secret", responses=ERRORS, status_code=200, guards=[owner],
          description="The current webhook signing secret, shown again to its owner (audited).")
    async def reveal(self, user: UserDep, portal: PortalDep, row: RowDep) -> WebhookSecret:
        return WebhookSecret(id=row.key, webhook_secret=await portal.reveal_secret(user, row))

    @post("/integrations/{key:str}/creds", responses=ERRORS, status_code=200, media_type="text/plain", guards=[owner],
          description="A new `.creds` file (text) for a direct subscription, shown once.")
    async def creds(self, user: UserDep, portal: PortalDep, row: RowDep) -> Response[str]:
        return Response(await portal.issue_creds(user, row), media_type="text/plain",
                        headers={"Cache-Control": "no-store"})

    @post("/integrations/{key:str}/cancel", responses=ERRORS, status_code=200, guards=[owner])
    async def cancel(self, user: UserDep, portal: PortalDep, row: RowDep) -> IntegrationView:
        return view_of(await portal.revoke(user, row.key, "cancelled by its owner", row=row))


def view_of(row: Integration, owner_email: str | None = None) -> IntegrationView:
    return msgspec.convert(public_view(row, owner_email), IntegrationView)
