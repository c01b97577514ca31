"""One acked publisher: JetStream publishes whose acks arrive on one reply subscription.

Like nats-py's ``js.publish_async`` with differences that matter on the hub's hot path: one wildcard
subscription whose acks are filed at once by the read loop (:mod:`hub.core.inline`), acks decoded into a small
typed struct, so an error is recognised by its ``error`` member (with its codes), never by searching the bytes,
and :class:`AckBatch`: many publishes awaited as one, without a future and a callback per message.
"""

from __future__ import annotations

import asyncio

import msgspec
import nats.errors

from hub.core.api import Header, Status
from hub.core.errors import NoStream, PublishRefused
from hub.core.inline import subscribe_inline

_PENDING = object()


class ApiErrorBody(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct):
    """The stream's answer to a publish: where it stored the message, or ``error``."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: ApiErrorBody | None = None


_decode_ack = msgspec.json.Decoder(PubAck).decode


def parse_ack(data: bytes, status: str | None = None) -> PubAck:
    """The :class:`PubAck` of a publish reply; raises :class:`NoStream` or :class:`PublishRefused`."""
    if status == Status.NO_RESPONDERS:
        raise NoStream("no stream stores this subject", 503)
    try:
        ack = _decode_ack(data)
    except msgspec.DecodeError as exc:
        raise PublishRefused(f"unreadable publish ack {data[:200]!r}: {exc}") from None
    if ack.error is not None:
        e = ack.error
        raise PublishRefused.from_error(e.code, e.err_code, e.description)
    if not ack.stream:
        raise PublishRefused(f"publish ack names no stream: {data[:200]!r}")
    return ack


class AckBatch:
    """The acks of many publishes (``publish(..., batch=b)``), awaited together: ``results[i]`` is the
    :class:`PubAck` or the error of the i-th publish of the batch."""

    __slots__ = ("results", "left", "_done")

    def __init__(self):
        self.results: list = []
        self.left = 0
        self._done: asyncio.Future | None = None

    def _add(self) -> int:
        self.results.append(_PENDING)
        self.left += 1
        return len(self.results) - 1

    def _settle(self, slot: int, result) -> None:
        if self.results[slot] is not _PENDING:
            return
        self.results[slot] = result
        self.left -= 1
        if not self.left and self._done is not None and not self._done.done():
            self._done.set_result(None)

    def pending(self, slot: int) -> bool:
        return self.results[slot] is _PENDING

    async def wait(self, timeout: float) -> list:
        """Every result, once all acks arrived or after ``timeout`` (then ``TimeoutError`` for those missing)."""
        if self.left:
            self._done = asyncio.get_running_loop().create_future()
            await asyncio.wait((self._done,), timeout=timeout)
            for slot, result in enumerate(self.results):
                if result is _PENDING:
                    self._settle(slot, TimeoutError(f"no publish ack in {timeout:g} s"))
        return self.results


class AckedPublisher:
    """Publish and get a future per message that resolves to its :class:`PubAck` (or the precise error).

    ``await publish(...)`` only sends; await the returned future (or many at once) for the ack, or pass an
    :class:`AckBatch` and await the batch. Futures nobody waits for any more (cancelled after a timeout) are
    dropped by :meth:`forget`.
    """

    def __init__(self, nc):
        self.nc = nc
        self.waiting: dict[str, asyncio.Future] = {}
        self.count = 0
        self.prefix = ""
        self._sub = None

    async def start(self) -> AckedPublisher:
        self.prefix = self.nc.new_inbox()
        self._sub = await subscribe_inline(self.nc, self.prefix + ".*", self._on_ack)
        return self

    async def publish(self, subject: str, body: bytes, headers: dict[str, str] | None = None,
                      batch: AckBatch | None = None) -> asyncio.Future | None:
        """Send; returns the ack's future, or with ``batch`` files the ack (or a nats-py error of sending) there."""
        self.count += 1
        token = str(self.count)
        if batch is None:
            entry = asyncio.get_running_loop().create_future()
        else:
            entry = (batch, batch._add())
        self.waiting[token] = entry
        try:
            await self.nc.publish(subject, body, reply=f"{self.prefix}.{token}", headers=headers)
        except nats.errors.Error as exc:
            self.waiting.pop(token, None)
            if batch is None:
                raise
            batch._settle(entry[1], exc)
        except BaseException:
            self.waiting.pop(token, None)
            raise
        return entry if batch is None else None

    async def publish_acked(self, subject: str, body: bytes, headers: dict[str, str] | None = None,
                            timeout: float = 5.0) -> PubAck:
        """Publish one message and wait for its ack (``TimeoutError`` after ``timeout``)."""
        future = await self.publish(subject, body, headers)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self.forget()
            raise

    async def __aenter__(self) -> AckedPublisher:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def forget(self) -> None:
        """Drop futures nobody waits for any more (cancelled after a timeout)."""
        self.waiting = {k: e for k, e in self.waiting.items()
                        if (e[0].pending(e[1]) if type(e) is tuple else not e.done())}

    async def close(self) -> None:
        if self._sub is not None and not self.nc.is_closed:
            await self._sub.unsubscribe()
        self._sub = None
        for entry in self.waiting.values():
            if type(entry) is tuple:
                entry[0]._settle(entry[1], nats.errors.ConnectionClosedError())
            else:
                entry.cancel()
        self.waiting.clear()

    def _on_ack(self, msg) -> None:
        entry = self.waiting.pop(msg.subject[len(self.prefix) + 1:], None)
        if entry is None:
            return
        status = msg.headers.get(Header.STATUS) if msg.headers else None
        try:
            result = parse_ack(msg.data, status)
        except (NoStream, PublishRefused) as exc:
            result = exc
        if type(entry) is tuple:
            entry[0]._settle(entry[1], result)
        elif entry.done():
            return
        elif isinstance(result, PubAck):
            entry.set_result(result)
        else:
            entry.set_exception(result)
