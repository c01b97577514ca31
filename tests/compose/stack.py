"""What the compose tests drive: the Docker engine (kill and start the stack's containers, through the socket
compose.yaml mounts into the tests service), the NATS cluster (admin and publisher ``.creds``), the LMS backend,
the portal (on PostgreSQL) and the receivers running as services."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import socket
import tarfile
import tempfile
from dataclasses import dataclass, field

import httpx
from eventtracking.tracker import Tracker
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from hub.core.natsconn import connect
from hub.core.settings import HubSettings
from hub.core.subjects import filter_subject
from lms_publisher.backend import NatsBackend
from tests.helpers import rthub, rthub_env, unique, wait_for

PORTAL = "http://portal:8080"
WEBHOOK = "http://webhook:8000"
LRS = "http://lrs:8000"
ORG = "CmpX"  # every event the compose tests emit is of this organisation; the demo uses others


class Docker:
    """The Docker Engine API over its unix socket: the containers of this compose project, by service name."""

    def __init__(self, http: httpx.AsyncClient, project: str):
        self.http, self.project = http, project

    @classmethod
    async def connect(cls, sock: str = "/var/run/docker.sock") -> Docker:
        http = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=sock), base_url="http://docker", timeout=60)
        me = (await http.get(f"/containers/{socket.gethostname()}/json")).raise_for_status().json()
        return cls(http, me["Config"]["Labels"]["com.docker.compose.project"])

    async def close(self) -> None:
        await self.http.aclose()

    async def container(self, service: str) -> dict:
        filters = {"label": [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]}
        found = (await self.http.get("/containers/json", params={"all": "true", "filters": json.dumps(filters)})
                 ).raise_for_status().json()
        assert len(found) == 1, f"{service}: {len(found)} containers"
        return (await self.http.get(f"/containers/{found[0]['Id']}/json")).raise_for_status().json()

    async def env(self, service: str) -> dict[str, str]:
        return dict(e.split("=", 1) for e in (await self.container(service))["Config"]["Env"])

    async def kill(self, service: str) -> None:
        """SIGKILL, as ``docker compose kill`` does; a killed container stays down until ``start``."""
        cid = (await self.container(service))["Id"]
        (await self.http.post(f"/containers/{cid}/kill")).raise_for_status()
        await wait_for(lambda: self.running(service, False), 30, f"{service} to stop")

    async def start(self, service: str, timeout: float = 90) -> None:
        """``docker compose start``, then wait until its health check passes again."""
        cid = (await self.container(service))["Id"]
        r = await self.http.post(f"/containers/{cid}/start")
        assert r.status_code in (204, 304), r.text
        await wait_for(self.healthy_check(service), timeout, f"{service} healthy again")

    async def files(self, service: str, path: str) -> dict[str, bytes]:
        """The regular files under ``path`` in a service's container (the Engine's archive endpoint: a tar)."""
        cid = (await self.container(service))["Id"]
        r = await self.http.get(f"/containers/{cid}/archive", params={"path": path})
        if r.status_code == 404:
            return {}
        with tarfile.open(fileobj=io.BytesIO(r.raise_for_status().content)) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}

    async def exec(self, service: str, *cmd: str, timeout: float = 120) -> tuple[int, str, str]:
        """``docker compose exec -T SERVICE CMD...`` through the Engine API: exit code, stdout, stderr (the
        container's own user, environment and volumes: what an operator's command meets)."""
        cid = (await self.container(service))["Id"]
        made = (await self.http.post(f"/containers/{cid}/exec", json={
            "Cmd": list(cmd), "AttachStdout": True, "AttachStderr": True, "Tty": False})).raise_for_status().json()
        raw = (await self.http.post(f"/exec/{made['Id']}/start", json={"Detach": False, "Tty": False},
                                    timeout=timeout)).raise_for_status().content
        out = {1: bytearray(), 2: bytearray()}
        at = 0
        while at + 8 <= len(raw):  # the multiplexed stream: [kind, 0, 0, 0, size (4 bytes, big-endian)] + payload
            kind, size = raw[at], int.from_bytes(raw[at + 4:at + 8], "big")
            out.setdefault(kind, bytearray()).extend(raw[at + 8:at + 8 + size])
            at += 8 + size
        code = (await self.http.get(f"/exec/{made['Id']}/json")).raise_for_status().json()["ExitCode"]
        return code, out[1].decode(errors="replace"), out[2].decode(errors="replace")

    async def running(self, service: str, want: bool = True) -> bool:
        return (await self.container(service))["State"]["Running"] is want

    def healthy_check(self, service: str):
        async def check() -> bool:
            state = (await self.container(service))["State"]
            return state["Running"] and state.get("Health", {}).get("Status", "healthy") == "healthy"
        return check


@dataclass
class Flow:
    """Events of one course emitted through the LMS backend, and what arrived where."""

    course: str
    n: int
    stream_ids: list[str] = field(default_factory=list)
    webhook_ids: list[str] = field(default_factory=list)
    lrs_ids: list[str] = field(default_factory=list)


class Stack:
    def __init__(self, nc, backend: NatsBackend, spool: tempfile.TemporaryDirectory):
        self.nc, self.js, self.backend, self._spool = nc, nc.jetstream(), backend, spool
        self.http = httpx.AsyncClient(timeout=30)

    @classmethod
    async def open(cls) -> Stack:
        url = os.environ["RTHUB_STACK_NATS_URL"]
        nc = await connect(HubSettings(nats_url=url, nats_creds=os.environ["RTHUB_NATS_CREDS"]), "compose-tests")
        spool = tempfile.TemporaryDirectory()
        backend = NatsBackend(nats_url=url, nats_creds=os.environ["RTHUB_STACK_PUBLISHER_CREDS"],
                              spool_dir=spool.name, site="default")
        return cls(nc, backend, spool)

    async def close(self) -> None:
        self.backend.close()
        await self.http.aclose()
        await self.nc.close()
        self._spool.cleanup()

    async def emit(self, course: str, n: int, rate: float = 100.0, at: dict[int, object] | None = None) -> None:
        """``n`` play_video events of ``course``, one learner each (so every statement id differs), paced at
        ``rate`` per second; ``at[i]`` is awaited after the i-th event (a fault drill's kill)."""
        tracker = Tracker(backends={"lms": self.backend})
        for i in range(n):
            with tracker.context("compose", {"course_id": course, "org_id": ORG, "user_id": 100000 + i,
                                             "username": f"learner{i}"}):
                tracker.emit("play_video", {"id": "v1", "currentTime": i, "duration": 600})
            if at and i in at:
                await at[i]
            await asyncio.sleep(1 / rate)

    async def stored(self, protocol: str, course: str) -> list[str]:
        """Statement ids stored in the protocol stream for ``course``, in stream order (duplicates kept)."""
        sub = await self.js.pull_subscribe(
            filter_subject(protocol, course=course), stream=protocol.upper(),
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE,
                                  inactive_threshold=30))
        try:
            pending = (await sub.consumer_info()).num_pending
            ids: list[str] = []
            while len(ids) < pending:
                ids += [json.loads(m.data)["id"] for m in await sub.fetch(min(500, pending - len(ids)), timeout=10)]
            return ids
        finally:
            await sub.unsubscribe()

    async def received(self, base: str, path_prefix: str) -> list[tuple[dict, bytes]]:
        """(headers, body) of every POST a receiver service got under ``path_prefix``."""
        got = (await self.http.get(f"{base}/_received")).raise_for_status().json()
        return [(r["headers"], base64.b64decode(r["body"])) for r in got if r["path"].startswith(path_prefix)]

    async def delivered_ids(self, base: str, path_prefix: str, course: str) -> list[str]:
        """Statement ids of ``course`` in every POST (webhooks: one statement; LRS: a statement or a batch)."""
        ids: list[str] = []
        for _, body in await self.received(base, path_prefix):
            data = json.loads(body)
            for st in data if isinstance(data, list) else [data]:
                if course in json.dumps(st):
                    ids.append(st["id"])
        return ids

    async def metric(self, service: str, port: int, name: str) -> float:
        text = (await self.http.get(f"http://{service}:{port}/metrics")).raise_for_status().text
        return sum(float(v) for v in re.findall(rf"^rthub_{name}_total{{[^}}]*}} (\S+)$", text, re.M))


class Portal:
    """The portal service as an administrator uses it: created with the CLI on the same PostgreSQL database,
    then logged in over HTTP (session + CSRF) once to make an API token for the JSON API."""

    def __init__(self, http: httpx.AsyncClient, email: str, password: str, token: str):
        self.http, self.email, self.password, self.token = http, email, password, token
        self.api = {"Authorization": f"Bearer {token}"}

    @classmethod
    async def open(cls, stack: Stack) -> Portal:
        email, password = f"{unique('admin')}@compose.example.org", unique("pw-") + "-long enough"
        with tempfile.TemporaryDirectory() as data:
            env = rthub_env(os.environ["RTHUB_STACK_NATS_URL"], RTHUB_DATA_DIR=data,
                            RTHUB_NATS_CREDS=os.environ["RTHUB_NATS_CREDS"],
                            RTHUB_DATABASE_URL=os.environ["RTHUB_TEST_DATABASE_URL"])  # the portal service's database
            made = await asyncio.to_thread(rthub, "portal", "create-admin", "--email", email, "--password-stdin",
                                           env=env, input=(password + "\n").encode())
        assert made.returncode == 0 and b"ready" in made.stdout, made.stderr.decode()
        http = httpx.AsyncClient(base_url=PORTAL, timeout=30)
        await http.get("/login")
        r = await http.post("/login", data={"email": email, "password": password,
                                            "_csrf_token": http.cookies["csrftoken"]})
        assert r.status_code == 303 and r.headers["location"].startswith("/"), r.text[:500]
        form = (await http.get("/tokens")).text  # the form's hidden fields, as a browser sends them
        hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form))
        r = await http.post("/tokens", data={**hidden, "name": "compose tests",
                                             "_csrf_token": http.cookies["csrftoken"]}, follow_redirects=True)
        token = re.search(r"rth_[A-Za-z0-9_\-]+", r.text)
        assert r.status_code == 200 and token, r.text[:500]
        return cls(http, email, password, token.group(0))

    async def close(self) -> None:
        await self.http.aclose()

    async def integration(self, **spec) -> dict:
        """Request an integration through the JSON API and approve it as the administrator."""
        r = await self.http.post("/api/v1/integrations", json=spec, headers=self.api)
        assert r.status_code == 201, r.text
        key = r.json()["id"]
        r = await self.http.post(f"/api/v1/admin/integrations/{key}/approve", json={}, headers=self.api)
        assert r.status_code == 200 and r.json()["status"] == "approved", r.text
        r = await self.http.get(f"/api/v1/integrations/{key}", headers=self.api)
        assert r.status_code == 200, r.text
        return r.json()

    async def revoke(self, key: str) -> None:
        r = await self.http.post(f"/api/v1/admin/integrations/{key}/revoke", json={"reason": "compose tests done"},
                                 headers=self.api)
        assert r.status_code == 200, r.text
