"""Pages and JSON API for running an integration: state at a glance, delivery log, and the operations of
:mod:`portal.services.operations` (a flash message on the pages, an :class:`ActionResult` in the API). The owner
and any administrator may use them (guard ``owner_or_admin``)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.controller import Controller
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import Redirect, Template

from hub.core.delivery_kinds import PUSH
from hub.deliver import actions
from portal import charts, flash
from portal.api_types import ERRORS, DeadLetterView, RedriveRequest, ReplayRequest, ResendRequest
from portal.deliveries import (
    ActionResult,
    AttemptDetail,
    AttemptPage,
    EndpointState,
    fmt,
    parse_filter,
    read_attempts,
)
from portal.guards import PortalDep, RowDep, UserDep, api_signed_in, owner_or_admin, signed_in
from portal.services import PortalError, endpoints
from portal.services.operations import perform
from portal.validation import split_list
from portal.views import attempt_detail, pretty, state_of
from portal.web import current_user, form_of, go, once_claimed, page


def _params(raw: dict[str, Any]) -> dict[str, Any]:
    p = dict(raw)
    if "seqs" in p:
        p["seqs"] = [s for s in split_list(p["seqs"]) if s.isdigit()]
    if p.get("scope_sites_present") and "sites" not in p:
        p["sites"] = []
    if p.get("payload_filter_present") and "payload_filter" not in p:
        p["payload_filter"] = []
    return p


# ---------------------------------------------------------------- pages


class OpsPages(Controller):
    """The owner's (or an administrator's) delivery pages and operation forms."""

    guards = [signed_in, owner_or_admin]

    @post("/integrations/{key:str}/ops/{op:str}")
    async def run(self, request: Request, user: UserDep, portal: PortalDep, row: RowDep,
                  op: FromPath[str]) -> Redirect:
        key = row.key
        raw = await form_of(request)
        back = str(raw.get("back") or "")
        back = back if back in ("deliveries", "admin") else ""
        where = {"deliveries": f"/integrations/{key}/deliveries", "admin": f"/admin/integrations/{key}"}.get(
            back, f"/integrations/{key}")
        if again := await once_claimed(request, raw, where):
            return again
        try:
            result = await perform(portal, user, row, op, _params(raw))
        except PortalError as exc:
            if exc.status == 404:
                raise
            detail = "; ".join(exc.errors.values()) if exc.errors else ""
            return await go(request, where, f"{exc.message} {detail}".strip(), kind="error")
        await flash.done(raw.get("_once"), where)
        return await go(request, where, result.message)

    @get("/integrations/{key:str}/attempts/{attempt:str}")
    async def attempt(self, request: Request, portal: PortalDep, row: RowDep, attempt: FromPath[str]) -> Template:
        detail = await attempt_detail(portal, row, attempt)
        return page(request, "attempt.html", row=row, d=detail, a=detail.attempt, push=row.delivery in PUSH,
                    payload_text=[None if p is None else pretty(p) for p in detail.payload])

    @get("/integrations/{key:str}/deliveries")
    async def deliveries(self, request: Request, portal: PortalDep, row: RowDep) -> Template:
        key = row.key
        q = request.query_params
        f, errors = parse_filter(q.get("outcome"), q.get("status"), q.get("since"), q.get("until"), q.get("before"),
                                 q.get("limit"))
        attempts, dead, chart = AttemptPage(items=[]), [], ""
        if row.status in ("approved", "suspended") and not errors:
            js = await portal.js()
            attempts = await read_attempts(js, key, f)
            if row.delivery in PUSH:
                dead = await actions.list_dead_letters(js, key, limit=200)
            chart = await charts.integration_charts(js, key)
        state = await state_of(portal, row)
        keep = {k: q.get(k) for k in ("outcome", "status", "since", "until", "limit") if q.get(k)}
        return page(request, "deliveries.html", row=row, state=state, attempts=attempts, dead=dead, filters=keep,
                    errors=errors, chart=chart, refresh_url=f"/integrations/{key}/state.json",
                    push=row.delivery in PUSH)


@get("/integrations/{key:str}/state.json")
async def state_json(request: Request, portal: PortalDep, key: FromPath[str]) -> Response:
    """The state box's refresh (static/portal.js): the state plus preformatted times. Not behind the
    ``signed_in`` guard: a stale tab polling gets a plain 401, not a log-in redirect to a JSON URL."""
    user = await current_user(request)
    if user is None:
        return Response({"error": "Log in first."}, status_code=401)
    state = await state_of(portal, await (portal.get(key) if user.is_admin else portal.get_owned(key, user)))
    body = msgspec.to_builtins(state)
    for name in ("since", "next_retry", "last_success", "last_error_at", "old_secret_until"):
        body[f"{name}_text"] = fmt(body.get(name)) if body.get(name) else ""
    return Response(body, headers={"Cache-Control": "no-store"})




# ---------------------------------------------------------------- JSON API


class OpsApi(Controller):
    """The same operations for programs; authentication and the integration's owner are checked before the
    body is parsed (guards), so a stranger gets 401/404, not a validation error."""

    path = "/api/v1/integrations/{key:str}"
    tags = ["api"]
    guards = [api_signed_in, owner_or_admin]

    @get("/state", responses=ERRORS)
    async def state(self, portal: PortalDep, row: RowDep) -> EndpointState:
        """The endpoint at a glance (owner or administrator)."""
        return await state_of(portal, row)

    @get("/deliveries", responses=ERRORS)
    async def deliveries(self, portal: PortalDep, row: RowDep, outcome: FromQuery[str | None] = None,
                         status: FromQuery[str | None] = None, since: FromQuery[str | None] = None,
                         until: FromQuery[str | None] = None, before: FromQuery[str | None] = None,
                         limit: FromQuery[str | None] = None) -> AttemptPage:
        """Delivery attempts, newest first; page with ``before=<next_before>``."""
        f, errors = parse_filter(outcome, status, since, until, before, limit)
        if errors:
            raise PortalError("Invalid filter.", 400, errors)
        if row.status not in ("approved", "suspended"):
            return AttemptPage(items=[])
        return await read_attempts(await portal.js(), row.key, f)

    @get("/attempts/{attempt:str}", responses=ERRORS)
    async def attempt(self, portal: PortalDep, row: RowDep, attempt: FromPath[str]) -> AttemptDetail:
        """One attempt (an ``id`` of the delivery log): time, duration, status, request headers (signature
        redacted), response headers, the first KB of the response body, the trace, and the payload sent."""
        return await attempt_detail(portal, row, attempt)

    @get("/latency", responses=ERRORS)
    async def latency(self, portal: PortalDep, row: RowDep) -> charts.Latency:
        """End-to-end latency (LMS event time -> the endpoint's answer), p50 and p99 per hour of the last 24 h."""
        if row.status not in ("approved", "suspended"):
            return charts.Latency(hours=[], p50_ms=[], p99_ms=[], count=[])
        return await charts.latency_hours(await portal.js(), row.key)

    @get("/dead-letters", responses=ERRORS)
    async def dead_letters(self, portal: PortalDep, row: RowDep) -> list[DeadLetterView]:
        if row.status not in ("approved", "suspended") or row.delivery not in PUSH:
            return []
        return [DeadLetterView(seq=d.seq, statement_id=d.statement_id, reason=d.reason, last_status=d.last_status,
                               response=d.response, failed_at=d.failed_at)
                for d in await actions.list_dead_letters(await portal.js(), row.key, limit=1000)]

    @post("/reenable", responses=ERRORS, status_code=200)
    async def reenable(self, portal: PortalDep, user: UserDep, row: RowDep) -> ActionResult:
        return await perform(portal, user, row, "reenable", {})

    @post("/endpoint", responses=ERRORS, status_code=200)
    async def edit_endpoint(self, portal: PortalDep, user: UserDep, row: RowDep,
                       data: JSONBody[endpoints.EndpointEdit]) -> ActionResult:
        """New URL and/or credentials, applied at once (no re-approval: the scope is unchanged)."""
        return await perform(portal, user, row, "endpoint", msgspec.to_builtins(data))

    @post("/scope", responses=ERRORS, status_code=200)
    async def change_scope(self, portal: PortalDep, user: UserDep, row: RowDep,
                    data: JSONBody[endpoints.ScopeChange]) -> ActionResult:
        """A narrower scope applies at once; a wider one waits for an administrator."""
        return await perform(portal, user, row, "scope",
                             {k: v for k, v in msgspec.to_builtins(data).items() if v is not None})

    @post("/pause", responses=ERRORS, status_code=200)
    async def pause(self, portal: PortalDep, user: UserDep, row: RowDep) -> ActionResult:
        """Stop delivery until ``/resume``; events are kept (``until``: when the oldest starts to expire)."""
        return await perform(portal, user, row, "pause", {})

    @post("/resume", responses=ERRORS, status_code=200)
    async def resume(self, portal: PortalDep, user: UserDep, row: RowDep) -> ActionResult:
        """Deliver again, starting with the events kept while paused (in order per course)."""
        return await perform(portal, user, row, "resume", {})

    @post("/retry-now", responses=ERRORS, status_code=200)
    async def retry_now(self, portal: PortalDep, user: UserDep, row: RowDep) -> ActionResult:
        return await perform(portal, user, row, "retry-now", {})

    @post("/resend", responses=ERRORS, status_code=200)
    async def resend(self, portal: PortalDep, user: UserDep, row: RowDep,
                     data: JSONBody[ResendRequest]) -> ActionResult:
        """Send statements again by their stream sequences: ``seq``, or ``seqs`` (all of an attempt's)."""
        return await perform(portal, user, row, "resend", {"seq": data.seq, "seqs": data.seqs})

    @post("/redrive", responses=ERRORS, status_code=200)
    async def redrive(self, portal: PortalDep, user: UserDep, row: RowDep,
                      data: JSONBody[RedriveRequest]) -> ActionResult:
        return await perform(portal, user, row, "redrive", {"seqs": data.seqs, "since": data.since})

    @post("/replay", responses=ERRORS, status_code=200)
    async def replay(self, portal: PortalDep, user: UserDep, row: RowDep,
                     data: JSONBody[ReplayRequest]) -> ActionResult:
        """Deliver again everything since a time, with the same statement ids."""
        return await perform(portal, user, row, "replay", {"since": data.since})

    @post("/test-event", responses=ERRORS, status_code=200)
    async def test_event(self, portal: PortalDep, user: UserDep, row: RowDep) -> ActionResult:
        return await perform(portal, user, row, "test-event", {})
