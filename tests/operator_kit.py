"""Operator-mode fixtures, written once: a test module that needs NATS with JWT auth takes them with

    data_dir, op_server, admin_nc = operator_fixtures("my-module")

``data_dir`` holds the trust chain (operator, accounts, service users), ``op_server`` is a nats-server in
operator mode trusting it, ``admin_nc`` a connection as the admin service user with every stream and bucket
of the hub created. All module-scoped; names can be changed where a module calls them otherwise.
"""

from __future__ import annotations

import nats
import pytest
import pytest_asyncio

from hub.auth import AuthStore
from hub.core.settings import HubSettings
from hub.core.streams import ensure_streams
from tests.helpers import start_operator_nats


def operator_fixtures(name: str, *, data_dir: str = "data_dir", server: str = "op_server", admin: str = "admin_nc",
                      mode: int | None = None):
    """The three fixtures, registered under the given names (assign them to module attributes)."""

    @pytest.fixture(scope="module", name=data_dir)
    def _data_dir(tmp_path_factory):
        path = tmp_path_factory.mktemp(name)
        if mode is not None:
            path.chmod(mode)
        return path

    @pytest.fixture(scope="module", name=server)
    def _server(request):
        srv = start_operator_nats(request.getfixturevalue(data_dir), name)
        yield srv
        srv.stop()

    @pytest_asyncio.fixture(scope="module", name=admin)
    async def _admin(request):
        srv, path = request.getfixturevalue(server), request.getfixturevalue(data_dir)
        nc = await nats.connect(srv.url, user_credentials=str(AuthStore.ensure(path).service_creds("admin")))
        await ensure_streams(nc.jetstream(), HubSettings(nats_url=srv.url))
        yield nc
        await nc.close()

    return _data_dir, _server, _admin
