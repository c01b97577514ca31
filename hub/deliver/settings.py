"""Settings of the deliverer (``rthub deliver``) and of the delivery operator tools."""

from __future__ import annotations

import msgspec

from hub.core.settings import StreamSettings, register


@register
class DeliverSettings(StreamSettings, kw_only=True):
    """Durations are strings like ``5s``, ``5m``, ``2h``, ``1d`` (or plain seconds).

    ``allowed_networks`` are CIDRs an administrator lets targets reach although they are private
    (tests allow ``127.0.0.1/32``); everything private, loopback, link-local, CGNAT or unique-local is refused
    otherwise. ``secrets_key`` opens the secrets the portal sealed in the targets bucket (``hub.core.secretbox``:
    this setting, else ``<data_dir>/secrets.key``); it must be the portal's.
    """

    retry_schedule: list[str] = msgspec.field(
        default_factory=lambda: ["5s", "5m", "30m", "2h", "5h", "10h", "10h"])
    retry_jitter: float = 0.1
    probe_min: str = "1s"
    probe_max: str = "15s"
    max_retry_after: str = "10h"
    connect_timeout: str = "5s"
    request_timeout: str = "15s"
    allowed_networks: list[str] = []
    https_only: bool = False
    disable_after: str = "5d"
    attempt_log_retention: str = "7d"
    response_excerpt_bytes: int = 512
    max_in_flight: int = 5000
    fetch_batch: int = 500
    ack_wait: str = "10s"
    lease_ttl: str = "5s"
    partitions: int = 0  # course partitions per ordered integration (0: one process delivers it; see partitions.py)
    converge_backoff_max: str = "10s"
    lag_poll: str = "5s"
    behind_window: str = "60s"
    caliper_sensor: str = "urn:rthub:deliverer"
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container, so a scraper outside it can reach /metrics
    log_json: bool = False
    secrets_key: str = ""
    # identity fields at the edge (issue 22): the hub's anonymization, to name a statement's learner for grants
    # approved for identity; the same values as the hub's (or the same data directory)
    id_secret: str | None = None
    external_ids_file: str | None = None


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def seconds(text: str | float | int) -> float:
    """``"5m"`` -> 300.0; plain numbers are seconds."""
    if isinstance(text, int | float):
        return float(text)
    value = text.strip().lower()
    for unit in ("ms", "s", "m", "h", "d"):
        if value.endswith(unit) and value[: -len(unit)].replace(".", "", 1).isdigit():
            return float(value[: -len(unit)]) * _UNITS[unit]
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use e.g. 5s, 5m, 2h, 1d)") from None
