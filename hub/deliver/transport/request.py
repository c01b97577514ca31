"""One HTTP attempt to a target: build the request for its kind, pin the checked address, send, time it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
import time

import msgspec

from hub.core.grants import Target
from hub.deliver.transport import signing, ssrf
from hub.deliver.transport.client import Client, HTTPError
from hub.translate import caliper_envelope

XAPI_VERSION = "1.0.3"
CHECKED_FOR = 1.0  # seconds an SSRF-checked resolution of a URL is reused


class Result(msgspec.Struct, kw_only=True):
    status: int | None = None
    latency_ms: float = 0.0
    excerpt: str = ""
    error: str | None = None
    retry_after: str | None = None
    body: bytes = b""
    headers: dict[str, str] = {}  # the response's, for the attempt detail
    url: str | None = None  # where it was sent
    sent: dict[str, str] = {}  # the request headers, redacted (:func:`redacted`)


def batch_id(ids: list[str]) -> str:
    """``webhook-id`` of a batched webhook: ``batch_`` + a digest of its statement ids, the same on every retry of
    that batch (receivers de-duplicate single statements by their own ids)."""
    return "batch_" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:32]


# Header names a consumer's ``custom_headers`` may not set: the hub's own (signature, content, auth, tracing)
# and those HTTP/1.1 framing depends on. The portal refuses them; :func:`build` skips them anyway.
RESERVED_HEADERS = frozenset({
    "host", "content-type", "content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive",
    "upgrade", "te", "trailer", "expect", "proxy-authorization", "authorization", "cookie", "user-agent",
    "webhook-id", "webhook-signature", "webhook-timestamp", "x-experience-api-version", "traceparent",
    "tracestate"})


def drop_parts(item: bytes, parts: list[str]) -> bytes:
    """``item`` (one JSON statement or event) without the top-level members named in ``parts``; unchanged when
    none is present (no re-encoding) or when it is not a JSON object."""
    if not parts:
        return item
    try:
        value = msgspec.json.decode(item)
    except (msgspec.DecodeError, RecursionError):
        return item
    if not isinstance(value, dict) or not any(p in value for p in parts):
        return item
    for p in parts:
        value.pop(p, None)
    return msgspec.json.encode(value)


REDACTED = "<redacted>"


def redacted(headers: dict[str, str], custom: dict[str, str]) -> dict[str, str]:
    """Request headers as the attempt log keeps them: the signature, credentials and the consumer's custom
    header values are replaced by :data:`REDACTED` (names and the rest stay, to debug a receiver)."""
    hidden = {k.lower() for k in custom}
    out = {}
    for k, v in headers.items():
        if k == "webhook-signature":
            v = " ".join(part.split(",", 1)[0] + "," + REDACTED for part in v.split())
        elif k == "authorization":
            v = v.split(" ", 1)[0] + " " + REDACTED
        elif k in hidden:
            v = REDACTED
        out[k] = v
    return out


def response_headers(headers: dict[str, str], limit: int = 40) -> dict[str, str]:
    """At most ``limit`` response headers, each value cut to 300 characters (a bounded attempt record)."""
    return {k[:100]: str(v)[:300] for k, v in list(headers.items())[:limit]}


def build(target: Target, protocol: str, items: list[bytes], ids: list[str], sensor: str,
          batch: bool, traceparent: str | None = None) -> tuple[str, dict[str, str], bytes]:
    """``(url, headers, body)`` of one POST carrying ``items`` (statements or Caliper events).

    The payload filter applies before the body is signed; custom headers come first, so the hub's own headers
    (signature, auth, ``traceparent``) always win."""
    headers = {k.lower(): v for k, v in target.custom_headers.items() if k.lower() not in RESERVED_HEADERS}
    headers.update({"content-type": "application/json", "user-agent": "rthub-deliver/0.1"})
    if traceparent:
        headers["traceparent"] = traceparent
    if target.payload_filter:
        items = [drop_parts(i, target.payload_filter) for i in items]
    if target.kind == "lrs":
        url = target.url.rstrip("/") + "/statements"
        body = b"[" + b",".join(items) + b"]" if batch else items[0]
        headers["x-experience-api-version"] = XAPI_VERSION
    elif target.kind == "caliper" or protocol == "caliper":
        url = target.url
        body = caliper_envelope(items, sensor)
    else:
        url = target.url
        body = b"[" + b",".join(items) + b"]" if batch else items[0]
        if protocol == "cloudevents":  # CloudEvents' HTTP binding, structured (and batched) mode
            headers["content-type"] = ("application/cloudevents-batch+json" if batch
                                       else "application/cloudevents+json")
    if target.kind == "webhook":
        headers.update(signing.headers(target.secrets, batch_id(ids) if batch else ids[0], body))
    if target.bearer:
        headers["authorization"] = "Bearer " + target.bearer
    elif target.basic_auth:
        headers["authorization"] = "Basic " + base64.b64encode(target.basic_auth.encode()).decode()
    return url, headers, body


class Sender:
    """POSTs of one integration over keep-alive connections to the checked address (see ``client.py``).

    The host is resolved and checked at every attempt (``ssrf.resolve``); connections are pooled per checked
    address, so a changed DNS answer gets a new, checked connection. Redirects are never followed.
    """

    def __init__(self, connect_timeout: float, total_timeout: float, allowed: list, https_only: bool,
                 excerpt_bytes: int, max_connections: int, ssl_context: ssl.SSLContext | None = None):
        self.total = total_timeout
        self.allowed, self.https_only, self.excerpt_bytes = allowed, https_only, excerpt_bytes
        self.client = Client(connect_timeout, max_idle=max_connections, ssl_context=ssl_context)
        self.checked: dict[str, tuple[float, tuple]] = {}  # url -> (valid until, ssrf.resolve's answer)

    async def resolve(self, url: str) -> tuple[str, object]:
        """``ssrf.resolve``, its answer reused for ``CHECKED_FOR`` seconds: the request still goes to a checked
        address (a changed DNS answer is seen within that time), without a resolution per request (an executor
        round trip for a name, ~5% of the deliverer's CPU even for an address literal)."""
        now = time.monotonic()
        hit = self.checked.get(url)
        if hit is not None and hit[0] > now:
            return hit[1]
        answer = await ssrf.resolve(url, self.allowed, self.https_only)
        if len(self.checked) > 64:
            self.checked.clear()
        self.checked[url] = (now + CHECKED_FOR, answer)
        return answer

    def route(self, url: str) -> tuple[str, int, str, str]:
        """``(scheme, port, request target, Host header)`` of ``url``, by the SSRF guard's own parser."""
        u = ssrf.parse(url)
        return u.scheme, u.port, u.target, u.netloc

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Result:
        start = time.perf_counter()
        try:
            host, ip = await self.resolve(url)
            scheme, port, target, netloc = self.route(url)
        except ssrf.Refused as exc:
            return Result(error=f"refused: {exc}")
        try:
            async with asyncio.timeout(self.total):
                resp = await self.client.post(scheme, str(ip), port, host, target, {"host": netloc, **headers}, body)
        except TimeoutError:
            return Result(error=f"timeout after {self.total:g}s", latency_ms=_ms(start))
        except HTTPError as exc:
            return Result(error=f"HTTPError: {exc}"[:300], latency_ms=_ms(start))
        data = resp.body
        result = Result(status=resp.status, latency_ms=_ms(start), body=data,
                        excerpt=data[: self.excerpt_bytes].decode("utf-8", "replace"),
                        retry_after=resp.headers.get("retry-after"), headers=resp.headers)
        if 300 <= resp.status < 400:
            result.error = f"redirect not followed (Location: {resp.headers.get('location', '')[:200]})"
        return result

    async def close(self) -> None:
        await self.client.aclose()


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
