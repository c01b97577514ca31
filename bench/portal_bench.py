"""Portal figures: password-hash cost, and request/approve throughput of the service layer against a real
nats-server (started here on a free port) and a SQLite database in a temporary directory.

    .venv/bin/python bench/portal_bench.py [--n 50]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from hub.core.natsconn import connect
from hub.core.settings import HubSettings
from hub.core.streams import ensure_streams
from hub.ops.natsserver import NatsServer, free_port
from portal import db, security
from portal.services import Portal
from portal.settings import PortalSettings
from portal.tables import Account
from portal.validation import validate_request


async def main(n: int) -> None:
    t = time.perf_counter()
    for _ in range(5):
        security.hash_password("benchmark password")
    print(f"scrypt hash (n=2^17, r=8): {(time.perf_counter() - t) / 5 * 1000:.0f} ms each")
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(free_port(), Path(tmp) / "nats", name="bench").start()
        try:
            settings = PortalSettings(nats_url=server.url, data_dir=tmp)
            nc = await connect(HubSettings(nats_url=server.url), "bench")
            await ensure_streams(nc.jetstream(), HubSettings(nats_url=server.url))
            await nc.close()
            engine = await db.migrate(settings)
            portal = Portal(settings)
            owner = Account(email="bench@example.org", name="b", password_hash="!", email_verified=True)
            await owner.save()
            admin = Account(email="admin@example.org", name="a", password_hash="!", is_admin=True)
            spec, _ = validate_request({"name": "b", "protocol": "xapi", "delivery": "webhook",
                                        "url": "https://h.example.org/", "courses": "course-v1:a+b+c"}, {"default"})
            t = time.perf_counter()
            keys = [(await portal.create_integration(owner, spec)).key for _ in range(n)]
            created = time.perf_counter() - t
            t = time.perf_counter()
            for key in keys:
                await portal.approve(admin, key)
            approved = time.perf_counter() - t
            t = time.perf_counter()
            for key in keys:
                await portal.revoke(admin, key, "bench")
            revoked = time.perf_counter() - t
            print(f"{n} requests: create {created / n * 1000:.1f} ms, approve (grant + target + audit) "
                  f"{approved / n * 1000:.1f} ms, revoke {revoked / n * 1000:.1f} ms each")
            await portal.close()
            await db.close(engine)
        finally:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50)
    asyncio.run(main(parser.parse_args().n))
