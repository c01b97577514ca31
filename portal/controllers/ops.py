"""Pages and JSON API for running an integration: state at a glance, delivery log, re-enable, endpoint and
scope edits, retry now, resend, redrive, replay and test events. The owner and any administrator may use them;
every operation is audited and answers with an :class:`ActionResult` (a flash message on the pages)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.controller import Controller
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import Redirect, Template

from hub.deliver import ops
from portal import charts, flash
from portal.api_types import ERRORS
from portal.controllers.integrations import state_of
from portal.deliveries import (
    ActionResult,
    AttemptPage,
    EndpointState,
    fmt,
    parse_filter,
    read_attempts,
)
from portal.guards import PortalDep, RowDep, UserDep, api_signed_in, owner_or_admin, signed_in
from portal.services import Portal, PortalError, endpoints
from portal.tables import Account, Integration
from portal.validation import split_list
from portal.web import current_user, form_of, go, once_claimed, page

PUSH = ("webhook", "lrs", "caliper")
OPS = ("reenable", "endpoint", "scope", "retry-now", "resend", "redrive", "replay", "test-event")


class ResendRequest(msgspec.Struct, kw_only=True):
    seq: int


class RedriveRequest(msgspec.Struct, kw_only=True):
    """``seqs`` (dead-letter sequences) or ``since`` (ISO time or age such as ``2h``); neither = all."""

    seqs: list[int] | None = None
    since: str | None = None


class ReplayRequest(msgspec.Struct, kw_only=True):
    since: str


class DeadLetterView(msgspec.Struct, kw_only=True):
    seq: int
    statement_id: str
    reason: str
    last_status: int
    response: str
    failed_at: str


def _since(text: Any, field: str = "since") -> dt.datetime:
    value = str(text or "").strip()
    if not value:
        raise PortalError("Give a time.", 400, {field: "A time such as 2026-05-01T10:00 (UTC) or an age such as 2h."})
    try:
        when = ops.parse_time(value)
    except (ValueError, OverflowError):
        raise PortalError("Not a time.", 400, {field: "A time such as 2026-05-01T10:00 (UTC) or an age such as 2h."}
                          ) from None
    if when > dt.datetime.now(dt.UTC):
        raise PortalError("That time is in the future.", 400, {field: "Choose a time in the past."})
    return when


def _need(row: Integration, push: bool = True) -> None:
    if row.status != "approved":
        raise PortalError(f"Only an approved integration can do this (this one is {row.status}).", 409)
    if push and row.delivery not in PUSH:
        raise PortalError("A direct subscription has no endpoint the hub delivers to.", 409)


async def perform(portal: Portal, user: Account, row: Integration, op: str, p: dict[str, Any]) -> ActionResult:
    """Run one operation on ``row``; refusals are :class:`PortalError` with a message for the person."""
    key = row.key
    if op == "reenable":
        await endpoints.reenable(portal, user, row)
        return ActionResult(integration=key, action=op, message="Endpoint re-enabled: delivery resumes, starting "
                            "with the backlog kept while it was disabled.")
    if op == "endpoint":
        change = endpoints.EndpointEdit(url=p.get("url"), basic_auth=p.get("basic_auth") or None,
                                       bearer=p.get("bearer") or None,
                                       remove_credentials=bool(p.get("remove_credentials")))
        changed = await endpoints.edit(portal, user, row, change)
        return ActionResult(integration=key, action=op, message=f"Endpoint updated ({', '.join(changed)}); "
                            "no re-approval needed, the scope is unchanged.")
    if op == "scope":
        how = await endpoints.change_scope(portal, user, row, p)
        return ActionResult(integration=key, action=op, message="Narrower scope applied at once." if how == "applied"
                            else "Scope change sent: an administrator will review it; the current scope keeps "
                            "working meanwhile.")
    js = await portal.js()
    try:
        if op == "retry-now":
            _need(row)
            await ops.retry_now(js, key)
            message = "Every delivery waiting for its next retry is tried again now; see the log below."
            result = ActionResult(integration=key, action=op, message=message)
        elif op == "resend":
            _need(row)
            seq = int(p.get("seq") or 0)
            if seq <= 0:
                raise PortalError("This attempt has no stored statement to resend (a test event: send a new one).", 409)
            sid = await ops.resend(js, key, seq)
            result = ActionResult(integration=key, action=op, statement_id=sid, count=1,
                                  message=f"Statement {sid} queued to be sent again (same id).")
        elif op == "redrive":
            _need(row)
            seqs = p.get("seqs")
            since = _since(p["since"]) if p.get("since") else None
            n = await ops.redrive(js, key, seqs=[int(s) for s in seqs] if seqs else None, since=since)
            result = ActionResult(integration=key, action=op, count=n, since=since.isoformat() if since else None,
                                  message=f"{n} dead letter(s) sent back for delivery." if n else
                                  "No dead letters matched: nothing was sent.")
        elif op == "replay":
            _need(row, push=False)
            since = _since(p.get("since"))
            info = await ops.request_replay(js, key, since)
            how = ("they are delivered again now, with the same statement ids (your LRS de-duplicates them)"
                   if row.delivery in PUSH else f"bind a pull subscription to durable {info['consumer']} on "
                   f"stream {info['stream']}")
            result = ActionResult(integration=key, action=op, count=info["statements"], since=info["since"],
                                  message=f"Replaying {info['statements']} statement(s) since "
                                  f"{fmt(since.timestamp())}: {how}.")
        elif op == "test-event":
            _need(row)
            sid = await ops.send_test_event(js, key)
            result = ActionResult(integration=key, action=op, statement_id=sid, count=1,
                                  message=f"Test event {sid} queued; its attempt appears in the log below.")
        else:
            raise PortalError(f"No such operation {op[:40]!r}.", 404)
    except LookupError as exc:
        raise PortalError(f"Not possible: {exc}.", 409) from None
    await portal.audit(user.email, f"delivery.{op}", key, result.message[:300])
    return result


def _params(raw: dict[str, Any]) -> dict[str, Any]:
    p = dict(raw)
    if "seqs" in p:
        p["seqs"] = [s for s in split_list(p["seqs"]) if s.isdigit()]
    if p.get("scope_sites_present") and "sites" not in p:
        p["sites"] = []
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
                dead = await ops.list_dead_letters(js, key, limit=200)
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

    @get("/dead-letters", responses=ERRORS)
    async def dead_letters(self, portal: PortalDep, row: RowDep) -> list[DeadLetterView]:
        if row.status not in ("approved", "suspended") or row.delivery not in PUSH:
            return []
        return [DeadLetterView(seq=d.seq, statement_id=d.statement_id, reason=d.reason, last_status=d.last_status,
                               response=d.response, failed_at=d.failed_at)
                for d in await ops.list_dead_letters(await portal.js(), row.key, limit=1000)]

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

    @post("/retry-now", responses=ERRORS, status_code=200)
    async def retry_now(self, portal: PortalDep, user: UserDep, row: RowDep) -> ActionResult:
        return await perform(portal, user, row, "retry-now", {})

    @post("/resend", responses=ERRORS, status_code=200)
    async def resend(self, portal: PortalDep, user: UserDep, row: RowDep,
                     data: JSONBody[ResendRequest]) -> ActionResult:
        """Send one statement again, by its stream sequence (an attempt's ``seqs``)."""
        return await perform(portal, user, row, "resend", {"seq": data.seq})

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
