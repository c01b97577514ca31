"""An endpoint failing without one success for ``disable_after`` is disabled. The streak start is kept in
``failing.<id>`` of the state bucket, so restarts and other processes share the clock."""

from __future__ import annotations

import time

from hub.deliver.engine.context import Context


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class Streak:
    def __init__(self, ctx: Context, grant_id: str):
        self.ctx, self.grant_id, self.key = ctx, grant_id, f"failing.{grant_id}"
        self.since: float | None = None

    async def load(self) -> None:
        try:
            entry = await self.ctx.state.get(self.key)
            self.since = float(entry.value.decode()) if entry.value else None
        except Exception:  # noqa: BLE001 - no failure streak recorded
            self.since = None

    async def over(self) -> None:
        if self.since is not None:
            self.since = None
            try:
                await self.ctx.state.delete(self.key)
            except Exception:  # noqa: BLE001
                pass

    async def failing(self, last_error: str | None) -> bool:
        """Record the failure streak; True when it has lasted long enough to disable the endpoint."""
        now = time.time()
        if self.since is None:
            self.since = now
            self.ctx.spawn(self._save(now))
        since = self.since
        if now - since >= self.ctx.disable_after:
            await self.ctx.disable(self.grant_id, f"failing continuously since {iso(since)} "
                                   f"(last error: {last_error})")
            return True
        return False

    async def _save(self, since: float) -> None:
        """Persist the streak start so restarts and other processes keep the same clock."""
        try:
            await self.ctx.state.create(self.key, repr(since).encode())
        except Exception:  # noqa: BLE001 - an earlier streak start exists: adopt it
            try:
                entry = await self.ctx.state.get(self.key)
                if self.since is not None and entry.value:
                    self.since = min(self.since, float(entry.value.decode()))
            except Exception:  # noqa: BLE001
                pass
