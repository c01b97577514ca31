"""Dead letters of the event bus: list, replay (back to their topic, for the group's consumers) and purge.

A dead letter is the original message (Avro body, Kafka-named headers) in the ``OPENEDX_DEAD_LETTERS``
stream under ``openedx_dlq.<group>.<topic>``, with the error (``Rthub-Error``), the number of deliveries,
the original subject and stream sequence. Used by ``manage.py event_bus_dead_letters``.
"""

from __future__ import annotations

from typing import NamedTuple

import nats.js.errors

from hub.core.openedx import DLQ_PREFIX, DLQ_STREAM, ERROR_HEADER, ORIGIN_HEADER, SEQ_HEADER
from hub.core.subjects import encode_token


class DeadLetter(NamedTuple):
    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes

    @property
    def error(self) -> str:
        return self.headers.get(ERROR_HEADER, "")


def clean_header(text: str, limit: int = 2000) -> str:
    """One line of printable ASCII (an error message may hold anything)."""
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if " " <= c <= "~" else " " for c in text)[:limit]


def filter_subject(group: str | None = None, full_topic: str | None = None) -> str:
    return ".".join((DLQ_PREFIX, *("*" if v is None else encode_token(v) for v in (group, full_topic))))


async def dead_letters(
    js, group: str | None = None, full_topic: str | None = None, limit: int = 1000
) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters of a group/topic (``None``: any)."""
    subject = filter_subject(group, full_topic)
    out: list[DeadLetter] = []
    seq = 0
    while len(out) < limit:
        try:
            msg = await js.get_msg(DLQ_STREAM, seq + 1, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            break
        seq = msg.seq
        out.append(DeadLetter(seq, msg.subject, dict(msg.headers or {}), msg.data or b""))
    return out


async def replay(js, letters: list[DeadLetter]) -> int:
    """Publish each dead letter again to its topic (new ``Nats-Msg-Id``: the original id may still be in the
    duplicate window) and remove it from the dead letters once stored."""
    n = 0
    for d in letters:
        headers = {
            k: v
            for k, v in d.headers.items()
            if not k.startswith("Nats-")
            and k not in (ERROR_HEADER, ORIGIN_HEADER, SEQ_HEADER)
            and not k.startswith("Rthub-Deliveries")
        }
        headers["Nats-Msg-Id"] = f"replay-{d.seq}-{d.headers.get('ce_id', '')}"
        await js.publish(d.headers[ORIGIN_HEADER], d.data, headers=headers)
        await js.delete_msg(DLQ_STREAM, d.seq)
        n += 1
    return n


async def purge(js, letters: list[DeadLetter]) -> int:
    for d in letters:
        await js.delete_msg(DLQ_STREAM, d.seq)
    return len(letters)
