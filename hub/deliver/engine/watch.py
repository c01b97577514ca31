"""Wake-ups for dozing pull loops: one core subscription per deliverer instead of a pull request per consumer.

An idle integration used to keep pull requests outstanding on each of its consumers, and the server sent each
of them a heartbeat a second: with a thousand integrations the idle deliverer was busy answering heartbeats and
renewing requests, and a new message waited behind that work (issue 20). Now a pull loop with nothing to do
dozes, and this module wakes it: it subscribes once to the protocol subjects and ``redrive.>``, keeps an index
from subject to the wake-up events whose filter matches (by protocol and site token, then token by token), and
sets only those. A wake-up is a hint; the consumer stays the truth (the loop pulls until its consumer is empty).
On a reconnect every loop is woken: what was published meanwhile was not seen here.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from nats.aio.client import Client as NATS

from hub.core.inline import subscribe_inline
from hub.core.subjects import tokens_match

log = logging.getLogger("rthub.deliver")


def bucket(pattern: tuple[str, ...]) -> tuple[str, str]:
    """Index key of a filter: its first token and its second if literal (a grant's site), else ``*``."""
    second = pattern[1] if len(pattern) > 1 and pattern[1] not in ("*", ">") else "*"
    return pattern[0], second


class Watch:
    """Subject -> wake-up events, fed by one core subscription per subject prefix."""

    def __init__(self, nc: NATS, prefixes: list[str]):
        self.nc, self.prefixes = nc, prefixes
        self.index: dict[tuple[str, str], dict[asyncio.Event, list[tuple[str, ...]]]] = (
            collections.defaultdict(dict)
        )
        self.events: dict[asyncio.Event, list[tuple[str, ...]]] = {}
        self.subs: list = []
        self.task: asyncio.Task | None = None
        self.wakes = 0  # events set (for tests and the bench)

    async def start(self) -> Watch:
        for prefix in self.prefixes:
            self.subs.append(await subscribe_inline(self.nc, f"{prefix}.>", self._on_msg))
        self.task = asyncio.create_task(self._reconnects())
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        for sub in self.subs:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - closed with the connection
                pass

    def add(self, event: asyncio.Event, filters: list[str]) -> None:
        """Set ``event`` whenever a message on one of ``filters`` (NATS subject patterns) is published."""
        self.remove(event)
        patterns = [tuple(f.split(".")) for f in filters]
        self.events[event] = patterns
        for p in patterns:
            self.index[bucket(p)].setdefault(event, []).append(p)

    def remove(self, event: asyncio.Event) -> None:
        for p in self.events.pop(event, []):
            entries = self.index.get(bucket(p))
            if entries is not None:
                entries.pop(event, None)
                if not entries:
                    del self.index[bucket(p)]

    def _on_msg(self, msg) -> None:
        tokens = tuple(msg.subject.split("."))
        for key in ((tokens[0], tokens[1] if len(tokens) > 1 else ""), (tokens[0], "*")):
            entries = self.index.get(key)
            if not entries:
                continue
            for event, patterns in entries.items():
                if not event.is_set() and any(tokens_match(p, tokens) for p in patterns):
                    event.set()
                    self.wakes += 1

    def wake_all(self) -> None:
        for event in self.events:
            event.set()

    async def _reconnects(self) -> None:
        """Messages published while this connection was away were not seen: wake every loop after a reconnect."""
        seen = self.nc.stats.get("reconnects", 0)
        while True:
            await asyncio.sleep(1.0)
            now = self.nc.stats.get("reconnects", 0)
            if now != seen:
                seen = now
                log.info("reconnected: waking every pull loop")
                self.wake_all()
