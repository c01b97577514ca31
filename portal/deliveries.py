"""An integration's delivery as its consumer sees it: the state at a glance (pure, from the portal row and the
deliverer's status), the attempt log read from the ``DELIVERY_LOG`` stream, and the JSON shapes of both."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import msgspec

from hub.deliver.settings import DeliverSettings, seconds
from hub.settings import from_env


class EndpointState(msgspec.Struct, kw_only=True):
    """``state``: pending, denied, revoked, suspended (by an administrator), disabled (by the deliverer: 410 or
    failing too long; ``reason``, ``since``), failing (``since``, ``next_retry``), delivering, idle (approved,
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
    """The one line a consumer needs, from the portal status and ``hub.deliver.status.integration_status``."""
    counts = {k: stats.get(k) for k in ("delivered", "attempts", "failures", "dead_letters", "lag",
                                        "last_success", "last_error", "last_error_at")}
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
    if delivery == "direct":
        return EndpointState(state="direct", headline="Approved: your client pulls the events with its .creds.",
                             **base)
    recent = stats.get("recent") or []
    if stats.get("enabled") is False:
        at = next((a["t"] for a in recent if a.get("outcome") == "disabled"), None)
        return EndpointState(state="disabled", headline="Disabled by the deliverer: nothing is sent until you "
                             "re-enable it (the backlog is kept).", since=at,
                             reason=stats.get("disabled_reason") or None, **base)
    if stats.get("failing_since"):
        return EndpointState(state="failing", headline="Failing: deliveries are retried.",
                             since=stats["failing_since"], next_retry=next_retry(recent, schedule or _schedule()),
                             **base)
    if counts["last_success"]:
        return EndpointState(state="delivering", headline="Delivering.", since=counts["last_success"], **base)
    return EndpointState(state="idle", headline="Approved: nothing delivered yet (no matching events so far).",
                         **base)
