"""One acked publisher: JetStream publishes whose acks arrive on one reply subscription.

Like nats-py's ``js.publish_async`` with two differences that matter on the hub's hot path: one wildcard
subscription instead of a future per inbox lookup, and acks decoded into a small typed struct, so an error
is recognised by its ``error`` member (with its codes), never by searching the bytes.
"""

from __future__ import annotations

import asyncio

import msgspec

from hub.core.api import Header, Status
from hub.core.errors import NoStream, PublishRefused


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


class AckedPublisher:
    """Publish and get a future per message that resolves to its :class:`PubAck` (or the precise error).

    ``await publish(...)`` only sends; await the returned future (or many at once) for the ack. Futures
    nobody waits for any more (cancelled after a timeout) are dropped by :meth:`forget`.
    """

    def __init__(self, nc):
        self.nc = nc
        self.waiting: dict[str, asyncio.Future] = {}
        self.count = 0
        self.prefix = ""
        self._sub = None

    async def start(self) -> AckedPublisher:
        self.prefix = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self.prefix + ".*", cb=self._on_ack)
        return self

    async def publish(self, subject: str, body: bytes, headers: dict[str, str] | None = None) -> asyncio.Future:
        self.count += 1
        token = str(self.count)
        future = asyncio.get_running_loop().create_future()
        self.waiting[token] = future
        try:
            await self.nc.publish(subject, body, reply=f"{self.prefix}.{token}", headers=headers)
        except BaseException:
            self.waiting.pop(token, None)
            raise
        return future

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
        self.waiting = {k: f for k, f in self.waiting.items() if not f.done()}

    async def close(self) -> None:
        if self._sub is not None and not self.nc.is_closed:
            await self._sub.unsubscribe()
        self._sub = None
        for future in self.waiting.values():
            future.cancel()
        self.waiting.clear()

    async def _on_ack(self, msg) -> None:
        future = self.waiting.pop(msg.subject[len(self.prefix) + 1:], None)
        if future is None or future.done():
            return
        status = msg.headers.get(Header.STATUS) if msg.headers else None
        try:
            future.set_result(parse_ack(msg.data, status))
        except (NoStream, PublishRefused) as exc:
            future.set_exception(exc)

