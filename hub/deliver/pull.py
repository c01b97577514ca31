"""Pulling one durable consumer: streaming pull requests kept outstanding, each message dispatched on arrival.

nats-py's ``fetch(n)`` waits for the whole batch (or its timeout) once traffic trickles in, which adds up to
the timeout in latency at moderate rates; streaming pull requests do not. Messages are handled in the
subscription's callback: ``next_msg`` cost a task, a ``wait_for`` task and a uuid4 per message (~10% of the
deliverer's CPU at full load).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from hub.deliver.held import Held
from hub.deliver.items import Item

NO_MESSAGES, REQUEST_TIMEOUT, CONFLICT = "404", "408", "409"  # JetStream pull status codes
PULL_EXPIRES = 2.0  # seconds a pull request waits; also the longest a stopping runner waits for messages in flight


async def pull(nc: NATS, stream: str, durable: str, source: str, *, fetch_batch: int, max_in_flight: int,
               held: Held, leader: asyncio.Event, dispatch: Callable[[Item], None],
               done: Callable[[], Awaitable[bool]] | None = None, part: int | None = None,
               draining: Callable[[], bool] | None = None) -> None:
    """Pull ``durable`` until the consumer is deleted, the connection closes or the runner drains.

    ``leader``: pull only while set (an ordered integration's lease). ``done``: for a replay, asked whenever
    nothing is pending and no message of ``source`` is held; True ends the pull. ``part``: the course partition
    the consumer reads (its items are tagged with it); ``draining``: this pull stops (default: the runner's).
    """
    if draining is None:
        def draining() -> bool:
            return held.draining
    api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
    inbox = nc.new_inbox()
    expires = PULL_EXPIRES
    half = fetch_batch // 2
    # ``exact``: ``outstanding`` counts every message still owed (no request was reset meanwhile)
    st = {"outstanding": 0, "exact": True, "gone": False, "empty": False, "pause": False}
    signal = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        status = JetStreamContext.is_status_msg(msg)
        if status:
            if status in (NO_MESSAGES, REQUEST_TIMEOUT, CONFLICT):
                st["outstanding"], st["exact"] = 0, False  # no messages / expired / consumer gone or limits
                if status == CONFLICT and "deleted" in (msg.headers or {}).get("Description", "").lower():
                    st["gone"] = True
                st["empty"] = status == NO_MESSAGES
                st["pause"] = status in (NO_MESSAGES, CONFLICT)  # do not spin on "no messages" or "limits"
                signal.set()
            return
        st["outstanding"] -= 1
        if st["outstanding"] <= half:
            signal.set()
        if draining():
            held.add(Item(msg, source, part))  # handed back in order by the runner's stop
        elif leader.is_set():
            dispatch(Item(msg, source, part))

    sub = await nc.subscribe(inbox, cb=on_msg)
    asked_at = 0.0
    try:
        while not st["gone"]:
            if draining():  # stopping: no new requests; wait until nothing more can arrive
                if (st["exact"] and st["outstanding"] <= 0) or time.monotonic() - asked_at > expires + 0.5:
                    return
            else:
                await leader.wait()
            if st["pause"]:
                st["pause"] = False
                await asyncio.sleep(0.05)
            room = max_in_flight - len(held)
            outstanding = st["outstanding"] = max(0, st["outstanding"])
            if draining():
                pass
            elif outstanding <= half and room > outstanding:
                n = min(fetch_batch, room) - outstanding
                st["exact"] = st["exact"] or time.monotonic() - asked_at > expires + 0.5  # earlier ones expired
                await nc.publish(api, msgspec.json.encode({"batch": n, "expires": int(expires * 1e9)}), reply=inbox)
                st["outstanding"], asked_at = outstanding + n, time.monotonic()
            elif room <= 0:
                held.room.clear()
                await held.room.wait()
                continue
            try:
                if not signal.is_set():  # set meanwhile: look again at once (never clear an unseen signal)
                    async with asyncio.timeout(1.0):
                        await signal.wait()
            except TimeoutError:
                if time.monotonic() - asked_at > expires + 1:
                    st["outstanding"], st["exact"] = 0, False  # expired without a status (e.g. reconnect)
                st["empty"] = True
            signal.clear()
            if nc.is_closed:
                return  # the deliverer is shutting down (a reconnect keeps the connection open)
            if st["empty"] and done is not None and not held.has(source) and await done():
                return
            st["empty"] = False
    finally:
        try:
            await sub.unsubscribe()
        except Exception:  # noqa: BLE001 - connection closing
            pass
