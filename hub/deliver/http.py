"""One HTTP attempt to a target: build the request for its kind, pin the checked address, send, time it."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time

import httpx
import msgspec

from hub.deliver import signing, ssrf
from hub.grants import Target

CALIPER_DATA_VERSION = "http://purl.imsglobal.org/ctx/caliper/v1p2"
XAPI_VERSION = "1.0.3"


class Result(msgspec.Struct, kw_only=True):
    status: int | None = None
    latency_ms: float = 0.0
    excerpt: str = ""
    error: str | None = None
    retry_after: str | None = None
    body: bytes = b""


def caliper_envelope(events: list[bytes], sensor: str) -> bytes:
    """A Caliper 1.2 envelope around already-encoded events (spliced, not re-encoded)."""
    send_time = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    head = msgspec.json.encode({"sensor": sensor, "sendTime": send_time, "dataVersion": CALIPER_DATA_VERSION})
    return head[:-1] + b',"data":[' + b",".join(events) + b"]}"


def build(target: Target, protocol: str, items: list[bytes], ids: list[str], sensor: str,
          batch: bool) -> tuple[str, dict[str, str], bytes]:
    """``(url, headers, body)`` of one POST carrying ``items`` (statements or Caliper events)."""
    headers = {"content-type": "application/json", "user-agent": "rthub-deliver/0.1"}
    if target.kind == "lrs":
        url = target.url.rstrip("/") + "/statements"
        body = b"[" + b",".join(items) + b"]" if batch else items[0]
        headers["x-experience-api-version"] = XAPI_VERSION
    elif target.kind == "caliper" or protocol == "caliper":
        url = target.url
        body = caliper_envelope(items, sensor)
    else:
        url = target.url
        body = items[0]
    if target.kind == "webhook":
        headers.update(signing.headers(target.secrets, ids[0], body))
    if target.bearer:
        headers["authorization"] = "Bearer " + target.bearer
    elif target.basic_auth:
        headers["authorization"] = "Basic " + base64.b64encode(target.basic_auth.encode()).decode()
    return url, headers, body


class Sender:
    """An httpx client per integration; redirects are never followed (a 3xx is a failed attempt)."""

    def __init__(self, connect_timeout: float, total_timeout: float, allowed: list, https_only: bool,
                 excerpt_bytes: int, max_connections: int):
        self.total = total_timeout
        self.allowed, self.https_only, self.excerpt_bytes = allowed, https_only, excerpt_bytes
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(total_timeout, connect=connect_timeout), follow_redirects=False,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Result:
        start = time.perf_counter()
        try:
            host, ip = await ssrf.resolve(url, self.allowed, self.https_only)
        except ssrf.Refused as exc:
            return Result(error=f"refused: {exc}")
        req_headers = {**headers, "host": httpx.URL(url).netloc.decode()}
        try:
            async with asyncio.timeout(self.total):
                resp = await self.client.post(ssrf.pinned_url(url, ip), content=body, headers=req_headers,
                                              extensions={"sni_hostname": host})
                data = await resp.aread()
        except TimeoutError:
            return Result(error=f"timeout after {self.total:g}s", latency_ms=_ms(start))
        except httpx.HTTPError as exc:
            return Result(error=f"{type(exc).__name__}: {exc}"[:300], latency_ms=_ms(start))
        result = Result(status=resp.status_code, latency_ms=_ms(start), body=data[:65536],
                        excerpt=data[: self.excerpt_bytes].decode("utf-8", "replace"),
                        retry_after=resp.headers.get("retry-after"))
        if 300 <= resp.status_code < 400:
            result.error = f"redirect not followed (Location: {resp.headers.get('location', '')[:200]})"
        return result

    async def close(self) -> None:
        await self.client.aclose()


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
