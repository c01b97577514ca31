"""Who delivers an ordered integration: one process at a time holds ``lease.<grant id>``, others stand by.

Several deliverers share one durable consumer, but JetStream hands consecutive messages to whichever
process pulls; per-course order needs a single puller. The holder renews the lease; a stand-by takes over
once the lease is older than the consumer's ack wait, so the dead holder's unacked messages are due for
redelivery (first) when the new holder starts pulling.
"""

from __future__ import annotations

import time

import msgspec
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue


class LeaseRecord(msgspec.Struct):
    owner: str
    t: float


class Lease:
    def __init__(self, kv: KeyValue, key: str, owner: str, stale_after: float):
        self.kv, self.key, self.owner, self.stale_after = kv, key, owner, stale_after
        self.revision: int | None = None

    async def try_hold(self) -> bool:
        """Acquire or renew; True while this process holds the lease.

        Only an answer from the server ("wrong last sequence": someone else wrote it) means the lease is lost;
        a timeout or a lost connection raises, and the caller decides how long it trusts its last renewal
        (an outage must not look like a take-over, nor a take-over like an outage).
        """
        value = msgspec.json.encode(LeaseRecord(self.owner, time.time()))
        if self.revision is not None:
            try:
                self.revision = await self.kv.update(self.key, value, last=self.revision)
                return True
            except KeyWrongLastSequenceError:
                self.revision = None  # taken, or our own renewal whose answer was lost: look below
        try:
            self.revision = await self.kv.create(self.key, value)
            return True
        except KeyWrongLastSequenceError:
            pass  # the key exists
        try:
            entry = await self.kv.get(self.key)
        except NotFoundError:  # deleted meanwhile; next round creates it
            return False
        held = msgspec.json.decode(entry.value, type=LeaseRecord) if entry.value else None
        if held is None or held.owner == self.owner or time.time() - held.t > self.stale_after:
            try:
                self.revision = await self.kv.update(self.key, value, last=entry.revision)
                return True
            except KeyWrongLastSequenceError:  # another stand-by won
                return False
        return False

    async def release(self) -> None:
        if self.revision is not None:
            try:
                await self.kv.delete(self.key, last=self.revision)
            except Exception:  # noqa: BLE001 - already taken or gone
                pass
            self.revision = None
