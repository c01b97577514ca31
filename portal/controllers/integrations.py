"""A consumer's integrations: request one, see it, rotate or retire its webhook signing secret, download
direct-subscription credentials, cancel it (pages and the JSON API, both over :class:`portal.services.Portal`).
Only the owner reaches an integration here (guard ``owner``); administrators use :mod:`.admin`."""

from __future__ import annotations

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
from portal.deliveries import fmt
from portal.guards import PortalDep, RowDep, SettingsDep, UserDep, api_signed_in, owner, signed_in, verified
from portal.services import (
    PortalError,
    endpoints,
    public_view,
)
from portal.services.integrations import DuplicateRequest
from portal.validation import size_refused, split_list, validate_request
from portal.views import detail_page, health_of, unknown_warning, view_of
from portal.web import flash_box, flash_session, form_of, go, once_claimed, page


class IntegrationPages(Controller):
    guards = [signed_in]

    @get("/integrations")
    async def mine(self, request: Request, user: UserDep, portal: PortalDep) -> Template:
        rows = await portal.list_for(user)
        return page(request, "integrations.html", rows=rows, health=await health_of(portal, rows))

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
        if refusal := size_refused(errors):
            await portal.audit(user.email, "scope.refused", "", refusal)
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


class IntegrationApi(Controller):
    path = "/api/v1"
    tags = ["api"]
    guards = [api_signed_in]

    @get("/integrations", responses=ERRORS)
    async def list_mine(self, user: UserDep, portal: PortalDep) -> list[IntegrationView]:
        """Your integrations, each with its ``health`` (the endpoint state: last success, failing since,
        backlog, disabled or paused; a direct subscription's pending count and last ack)."""
        rows = await portal.list_for(user)
        health = await health_of(portal, rows)
        return [msgspec.structs.replace(view_of(r), health=health[r.key]["detail"]) if r.key in health
                else view_of(r) for r in rows]

    @post("/integrations", responses=ERRORS, status_code=201, guards=[verified])
    async def create(self, user: UserDep, settings: SettingsDep, portal: PortalDep,
                     data: JSONBody[IntegrationRequest]) -> IntegrationView:
        raw = msgspec.to_builtins(data)
        spec, errors = validate_request(raw, set(settings.sites), settings.max_text, settings.allowed(),
                                       max_rate=settings.max_rate_limit)
        if spec and spec.url:
            await endpoints.check_endpoint_url(spec.url, settings, errors)
        if refusal := size_refused(errors):
            await portal.audit(user.email, "scope.refused", "", refusal)
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
