"""Settings: one msgspec struct per service, read from ``RTHUB_*`` environment variables.

Every field ``foo`` of a settings struct is read from ``RTHUB_FOO``; lists and dicts are JSON (a list may
also be comma-separated). ``env_names(*structs)`` lists the variables those structs read, so compose.yaml can
be checked against every service's settings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from hub.core.events import MAX_EVENT_BYTES, MAX_EVENT_DEPTH, Limits

T = TypeVar("T", bound=msgspec.Struct)
ENV_PREFIX = "RTHUB_"


def register(cls: type[T]) -> type[T]:
    """Marks a class as a settings struct read by :func:`from_env` (documentation only: no registry)."""
    return cls


def env_names(*structs: type[msgspec.Struct]) -> set[str]:
    """Every environment variable the given settings structs read (fields inherited included)."""
    return {ENV_PREFIX + f.upper() for cls in structs for f in cls.__struct_fields__}


def _parse(raw: str) -> Any:
    text = raw.strip()
    if text[:1] in "[{":
        return json.loads(text)
    return raw


def from_env(cls: type[T], env: dict[str, str] | None = None, **overrides: Any) -> T:
    """Build ``cls`` from the environment; explicit ``overrides`` (not None) win."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name in cls.__struct_fields__:
        key = ENV_PREFIX + name.upper()
        if key in env and env[key] != "":
            values[name] = _parse(env[key])
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "nats_url" in cls.__struct_fields__ and "nats_url" not in values:
        values.update(_from_up_file(Path(str(values.get("data_dir") or ".rthub")), "nats_creds" not in values))
    for f in msgspec.structs.fields(cls):  # resolved types of inherited fields too, in field order
        name, field_type = f.name, f.type
        value = values.get(name)
        if isinstance(value, str) and "list" in str(field_type):
            values[name] = [v.strip() for v in value.split(",") if v.strip()]
    try:
        return msgspec.convert(values, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise SystemExit(f"invalid setting for {cls.__name__}: {exc}") from None


def _from_up_file(data_dir: Path, want_creds: bool) -> dict[str, str]:
    """NATS URL (and admin creds) of a running ``rthub up`` from ``<data dir>/up.json``, for the other commands run
    from the same folder (``up`` may have picked a free port). Only a loopback URL and creds inside the data
    dir are taken from the file: a planted file must not send an administrator's commands elsewhere."""
    try:
        info = json.loads((data_dir / "up.json").read_text())
    except (OSError, ValueError):
        return {}
    url = info.get("nats_url") if isinstance(info, dict) else None
    if not isinstance(url, str) or not all(u.strip().startswith("nats://127.0.0.1:") for u in url.split(",")):
        return {}
    out = {"nats_url": url}
    creds = info.get("nats_creds")
    if want_creds and isinstance(creds, str) and Path(creds).resolve().is_relative_to(data_dir.resolve()):
        out["nats_creds"] = creds
    return out


@register
class NatsSettings(msgspec.Struct, kw_only=True):
    """How a service reaches NATS."""

    nats_url: str = "nats://127.0.0.1:4222"
    nats_creds: str | None = None
    data_dir: str = ".rthub"

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


@register
class StreamSettings(NatsSettings, kw_only=True):
    """Stream sizing; raw events carry personal data, so their retention is bounded."""

    raw_max_age_days: float = 7.0
    protocol_max_age_days: float = 30.0
    quarantine_max_age_days: float = 7.0
    stream_replicas: int = 1
    duplicate_window_s: float = 120.0


@register
class HubSettings(StreamSettings, kw_only=True):
    """The hub service (``rthub hub``)."""

    sites: dict[str, str] = msgspec.field(default_factory=lambda: {"default": "http://localhost:18000"})
    default_site: str = "default"
    batch_size: int = 500
    # one limit for hub and publishers: the same variables feed PublisherSettings (hub.core.events.Limits)
    max_event_bytes: int = MAX_EVENT_BYTES
    max_event_depth: int = MAX_EVENT_DEPTH
    hub_consumer: str = "hub"
    # Open edX Events (hub.route.openedx): the event-bus topics the hub consumes, as on the bus
    # (``<EVENT_BUS_TOPIC_PREFIX>-<topic>``), with its own durable consumer; none = the route is off.
    openedx_topics: list[str] = msgspec.field(default_factory=list)
    openedx_consumer: str = "hub_openedx"
    # A raw message not acked after this many deliveries is moved to quarantine (max-deliveries advisory),
    # so no message, whatever bug it meets, can be redelivered for ever; ack wait in seconds.
    hub_max_deliver: int = 10
    hub_ack_wait_s: float = 30.0
    hub_pull_expires_s: float = 5.0  # a pull request's life; idle heartbeats every min(1 s, half of it)
    hub_publish_timeout_s: float = 30.0  # a batch's statements not acked within this are published again
    metrics_port: int = 0
    lag_poll_s: float = 5.0
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container, so a scraper outside it can reach /metrics
    id_secret: str | None = None
    external_ids_file: str | None = None
    log_json: bool = False

    def lms_url(self, site: str) -> str | None:
        return self.sites.get(site)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_event_bytes, self.max_event_depth)
