"""Where a held message is in its retry schedule, kept in ``schedule.<id>.<stream>.<seq>`` of the state bucket
from its first failure until it is settled, so a restarted or taking-over deliverer continues the schedule."""

from __future__ import annotations

import logging

import msgspec
from nats.js.kv import KeyValue

from hub.deliver.engine.items import Item

log = logging.getLogger("rthub.deliver")


class RetryState(msgspec.Struct):
    """Where a held message is in its retry schedule (``schedule.<id>.<stream>.<seq>`` in the state bucket)."""

    attempt: int
    tries: int
    due: float


class Schedules:
    def __init__(self, state: KeyValue, grant_id: str):
        self.state, self.grant_id = state, grant_id

    def key(self, item: Item) -> str | None:
        try:
            meta = item.msg.metadata
        except Exception:  # noqa: BLE001 - not a JetStream message
            return None
        return f"schedule.{self.grant_id}.{meta.stream}.{meta.sequence.stream}"

    async def restore(self, item: Item) -> tuple[int, int, float | None]:
        """``(attempt, tries, due)`` of a redelivered message whose schedule an earlier process started."""
        try:
            if item.msg.metadata.num_delivered <= 1:
                return 0, 0, None
            key = self.key(item)
            if key is None:
                return 0, 0, None
            entry = await self.state.get(key)
            state = msgspec.json.decode(entry.value, type=RetryState)
        except Exception:  # noqa: BLE001 - none recorded (or unreadable): the schedule starts afresh
            return 0, 0, None
        item.retry_saved = True
        log.info("integration %s: %s continues its retry schedule at attempt %d", self.grant_id, item.id,
                 state.attempt + 1)
        return state.attempt, state.tries, state.due

    async def remember(self, item: Item, attempt: int, tries: int, due: float) -> None:
        key = self.key(item)
        if key is None:
            return
        try:
            await self.state.put(key, msgspec.json.encode(RetryState(attempt=attempt, tries=tries, due=due)))
            item.retry_saved = True
        except Exception as exc:  # noqa: BLE001 - best effort: a restart would start the schedule afresh
            log.warning("could not save the retry schedule of %s: %s", item.id, exc)

    async def forget(self, item: Item) -> None:
        if (key := self.key(item)) is None:
            return
        try:
            await self.state.purge(key)  # a small purge marker stays (the deliverer may not purge streams)
        except Exception:  # noqa: BLE001 - left over: read only if this message is ever redelivered
            pass
