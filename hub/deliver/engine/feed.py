"""Pulling one durable consumer for a runner, on the core's :class:`hub.core.pull.PullStream`.

The stream keeps pull requests outstanding (each message dispatched on arrival, heartbeats notice a request
lost to a reconnect, statuses by name). This module adds what a runner needs around it: pull only while it
leads and has room (``max_in_flight``), dispatch each message as an :class:`Item`, keep what arrives while
stopping (the runner naks it in stream order), end a replay once its consumer is empty.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS

from hub.core.errors import ConsumerGone
from hub.core.pull import PullStream
from hub.deliver.engine.held import Held
from hub.deliver.engine.items import Item

PULL_EXPIRES = 2.0  # seconds a pull request waits; also the longest a stopping runner waits for messages in flight
DOZE_MAX = 600.0  # a dozing loop pulls at least this often (a safety net; the watch wakes it on every message)


async def _first(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Until one of ``events`` is set (or ``timeout``)."""
    if any(e.is_set() for e in events):
        return
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def pull(nc: NATS, stream: str, durable: str, source: str, *, fetch_batch: int, max_in_flight: int,
               held: Held, leader: asyncio.Event, dispatch: Callable[[Item], None],
               done: Callable[[], Awaitable[bool]] | None = None, part: int | None = None,
               stop: asyncio.Event | None = None, wake: asyncio.Event | None = None) -> None:
    """Pull ``durable`` until the consumer is deleted, the connection closes or the runner drains.

    ``leader``: pull only while set (an ordered integration's lease). ``done``: for a replay, asked once the
    consumer has nothing pending or unacknowledged; True ends the pull. ``part``: the course partition the
    consumer reads (its items are tagged with it); ``stop``: this pull stops when set (besides the runner's
    ``held.stopping``); what still arrives is held, to be handed back in stream order. ``wake``: doze instead of
    keeping pull requests open: pull until the consumer has nothing pending or unacknowledged, then wait for
    ``wake`` (set by :class:`hub.deliver.engine.watch.Watch` when a matching message is published), at most
    ``DOZE_MAX``; a stand-by (``leader`` not set) does not pull at all.
    """
    stops = (held.stopping,) if stop is None else (held.stopping, stop)

    def draining() -> bool:
        return any(e.is_set() for e in stops)

    waiting: dict[asyncio.Event, asyncio.Task] = {}

    def wake_on(event: asyncio.Event, then: Callable[[], None]) -> None:
        task = waiting.get(event)
        if task is None or task.done():
            async def wait() -> None:
                await event.wait()
                then()
            waiting[event] = asyncio.ensure_future(wait())

    def room() -> int:
        if draining():
            return 0
        if not leader.is_set():
            wake_on(leader, ps.wake)
            return 0
        free = max_in_flight - len(held)
        if free <= 0:
            held.room.clear()
            wake_on(held.room, ps.wake)
        return free

    while True:
        if wake is not None:
            if not leader.is_set():
                await _first(leader, *stops)
                if draining():
                    return
            wake.clear()  # set again by any message published from now on: none is missed
        ps = PullStream(nc, stream, durable, batch=fetch_batch, expires=PULL_EXPIRES, room=room,
                        until_empty=done is not None or wake is not None)
        await ps.start()
        for event in stops:
            wake_on(event, ps.stop)
        try:
            async for msgs in ps:
                for msg in msgs:
                    if draining():
                        held.add(Item(msg, source, part))  # handed back in order by the runner's stop
                    elif leader.is_set():
                        dispatch(Item(msg, source, part))
        except ConsumerGone:
            return
        finally:
            for task in waiting.values():
                task.cancel()
            waiting.clear()
            stopping = draining()  # else the consumer is empty or gone: nothing more is worth waiting for
            for msg in await ps.drain(timeout=PULL_EXPIRES + 0.5 if stopping else 0.0):
                if stopping or not leader.is_set():
                    held.add(Item(msg, source, part))
                else:
                    dispatch(Item(msg, source, part))
        if draining() or nc.is_closed:
            return
        if done is not None:
            if await done():
                return
        elif wake is None:
            return
        else:
            await _first(wake, *stops, timeout=DOZE_MAX)
