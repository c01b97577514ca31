"""Writing messages to the dead-letter stream (``dlq.<id>``) with the reason and the last answer."""

from __future__ import annotations

import time

from hub.core.subjects import dlq_subject
from hub.deliver.engine.context import Context
from hub.deliver.engine.held import Held
from hub.deliver.engine.items import Item, protocol_position
from hub.deliver.engine.streak import iso
from hub.deliver.state.records import H_SEQ, H_STREAM, DeadLetterHeaders, header_text
from hub.deliver.transport.request import Result


async def dead_letter(ctx: Context, held: Held, grant_id: str, items: list[Item], reason: str, result: Result,
                      attempts: int) -> None:
    """Publish each item to the dead-letter stream (acked by JetStream), then ack it. Raises the core's
    :class:`~hub.core.errors.NoStream` / :class:`~hub.core.errors.PublishRefused`, or ``TimeoutError``."""
    for item in items:
        given = item.msg.headers or {}  # a redriven copy names its protocol stream and sequence
        stream, sequence = protocol_position(item) if item.source != "redrive" else (item.msg.metadata.stream, 0)
        headers = DeadLetterHeaders(
            reason=reason, last_status=result.status or 0,
            response=header_text(result.error or result.excerpt, ctx.settings.response_excerpt_bytes),
            subject=item.subject, statement_id=item.id, attempts=attempts, failed_at=iso(time.time()),
            stream=given.get(H_STREAM, stream),
            seq=int(given[H_SEQ]) if given.get(H_SEQ, "").isdigit() else sequence or item.msg.metadata.sequence.stream,
        ).to_headers()
        await ctx.publisher.publish_acked(dlq_subject(grant_id), item.msg.data, headers=headers)
        await held.settle(item, "ack")
