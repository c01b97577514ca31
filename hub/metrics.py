"""Prometheus metrics (``prometheus_client``) and a health check, served on ``/metrics`` and ``/health``.

Each service keeps its own registry (tests run several hubs in one process). Series are
``rthub_<name>_total{service, labels}`` for counters and ``rthub_<name>{service, labels}`` for gauges; a metric's
label names are fixed by its first use. The server is a few lines of asyncio rather than prometheus_client's
threaded one, so scrapes read the callable gauges on the event loop that changes what they read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

# No ``rthub_<name>_created`` series beside each counter: nobody reads them, and they doubled every scrape.
prometheus_client.disable_created_metrics()

Labels = tuple[tuple[str, str], ...]


class Metrics:
    def __init__(self, service: str):
        self.service = service
        self.registry = CollectorRegistry(auto_describe=False)
        self.help: dict[str, str] = {}  # name -> help text, read when the metric is first used
        self.gauges: dict[str, Callable[[], float]] = {}  # gauges computed at each scrape
        self.healthy: Callable[[], bool] = lambda: True
        self._families: dict[str, Counter | Gauge] = {}
        # (name, sorted labels) -> prometheus child, per kind
        self._counted: dict[tuple[str, Labels], object] = {}
        self._gauged: dict[tuple[str, Labels], object] = {}
        self._server: asyncio.base_events.Server | None = None
        self.registry.register(_Computed(self))

    def _child(self, kind: type[Counter] | type[Gauge], name: str, labels: Labels):
        family = self._families.get(name)
        if family is None:
            family = kind(f"rthub_{name}", self.help.get(name, name.replace("_", " ")),
                          ["service", *(k for k, _ in labels)], registry=self.registry)
            self._families[name] = family
        elif not isinstance(family, kind):
            raise ValueError(f"metric {name!r} is a {type(family).__name__}, not a {kind.__name__}")
        child = family.labels(self.service, *(v for _, v in labels))
        (self._counted if kind is Counter else self._gauged)[(name, labels)] = child
        return child

    def inc(self, name: str, n: int = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items())) if labels else ()
        child = self._counted.get((name, key))
        if child is None:
            child = self._child(Counter, name, key)
        child.inc(n)

    def set(self, name: str, value: float, **labels: str) -> None:
        """A labelled gauge ``rthub_<name>{service, labels}``."""
        key = tuple(sorted(labels.items())) if labels else ()
        child = self._gauged.get((name, key))
        if child is None:
            child = self._child(Gauge, name, key)
        child.set(value)

    def retain(self, name: str, keep: set[Labels]) -> None:
        """Drop the series of gauge ``name`` whose labels are not in ``keep`` (an integration went away)."""
        for key in [k for k in self._gauged if k[0] == name and k[1] not in keep]:
            del self._gauged[key]
            self._families[name].remove(self.service, *(v for _, v in key[1]))

    def get(self, name: str, **labels: str) -> float:
        """The current value of a counter or labelled gauge (0 if it has no such series)."""
        family = self._families.get(name)
        if family is None:
            return 0
        want = {"service": self.service, **labels}
        sample = f"rthub_{name}_total" if isinstance(family, Counter) else f"rthub_{name}"
        for metric in family.collect():
            for s in metric.samples:
                if s.name == sample and s.labels == want:
                    return int(s.value) if isinstance(family, Counter) else s.value
        return 0

    @property
    def counters(self) -> dict[tuple[str, Labels], int]:
        """``{(name, sorted labels): count}`` of every counter series (for the log line at stop)."""
        return {key: int(self.get(key[0], **dict(key[1]))) for key in self._counted}

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4) of every series."""
        return generate_latest(self.registry).decode()

    async def poll_lag(self, js, name: str, consumers: Callable[[], list[tuple[str, str, dict[str, str]]]],
                       interval: float = 5.0) -> None:
        """Keep gauge ``rthub_<name>{labels}`` = messages of each ``(stream, durable, labels)`` consumer not yet
        acknowledged (``num_pending + num_ack_pending``, what ``delivery-status`` calls lag), every ``interval``."""
        self.help.setdefault(name, "messages not yet acknowledged by the consumer (num_pending + num_ack_pending)")
        while True:
            keep = set()
            for stream, durable, labels in consumers():
                key = tuple(sorted(labels.items()))
                try:
                    info = await js.consumer_info(stream, durable)
                except Exception:  # noqa: BLE001 - NATS away or consumer not created yet: keep the last value
                    if (name, key) in self._gauged:
                        keep.add(key)
                    continue
                self.set(name, (info.num_pending or 0) + (info.num_ack_pending or 0), **labels)
                keep.add(key)
            self.retain(name, keep)
            await asyncio.sleep(interval)

    async def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve on ``host:port`` (port 0 picks one); returns the bound port."""

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                request = await asyncio.wait_for(reader.readline(), 5)
                while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                    pass
                path = request.split(b" ")[1] if request.count(b" ") >= 2 else b"/"
                if path == b"/metrics":
                    status, data, ctype = 200, generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4
                elif path == b"/health":
                    ok = self.healthy()
                    status, data, ctype = (200 if ok else 503), (b"ok\n" if ok else b"unhealthy\n"), "text/plain"
                else:
                    status, data, ctype = 404, b"not found\n", "text/plain"
                writer.write(
                    f"HTTP/1.1 {status} {'OK' if status == 200 else 'ERR'}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data
                )
                await writer.drain()
            except (TimeoutError, ConnectionError, IndexError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_server(handle, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server:
            self._server.close()


class _Computed:
    """The gauges in ``Metrics.gauges``, each computed when scraped."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        m = self.metrics
        for name, fn in sorted(m.gauges.items()):
            family = GaugeMetricFamily(f"rthub_{name}", m.help.get(name, name.replace("_", " ")), labels=["service"])
            family.add_metric([m.service], fn())
            yield family
