"""Prometheus counters and a health check, served by a tiny asyncio HTTP server (``/metrics``, ``/health``).

Hand-written because it is a few lines: counters are plain ints bumped on the hot path, no locks
(one event loop per service).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable


class Metrics:
    def __init__(self, service: str):
        self.service = service
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], int] = defaultdict(int)
        self.help: dict[str, str] = {}
        self.gauges: dict[str, Callable[[], float]] = {}
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}  # labelled gauges (set())
        self.healthy: Callable[[], bool] = lambda: True
        self._server: asyncio.base_events.Server | None = None

    def inc(self, name: str, n: int = 1, **labels: str) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] += n

    def set(self, name: str, value: float, **labels: str) -> None:
        """A labelled gauge ``rthub_<name>{service, labels}``."""
        self.values[(name, tuple(sorted(labels.items())))] = value

    def retain(self, name: str, keep: set[tuple[tuple[str, str], ...]]) -> None:
        """Drop the series of gauge ``name`` whose labels are not in ``keep`` (an integration went away)."""
        for key in [k for k in self.values if k[0] == name and k[1] not in keep]:
            del self.values[key]

    def get(self, name: str, **labels: str) -> int:
        return self.counters.get((name, tuple(sorted(labels.items()))), 0)

    def render(self) -> str:
        lines: list[str] = []
        seen: set[str] = set()
        for (name, labels), value in sorted(self.counters.items()):
            metric = f"rthub_{name}_total"
            if metric not in seen:
                seen.add(metric)
                lines.append(f"# HELP {metric} {self.help.get(name, name.replace('_', ' '))}")
                lines.append(f"# TYPE {metric} counter")
            label_text = ",".join(f'{k}="{v}"' for k, v in (("service", self.service), *labels))
            lines.append(f"{metric}{{{label_text}}} {value}")
        for name, fn in sorted(self.gauges.items()):
            lines.append(f"# TYPE rthub_{name} gauge")
            lines.append(f'rthub_{name}{{service="{self.service}"}} {fn()}')
        for (name, labels), value in sorted(self.values.items()):
            metric = f"rthub_{name}"
            if metric not in seen:
                seen.add(metric)
                lines.append(f"# HELP {metric} {self.help.get(name, name.replace('_', ' '))}")
                lines.append(f"# TYPE {metric} gauge")
            label_text = ",".join(f'{k}="{v}"' for k, v in (("service", self.service), *labels))
            lines.append(f"{metric}{{{label_text}}} {value:g}")
        return "\n".join(lines) + "\n"

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
        """Serve on ``port`` (0 picks one); returns the bound port."""

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                request = await asyncio.wait_for(reader.readline(), 5)
                while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                    pass
                path = request.split(b" ")[1] if request.count(b" ") >= 2 else b"/"
                if path == b"/metrics":
                    status, body, ctype = 200, self.render(), "text/plain; version=0.0.4"
                elif path == b"/health":
                    ok = self.healthy()
                    status, body, ctype = (200 if ok else 503), ("ok\n" if ok else "unhealthy\n"), "text/plain"
                else:
                    status, body, ctype = 404, "not found\n", "text/plain"
                data = body.encode()
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
