"""What an HTTP answer means for a delivery, and when to try again."""

from __future__ import annotations

import email.utils
import random
import time
from typing import Literal

from hub.core.delivery_kinds import KINDS

Outcome = Literal["delivered", "retry", "disable", "reject"]


def classify(kind: str, status: int | None, batch_len: int = 1) -> Outcome:
    """2xx delivered; 410 disables; everything else retries, except for an LRS: 409 ("already have this
    id") on one statement is delivered, and a 400 or 409 on a batch is a reject the caller splits (an LRS
    refuses a whole batch for one bad or conflicting statement); a 400 on one statement is permanent."""
    if status is None:
        return "retry"
    if 200 <= status < 300:
        return "delivered"
    props = KINDS[kind]
    if status == 409 and (props.conflict_is_stored or props.rejects_whole_batch):
        return "delivered" if batch_len == 1 and props.conflict_is_stored else "reject"
    if status == 410:
        return "disable"
    if status == 400 and props.rejects_whole_batch:
        return "reject"
    return "retry"


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def next_delay(schedule: list[float], attempt: int, jitter: float, status: int | None,
               retry_after_s: float | None, max_retry_after: float, rnd: random.Random | None = None) -> float | None:
    """Delay before attempt ``attempt + 1`` after ``attempt`` failures (1-based); None = schedule exhausted.

    429 and 503 with a ``Retry-After`` wait what the server asked (capped); otherwise the schedule, with
    +-``jitter`` spread so many failing lanes do not retry in lockstep.
    """
    if attempt > len(schedule):
        return None
    if status in (429, 503) and retry_after_s is not None:
        return min(retry_after_s, max_retry_after)
    base = schedule[attempt - 1]
    spread = (rnd or random).uniform(-jitter, jitter) if jitter else 0.0
    return max(0.0, base * (1 + spread))
