"""Membership that follows the LMS: edx-enterprise's own models (migrated into SQLite in a plain Django project,
run in its own process as the LMS would) link, unlink and delete learners; the rthub tracking backend publishes
the changes to a real nats-server and the hub applies them to its learner groups. Retirement too."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import pytest_asyncio

from hub.core.groups import MEMBER_ADDED, get_group
from hub.core.settings import HubSettings
from hub.route.service import serve
from lms_publisher.groups import enterprise_group, membership_event
from tests.helpers import ROOT, unique, wait_for


def test_membership_event_shape():
    ev = membership_event(MEMBER_ADDED, "7", enterprise_group("6ae5"), "ada", "ada@acme.example")
    assert ev["name"] == "rthub.group.member_added" and ev["context"] == {}
    assert ev["data"] == {
        "user_id": 7,
        "group": "enterprise-6ae5",
        "username": "ada",
        "email": "ada@acme.example",
    }


class Lms:
    """tests/enterprise_lms.py in a subprocess: one command a line, one answer a line."""

    def __init__(self, tmp_path, nats_url: str, site: str):
        env = {
            **os.environ,
            "RTHUB_TEST_DB": str(tmp_path / "lms.sqlite3"),
            "RTHUB_TEST_NATS": nats_url,
            "RTHUB_TEST_SPOOL": str(tmp_path / "spool"),
            "RTHUB_TEST_SITE": site,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.enterprise_lms"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    async def line(self) -> str:
        got = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), 180)
        assert got, "the LMS process ended"
        return got.strip()

    async def do(self, *words) -> str:
        self.proc.stdin.write(" ".join(str(w) for w in words) + "\n")
        self.proc.stdin.flush()
        return await self.line()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest_asyncio.fixture
async def hub(nats_server, tmp_path):
    site = unique("lms")
    settings = HubSettings(
        nats_url=nats_server.url,
        data_dir=str(tmp_path / "hub"),
        id_secret="s",
        metrics_port=-1,
        sites={site: "https://lms.example"},
    )
    stop, hubs = asyncio.Event(), []
    task = asyncio.create_task(serve(settings, stop, ready=hubs.append))
    await wait_for(lambda: hubs, 10, "hub start")
    yield hubs[0], site
    stop.set()
    assert await asyncio.wait_for(task, 15) == 0


@pytest.mark.slow
async def test_enterprise_links_follow_into_the_hub(hub, nats_server, js, tmp_path):
    hub, site = hub  # type: Hub, str
    lms = Lms(tmp_path, nats_server.url, site)
    try:
        assert await lms.line() == "ready"  # edx-enterprise's migrations ran
        uuid = await lms.do("customer", "acme")
        group = enterprise_group(uuid)
        for uid, name in ((7, "ada"), (8, "bob")):
            assert await lms.do("user", uid, name, f"{name}@acme.example") == "ok"

        def groups_of(uid: int):
            return hub.membership.groups_of(site, str(uid))

        assert await lms.do("link", uuid, 7) == "ok"
        assert await lms.do("link", uuid, 8) == "ok"
        await wait_for(
            lambda: groups_of(7) == groups_of(8) == {group}, 20, "both linked learners in the group"
        )
        assert (await get_group(js, group)).site == site
        ada = hub.membership.learners[(site, "7")]
        assert (ada.username, ada.email) == ("ada", "ada@acme.example")

        assert await lms.do("unlink", uuid, 7) == "ok"  # edx-enterprise's soft delete (linked=False)
        await wait_for(lambda: not groups_of(7) and groups_of(8) == {group}, 20, "the unlinked learner out")
        assert await lms.do("delete", uuid, 8) == "ok"
        await wait_for(lambda: not groups_of(8), 20, "the deleted link out")
        assert await lms.do("link", uuid, 7) == "ok"  # relinked
        await wait_for(lambda: groups_of(7) == {group}, 20, "the relinked learner back")

        assert await lms.do("retire", 7) == "ok"
        await wait_for(
            lambda: (site, "7") not in hub.membership.learners, 20, "the retired learner forgotten"
        )
        assert hub.metrics.get("group_changes") == 6
    finally:
        lms.close()
