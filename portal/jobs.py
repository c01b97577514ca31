"""Every background job of the portal, started and stopped together with the app: staying connected to NATS,
the once-after-upgrade move of direct subscriptions into their own accounts, and the minute jobs (retiring
rotated-out signing secrets, sampling the lag for the charts). A new periodic job goes in :func:`every_minute`."""

from __future__ import annotations

import asyncio
import logging

from portal.charts import sample_lag
from portal.services import Portal, endpoints

log = logging.getLogger("rthub.portal.jobs")


def start(portal: Portal) -> list[asyncio.Task]:
    return [asyncio.create_task(portal.keep_connected(), name="portal-nats"),
            asyncio.create_task(migrate_direct_access(portal), name="portal-direct-migration"),
            asyncio.create_task(every_minute(portal), name="portal-minute-jobs")]


def stop(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()


async def migrate_direct_access(portal: Portal) -> None:
    """Move direct subscriptions into their own NATS accounts once NATS answers (retried, never fatal)."""
    delay = 1.0
    while True:
        try:
            await portal.migrate_direct_access()
            return
        except Exception as exc:  # noqa: BLE001 - NATS down or store missing: logged, retried with backoff
            log.warning("moving direct subscriptions into their own accounts failed (%s); retrying in %.0f s",
                        exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 60.0)


async def every_minute(portal: Portal, period: float = 60.0) -> None:
    """Every minute: retire rotated-out secrets whose overlap ended, sample the lag for the charts."""
    while True:
        for job in (endpoints.retire_expired, sample_lag):
            try:
                await job(portal)
            except Exception:  # noqa: BLE001 - the loop must outlive a database or NATS hiccup
                log.exception("portal minute job %s failed", job.__name__)
        await asyncio.sleep(period)
