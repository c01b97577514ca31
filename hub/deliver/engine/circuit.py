"""Detecting an endpoint's recovery sooner than the retry schedule (circuit-breaker style).

While an endpoint fails, one waiting lane of the integration probes with its head message every ``probe_min``
doubling to ``probe_max``; the first success anywhere wakes every waiting lane. "Retry now" (``wake``) ends
every wait.
"""

from __future__ import annotations

import asyncio
import time


async def wait_any(events: list[asyncio.Event], timeout: float) -> None:
    """Until one of ``events`` is set or ``timeout`` seconds have passed."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


class Circuit:
    def __init__(self, probe_min: float, probe_max: float):
        self.probe_min, self.probe_max = probe_min, probe_max
        self.recovered = asyncio.Event()  # set = the endpoint answers (circuit closed)
        self.recovered.set()
        self.prober: object | None = None  # the token of the lane that probes
        self.probe_delay = probe_min
        self.probe_at = 0.0
        self.wake = asyncio.Event()  # set by "retry now"; replaced by a fresh one each time

    def retry_now(self) -> None:
        woken, self.wake = self.wake, asyncio.Event()
        woken.set()

    def opened(self) -> None:
        if self.recovered.is_set():
            self.recovered.clear()
            self.probe_delay = self.probe_min
            self.probe_at = time.time() + self.probe_delay

    def closed(self) -> None:
        if not self.recovered.is_set():
            self.recovered.set()
            self.probe_delay = self.probe_min

    def probe_failed(self, token: object) -> None:
        if self.prober is token:
            self.probe_delay = min(self.probe_max, self.probe_delay * 2)
            self.probe_at = time.time() + self.probe_delay

    def release(self, token: object) -> None:
        if self.prober is token:
            self.prober = None

    async def pause(self, token: object, due: float, early_at: float, wake: asyncio.Event) -> None:
        """Wait for the next scheduled attempt (``due``), or less: "retry now" (``wake``), this lane is the prober
        and its probe is due, or the endpoint answered another lane and this lane may try early (``early_at``)."""
        cap = self.probe_max
        while True:
            now = time.time()
            if now >= due or wake.is_set():
                return
            if self.prober is None:
                self.prober = token
                self.probe_at = max(self.probe_at, now + min(self.probe_delay, cap))
            times = [due, now + cap]
            if self.prober is token:
                probe = max(self.probe_at, early_at)
                if now >= probe:
                    return
                times.append(probe)
            if self.recovered.is_set():
                if now >= early_at:
                    return
                times.append(early_at)
                await wait_any([wake], min(times) - now)
                continue
            await wait_any([wake, self.recovered], min(times) - now)
