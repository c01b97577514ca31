"""The messages one runner holds: settled once (ack or nak), kept alive while they wait, handed back in order.

JetStream redelivers handed-back messages in the order of the naks, so a stopping runner naks in stream
order (issue 10 bug 8). Acks are gathered for a moment and sent together (:class:`Acker`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from hub.deliver.engine.items import Item, stream_order

log = logging.getLogger("rthub.deliver")


class Acker:
    """Acks gathered for ``delay`` seconds and sent together: nats-py writes to its socket once per wake of its
    flusher, and an ack awaited per message woke it for nearly every one (~15% of the deliverer's CPU). 10 ms
    is nothing against the ack wait (10 s) and bounds the writes to 100 a second."""

    def __init__(self, nc: NATS, delay: float = 0.01, before: Callable[[], Awaitable[None]] | None = None):
        self.nc, self.delay, self.before = nc, delay, before  # before: awaited before each batch (save counts)
        self.replies: list[str] = []
        self.timer: asyncio.TimerHandle | None = None
        self.sending: set[asyncio.Task] = set()

    def ack(self, msg: Msg) -> None:
        self.replies.append(msg.reply)
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.delay, self._due)

    def _due(self) -> None:
        self.timer = None
        task = asyncio.ensure_future(self._send())
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def _send(self) -> None:
        replies, self.replies = self.replies, []
        if replies and self.before is not None:
            await self.before()
        for reply in replies:
            try:
                await self.nc.publish(reply)
            except nats.errors.Error as exc:  # JetStream will redeliver; receivers dedupe by id
                log.warning("could not ack %s: %s", reply, exc)

    async def flush(self) -> None:
        """Send what is gathered now (before naks and a lease hand-over)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        await asyncio.gather(*self.sending, return_exceptions=True)
        await self._send()


class Held:
    """Held messages of one runner; ``room`` is set while it may hold more (``max_in_flight``)."""

    def __init__(self, nc: NATS, on_acked: Callable[[Item], None],
                 before_acks: Callable[[], Awaitable[None]] | None = None):
        self.items: set[Item] = set()
        self.room = asyncio.Event()
        self.room.set()
        self.stopping = asyncio.Event()  # set: pulls stop and keep what still arrives, to hand it back in order
        self.busy = asyncio.Event()  # set while it holds something: an idle runner's keep-alive sleeps on it
        self.acker = Acker(nc, before=before_acks)
        self.on_acked = on_acked  # e.g. forget the item's saved retry schedule

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: Item) -> None:
        self.items.add(item)
        self.busy.set()

    def has(self, source: str) -> bool:
        return any(i.source == source for i in self.items)

    async def settle(self, item: Item, how: str) -> None:
        if item.settled:
            return
        item.settled = True
        self.items.discard(item)
        if not self.items:
            self.busy.clear()
        self.room.set()
        if how == "ack":
            self.acker.ack(item.msg)
            self.on_acked(item)
        else:
            try:
                await item.msg.nak()
            except Exception as exc:  # noqa: BLE001 - JetStream will redeliver; receivers dedupe by id
                log.warning("could not nak %s: %s", item.id, exc)

    async def hand_back(self, which: Callable[[Item], bool] | None = None) -> None:
        """Send pending acks, then nak everything still held (or ``which`` of it) in stream-sequence order."""
        await self.acker.flush()
        for item in sorted((i for i in self.items if which is None or which(i)), key=stream_order):
            await self.settle(item, "nak")
        await self.acker.flush()

    async def keep_alive(self, period: float) -> None:
        """Tell JetStream the held messages are still being worked on (they may wait hours for a retry).

        Every held message, also one that arrived just now: a dead holder's messages must all come due for
        redelivery together, in stream order, before a take-over. Skipping the young ones (to save acks) let a
        later statement of a course come due before an earlier one (an out-of-order pair in the SIGKILL drill).
        """
        while True:
            await self.busy.wait()  # no timer per idle runner (a thousand integrations woke it 300 times a second)
            await asyncio.sleep(period)
            for item in list(self.items):
                if not item.settled:
                    try:
                        await item.msg.in_progress()
                    except Exception:  # noqa: BLE001 - reconnecting; JetStream redelivers if it must
                        pass
