"""One continuous pull stream over a durable JetStream consumer.

Pull requests are kept outstanding, so each message is handed out as soon as it is stored (nats-py's
``fetch(n)`` waits for a full batch or its timeout once traffic trickles, adding that timeout to every
message's latency). The stream asks for ``batch`` messages and asks again when fewer than ``threshold`` are
still owed (and the caller's ``room`` allows). Requests carry an idle heartbeat: the server says every
``heartbeat`` seconds that a waiting request is alive, so a request lost to a reconnect is noticed within two
beats instead of at its expiry. Every status is handled by name (:class:`hub.core.api.Status`); a request
that ends tells how many messages it still owed (``Nats-Pending-Messages``), so the count of messages that
can still arrive stays exact; :meth:`PullStream.drain` stops without leaving a message in flight.

Usage::

    pull = await PullStream(nc, "LMS_RAW", "hub", batch=1000, threshold=500).start()
    async for msgs in pull:          # lists of messages, as they arrive
        ...                          # ack/nak each
    # elsewhere: pull.stop(); then held = await pull.drain()   -> messages delivered but never handed out

The iteration ends after :meth:`stop`, when the connection closes, or (``until_empty``) when the consumer
has nothing pending or unacknowledged (a replay); it raises :class:`ConsumerGone` if the consumer is deleted.

What the deliverer's hand-written loop (``Runner._pull``) maps to: ``room=lambda: 0 if not leader else
max_in_flight - len(held)`` and ``wake()`` when leadership or room returns; ``until_empty=True`` for a replay
(then delete the replay consumer); ``except ConsumerGone`` where it returned on "consumer deleted"; at stop,
``await pull.drain(timeout=...)`` and nak what it returns with the lanes' held messages, in stream order.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable

import msgspec
import nats.errors
from nats.js.errors import NotFoundError

from hub.core.api import CONSUMER_DELETED, Header, Status, pull_subject, status_of
from hub.core.errors import ConsumerGone
from hub.core.inline import subscribe_inline

log = logging.getLogger("rthub.core.pull")
_WAKE = object()  # queued by stop() and wake(): re-check the state without a message
_BACKOFF = 0.05  # after "no messages", "conflict" or "no responders": do not spin on requests


def _wake_up(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class PullStream:
    def __init__(self, nc, stream: str, durable: str, *, batch: int = 500, threshold: int | None = None,
                 expires: float = 5.0, heartbeat: float | None = None, max_batch: int | None = None,
                 room: Callable[[], int] | None = None, until_empty: bool = False, api_prefix: str = "$JS.API"):
        """``batch``: messages per request; ``threshold``: ask again when at most this many are owed (default
        ``batch // 2``); ``max_batch``: messages per iteration step (default ``batch``); ``room()``: how many
        more messages the caller can hold now (asked for at most that many in total, ``wake()`` when it grows);
        ``until_empty``: end once the consumer has nothing pending or unacknowledged; ``api_prefix``: the
        JetStream API as the connection's account sees it (the event bus's account: ``BUS_API_PREFIX``)."""
        self.nc, self.stream, self.durable = nc, stream, durable
        self.batch = batch
        self.threshold = batch // 2 if threshold is None else threshold
        self.expires = expires
        self.heartbeat = min(1.0, expires / 2) if heartbeat is None else heartbeat
        if self.heartbeat * 2 > expires:
            raise ValueError("heartbeat must be at most half of expires (the server refuses it otherwise)")
        self.max_batch = max_batch or batch
        self.room = room
        self.until_empty = until_empty
        self.outstanding = 0  # messages the open requests may still deliver
        self.exact = True  # ``outstanding`` is exact: no request was written off by a guess since
        self.asked_at = 0.0
        self.last_seen = 0.0  # the server last spoke on our inbox (message, status or heartbeat)
        self.last_tick = time.monotonic()  # the iteration last woke: the consumer loop is alive
        self.stopping = False
        self.error: Exception | None = None
        self._queue: collections.deque = collections.deque()  # messages and _WAKE marks, in arrival order
        self._waiter: asyncio.Future | None = None  # the iteration waits on it for the queue to fill
        self._front: list = []
        self._changed = asyncio.Event()
        self._backoff_until = 0.0
        self._verify = False
        self._sub = None
        self._api = pull_subject(stream, durable, api_prefix)
        self._api_prefix = api_prefix
        self._request_tail = b""

    async def start(self) -> PullStream:
        self._sub = await subscribe_inline(self.nc, self.nc.new_inbox(), self._on_msg)
        self._request_tail = msgspec.json.encode(
            {"expires": int(self.expires * 1e9), "idle_heartbeat": int(self.heartbeat * 1e9)})
        return self

    # ---- receiving ----------------------------------------------------------------------------------------
    def _on_msg(self, msg) -> None:
        self.last_seen = time.monotonic()
        self._changed.set()
        status = status_of(msg)
        if status is None:
            self.outstanding = max(0, self.outstanding - 1)
            self._put(msg)
            return
        if status == Status.CONTROL:  # idle heartbeat: the request is alive
            return
        description = msg.headers.get(Header.DESCRIPTION, "")
        self._request_ended(msg.headers.get(Header.PENDING_MESSAGES))
        self._put(_WAKE)  # ask again now: no gap without an open request
        if status == Status.REQUEST_TIMEOUT:
            return
        if status == Status.CONFLICT and description.lower() == CONSUMER_DELETED.lower():
            self.error = ConsumerGone(f"consumer {self.stream}/{self.durable} deleted", 409)
        elif status == Status.NO_RESPONDERS:
            self._verify = True  # nobody serves the consumer: the iteration checks whether it still exists
        elif status == Status.NO_MESSAGES and self.until_empty:
            pass  # the iteration checks whether the replay is done
        elif status not in (Status.NO_MESSAGES, Status.CONFLICT, Status.NO_RESPONDERS):
            log.warning("pull %s/%s: status %s %s", self.stream, self.durable, status, description)
        self._backoff_until = time.monotonic() + _BACKOFF

    def _request_ended(self, pending: str | None) -> None:
        """A request ended; it still owed ``pending`` messages (header), else an unknown number."""
        try:
            self.outstanding = max(0, self.outstanding - int(pending))
        except (TypeError, ValueError):
            self.outstanding, self.exact = 0, False

    def _put(self, item) -> None:
        self._queue.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, timeout: float) -> None:
        """Until something is queued or ``timeout``: one future and one timer, woken straight from the read loop
        (``wait_for(queue.get())`` costs a task and two more loop turns per wake-up, in every event's latency)."""
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, _wake_up, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    # ---- asking -------------------------------------------------------------------------------------------
    async def _refill(self) -> None:
        now = time.monotonic()
        if self.outstanding and now - max(self.last_seen, self.asked_at) > 2 * self.heartbeat + 0.5:
            # no heartbeat: the requests are gone (a reconnect, a server restart); ask anew
            self.outstanding, self.exact = 0, False
        if self.outstanding > self.threshold:
            return
        limit = self.batch if self.room is None else min(self.batch, self.room())
        want = limit - self.outstanding
        if want <= 0:
            return
        if now < self._backoff_until:
            await asyncio.sleep(self._backoff_until - now)
        if now - self.asked_at > self.expires + 0.5:
            self.exact = True  # every earlier request has expired by now: the count starts afresh
        request = b'{"batch":%d,' % want + self._request_tail[1:]
        await self.nc.publish(self._api, request, reply=self._sub.subject)
        self.outstanding += want
        self.asked_at = time.monotonic()

    def wake(self) -> None:
        """Re-check ``room`` now (the caller settled messages)."""
        self._put(_WAKE)

    # ---- iterating ----------------------------------------------------------------------------------------
    def __aiter__(self) -> PullStream:
        return self

    async def __anext__(self) -> list:
        while True:
            self.last_tick = time.monotonic()
            if self.error is not None:
                raise self.error
            if self.stopping or self.nc.is_closed:
                raise StopAsyncIteration
            try:
                await self._refill()
            except nats.errors.ConnectionClosedError:
                raise StopAsyncIteration from None
            if not self._queue:
                await self._wait(self.heartbeat)
            if not self._queue:  # a heartbeat's time without news
                if self.until_empty and await self._empty():
                    raise StopAsyncIteration from None
                continue
            first = self._queue.popleft()
            if first is _WAKE:
                if self._verify:
                    self._verify = False
                    if await self._info() is None:
                        raise ConsumerGone(f"no consumer {self.stream}/{self.durable}", 503)
                if self.until_empty and self.outstanding == 0 and await self._empty():
                    raise StopAsyncIteration
                continue
            if self.stopping:
                self._front.append(first)  # drain() hands it back, first
                raise StopAsyncIteration
            msgs = [first]
            while len(msgs) < self.max_batch and self._queue:
                item = self._queue.popleft()
                if item is not _WAKE:
                    msgs.append(item)
            self.last_tick = time.monotonic()
            return msgs

    async def _info(self, missing=None):
        """The consumer's info; ``missing`` if it does not exist, ``False`` if the server did not answer."""
        try:
            return await self.nc.jetstream(prefix=self._api_prefix).consumer_info(self.stream, self.durable)
        except NotFoundError:
            return missing
        except (TimeoutError, nats.errors.Error) as exc:
            log.debug("consumer info of %s/%s: %s", self.stream, self.durable, exc)
            return False

    async def _empty(self) -> bool:
        """The consumer has nothing pending and nothing unacknowledged (or is gone)."""
        info = await self._info(missing=True)
        if isinstance(info, bool):
            return info
        return not info.num_pending and not info.num_ack_pending

    def queued(self) -> list:
        """Messages delivered but not handed out yet (a caller holding a batch keeps them from redelivery)."""
        return [m for m in (*self._front, *self._queue) if m is not _WAKE]

    # ---- stopping -----------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask for nothing more and end the iteration (the step in hand finishes first)."""
        self.stopping = True
        self._put(_WAKE)

    async def drain(self, timeout: float = 0.0) -> list:
        """Stop, and return every message delivered but never handed out, in arrival order: the caller hands
        them back (nak) so none waits for its ack wait.

        Drains the subscription: the server forgets pull requests whose inbox lost its interest, and whatever it
        sent before that arrives before the drain's flush returns, so nothing is left in flight on one server.
        ``timeout``: first wait up to that long for the open requests to be exactly fulfilled (in a cluster a
        message may still be on its way from the consumer's leader)."""
        self.stop()
        deadline = time.monotonic() + timeout
        while not self.nc.is_closed and not (self.exact and self.outstanding <= 0):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                break
        if self._sub is not None:
            try:
                await self._sub.drain()
            except nats.errors.Error as exc:  # closed, draining or reconnecting: the server forgets the requests
                log.debug("pull %s/%s: drain: %s", self.stream, self.durable, exc)
            self._sub = None
        held, self._front = self._front, []
        while self._queue:
            item = self._queue.popleft()
            if item is not _WAKE:
                held.append(item)
        return held
