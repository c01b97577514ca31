"""Issue 20 items 4 and 10, drilled with real processes: `rthub portal serve` against a nats-server in operator
mode that is stopped and started again. While NATS is away /health says "degraded" (naming NATS) and every page
and API route answers 503 with a message; it recovers by itself; and with RTHUB_LOG_JSON=true every line the
portal logs is a JSON object."""

from __future__ import annotations

import json

import httpx
import nats
import pytest

from hub.auth import AuthStore
from hub.core.creds import creds_inbox_prefix
from hub.core.settings import HubSettings
from hub.core.streams import ensure_streams
from hub.ops.natsserver import free_port, wait_port
from tests.helpers import rthub_env, rthub_popen, start_operator_nats, wait_for

pytestmark = pytest.mark.slow


async def test_portal_answers_503_while_nats_is_away_and_recovers_by_itself(tmp_path):
    data_dir = tmp_path / "data"
    server = start_operator_nats(data_dir, "portal-outage")
    auth = AuthStore.ensure(data_dir)
    admin = str(auth.service_creds("admin"))
    nc = await nats.connect(server.url, user_credentials=admin, inbox_prefix=creds_inbox_prefix(admin) or "_INBOX")
    await ensure_streams(nc.jetstream(), HubSettings(nats_url=server.url))
    await nc.close()
    port = free_port()
    env = rthub_env(server.url, RTHUB_DATA_DIR=str(data_dir), RTHUB_NATS_CREDS=str(auth.service_creds("portal")),
                    RTHUB_PORTAL_PORT=str(port), RTHUB_LOG_JSON="true")
    portal = rthub_popen("portal", "serve", env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_port(port, 30)
        async with httpx.AsyncClient(base_url=base, timeout=10) as web:

            async def health_is(status: str) -> bool:
                return (await web.get("/health")).json()["status"] == status

            await wait_for(lambda: health_is("ok"), 15, "/health ok")
            assert (await web.get("/login")).status_code == 200

            server.stop()
            await wait_for(lambda: health_is("degraded"), 10, "/health degraded once NATS stops")
            health = await web.get("/health")
            assert health.status_code == 503 and health.json()["down"] == ["nats"]
            assert "NATS is unreachable" in health.json()["detail"]
            page = await web.get("/login")
            assert page.status_code == 503 and "NATS is unreachable" in page.text and "<html" in page.text
            api = await web.get("/api/v1/integrations", headers={"Authorization": "Bearer rthub_x"})
            assert api.status_code == 503 and "NATS is unreachable" in api.json()["error"]
            me = await web.get("/api/v1/me")
            assert me.status_code == 503 and "NATS is unreachable" in me.json()["error"]

            server.start()
            await wait_for(lambda: health_is("ok"), 20, "/health ok again once NATS is back, with no hand")
            assert (await web.get("/health")).status_code == 200
            assert (await web.get("/login")).status_code == 200
            api = await web.get("/api/v1/integrations", headers={"Authorization": "Bearer rthub_x"})
            assert api.status_code == 401  # back to the ordinary answer
    finally:
        portal.terminate()
        out, err = portal.communicate(timeout=15)
        server.stop()
    lines = [line for line in (out + err).decode().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line the portal wrote is JSON (item 10)
    said = [r["msg"] for r in records]
    assert any(m.startswith(f"portal on http://127.0.0.1:{port}/") for m in said), said
    lost = [m for m in said if m.startswith("NATS connection lost")]
    assert len(lost) == 1, "\n".join(said)  # one line per state change, not one per request or retry
    assert "Traceback" not in "".join(lines)
