"""hub.core.metrics: the exposition a scraper reads over real HTTP, the health check and the bind address."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hub.core.metrics import Metrics


async def http_get(host: str, port: int, path: str) -> tuple[int, str, str]:
    """``(status, content type, body)`` of one GET."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers["Content-Type"], body


async def test_scrape_has_each_series_once_with_its_labels_and_health_follows_the_service():
    m = Metrics("deliver")
    m.inc("delivered", 3, integration="a")
    m.inc("delivered", integration="b")
    m.inc("delivered", integration="a")
    m.inc("received")
    m.help["integration_lag"] = "statements not yet delivered"
    m.set("integration_lag", 5, integration="a")
    m.set("integration_lag", 7, integration="gone")
    m.retain("integration_lag", {(("integration", "a"),)})
    running = {"n": 2}
    m.gauges["integrations_delivering"] = lambda: running["n"]
    port = await m.serve(0)
    try:
        status, ctype, text = await http_get("127.0.0.1", port, "/metrics")
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert sorted(families) == ["rthub_delivered", "rthub_integration_lag", "rthub_integrations_delivering",
                                    "rthub_received"]
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
        assert samples == {
            ("rthub_delivered_total", (("integration", "a"), ("service", "deliver"))): 4,
            ("rthub_delivered_total", (("integration", "b"), ("service", "deliver"))): 1,
            ("rthub_received_total", (("service", "deliver"),)): 1,
            ("rthub_integration_lag", (("integration", "a"), ("service", "deliver"))): 5,
            ("rthub_integrations_delivering", (("service", "deliver"),)): 2,
        }
        assert families["rthub_integration_lag"].documentation == "statements not yet delivered"
        assert families["rthub_delivered"].type == "counter" and families["rthub_integration_lag"].type == "gauge"
        # one HELP/TYPE block per metric, no *_created series
        type_lines = [line for line in text.splitlines() if line.startswith("# TYPE")]
        assert len(type_lines) == len(set(type_lines)) == 4 and "_created" not in text

        running["n"] = 1
        assert 'rthub_integrations_delivering{service="deliver"} 1.0\n' in m.render()
        assert (m.get("delivered", integration="a"), m.get("received"), m.get("integration_lag", integration="a"),
                m.get("nothing"), m.get("delivered", integration="zzz")) == (4, 1, 5.0, 0, 0)
        assert m.counters == {("delivered", (("integration", "a"),)): 4, ("delivered", (("integration", "b"),)): 1,
                              ("received", ()): 1}

        assert (await http_get("127.0.0.1", port, "/health"))[::2] == (200, "ok\n")
        m.healthy = lambda: False
        assert (await http_get("127.0.0.1", port, "/health"))[::2] == (503, "unhealthy\n")
        assert (await http_get("127.0.0.1", port, "/nope"))[0] == 404
    finally:
        await m.close()


def test_a_metric_keeps_its_kind_and_label_names():
    m = Metrics("hub")
    m.inc("translated", protocol="xapi")
    with pytest.raises(ValueError):
        m.set("translated", 1, protocol="xapi")
    with pytest.raises(ValueError):
        m.inc("translated", site="x", protocol="xapi")


async def test_serves_only_on_the_configured_address():
    m = Metrics("hub")
    port = await m.serve(0, "127.0.0.2")  # the whole of 127/8 is loopback on Linux
    try:
        assert (await http_get("127.0.0.2", port, "/health"))[0] == 200
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
    finally:
        await m.close()
