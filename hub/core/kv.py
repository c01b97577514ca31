"""One typed KV mirror: a bucket followed into a dict of decoded values.

:meth:`KVMirror.start` returns once the bucket's current content is loaded (``ready``), so a service never
acts on a half-read bucket; afterwards every put, delete or purge updates ``values`` and calls
``on_change(key, value or None)``. An entry that does not decode is logged and skipped, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec
import nats.errors

log = logging.getLogger("rthub.core.kv")
K = TypeVar("K")
V = TypeVar("V")
DELETES = ("DEL", "PURGE")


def _same(key: str) -> str:
    return key


class KVMirror(Generic[K, V]):
    """``values[key(kv_key)] = decode(value bytes)`` for every live key of ``bucket``.

    ``decode`` and ``key`` raise ``ValueError`` (or a msgspec error) for an entry to skip.
    """

    def __init__(self, js, bucket: str, decode: Callable[[bytes], V],
                 on_change: Callable[[K, V | None], None] | None = None, key: Callable[[str], K] = _same,
                 keys: str = ">"):
        """``keys``: the keys followed (a NATS subject pattern, e.g. ``replay.*``; default all)."""
        self.js, self.bucket, self.keys = js, bucket, keys
        self.decode, self.key, self.on_change = decode, key, on_change
        self.values: dict[K, V] = {}
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self._watcher = None
        self._task: asyncio.Task | None = None
        self.revision = 0  # the newest stream sequence seen

    async def start(self) -> KVMirror[K, V]:
        kv = await self.js.key_value(self.bucket)
        self._watcher = await kv.watch(self.keys)
        self._task = asyncio.create_task(self._follow())
        await asyncio.wait([self.ready, self._task], return_when=asyncio.FIRST_COMPLETED)
        if not self.ready.done():  # the watch ended before the content was read
            self._task.result()
            raise ConnectionError(f"watch of {self.bucket} ended before it was ready")
        return self

    async def _follow(self) -> None:
        async for entry in self._watcher:
            if entry is not None:
                self.revision = max(self.revision, entry.revision or 0)
                self._apply(entry)
            # None marks the end of the initial content (an empty bucket sends only that)
            if not self.ready.done() and (entry is None or entry.delta == 0):
                self.ready.set_result(None)

    def _apply(self, entry) -> None:
        try:
            key = self.key(entry.key)
            value = None if entry.operation in DELETES or not entry.value else self.decode(entry.value)
        except (ValueError, msgspec.MsgspecError) as exc:
            log.error("%s: ignoring unreadable entry %r: %s", self.bucket, entry.key, exc)
            return
        if value is None:
            if self.values.pop(key, None) is None:
                return
        else:
            self.values[key] = value
        if self.on_change is not None:
            self.on_change(key, value)

    async def stop(self) -> None:
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except (nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
                pass  # closed with the connection
        if self._task is not None:
            self._task.cancel()
