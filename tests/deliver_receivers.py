"""Real HTTP receivers for the delivery tests: a tiny asyncio HTTP/1.1 server on 127.0.0.1 and an xAPI LRS
stand-in. A handler decides each answer, so a test can fail, throttle, redirect or go away."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hub.ops.natsserver import free_port


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    t: float = field(default_factory=time.monotonic)
    status: int | None = None  # what the handler answered

    def json(self):
        return json.loads(self.body)


Answer = tuple[int, dict[str, str], bytes]
Handler = Callable[[Request], Answer]


def ok(_: Request) -> Answer:
    return 200, {}, b"ok"


class Receiver:
    """An HTTP server that records every request; ``handler`` answers. ``stop()``/``start()`` keep the port."""

    def __init__(self, handler: Handler = ok, port: int | None = None, delay: float = 0.0, host: str = "127.0.0.1"):
        self.handler, self.delay = handler, delay  # delay: seconds before each answer (a slow receiver)
        self.host = host
        self.port = port or free_port()
        self.requests: list[Request] = []
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        return self

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    def bodies(self) -> list:
        return [r.json() for r in self.requests]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = h.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Request(method, path, headers, body)
                self.requests.append(request)
                status, extra, data = self.handler(request)
                request.status = status
                if self.delay:
                    await asyncio.sleep(self.delay)
                head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(data)}\r\n"
                head += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                writer.write(head.encode() + b"\r\n" + data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()


class LRS:
    """xAPI statements POST semantics: 200 with the ids; 204 when every statement is already stored with
    the same content; 409 when an id is stored with other content; 400 for a malformed statement (the
    whole request is refused, nothing stored)."""

    def __init__(self) -> None:
        self.statements: dict[str, dict] = {}
        self.order: list[str] = []

    def __call__(self, req: Request) -> Answer:
        if req.method != "POST" or not req.path.endswith("/statements"):
            return 404, {}, b"not found"
        if req.headers.get("x-experience-api-version") != "1.0.3":
            return 400, {}, b"missing X-Experience-API-Version"
        try:
            data = json.loads(req.body)
        except ValueError:
            return 400, {}, b"not JSON"
        batch = data if isinstance(data, list) else [data]
        for st in batch:
            if not (isinstance(st, dict) and isinstance(st.get("id"), str) and isinstance(st.get("actor"), dict)
                    and isinstance(st.get("verb"), dict) and isinstance(st.get("object"), dict)):
                return 400, {}, b'{"error": "malformed statement"}'
        for st in batch:
            if st["id"] in self.statements and self.statements[st["id"]] != st:
                return 409, {}, b'{"error": "conflicting statement id"}'
        new = [st for st in batch if st["id"] not in self.statements]
        if not new:
            return 204, {}, b""
        for st in new:
            self.statements[st["id"]] = st
            self.order.append(st["id"])
        return 200, {"content-type": "application/json"}, json.dumps([st["id"] for st in batch]).encode()
