"""One message held by this process until it is settled, and what is read from it."""

from __future__ import annotations

import uuid

import msgspec
from nats.aio.msg import Msg

from hub.deliver.engine.partitions import origin, original_subject
from hub.deliver.state.records import H_ID, H_SEQ, H_STREAM, H_SUBJECT


class Item:
    """One message held by a lane until it is settled (acked, dead-lettered or handed back)."""

    __slots__ = ("msg", "id", "subject", "source", "settled", "retry_saved", "part")

    def __init__(self, msg: Msg, source: str, part: int | None = None):
        self.msg, self.source, self.settled, self.retry_saved, self.part = msg, source, False, False, part
        headers = msg.headers or {}
        self.subject = headers.get(H_SUBJECT) or original_subject(msg.subject)
        self.id = headers.get(H_ID) or headers.get("Nats-Msg-Id") or body_id(msg.data)

    @property
    def lane_key(self) -> str:
        return ".".join(self.subject.split(".")[1:4])


def body_id(data: bytes) -> str:
    try:
        value = msgspec.json.decode(data)
        return str(value.get("id")) if isinstance(value, dict) and value.get("id") else str(uuid.uuid4())
    except (msgspec.DecodeError, RecursionError):  # a body the pull loop cannot read must not end it
        return str(uuid.uuid4())


def stream_order(item: Item) -> tuple[str, int]:
    try:
        meta = item.msg.metadata
        return meta.stream, meta.sequence.stream
    except Exception:  # noqa: BLE001 - not a JetStream message
        return "", 0


def seq(item: Item) -> int:
    """The statement's sequence in its protocol stream (a redriven copy carries it in a header)."""
    return protocol_position(item)[1]


def protocol_position(item: Item) -> tuple[str, int]:
    """``(protocol stream, sequence)`` of the statement: a redriven copy carries them in headers, a partitioned
    copy in the server's ``Nats-Stream-Source``."""
    headers = item.msg.headers or {}
    if item.source == "redrive":
        return headers.get(H_STREAM, ""), int(headers.get(H_SEQ) or 0)
    if item.part is not None and (where := origin(item.msg)) is not None:
        return where
    meta = item.msg.metadata
    return meta.stream, meta.sequence.stream
