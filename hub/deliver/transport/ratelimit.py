"""Requests per second for one endpoint (``Target.rate_limit_per_s``)."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """Requests per second for one endpoint; 0 = unlimited."""

    def __init__(self, rate: float):
        self.rate, self.tokens, self.stamp = rate, max(1.0, rate), time.monotonic()

    async def take(self) -> None:
        if self.rate <= 0:
            return
        while True:
            now = time.monotonic()
            self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)
