"""Issue 24: a direct subscriber written with the official NATS JavaScript clients (``nats`` 2.29.3 and
``@nats-io/jetstream`` 3.4.0 with ``@nats-io/transport-node`` 3.4.0, pinned in tests/js/package.json and package-lock.json) against a real
operator-mode nats-server: the ``.creds`` file, the inbox prefix, ``js.consumers.get()`` with the JS API prefix,
fetch and ack. The test installs the packages itself (``npm ci``), so CI runs it from the repo's own files."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import nats
import pytest

from hub.auth import AuthStore, ensure_consumer
from hub.core.grants import Grant, consumer_name
from hub.core.settings import HubSettings
from hub.core.streams import ensure_streams
from hub.core.subjects import subject
from tests.helpers import unique
from tests.operator_kit import operator_fixtures

JS_DIR = Path(__file__).parent / "js"
pytestmark = pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                reason="node and npm are needed (apt-get install nodejs npm)")

data_dir, server, admin_nc = operator_fixtures("jsinterop", server="server")


@pytest.fixture(scope="module")
def node_modules():
    """``npm ci`` from the lock file: exactly the pinned versions."""
    done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return JS_DIR / "node_modules"


@pytest.mark.asyncio
@pytest.mark.parametrize("client", ["nats 2.29.3", "@nats-io/jetstream 3.4.0"])
async def test_javascript_subscriber_pulls_and_acks_its_statements(server, data_dir, node_modules, tmp_path, client):
    auth = AuthStore.ensure(data_dir)
    admin = await nats.connect(server.url, user_credentials=str(auth.service_creds("admin")))
    try:
        js = admin.jetstream()
        await ensure_streams(js, HubSettings(nats_url=server.url))
        course, other = "course-v1:Js+Mine+1", "course-v1:Js+Other+1"
        grant = Grant(id=unique("js"), consumer="js-client", protocol="xapi", sites=["s1"], courses=[course])
        await ensure_consumer(js, grant)
        creds, _ = await auth.issue_consumer_creds(admin, grant, 3600)
        creds_file = tmp_path / "js.creds"
        creds_file.write_text(creds)
        want = [unique("st") for _ in range(20)]
        for n, ident in enumerate(want):
            await js.publish(subject("xapi", "s1", "Js", course, "played"), json.dumps({"id": ident}).encode(),
                             headers={"Nats-Msg-Id": ident})
            await js.publish(subject("xapi", "s1", "Js", other, "played"), json.dumps({"id": f"other{n}"}).encode())
        node = await asyncio.create_subprocess_exec(
            "node", "subscriber.mjs", server.url, str(creds_file), grant.id, "XAPI", str(len(want)),
            cwd=JS_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **({"RTHUB_JS_SPLIT": "1"} if client.startswith("@") else {})})
        out, err = await asyncio.wait_for(node.communicate(), 60)
        result = json.loads(out.decode().strip().splitlines()[-1])
        assert node.returncode == 0, (result, err.decode()[-2000:])
        assert result["consumer"] == consumer_name(grant.id) and result["ids"] == want  # all, in order, no other
        info = await js.consumer_info("XAPI", consumer_name(grant.id))
        assert info.num_ack_pending == 0 and info.num_pending == 0  # every statement acked by the JS client
    finally:
        await admin.close()
