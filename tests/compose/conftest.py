"""Compose-based integration tests: they run only inside compose.yaml's ``tests`` service
(``docker compose --profile tests run --rm tests``), which sets ``RTHUB_COMPOSE_TESTS=1``; anywhere else the
folder is not collected (a plain ``pytest -q`` stays a local run)."""

from __future__ import annotations

import os

import pytest
import pytest_asyncio

if not os.environ.get("RTHUB_COMPOSE_TESTS"):
    collect_ignore_glob = ["test_*.py"]
else:
    from tests.compose.stack import Docker, Portal, Stack

    @pytest_asyncio.fixture(scope="session")
    async def docker():
        client = await Docker.connect()
        yield client
        await client.close()

    @pytest_asyncio.fixture(scope="session")
    async def stack(docker):
        """The running stack: an admin NATS connection, the portal, and a check that the deliverers may reach
        the receivers' network (else every delivery would be refused as SSRF, with no clear message)."""
        subnet = os.environ["RTHUB_RECEIVERS_SUBNET"]
        for name in ("deliverer-1", "deliverer-2"):
            allowed = (await docker.env(name)).get("RTHUB_ALLOWED_NETWORKS", "")
            if subnet not in allowed:
                pytest.fail(f"{name} does not allow the receivers' network {subnet}: start the stack with "
                            f"RTHUB_ALLOWED_NETWORKS={subnet} docker compose up -d --wait")
        s = await Stack.open()
        yield s
        await s.close()

    @pytest_asyncio.fixture(scope="session")
    async def portal(stack):
        p = await Portal.open(stack)
        yield p
        await p.close()
