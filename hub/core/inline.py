"""An inline subscription: its messages go straight to a plain function, inside nats-py's read loop.

nats-py hands each message of a callback subscription through an ``asyncio.Queue`` to a task that awaits the
callback: a queue put, a task wake-up and a coroutine per message. The hub's two hot subscriptions (its pull
inbox and its publish-ack inbox) need none of that: their handlers only file the message and never wait.
Here the subscription is made without a callback (nats-py then starts no task) and its pending queue is
replaced by :class:`_Inline`, which calls the handler at once. Relies on nats-py's ``Subscription`` internals
(``_pending_queue``, ``_pending_size``), pinned by the tests of the pull stream and the publisher.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("rthub.core")


class _Inline:
    """Stands in for a subscription's pending queue: ``put_nowait`` is the handler's call."""

    __slots__ = ("sub", "handler")

    def __init__(self, sub, handler: Callable[[object], None]):
        self.sub, self.handler = sub, handler

    def put_nowait(self, msg) -> None:
        self.sub._pending_size = 0  # nothing is ever pending: no slow-consumer verdict from a growing count
        try:
            self.handler(msg)
        except Exception:  # noqa: BLE001 - a handler's bug must not break the connection's read loop
            log.exception("handler of %s failed", self.sub.subject)

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def task_done(self) -> None:
        pass

    async def join(self) -> None:  # Subscription.drain() waits for the queue to empty: it always is
        pass


async def subscribe_inline(nc, subject: str, handler: Callable[[object], None]):
    """Subscribe ``handler`` (a plain function that must not block) to ``subject``; returns the subscription."""
    sub = await nc.subscribe(subject)
    if isinstance(getattr(sub, "_pending_queue", None), asyncio.Queue) and hasattr(sub, "_pending_size"):
        sub._pending_queue = _Inline(sub, handler)
        return sub
    # a nats-py whose internals differ: the plain callback subscription (slower, same order)
    log.warning("nats-py internals changed: %s uses a plain callback subscription", subject)
    await sub.unsubscribe()

    async def callback(msg) -> None:
        handler(msg)

    return await nc.subscribe(subject, cb=callback)
