"""A small HTTP/1.1 keep-alive client: POST a body to an already-checked address, read the answer.

Why not httpx here: profiling the deliverer at 1,000 webhook POSTs/s showed httpx/httpcore using most of its
CPU (about 0.6 ms per request: anyio layers, and a pool that probes every idle connection's socket on every
request), which saturated one deliverer below 1,100 POSTs/s; and ``bench/http_client.py`` shows it making
1.4-1.9x the POSTs/s of aiohttp at 0.5-0.6x its CPU per POST. Delivery needs little: one method, a
``Content-Length`` body, keep-alive connections per (scheme, address, port, server name), answers framed by
``Content-Length``, chunked encoding or connection close, a connect timeout, and TLS that verifies the
certificate against the URL's host name while connecting to the checked address. Redirects are not followed.
The total timeout is the caller's (``asyncio.timeout``); a cancelled request closes its connection.

Proxies come from the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``, as curl and urllib read them):
an https target is reached through a ``CONNECT host:port`` tunnel (TLS inside it, verified against the host
name), an http target by sending the absolute URL to the proxy. The proxy connects by name, not to the address
the caller checked: see "SSRF guard" in docs/delivery.md.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import urllib.request
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

MAX_HEAD = 65536  # bytes of status line + headers accepted
MAX_BODY = 16 << 20  # bytes of an answer body read (and mostly dropped) before giving up on the answer
_NO_BODY = (204, 304)
# chunk-size (1-16 hex digits), optional chunk extensions, CRLF: nothing int(x, 16) would also take (-1, 0x10, 1_0)
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?\r\n")
_DIGITS = re.compile(r"[0-9]{1,18}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a header name
_BAD_VALUE = re.compile(r"[\r\n\0]")
_STATUS = re.compile(r"[0-9]{3}")
_FRAMING = frozenset(("content-length", "transfer-encoding", "connection"))


class HTTPError(Exception):
    """The server broke the protocol or the connection failed."""


class Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body


class _Conn:
    __slots__ = ("reader", "writer", "key")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: tuple):
        self.reader, self.writer, self.key = reader, writer, key

    def usable(self) -> bool:
        """An idle connection the server has not closed (it would have fed EOF to the reader)."""
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class Client:
    """Keep-alive connections per ``(scheme, address, port, server name)``; at most ``max_idle`` idle per key."""

    def __init__(self, connect_timeout: float, max_idle: int = 16, ssl_context: ssl.SSLContext | None = None,
                 keep_body: int = 65536, proxies: dict[str, str] | None = None, max_body: int = MAX_BODY):
        """``proxies``: ``{"http": url, "https": url, "no": "host,.domain"}``; None reads the environment."""
        self.connect_timeout, self.max_idle, self.keep_body = connect_timeout, max(1, max_idle), keep_body
        self.max_body = max_body
        self._ssl = ssl_context
        self.proxies = urllib.request.getproxies_environment() if proxies is None else proxies
        self._via: dict[tuple[str, str, int], _Proxy | None] = {}
        self.idle: dict[tuple, list[_Conn]] = {}
        self.closed = False

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            import httpx  # the same CA trust as before (certifi, or SSL_CERT_FILE / SSL_CERT_DIR)

            self._ssl = httpx.create_ssl_context()
            self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl

    async def post(self, scheme: str, address: str, port: int, server_name: str, target: str,
                   headers: dict[str, str], body: bytes) -> Response:
        """POST ``body`` to ``target`` (path and query) on ``address``; ``headers`` must include ``host``.

        Through a proxy (see :meth:`proxy_for`) ``address`` is not used: the proxy connects to ``server_name``."""
        proxy = self.proxy_for(scheme, server_name, port)
        if proxy is None:
            key: tuple = (scheme, address, port, server_name)
        elif scheme == "https":
            key = ("tunnel", proxy, server_name, port)
        else:  # absolute-form: one pool of connections to the proxy serves every http target
            key = ("proxy", proxy)
            target = f"http://{headers.get('host') or _authority(server_name, port)}{target}"
            if proxy.auth:
                headers = {**headers, "proxy-authorization": proxy.auth}
        head = _request_head("POST", target, headers, len(body))
        while True:
            conn, reused = self._idle_conn(key), True
            if conn is None:
                conn, reused = await self._connect(key), False
            try:
                response, keep = await self._exchange(conn, head, body)
            except _NothingReceived as exc:
                conn.close()
                if reused:  # the server closed an idle connection as we sent: once more on a new one
                    continue
                raise HTTPError(str(exc)) from None
            except BaseException:
                conn.close()
                raise
            if keep and not self.closed:
                self._release(conn)
            else:
                conn.close()
            return response

    def proxy_for(self, scheme: str, host: str, port: int) -> _Proxy | None:
        """The proxy the environment names for this target, None if none or ``NO_PROXY`` lists the host."""
        route = (scheme, host, port)
        if route not in self._via:
            url = self.proxies.get(scheme)
            bypass = not url or urllib.request.proxy_bypass_environment(_authority(host, port), self.proxies)
            if len(self._via) > 256:
                self._via.clear()
            self._via[route] = None if bypass else _Proxy.parse(url)
        return self._via[route]

    def _idle_conn(self, key: tuple) -> _Conn | None:
        conns = self.idle.get(key)
        while conns:
            conn = conns.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    def _release(self, conn: _Conn) -> None:
        conns = self.idle.setdefault(conn.key, [])
        if len(conns) >= self.max_idle:
            conn.close()
        else:
            conns.append(conn)

    async def _connect(self, key: tuple) -> _Conn:
        """A new connection for ``key``; the connect timeout covers TCP, a proxy's CONNECT and TLS."""
        if key[0] == "tunnel":
            _, proxy, server_name, port = key
            address, to_port, tls = proxy.host, proxy.port, None
        elif key[0] == "proxy":
            proxy = key[1]
            address, to_port, tls = proxy.host, proxy.port, None
        else:
            scheme, address, to_port, server_name = key
            tls = {"ssl": self.ssl_context(), "server_hostname": server_name} if scheme == "https" else None
        writer = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(address, to_port, limit=MAX_HEAD, **(tls or {}))
                if key[0] == "tunnel":
                    await _tunnel(reader, writer, proxy, server_name, port)
                    await writer.start_tls(self.ssl_context(), server_hostname=server_name)
        except TimeoutError:
            _close(writer)
            raise HTTPError(f"connect timeout after {self.connect_timeout:g}s") from None
        except (OSError, ssl.SSLError) as exc:
            _close(writer)
            raise HTTPError(f"cannot connect to {address}:{to_port}: {exc}") from None
        except BaseException:
            _close(writer)
            raise
        return _Conn(reader, writer, key)

    async def _exchange(self, conn: _Conn, head: bytes, body: bytes) -> tuple[Response, bool]:
        reader, writer = conn.reader, conn.writer
        answered = False
        try:
            if len(body) < 16384:
                writer.write(head + body)
            else:
                writer.writelines((head, body))
            await writer.drain()
            while True:
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if not exc.partial:
                        raise _NothingReceived("server closed the connection without answering") from None
                    raise HTTPError("server closed the connection in the middle of the answer headers") from None
                answered = True
                status, version, headers = _parse_head(raw)
                if status >= 200 or status == 101:
                    break  # 1xx informational answers precede the real one
            if status == 101:
                raise HTTPError("server switched protocols (101), which a POST did not ask for")
            keep = _keep_alive(version, headers.get("connection", ""))
            data, framed = await self._body(reader, status, headers)
        except ConnectionError as exc:
            if not answered:
                raise _NothingReceived(f"connection error before any answer: {exc or type(exc).__name__}") from None
            raise HTTPError(f"connection error: {exc or type(exc).__name__}") from None
        except asyncio.LimitOverrunError:
            raise HTTPError(f"answer headers larger than {MAX_HEAD} bytes") from None
        return Response(status, headers, data), keep and framed

    async def _body(self, reader: asyncio.StreamReader, status: int, headers: dict[str, str]) -> tuple[bytes, bool]:
        """``(first keep_body bytes of the body, whether the connection can be reused)``."""
        if status in _NO_BODY:
            return b"", True
        coding = headers.get("transfer-encoding")
        if coding is not None:
            if coding.rsplit(",", 1)[-1].strip().lower() != "chunked":
                return await self._until_close(reader), False
            return await self._chunked(reader), True
        length = headers.get("content-length")
        if length is None:
            return await self._until_close(reader), False
        values = {v.strip() for v in length.split(",")}
        if len(values) != 1 or not _DIGITS.fullmatch(n := values.pop()):
            raise HTTPError(f"invalid Content-Length {length[:40]!r}")
        if int(n) > self.max_body:
            raise HTTPError(f"answer body larger than {self.max_body} bytes")
        return await self._exactly(reader, int(n)), True

    async def _exactly(self, reader: asyncio.StreamReader, n: int) -> bytes:
        kept = bytearray()
        if n < self.keep_body:  # the usual small answer: one read
            try:
                return await reader.readexactly(n)
            except asyncio.IncompleteReadError:
                raise HTTPError("server closed the connection in the middle of the answer body") from None
        while n > 0:
            try:
                chunk = await reader.readexactly(min(n, 65536))
            except asyncio.IncompleteReadError:
                raise HTTPError("server closed the connection in the middle of the answer body") from None
            n -= len(chunk)
            if len(kept) < self.keep_body:
                kept += chunk[: self.keep_body - len(kept)]
        return bytes(kept)

    async def _chunked(self, reader: asyncio.StreamReader) -> bytes:
        kept = bytearray()
        total = 0
        try:
            while True:
                line = await reader.readuntil(b"\r\n")
                match = _CHUNK_LINE.fullmatch(line)
                if match is None:
                    raise HTTPError(f"invalid chunk size line {line[:24]!r}")
                size = int(match[1], 16)
                total += size
                if total > self.max_body:
                    raise HTTPError(f"answer body larger than {self.max_body} bytes")
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                        pass
                    return bytes(kept)
                kept += await self._exactly(reader, size)
                kept = kept[: self.keep_body]
                if await reader.readexactly(2) != b"\r\n":
                    raise HTTPError("chunk not followed by CRLF")
        except asyncio.IncompleteReadError:
            raise HTTPError("server closed the connection in the middle of a chunked body") from None
        except asyncio.LimitOverrunError:
            raise HTTPError(f"chunk size line or trailer longer than {MAX_HEAD} bytes") from None

    async def _until_close(self, reader: asyncio.StreamReader) -> bytes:
        kept = bytearray()
        total = 0
        while chunk := await reader.read(65536):
            total += len(chunk)
            if total > self.max_body:
                raise HTTPError(f"answer body larger than {self.max_body} bytes")
            if len(kept) < self.keep_body:
                kept += chunk[: self.keep_body - len(kept)]
        return bytes(kept)

    async def aclose(self) -> None:
        self.closed = True
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()


class _NothingReceived(Exception):
    """The connection ended before any byte of an answer (safe to resend on a fresh connection)."""


class _Proxy(NamedTuple):
    """An ``http://[user:password@]host[:port]`` proxy; ``auth`` is the Proxy-Authorization value or ""."""

    host: str
    port: int
    auth: str

    @classmethod
    def parse(cls, url: str) -> _Proxy:
        parts = urlsplit(url if "://" in url else "http://" + url)
        try:
            port = parts.port or 80
        except ValueError:
            raise HTTPError("invalid proxy port") from None
        if parts.scheme != "http" or not parts.hostname:
            raise HTTPError(f"unsupported proxy {parts.scheme}://{parts.hostname or ''} (http:// proxies only)")
        auth = ""
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(pair.encode()).decode()
        return cls(parts.hostname, port, auth)


async def _tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: _Proxy, host: str,
                  port: int) -> None:
    """Ask the proxy for a tunnel to ``host:port``; raises :class:`HTTPError` unless it answers 2xx."""
    authority = _authority(host, port)
    extra = {"proxy-authorization": proxy.auth} if proxy.auth else {}
    writer.write(_request_head("CONNECT", authority, {"host": authority, **extra}, None))
    await writer.drain()
    try:
        status, _, _ = _parse_head(await reader.readuntil(b"\r\n\r\n"))
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        raise HTTPError("proxy closed the connection instead of answering CONNECT") from None
    if not 200 <= status < 300:
        raise HTTPError(f"proxy answered {status} to CONNECT {authority}")


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()


def _request_head(method: str, target: str, headers: dict[str, str], length: int | None) -> bytes:
    """The request line and headers; refuses characters that would split or smuggle a header."""
    if _BAD_VALUE.search(target) or " " in target:
        raise HTTPError("illegal request target")
    if _BAD_VALUE.search(" ".join(headers.values())):
        raise HTTPError("illegal header value")
    out = [f"{method} {target} HTTP/1.1"]
    for name, value in headers.items():
        if name not in _NAMES_SEEN:
            if not _TOKEN.fullmatch(name):
                raise HTTPError(f"illegal header {name[:40]!r}")
            if name.lower() in _FRAMING:
                continue  # the client frames the request itself
            if len(_NAMES_SEEN) < 256:
                _NAMES_SEEN.add(name)
        out.append(f"{name}: {value}")
    if length is not None:
        out.append(f"content-length: {length}")
    out.append("\r\n")
    return "\r\n".join(out).encode()


_NAMES_SEEN: set[str] = set()  # header names already known to be tokens and not framing headers


def _parse_head(raw: bytes) -> tuple[int, str, dict[str, str]]:
    lines = raw[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0") or not _STATUS.fullmatch(parts[1]):
        raise HTTPError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HTTPError(f"malformed answer header {line[:80]!r}")
        name, value = name.lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(parts[1]), parts[0], headers


def _keep_alive(version: str, connection: str) -> bool:
    tokens = {t.strip().lower() for t in connection.split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens
