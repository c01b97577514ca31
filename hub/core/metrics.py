"""Prometheus metrics (``prometheus_client``) and a health check, served on ``/metrics`` and ``/health``.

Each service keeps its own registry (tests run several hubs in one process). Series are
``rthub_<name>_total{service, labels}`` for counters and ``rthub_<name>{service, labels}`` for gauges; a metric's
kind and label names are fixed by its first use. Counters are plain ints bumped on the hot path (a
prometheus_client child's ``inc`` costs ~3x a dict increment, and the hub counts three times per event) that
this object hands to prometheus_client as a custom collector at each scrape. The server is a few lines of
asyncio rather than prometheus_client's threaded one, so scrapes read the counters and the callable gauges on
the event loop that changes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

Labels = tuple[tuple[str, str], ...]


class Metrics:
    def __init__(self, service: str):
        self.service = service
        self.counters: dict[tuple[str, Labels], int] = {}  # (name, sorted labels) -> count
        self.values: dict[tuple[str, Labels], float] = {}  # labelled gauges (set())
        self.gauges: dict[str, Callable[[], float]] = {}  # gauges computed at each scrape
        self.help: dict[str, str] = {}
        self.healthy: Callable[[], bool] = lambda: True
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._kinds: dict[str, tuple[str, tuple[str, ...]]] = {}  # name -> (kind, label names)
        self._server: asyncio.base_events.Server | None = None

    def inc(self, name: str, n: int = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())) if labels else ())
        try:
            self.counters[key] += n
        except KeyError:
            self._declare(name, "counter", key[1])
            self.counters[key] = n

    def set(self, name: str, value: float, **labels: str) -> None:
        """A labelled gauge ``rthub_<name>{service, labels}``."""
        key = (name, tuple(sorted(labels.items())) if labels else ())
        if key not in self.values:
            self._declare(name, "gauge", key[1])
        self.values[key] = value

    def _declare(self, name: str, kind: str, labels: Labels) -> None:
        """Fix ``name``'s kind and label names at its first series; :class:`ValueError` on a mismatch later."""
        want = (kind, tuple(k for k, _ in labels))
        got = self._kinds.setdefault(name, want)
        if got != want:
            raise ValueError(f"metric {name!r} is a {got[0]} labelled {got[1]}, not a {kind} labelled {want[1]}")

    def retain(self, name: str, keep: set[Labels]) -> None:
        """Drop the series of gauge ``name`` whose labels are not in ``keep`` (an integration went away)."""
        for key in [k for k in self.values if k[0] == name and k[1] not in keep]:
            del self.values[key]

    def get(self, name: str, **labels: str) -> float:
        """The current value of a counter or labelled gauge (0 if it has no such series)."""
        key = (name, tuple(sorted(labels.items())))
        return self.counters.get(key, self.values.get(key, 0))

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4) of every series."""
        return generate_latest(self.registry).decode()

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's collector protocol: one family per metric name."""
        families: dict[str, Metric] = {}
        for series, family_type in ((self.counters, CounterMetricFamily), (self.values, GaugeMetricFamily)):
            for (name, labels), value in sorted(series.items()):
                family = families.get(name)
                if family is None:
                    family = families[name] = family_type(
                        f"rthub_{name}", self.help.get(name, name.replace("_", " ")),
                        labels=["service", *(k for k, _ in labels)])
                family.add_metric([self.service, *(v for _, v in labels)], value)
        yield from families.values()
        for name, fn in sorted(self.gauges.items()):
            family = GaugeMetricFamily(f"rthub_{name}", self.help.get(name, name.replace("_", " ")), labels=["service"])
            family.add_metric([self.service], fn())
            yield family

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
                    if (name, key) in self.values:
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
