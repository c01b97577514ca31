"""Who delivers an ordered integration: one process at a time holds ``lease.<grant id>``, others stand by.

Several deliverers share one durable consumer, but JetStream hands consecutive messages to whichever
process pulls; per-course order needs a single puller. A lease is taken by a compare-and-set write of
``lease.<id>`` (owner, time) in the state bucket and then *not renewed per integration*: it stays its owner's
while the owner announces itself (``alive.<process>``, once a second for the whole process). Renewing each
lease every ``lease_ttl / 3`` cost a KV write per integration and period, most of an idle deliverer's CPU at a
thousand integrations (issue 20). A stand-by takes over once neither the lease record nor its owner's
announcement is newer than ``stale_after`` (the consumer's ack wait has then passed, so the dead holder's
unacked messages are due for redelivery, first, when the new holder starts pulling).

:class:`LeaseBook` follows ``lease.*`` and ``alive.*`` of the bucket in memory, so holding, checking and
standing by cost no NATS operation; only taking and releasing write.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from hub.core.kv import KVMirror

ALIVE = "alive."


class NotAnnounced(ConnectionError):
    """This process's last announcement failed (logged once by the deliverer, not once per lease)."""


class LeaseRecord(msgspec.Struct):
    owner: str
    t: float


class _Revisions(KVMirror):
    """A mirror that also keeps each key's revision (a take-over is a compare-and-set on it)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.revisions: dict[str, int] = {}

    def _apply(self, entry) -> None:
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self.revisions.pop(entry.key, None)
        else:
            self.revisions[entry.key] = entry.revision
        super()._apply(entry)


class LeaseBook:
    """Every lease and every deliverer's announcement, in memory; :meth:`lease` hands out one lease."""

    def __init__(self, js, kv: KeyValue, bucket: str, owner: str, stale_after: float):
        self.kv, self.owner, self.stale_after = kv, owner, stale_after
        self.records = _Revisions(
            js, bucket, lambda v: msgspec.json.decode(v, type=LeaseRecord), keys="lease.>",
            on_change=self._changed,
        )
        self.alive = KVMirror(
            js, bucket, lambda v: float(v.decode()), key=lambda k: k[len(ALIVE) :], keys=ALIVE + "*"
        )
        self.announce_failed = False  # the last announcement of this process failed
        self.failing = asyncio.Event()  # set while announcements fail: holders check their leases again
        self.announced_at = time.monotonic()  # the last announcement that succeeded
        self.held: set[str] = set()  # keys a Lease of this process holds
        self.changes: dict[str, asyncio.Event] = {}  # key -> set when the book changes that lease (Lease.wait)

    def _changed(self, key: str, _record: LeaseRecord | None) -> None:
        event = self.changes.get(key)
        if event is not None:
            event.set()

    async def start(self) -> LeaseBook:
        await self.alive.start()
        await self.records.start()
        return self

    async def stop(self) -> None:
        await self.records.stop()
        await self.alive.stop()

    async def announce(self) -> None:
        """``alive.<owner>`` = now: every lease this process holds stays its own (raises when NATS is away)."""
        try:
            await self.kv.put(ALIVE + self.owner, repr(time.time()).encode())
        except Exception:
            self.announce_failed = True
            self.failing.set()
            raise
        self.announce_failed = False
        self.announced_at = time.monotonic()
        self.failing.clear()

    async def sweep(self) -> None:
        """Delete leases recorded as this process's that no runner here holds (a release NATS did not take):
        its announcements would keep them from everyone else."""
        for key, record in list(self.records.values.items()):
            revision = self.records.revisions.get(key)
            if record.owner == self.owner and key not in self.held and revision is not None:
                try:
                    await self.kv.delete(key, last=revision)
                except Exception:  # noqa: BLE001 - taken meanwhile, or NATS away: next round
                    pass

    async def withdraw(self) -> None:
        await self.kv.delete(ALIVE + self.owner)

    def stale(self, record: LeaseRecord, now: float) -> bool:
        return now - max(record.t, self.alive.values.get(record.owner, 0.0)) > self.stale_after

    def lease(self, key: str) -> Lease:
        return Lease(self, key)


class Lease:
    def __init__(self, book: LeaseBook, key: str):
        self.book, self.key, self.owner = book, key, book.owner
        self.revision: int | None = None

    async def try_hold(self) -> bool:
        """Acquire or keep; True while this process holds the lease.

        Only the book (what the server wrote) says a lease is lost; while this process's announcements fail
        it raises, and the caller decides how long it trusts its last success (an outage must not look like
        a take-over, nor a take-over like an outage).
        """
        book = self.book
        if self.revision is not None:
            if self._taken_over():
                self.revision = None
                book.held.discard(self.key)
                return False
            if book.announce_failed:
                raise NotAnnounced("this deliverer cannot announce itself")
            return True
        now = time.time()
        value = msgspec.json.encode(LeaseRecord(self.owner, now))
        record = book.records.values.get(self.key)
        try:
            if record is None:
                book.held.add(self.key)
                self.revision = await book.kv.create(self.key, value)
                return True
            if record.owner == self.owner or book.stale(record, now):
                book.held.add(self.key)
                self.revision = await book.kv.update(self.key, value, last=book.records.revisions[self.key])
                return True
        except KeyWrongLastSequenceError:  # another process was first; the book shows it soon
            book.held.discard(self.key)
            return False
        except Exception:
            book.held.discard(self.key)
            raise
        return False

    def _taken_over(self) -> bool:
        """The book holds a newer record of this held lease, written by another owner."""
        revision = self.book.records.revisions.get(self.key)
        record = self.book.records.values.get(self.key)
        return (self.revision is not None and revision is not None and revision > self.revision
                and record is not None and record.owner != self.owner)

    async def wait(self, timeout: float) -> None:
        """While held: until the book changes this lease (a take-over), announcements fail, or ``timeout``.
        A holder checks its lease when something happened instead of every ``lease_ttl / 3``: a timer per
        ordered integration was ~3,000 wake-ups a second in an idle deliverer with 5,000 (issue 20)."""
        book = self.book
        if book.failing.is_set():
            await asyncio.sleep(0)
            return
        changed = book.changes.setdefault(self.key, asyncio.Event())
        changed.clear()
        if self._taken_over():
            await asyncio.sleep(0)  # never a loop that does not yield (the book must be able to catch up)
            return  # taken over before this wait began: try_hold says so
        waits = [asyncio.ensure_future(changed.wait()), asyncio.ensure_future(book.failing.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def release(self) -> None:
        self.book.changes.pop(self.key, None)
        self.book.held.discard(self.key)
        if self.revision is not None:
            try:
                await self.book.kv.delete(self.key, last=self.revision)
            except Exception:  # noqa: BLE001 - already taken or gone
                pass
            self.revision = None
