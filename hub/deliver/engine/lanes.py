"""Lanes: per integration, one queue per course (``<site>.<org>.<course>``) sent in stream order, each holding
its head until it is settled, so a course's statements arrive in publish order while other courses proceed;
a parallel integration spreads messages over ``max_concurrency`` lanes instead. A lane takes up to
``batch_size`` messages at a time, waiting at most ``batch_wait_ms`` to fill a batch."""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Awaitable, Callable

from hub.core.grants import Target
from hub.deliver.engine.items import Item


class Lanes:
    def __init__(self, target: Callable[[], Target], deliver: Callable[[list[Item]], Awaitable[None]]):
        self.target, self.deliver = target, deliver
        self.queues: dict[str, collections.deque[Item]] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self.wakeups: dict[str, asyncio.Event] = {}
        self.rr = itertools.count()
        self.stopping = False
        self.parts: dict[str, int] = {}  # lane key -> course partition

    def add(self, item: Item) -> None:
        target = self.target()
        if target.parallel:
            key = f"{item.source}:p{next(self.rr) % max(1, target.max_concurrency)}"
        else:
            key = f"{item.source}:{item.lane_key}"  # a course is in one partition, so a lane is too
        if item.part is not None:
            self.parts[key] = item.part
        lane = self.queues.get(key)
        if lane is None:
            lane = self.queues[key] = collections.deque()
            self.wakeups[key] = asyncio.Event()
            self.tasks[key] = asyncio.create_task(self._lane(key))
        lane.append(item)
        self.wakeups[key].set()

    async def stop(self) -> None:
        """Cancel every lane (a revocation stops requests at once); their messages stay held."""
        self.stopping = True
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop_part(self, part: int) -> None:
        """Cancel the lanes of one partition (it is handed over); their messages stay held."""
        tasks = [task for key, task in self.tasks.items() if self.parts.get(key) == part]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _lane(self, key: str) -> None:
        lane, wake = self.queues[key], self.wakeups[key]
        target = self.target()
        size = target.batch_size if target.batch_size > 1 else 1
        wait = target.batch_wait_ms / 1000
        try:
            while True:
                if not lane:
                    wake.clear()
                    try:
                        async with asyncio.timeout(30):  # not wait_for: a task per wait on Python 3.11
                            await wake.wait()
                    except TimeoutError:
                        if not lane:
                            return
                    continue
                if len(lane) < size:
                    deadline = time.monotonic() + wait
                    while len(lane) < size and (left := deadline - time.monotonic()) > 0:
                        wake.clear()
                        try:
                            async with asyncio.timeout(left):
                                await wake.wait()
                        except TimeoutError:
                            break
                items = [lane.popleft() for _ in range(min(size, len(lane)))]
                await self.deliver(items)
        finally:
            cancelled = asyncio.current_task().cancelling()
            if self.queues.get(key) is lane and (not lane or self.stopping or cancelled):
                self.queues.pop(key, None)
                self.wakeups.pop(key, None)
                self.tasks.pop(key, None)
                self.parts.pop(key, None)
