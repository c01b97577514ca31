"""What an integration's delivery needs from the deliverer process, handed over as one small object.

Runners used to reach into the ``Deliverer`` (``self.svc._spawn``, ``self.svc.state``...); this names the
whole surface between the two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from hub.core.groups import IdentityIndex
from hub.core.metrics import Metrics
from hub.core.publish import AckedPublisher
from hub.deliver.engine.watch import Watch
from hub.deliver.settings import DeliverSettings
from hub.deliver.state.lease import LeaseBook
from hub.deliver.state.records import Attempt


@dataclass(frozen=True)
class Context:
    nc: NATS
    js: JetStreamContext
    state: KeyValue  # the ``rthub_delivery`` bucket
    settings: DeliverSettings
    metrics: Metrics
    process_id: str
    schedule: list[float]  # the deliverer's retry schedule, in seconds
    max_retry_after: float
    disable_after: float
    allowed: list  # networks targets may reach although not public
    spawn: Callable[[Coroutine[Any, Any, Any]], None]  # a background task the deliverer awaits at its stop
    restart: Callable[[str, object], None]  # restart(grant_id, runner): that runner stopped working
    disable: Callable[[str, str], Awaitable[None]]  # disable(grant_id, reason) in the targets bucket
    log_attempt: Callable[[str, Attempt], None]
    peers: Callable[[], list[str]]  # deliverer processes alive now (this one included), for course partitions
    publisher: AckedPublisher  # acked publishes with precise errors (dead letters)
    leases: LeaseBook  # ordered integrations' leases, followed in memory
    watch: Watch  # wakes dozing pull loops when a matching message is published
    starts: asyncio.Semaphore  # runner start-ups at once (consumer creation is a server round trip each)
    identities: IdentityIndex | None = None  # learners the store knows, for grants approved for identity
    broke: Callable[[], None] = lambda: None  # a runner's core task ended: the deliverer converges at once
    # This process's counters per integration, kept across its runners' restarts (a NATS outage restarts them,
    # and a runner's last save can fail then): a new runner continues from here, not from an older save.
    stats: dict = field(default_factory=dict)
