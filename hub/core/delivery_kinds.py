"""Delivery kinds: how an integration receives its events, each named once here with what sets it apart.

Everything that asks "does this kind have an endpoint?", "which protocol can it carry?", "which credential does
its endpoint need?" reads this table (grants, the deliverer, permissions, the portal's forms and pages). A new
kind is a row here plus its request builder (:mod:`hub.deliver.transport.request`) and, if its answers mean
something special, :mod:`hub.deliver.engine.retry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hub.core.protocols import NAMES


@dataclass(frozen=True)
class DeliveryKind:
    name: str
    label: str  # as the portal offers it
    push: bool  # the deliverer sends to an endpoint; otherwise the consumer pulls with its own .creds
    protocols: tuple[str, ...]  # the protocols an endpoint of this kind understands (NAMES: every one)
    credential: str | None = None  # what the endpoint requires: "basic_auth", "bearer" or nothing
    signed: bool = False  # requests carry Standard Webhooks signatures (the integration has signing secrets)
    conflict_is_stored: bool = False  # a 409 answer means "already stored" (an xAPI LRS given a known id)
    rejects_whole_batch: bool = False  # a 400/409 refuses the whole batch for one statement: split it


WEBHOOK = DeliveryKind("webhook", "Webhook (signed POST, Standard Webhooks)", push=True, protocols=NAMES,
                       signed=True)
LRS = DeliveryKind("lrs", "xAPI LRS endpoint", push=True, protocols=("xapi",), credential="basic_auth",
                   conflict_is_stored=True, rejects_whole_batch=True)
CALIPER = DeliveryKind("caliper", "Caliper endpoint (bearer token)", push=True, protocols=("caliper",),
                       credential="bearer")
DIRECT = DeliveryKind("direct", "Direct NATS subscription (.creds file)", push=False, protocols=NAMES)

KINDS: dict[str, DeliveryKind] = {k.name: k for k in (WEBHOOK, LRS, CALIPER, DIRECT)}  # the portal's order
PUSH: tuple[str, ...] = tuple(k.name for k in KINDS.values() if k.push)
DeliveryName = Literal[tuple(KINDS)]  # type: ignore[valid-type]  # msgspec validates grants against it
PushName = Literal[PUSH]  # type: ignore[valid-type]  # a Target's kind


def is_push(name: str) -> bool:
    """Whether the deliverer sends this kind (unknown names: no)."""
    kind = KINDS.get(name)
    return bool(kind and kind.push)
