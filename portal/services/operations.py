"""Running an integration's delivery: retry now, resend one statement, send dead letters back, replay since a
time, a test event, plus the endpoint edits of :mod:`.endpoints`. The owner and any administrator may; every
operation is audited and answers with an :class:`ActionResult`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js.errors import NotFoundError

from hub.core.delivery_kinds import PUSH
from hub.core.grants import replay_name
from hub.core.subjects import PROTOCOL_STREAMS
from hub.deliver import actions
from portal import ratelimit
from portal.deliveries import ActionResult, fmt
from portal.services import Portal, PortalError, endpoints
from portal.tables import Account, Integration

RESEND_MAX = 500  # statements one resend sends again: the largest batch (validation.BATCH_MAX)


def _since(text: Any, field: str = "since") -> dt.datetime:
    value = str(text or "").strip()
    if not value:
        raise PortalError("Give a time.", 400, {field: "A time such as 2026-05-01T10:00 (UTC) or an age such as 2h."})
    try:
        when = actions.parse_time(value)
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


# ---- one handler per operation: validation -> service -> hub, in a straight line -------------------------
async def _reenable(portal: Portal, user: Account, row: Integration, p: dict[str, Any]) -> ActionResult:
    await endpoints.reenable(portal, user, row)
    return ActionResult(integration=row.key, action="reenable", message="Endpoint re-enabled: delivery resumes, "
                        "starting with the backlog kept while it was disabled.")


async def _endpoint(portal: Portal, user: Account, row: Integration, p: dict[str, Any]) -> ActionResult:
    change = endpoints.EndpointEdit(url=p.get("url"), basic_auth=p.get("basic_auth") or None,
                                   bearer=p.get("bearer") or None,
                                   remove_credentials=bool(p.get("remove_credentials")),
                                   batch_size=p.get("batch_size") or None,
                                   batch_wait_ms=p.get("batch_wait_ms") or None,
                                   rate_limit=p.get("rate_limit"), custom_headers=p.get("custom_headers"),
                                   payload_filter=p.get("payload_filter"))
    changed = await endpoints.edit(portal, user, row, change)
    return ActionResult(integration=row.key, action="endpoint", message=f"Endpoint updated ({', '.join(changed)}); "
                        "no re-approval needed, the scope is unchanged.")


async def _pause(portal: Portal, user: Account, row: Integration, p: dict[str, Any]) -> ActionResult:
    await endpoints.pause(portal, user, row)
    until = await endpoints.kept_until(portal, row)
    kept = f" (the oldest starts to expire at {fmt(until.timestamp())})" if until else ""
    return ActionResult(integration=row.key, action="pause", message="Paused: nothing is sent until you resume; "
                        f"events are kept meanwhile{kept}.", until=until.isoformat() if until else None)


async def _resume(portal: Portal, user: Account, row: Integration, p: dict[str, Any]) -> ActionResult:
    await endpoints.resume(portal, user, row)
    return ActionResult(integration=row.key, action="resume", message="Resumed: every event kept while paused is "
                        "delivered now, in order per course.")


async def _scope(portal: Portal, user: Account, row: Integration, p: dict[str, Any]) -> ActionResult:
    how = await endpoints.change_scope(portal, user, row, p)
    if how == "applied" and row.scope_change:
        return ActionResult(integration=row.key, action="scope", message="Narrower scope applied at once. Your "
                            "request for a wider scope is still pending with an administrator.")
    return ActionResult(integration=row.key, action="scope", message="Narrower scope applied at once."
                        if how == "applied" else "Scope change sent: an administrator will review it; the current "
                        "scope keeps working meanwhile.")


async def _retry_now(portal: Portal, user: Account, row: Integration, p: dict[str, Any]) -> ActionResult:
    _need(row)
    await actions.retry_now(await portal.js(), row.key)
    return ActionResult(integration=row.key, action="retry-now", message="Every delivery waiting for its next "
                        "retry is tried again now; see the log below.")


async def _resend(portal: Portal, user: Account, row: Integration, p: dict[str, Any]) -> ActionResult:
    _need(row)
    # one statement (``seq``) or every statement of one POST (``seqs``, an attempt's), in their order
    raw = p.get("seqs") if p.get("seqs") else [p.get("seq") or 0]
    seqs = [int(s) for s in raw if str(s).isdigit() and int(s) > 0][:RESEND_MAX]
    if not seqs:
        raise PortalError("This attempt has no stored statement to resend (a test event: send a new one).", 409)
    js = await portal.js()
    sids = [await actions.resend(js, row.key, s) for s in seqs]
    return ActionResult(integration=row.key, action="resend", statement_id=sids[0], count=len(sids),
                        message=f"Statement {sids[0]} queued to be sent again (same id)." if len(sids) == 1
                        else f"{len(sids)} statements of that request queued to be sent again (same ids, same "
                        "order).")


async def _redrive(portal: Portal, user: Account, row: Integration, p: dict[str, Any]) -> ActionResult:
    _need(row)
    seqs = p.get("seqs")
    since = _since(p["since"]) if p.get("since") else None
    n = await actions.redrive(await portal.js(), row.key, seqs=[int(s) for s in seqs] if seqs else None,
                              since=since)
    return ActionResult(integration=row.key, action="redrive", count=n, since=since.isoformat() if since else None,
                        message=f"{n} dead letter(s) sent back for delivery." if n else
                        "No dead letters matched: nothing was sent.")


async def _replay(portal: Portal, user: Account, row: Integration, p: dict[str, Any]) -> ActionResult:
    _need(row, push=False)
    since = _since(p.get("since"))
    js = await portal.js()
    # A replay re-reads the stream from a point in time: one at a time per integration, and a few an hour,
    # so nobody can keep the server re-reading its history (each start replaced the running one, unbounded).
    try:
        running = await js.consumer_info(PROTOCOL_STREAMS[row.protocol], replay_name(row.key))
        left = running.num_pending + running.num_ack_pending
    except NotFoundError:
        left = 0
    if left:
        await portal.audit(user.email, "delivery.replay.refused", row.key, f"a replay is running ({left} left)")
        raise PortalError(f"A replay of this integration is still running ({left} statement(s) left): one replay "
                          "at a time per integration. Start the next when it has finished.", 409)
    limit = portal.settings.replays_per_hour
    if not await ratelimit.allow(ratelimit.key("replay", row.key), limit, 3600):
        await portal.audit(user.email, "delivery.replay.refused", row.key, f"more than {limit} replays in an hour")
        raise PortalError(f"At most {limit} replays an hour per integration (RTHUB_REPLAYS_PER_HOUR); try again "
                          "later.", 429)
    info = await actions.request_replay(js, row.key, since)
    how = ("they are delivered again now, with the same statement ids (your LRS de-duplicates them)"
           if row.delivery in PUSH else f"bind a pull subscription to durable {info['consumer']} on "
           f"stream {info['stream']}")
    return ActionResult(integration=row.key, action="replay", count=info["statements"], since=info["since"],
                        message=f"Replaying {info['statements']} statement(s) since {fmt(since.timestamp())}: {how}.")


async def _test_event(portal: Portal, user: Account, row: Integration, p: dict[str, Any]) -> ActionResult:
    _need(row)
    sid = await actions.send_test_event(await portal.js(), row.key)
    return ActionResult(integration=row.key, action="test-event", statement_id=sid, count=1,
                        message=f"Test event {sid} queued; its attempt appears in the log below.")


Handler = Callable[[Portal, Account, Integration, dict[str, Any]], Awaitable[ActionResult]]
# name -> (handler, audited here): the endpoint operations audit inside :mod:`.endpoints`. A new operation is
# one handler and one row.
OPERATIONS: dict[str, tuple[Handler, bool]] = {
    "reenable": (_reenable, False), "endpoint": (_endpoint, False), "pause": (_pause, False),
    "resume": (_resume, False), "scope": (_scope, False),
    "retry-now": (_retry_now, True), "resend": (_resend, True), "redrive": (_redrive, True),
    "replay": (_replay, True), "test-event": (_test_event, True),
}


async def perform(portal: Portal, user: Account, row: Integration, op: str, p: dict[str, Any]) -> ActionResult:
    """Run one operation on ``row``; refusals are :class:`PortalError` with a message for the person."""
    if op not in OPERATIONS:
        raise PortalError(f"No such operation {op[:40]!r}.", 404)
    handler, audited = OPERATIONS[op]
    try:
        result = await handler(portal, user, row, p)
    except LookupError as exc:  # the hub no longer has what was asked for
        raise PortalError(f"Not possible: {exc}.", 409) from None
    if audited:
        await portal.audit(user.email, f"delivery.{op}", row.key, result.message[:300])
    return result
