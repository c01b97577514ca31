"""One integration's endpoint as a running delivery sees it: target, HTTP sender, concurrency cap, rate limit.

Secrets, URL, credentials, rate limit and retry schedule change in place (:meth:`Endpoint.retarget`): the next
request, a retry included, uses them (issue 10 bug 3).
"""

from __future__ import annotations

import asyncio
import logging

import msgspec

from hub.core.grants import Target
from hub.core.subjects import decode_token
from hub.deliver.engine.context import Context
from hub.deliver.engine.items import Item
from hub.deliver.settings import seconds
from hub.deliver.transport.ratelimit import TokenBucket
from hub.deliver.transport.request import Result, Sender, build, redacted

log = logging.getLogger("rthub.deliver")


class Endpoint:
    def __init__(self, ctx: Context, protocol: str, grant_id: str, target: Target, identity: list[str] | None = None,
                 groups: list[str] | None = None):
        s = ctx.settings
        self.ctx, self.protocol, self.grant_id, self.target = ctx, protocol, grant_id, target
        self.identity = list(identity or ())  # identity fields approved for this grant (added here, at the edge)
        self.groups = frozenset(groups or ())  # the grant's learner groups: membership is checked again here
        self.batch = target.batch_size > 1  # webhooks too: a JSON array (xAPI) or one envelope (Caliper)
        self.sender = Sender(seconds(s.connect_timeout), seconds(s.request_timeout), ctx.allowed, s.https_only,
                             s.response_excerpt_bytes, max(1, target.max_concurrency))
        self.limit = asyncio.Semaphore(max(1, target.max_concurrency))
        self.bucket = TokenBucket(target.rate_limit_per_s)

    def retarget(self, target: Target) -> None:
        if target.rate_limit_per_s != self.target.rate_limit_per_s:
            self.bucket = TokenBucket(target.rate_limit_per_s)
        self.target = target

    def schedule(self) -> list[float]:
        """The integration's own retry schedule (``Target.retry_schedule``), else the deliverer's."""
        if self.target.retry_schedule:
            try:
                return [seconds(x) for x in self.target.retry_schedule]
            except ValueError as exc:
                log.error("integration %s: unusable retry schedule, using the default: %s", self.grant_id, exc)
        return self.ctx.schedule

    def no_longer_member(self, item: Item) -> bool:
        """A group grant's statement whose learner the store now knows outside the statement's group (removed
        since the hub made it, e.g. while the endpoint was failing): not to be sent. A learner the store does
        not know yet (just added) is sent."""
        if not self.groups or self.ctx.identities is None:
            return False
        group = item.subject.rsplit(".", 1)[-1]
        if group not in self.groups:
            return False
        try:
            statement = msgspec.json.decode(item.msg.data)
        except msgspec.DecodeError:
            return False
        groups = self.ctx.identities.groups_of(self.protocol, statement, site_of(item.subject)) \
            if isinstance(statement, dict) else None
        return groups is not None and group not in groups

    async def send(self, items: list[Item]) -> Result:
        bodies = [i.msg.data for i in items]
        if self.identity and self.ctx.identities is not None:
            bodies = [self.ctx.identities.enrich(self.protocol, b, site_of(i.subject), self.identity)
                      for b, i in zip(bodies, items, strict=True)]
        url, headers, body = build(self.target, self.protocol, bodies,
                                   [i.id for i in items], self.ctx.settings.caliper_sensor, self.batch,
                                   (items[0].msg.headers or {}).get("traceparent"))
        await self.bucket.take()
        async with self.limit:
            result = await self.sender.post(url, headers, body)
        result.url, result.sent = url, redacted(headers, self.target.custom_headers)
        return result

    async def close(self) -> None:
        await self.sender.close()


def site_of(subject: str) -> str:
    """The site token of a statement subject ``<protocol>.<site>...``, decoded."""
    parts = subject.split(".", 2)
    return (decode_token(parts[1]) or "") if len(parts) > 1 else ""
