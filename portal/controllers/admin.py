"""The administrator's side: the queue of requests and scope changes, any integration's page, decisions
(approve, deny, suspend, resume, revoke) and the audit log; pages and JSON API read the decision the same way
(:func:`read_decision`) and make it with the same call (:meth:`portal.services.Portal.decide`)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get, post
from litestar.controller import Controller
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import Redirect, Template

from portal import flash
from portal.api_types import (
    ERRORS,
    AuditView,
    Decision,
    GroupChange,
    GroupCreate,
    GroupDeleted,
    GroupImport,
    GroupView,
    IntegrationView,
    Retired,
    Retirement,
)
from portal.guards import (
    PortalDep,
    RowDep,
    SettingsDep,
    UserDep,
    administrator,
    any_integration,
    api_administrator,
)
from portal.services import PortalError
from portal.settings import PortalSettings
from portal.tables import Integration
from portal.validation import Scope, check_scope, clean_text
from portal.views import detail_page, view_of
from portal.web import form_of, go, page

STATUSES = ("pending", "approved", "denied", "suspended", "revoked")
DONE = {"approve": "Approved: the grant is active.", "deny": "Request denied; the requester sees your reason.",
        "suspend": "Suspended: delivery and credentials are stopped.", "resume": "Resumed: delivery restarts.",
        "revoke": "Revoked: the grant, its consumers and credentials are removed."}


def read_decision(data: dict[str, Any], settings: PortalSettings, scope_problem: str) -> tuple[str, Scope | None]:
    """The reason and, when any scope field was sent, the approved scope: what the form shows is what is
    granted (typing a narrower scope narrows it, no extra switch)."""
    errors: dict[str, str] = {}
    reason = clean_text(data.get("reason"), "reason", settings.max_text, errors, multiline=True)
    if errors:
        raise PortalError(errors["reason"], 400, errors)
    narrowed = None
    if any(k in data for k in ("sites", "orgs", "courses", "event_types", "learner_groups", "identity")):
        narrowed = check_scope(data, set(settings.sites), errors)
        if errors:
            raise PortalError(scope_problem, 400, errors)
    return reason, narrowed


class AdminPages(Controller):
    path = "/admin"
    guards = [administrator]

    @get("/")
    async def home(self, request: Request, portal: PortalDep) -> Template:
        shown = request.query_params.get("status") or None
        shown = shown if shown in STATUSES else None
        changes = await Integration.objects().where((Integration.scope_change == True)  # noqa: E712
                                                    & (Integration.status == "approved"))
        return page(request, "admin.html", pending=[*await portal.list_all("pending"), *changes],
                    rows=await portal.list_all(shown), owners=await portal.owner_emails(), shown=shown)

    @get("/integrations/{key:str}", guards=[any_integration])
    async def integration(self, request: Request, portal: PortalDep, row: RowDep) -> Template:
        return await detail_page(request, portal, row, admin=True, errors={},
                                 owner=(await portal.owner_emails()).get(row.owner))

    @post("/integrations/{key:str}/{action:str}")
    async def decide(self, request: Request, user: UserDep, portal: PortalDep, settings: SettingsDep,
                     key: FromPath[str], action: FromPath[str]) -> Template | Redirect:
        raw = await form_of(request)
        try:
            reason, narrowed = read_decision(raw, settings, "Check the approved scope.")
            await portal.decide(user, key, action, reason, narrowed)
        except PortalError as exc:
            if exc.status == 404:
                raise
            row = await portal.get(key)
            # Field errors are listed once (summary + field); a refusal without a field is the one message.
            return await detail_page(request, portal, row, admin=True, errors=exc.errors,
                                     error="" if exc.errors else exc.message,
                                     owner=(await portal.owner_emails()).get(row.owner), status_code=exc.status,
                                     form=flash.stashable(raw))
        return await go(request, f"/admin/integrations/{key}", DONE.get(action, f"Done: {action}."))

    @get("/audit")
    async def audit(self, request: Request, portal: PortalDep) -> Template:
        return page(request, "audit.html", entries=await portal.audit_log(500))

    # ---- learner groups ---------------------------------------------------------------------------------
    @get("/groups")
    async def groups(self, request: Request, portal: PortalDep) -> Template:
        return page(request, "admin_groups.html", groups=await portal.list_groups(), group=None, errors={})

    @get("/groups/{name:str}")
    async def group(self, request: Request, portal: PortalDep, name: FromPath[str]) -> Template:
        return page(request, "admin_groups.html", groups=None, group=await portal.group(name), errors={})

    @post("/groups")
    async def create_group(self, request: Request, user: UserDep, portal: PortalDep) -> Template | Redirect:
        raw = await form_of(request)
        name = str(raw.get("name") or "").strip()
        try:
            await portal.create_group(user, name, str(raw.get("site") or ""), str(raw.get("users") or ""),
                                      str(raw.get("description") or ""))
        except PortalError as exc:
            return page(request, "admin_groups.html", status=exc.status, groups=await portal.list_groups(),
                        group=None, errors=exc.errors, error="" if exc.errors else exc.message, form=raw)
        return await go(request, f"/admin/groups/{name}", f"Group {name} saved.")

    @post("/groups/{name:str}/{action:str}")
    async def change_group(self, request: Request, user: UserDep, portal: PortalDep, name: FromPath[str],
                           action: FromPath[str]) -> Template | Redirect:
        raw = await form_of(request)
        try:
            if action == "members":
                await portal.change_group(user, name, str(raw.get("add") or ""), str(raw.get("remove") or ""))
            elif action == "import":
                await portal.import_group(user, name, str(raw.get("csv") or ""))
            elif action == "delete":
                await portal.delete_group(user, name)
                return await go(request, "/admin/groups", f"Group {name} deleted.")
            else:
                raise PortalError("Unknown action.", 404)
        except PortalError as exc:
            if exc.status == 404:
                raise
            return page(request, "admin_groups.html", status=exc.status, groups=None,
                        group=await portal.group(name), errors=exc.errors, error="" if exc.errors else exc.message,
                        form=raw)
        return await go(request, f"/admin/groups/{name}", "Members updated: the next events follow.")


class AdminApi(Controller):
    path = "/api/v1/admin"
    tags = ["api"]
    guards = [api_administrator]

    @get("/integrations", responses=ERRORS)
    async def list_all(self, portal: PortalDep, status: FromQuery[str | None] = None) -> list[IntegrationView]:
        owners = await portal.owner_emails()
        return [view_of(r, owners.get(r.owner)) for r in await portal.list_all(status)]

    @post("/integrations/{key:str}/{action:str}", responses=ERRORS, status_code=200)
    async def decide(self, user: UserDep, portal: PortalDep, settings: SettingsDep, key: FromPath[str],
                     action: FromPath[str], data: JSONBody[Decision | None] = None) -> IntegrationView:
        raw = msgspec.to_builtins(data) if data else {}
        reason, narrowed = read_decision(raw, settings, "Invalid approved scope.")
        row = await portal.decide(user, key, action, reason, narrowed)
        return view_of(row, (await portal.owner_emails()).get(row.owner))

    @get("/groups", responses=ERRORS)
    async def list_groups(self, portal: PortalDep) -> list[GroupView]:
        return [msgspec.convert(g, GroupView) for g in await portal.list_groups()]

    @post("/groups", responses=ERRORS, status_code=201)
    async def create_group(self, user: UserDep, portal: PortalDep, data: JSONBody[GroupCreate]) -> GroupView:
        return msgspec.convert(await portal.create_group(user, data.name, data.site, data.users, data.description),
                               GroupView)

    @get("/groups/{name:str}", responses=ERRORS)
    async def group(self, portal: PortalDep, name: FromPath[str]) -> GroupView:
        return msgspec.convert(await portal.group(name), GroupView)

    @post("/groups/{name:str}/members", responses=ERRORS, status_code=200)
    async def change_group(self, user: UserDep, portal: PortalDep, name: FromPath[str], data: JSONBody[GroupChange]) -> GroupView:
        return msgspec.convert(await portal.change_group(user, name, data.add, data.remove), GroupView)

    @post("/groups/{name:str}/import", responses=ERRORS, status_code=200)
    async def import_group(self, user: UserDep, portal: PortalDep, name: FromPath[str], data: JSONBody[GroupImport]) -> GroupView:
        return msgspec.convert(await portal.import_group(user, name, data.csv), GroupView)

    @post("/groups/{name:str}/delete", responses=ERRORS, status_code=200)
    async def delete_group(self, user: UserDep, portal: PortalDep, name: FromPath[str]) -> GroupDeleted:
        return GroupDeleted(removed_members=await portal.delete_group(user, name))

    @post("/learners/retire", responses=ERRORS, status_code=200)
    async def retire(self, user: UserDep, portal: PortalDep, data: JSONBody[Retirement]) -> Retired:
        return Retired(known=await portal.retire_learner(user, data.site, data.user_id))

    @get("/audit", responses=ERRORS)
    async def audit(self, portal: PortalDep, integration: FromQuery[str | None] = None) -> list[AuditView]:
        return [AuditView(at=e.at.isoformat(), actor=e.actor, action=e.action, integration=e.integration,
                          detail=e.detail) for e in await portal.audit_log(1000, integration)]
