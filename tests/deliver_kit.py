"""Helpers for the delivery tests: statements, integrations (grant + target) and an in-process deliverer."""

from __future__ import annotations

import contextlib
import uuid

import msgspec

from hub.core.grants import Grant, Target, delete_grant, put_grant
from hub.core.subjects import TARGETS_BUCKET, subject
from hub.deliver.service import Deliverer
from hub.deliver.settings import DeliverSettings
from hub.deliver.state.setup import ensure_delivery
from tests.helpers import unique, wait_for


def statement(n: int = 0, course: str = "c", bad: bool = False) -> dict:
    st = {"id": str(uuid.uuid4()), "timestamp": "2024-05-01T10:00:00Z",
          "actor": {"objectType": "Agent", "account": {"homePage": "http://lms", "name": "u1"}},
          "verb": {"id": "http://adlnet.gov/expapi/verbs/experienced", "display": {"en": "experienced"}},
          "object": {"objectType": "Activity", "id": f"http://lms/{course}/{n}"},
          "result": {"extensions": {"urn:n": n}}}
    if bad:
        del st["verb"]
    return st


async def publish(js, site: str, course: str, body: dict, protocol: str = "xapi", org: str = "Org",
                  event: str = "play_video") -> None:
    await js.publish(subject(protocol, site, org, f"course-v1:{org}+{course}+run", event),
                     msgspec.json.encode(body), headers={"Nats-Msg-Id": body["id"]})


def settings(nats_url: str, **over) -> DeliverSettings:
    base = dict(nats_url=nats_url, retry_schedule=["0.05s", "0.1s", "0.1s"], retry_jitter=0.0,
                allowed_networks=["127.0.0.1/32"], ack_wait="2s", lease_ttl="0.5s", request_timeout="3s")
    base.update(over)
    return DeliverSettings(**base)


async def put_target(js, target: Target) -> None:
    kv = await js.key_value(TARGETS_BUCKET)
    await kv.put(target.id, msgspec.json.encode(target))


async def get_target(js, gid: str) -> Target:
    kv = await js.key_value(TARGETS_BUCKET)
    return msgspec.json.decode((await kv.get(gid)).value, type=Target)


async def integration(js, kind: str, url: str, protocol: str = "xapi", **target_kw) -> tuple[str, str]:
    """A new push integration on its own site; returns ``(grant id, site)``."""
    gid, site = unique("g"), unique("site")
    await put_target(js, Target(id=gid, kind=kind, url=url, **target_kw))
    await put_grant(js, Grant(id=gid, consumer="c-" + gid, protocol=protocol, sites=[site], delivery=kind))
    return gid, site


async def remove(js, gid: str) -> None:
    await delete_grant(js, gid)
    kv = await js.key_value(TARGETS_BUCKET)
    await kv.delete(gid)


async def delivering(d: Deliverer, gid: str) -> None:
    await wait_for(lambda: gid in d.runners and d.runners[gid].leader.is_set(), 5, f"deliverer runs {gid}")


@contextlib.asynccontextmanager
async def deliverer(nc, nats_url: str, **over):
    s = settings(nats_url, **over)
    await ensure_delivery(nc.jetstream(), s)
    d = await Deliverer(nc, s).start()
    try:
        yield d
    finally:
        await d.stop()
