"""An integration's delivery as its consumer sees it: the state at a glance (pure, from the portal row and the
deliverer's status), the attempt log read from the ``DELIVERY_LOG`` stream, and the JSON shapes of both."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from typing import Any

import msgspec

from hub.core.delivery_kinds import is_push
from hub.core.grants import PAUSED_REASON
from hub.core.settings import from_env
from hub.deliver.settings import DeliverSettings, seconds
from hub.deliver.state import attempt_log
from hub.deliver.state.records import Attempt, unpack


class EndpointState(msgspec.Struct, kw_only=True):
    """``state``: pending, denied, revoked, suspended (by an administrator), disabled (by the deliverer: 410 or
    failing too long; ``reason``, ``since``), failing (``since``, ``next_retry``), behind (delivering but not
    keeping up, ``since``), paused (by its owner, ``since``), delivering, idle (approved,
    nothing sent yet) or direct (the consumer pulls). Times are epoch seconds."""

    state: str
    headline: str
    since: float | None = None
    next_retry: float | None = None
    reason: str | None = None
    delivered: int | None = None
    attempts: int | None = None
    failures: int | None = None
    dead_letters: int | None = None
    lag: int | None = None
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    error_resolved: bool = False
    old_secret_until: float | None = None
    secrets: int = 0
    last_ack: float | None = None  # direct subscriptions: when the subscriber last acknowledged


def health_text(s: EndpointState) -> str:
    """The integrations list's health column: one line per state (last success, failing since, backlog,
    disabled; a direct subscription's pending count and last ack)."""
    backlog = f" · backlog {s.lag}" if s.lag else ""
    if s.state == "direct":
        return f"{s.lag or 0} pending · last ack {fmt(s.last_ack) if s.last_ack else 'never'}"
    if s.state in ("failing", "behind", "disabled", "paused"):
        return f"{s.state} since {fmt(s.since)}{backlog}"
    if s.state == "delivering":
        return f"last success {fmt(s.last_success)}{backlog}"
    if s.state == "idle":
        return f"nothing delivered yet{backlog}"
    return s.state


def fmt(t: float | None) -> str:
    return "—" if t is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _schedule() -> list[float]:
    try:
        return [seconds(x) for x in from_env(DeliverSettings).retry_schedule]
    except Exception:  # noqa: BLE001 - a bad environment must not break the page
        return [seconds(x) for x in DeliverSettings().retry_schedule]


def next_retry(recent: list[dict[str, Any]], schedule: list[float]) -> float | None:
    """When the newest retried attempt is tried again (the deliverer's schedule, jitter aside)."""
    for a in recent:  # newest first
        if a.get("outcome") == "delivered":
            return None
        if a.get("outcome") == "retry":
            n = int(a.get("attempt") or 1)
            return float(a["t"]) + (schedule[min(n, len(schedule)) - 1] if schedule else 0.0)
    return None


def endpoint_state(status: str, delivery: str, decision_reason: str, updated: dt.datetime | None,
                   stats: dict[str, Any], schedule: list[float] | None = None) -> EndpointState:
    """The one line a consumer needs, from the portal status and ``hub.deliver.state.integration_status.integration_status``."""
    counts = {k: stats.get(k) for k in ("delivered", "attempts", "failures", "dead_letters", "lag",
                                        "last_success", "last_error", "last_error_at", "last_ack")}
    resolved = bool(counts["last_error_at"] and counts["last_success"]
                    and counts["last_success"] > counts["last_error_at"])
    base = {**counts, "error_resolved": resolved}
    when = updated.timestamp() if updated else None
    if status == "pending":
        return EndpointState(state="pending", headline="Waiting for an administrator's decision.", **base)
    if status == "denied":
        return EndpointState(state="denied", headline="Denied by an administrator.", since=when,
                             reason=decision_reason or None, **base)
    if status == "revoked":
        return EndpointState(state="revoked", headline="Revoked: nothing is delivered any more.", since=when,
                             reason=decision_reason or None, **base)
    if status == "suspended":
        return EndpointState(state="suspended", headline="Suspended by an administrator.", since=when,
                             reason=decision_reason or None, **base)
    if not is_push(delivery):
        return EndpointState(state="direct", headline="Approved: your client pulls the events with its .creds.",
                             **base)
    recent = stats.get("recent") or []
    if stats.get("enabled") is False and stats.get("disabled_reason") == PAUSED_REASON:
        return EndpointState(state="paused", headline="Paused by you: nothing is sent until you resume; events "
                             "are kept.", since=stats.get("disabled_at"), **base)
    if stats.get("enabled") is False:
        at = stats.get("disabled_at") or next((a["t"] for a in recent if a.get("outcome") == "disabled"), None)
        return EndpointState(state="disabled", headline="Disabled by the deliverer: nothing is sent until you "
                             "re-enable it (the backlog is kept).", since=at,
                             reason=stats.get("disabled_reason") or None, **base)
    if stats.get("failing_since"):
        return EndpointState(state="failing", headline="Failing: deliveries are retried.",
                             since=stats["failing_since"], next_retry=next_retry(recent, schedule or _schedule()),
                             **base)
    if stats.get("behind_since"):  # the endpoint answers, but the lag has not come down
        return EndpointState(state="behind", headline="Delivering, but the endpoint cannot keep up: the backlog "
                             "grows. A batched webhook (one POST per batch) or a faster receiver helps.",
                             since=stats["behind_since"], **base)
    if counts["last_success"]:
        return EndpointState(state="delivering", headline="Delivering.", since=counts["last_success"], **base)
    return EndpointState(state="idle", headline="Approved: nothing delivered yet (no matching events so far).",
                         **base)


# ---- the attempt log --------------------------------------------------------------------------------------
OUTCOMES = ("delivered", "retry", "dead", "split", "disabled")


class AttemptView(Attempt, kw_only=True, omit_defaults=False):
    """One delivery attempt as the log shows it: ``id`` (``<seq>.<n>``, the ``n``-th record of log message
    ``seq``) names it in ``/attempts/{id}``; ``seq`` is the paging cursor."""

    seq: int
    id: str = ""


def attempt_views(seq: int, data: bytes) -> list[AttemptView]:
    """The attempts of one log message (an array, or one object written by an earlier deliverer)."""
    out = []
    for n, a in enumerate(unpack(data)):
        try:
            out.append(msgspec.convert({k: a[k] for k in Attempt.__struct_fields__ if k in a} | {
                "seq": seq, "id": f"{seq}.{n}"}, AttemptView))
        except msgspec.ValidationError:
            continue
    return out


def parse_attempt_id(text: str) -> tuple[int, int] | None:
    seq, _, n = str(text).partition(".")
    if not (seq.isdigit() and (n or "0").isdigit()) or len(seq) > 18 or len(n) > 6:
        return None
    return int(seq), int(n or 0)


async def read_attempt(js, grant_id: str, attempt_id: str) -> AttemptView | None:
    """One attempt by its id, read from ``attempts.<grant id>`` only (another integration's record is never
    found, whatever sequence is asked for)."""
    where = parse_attempt_id(attempt_id)
    if where is None or where[0] <= 0:
        return None
    seq, n = where
    msg = await attempt_log.message_at(js, grant_id, seq)
    if msg is None:
        return None
    try:
        views = attempt_views(seq, msg.data)
    except (msgspec.DecodeError, RecursionError):
        return None
    return views[n] if n < len(views) else None


class AttemptDetail(msgspec.Struct, kw_only=True):
    """One attempt with what was sent: ``attempt`` (time, duration ``latency_ms``, status, request headers with the
    signature redacted, response headers, first KB of the response body, ``trace``), and ``payload``: the stored
    statements of that request (the first 5; ``null`` for one no longer kept), before the payload filter."""

    attempt: AttemptView
    payload: list[str | None]  # each stored statement's JSON text, as the hub stored it
    statements: int
    payload_filter: list[str] = []


class AttemptPage(msgspec.Struct, kw_only=True):
    """Newest first; ``next_before`` is the cursor of the next (older) page, None at the end."""

    items: list[AttemptView]
    next_before: str | None = None  # an attempt id (``<seq>.<n>``): the next page holds the older ones
    scanned: int = 0


class LogFilter(msgspec.Struct, kw_only=True):
    outcome: str | None = None
    status: int | None = None
    since: float | None = None
    until: float | None = None
    before: tuple[int, int] | None = None  # (log seq, record) of the attempt the page ends before
    limit: int = 50

    def keeps(self, a: AttemptView) -> bool:
        return ((self.outcome is None or a.outcome == self.outcome)
                and (self.status is None or a.status == self.status)
                and (self.since is None or a.t >= self.since) and (self.until is None or a.t < self.until)
                and (self.before is None or position(a) < self.before))


def position(a: AttemptView) -> tuple[int, int]:
    """Where an attempt is in the log: (message seq, record in it)."""
    return a.seq, int(a.id.rpartition(".")[2] or 0) if "." in a.id else 0


def parse_filter(outcome: str | None, status: str | None, since: str | None, until: str | None,
                 before: str | None, limit: str | int | None = None) -> tuple[LogFilter, dict[str, str]]:
    """Query parameters -> filter, or field errors (times: ISO 8601 or an age such as ``2h``)."""
    from hub.deliver.actions import parse_time

    errors: dict[str, str] = {}
    f = LogFilter()
    if outcome:
        if outcome in OUTCOMES:
            f.outcome = outcome
        else:
            errors["outcome"] = f"One of {', '.join(OUTCOMES)}."
    if status:
        if status.isdigit() and 100 <= int(status) <= 599:
            f.status = int(status)
        else:
            errors["status"] = "An HTTP status code such as 500."
    for name, value in (("since", since), ("until", until)):
        if value:
            try:
                setattr(f, name, parse_time(value.strip()).timestamp())
            except (ValueError, OverflowError):
                errors[name] = "A time such as 2026-05-01T10:00 (UTC) or an age such as 2h or 3d."
    if before:
        f.before = parse_attempt_id(before)
    if limit:
        f.limit = max(1, min(200, int(limit))) if str(limit).isdigit() else 50
    return f, errors


async def read_attempts(js, grant_id: str, f: LogFilter, max_scan: int = 50_000) -> AttemptPage:
    """The newest matching attempts before the cursor, read from ``attempts.<grant id>``.

    JetStream reads forwards only, so the log is read in time windows going back from the newest end (1 h,
    then 4x wider each round) until a page is full, the ``since`` bound is reached or ``max_scan`` records
    were read; each window is one short-lived ordered read filtered on this integration's subject.
    """
    first = await attempt_log.first_record_time(js, grant_id)
    if first is None:
        return AttemptPage(items=[])
    hi = min(f.until or time.time() + 60, time.time() + 60)
    floor = max(f.since or 0.0, first - 1)
    window, found, scanned = 3600.0, [], 0
    while hi > floor and scanned < max_scan:
        lo = max(floor, hi - window)
        chunk: list[AttemptView] = []
        async with contextlib.aclosing(attempt_log.scan(js, grant_id, lo, max_scan - scanned)) as records:
            async for msg in records:
                scanned += 1
                if msg.metadata.timestamp.timestamp() >= hi:
                    break
                try:
                    views = attempt_views(msg.metadata.sequence.stream, msg.data)
                except (msgspec.DecodeError, RecursionError):
                    continue
                chunk.extend(v for v in views if f.keeps(v))
        found = chunk + found
        if len(found) >= f.limit:
            break
        hi, window = lo, window * 4
    found.sort(key=position, reverse=True)
    page = found[:f.limit]
    more = len(found) > f.limit or (hi > floor and len(page) == f.limit)
    return AttemptPage(items=page, next_before=page[-1].id if page and more else None, scanned=scanned)


class ActionResult(msgspec.Struct, kw_only=True):
    """What a delivery operation did, in words for the page and fields for programs."""

    integration: str
    action: str
    message: str
    count: int | None = None
    statement_id: str | None = None
    since: str | None = None
    until: str | None = None  # pause: when the oldest kept event starts to expire (the stream's retention)
