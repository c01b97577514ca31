"""Input sizes the portal accepts, checked before any handler runs (issue 19, item 6).

``BodyLimit`` is an ASGI middleware in front of every page and API route: a body larger than
``RTHUB_MAX_BODY_BYTES`` is refused with 413 as soon as its declared length or the bytes received pass the limit
(nothing larger is ever buffered), and a JSON body nested deeper than :data:`MAX_JSON_DEPTH` is refused with 400
before a decoder recurses into it (a 1000-level array answered 500), measured with the hub's own pre-scan
(:func:`hub.core.events.nesting_depth`).
"""

from __future__ import annotations

import json

from hub.core.events import nesting_depth
from portal.headers import SECURITY_HEADERS

MAX_JSON_DEPTH = 32  # the deepest request structure is 3 levels (custom headers); room for clients' habits


def _refusal(path: str, status: int, message: str) -> tuple[bytes, bytes]:
    if path.startswith("/api/"):
        return json.dumps({"error": message}).encode(), b"application/json"
    page = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{status}</title></head>"
        f"<body><h1>{status}</h1><p>{message}</p></body></html>"
    )
    return page.encode(), b"text/html; charset=utf-8"


class BodyLimit:
    """Refuse oversized (413) and too deeply nested JSON (400) request bodies; pass the rest on unchanged."""

    def __init__(self, app, max_bytes: int, max_depth: int = MAX_JSON_DEPTH):
        self.app, self.max_bytes, self.max_depth = app, max_bytes, max_depth

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").strip()
        too_big = (
            f"Request body too large: at most {self.max_bytes} bytes are accepted (RTHUB_MAX_BODY_BYTES)."
        )
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send, 413, too_big)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, send, 413, too_big)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if (
            b"json" in headers.get(b"content-type", b"")
            and body.count(b"[") + body.count(b"{") > self.max_depth
            and nesting_depth(body) > self.max_depth
        ):
            await self._refuse(scope, send, 400, f"JSON nested deeper than {self.max_depth} levels.")
            return
        await self.app(
            scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send
        )

    async def _refuse(self, scope, send, status: int, message: str) -> None:
        body, kind = _refusal(scope.get("path", ""), status, message)
        head = [
            (b"content-type", kind),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"cache-control", b"no-store"),
            *((k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[dict], receive):
    """A ``receive`` that hands out the buffered body first, then defers to the server (disconnects)."""

    async def replayed():
        return messages.pop(0) if messages else await receive()

    return replayed
