"""A small HTTP/1.1 keep-alive client: POST a body to an already-checked address, read the answer.

Why not httpx here: profiling the deliverer at 1,000 webhook POSTs/s showed httpx/httpcore using most of its
CPU (about 0.6 ms per request: anyio layers, and a pool that probes every idle connection's socket on every
request), which saturated one deliverer below 1,100 POSTs/s. Delivery needs little: one method, a
``Content-Length`` body, keep-alive connections per (scheme, address, port, server name), answers framed by
``Content-Length``, chunked encoding or connection close, a connect timeout, and TLS that verifies the
certificate against the URL's host name while connecting to the checked address. Redirects are not followed.
The total timeout is the caller's (``asyncio.timeout``); a cancelled request closes its connection.
"""

from __future__ import annotations

import asyncio
import ssl

MAX_HEAD = 65536  # bytes of status line + headers accepted
_NO_BODY = (204, 304)


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
                 keep_body: int = 65536):
        self.connect_timeout, self.max_idle, self.keep_body = connect_timeout, max(1, max_idle), keep_body
        self._ssl = ssl_context
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
        """POST ``body`` to ``target`` (path and query) on ``address``; ``headers`` must include ``host``."""
        head = _request_head("POST", target, headers, len(body))
        key = (scheme, address, port, server_name)
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
        scheme, address, port, server_name = key
        tls = {"ssl": self.ssl_context(), "server_hostname": server_name} if scheme == "https" else {}
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(address, port, limit=MAX_HEAD, **tls)
        except TimeoutError:
            raise HTTPError(f"connect timeout after {self.connect_timeout:g}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise HTTPError(f"cannot connect to {address}:{port}: {exc}") from None
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
        if len(values) != 1 or not (n := values.pop()).isdigit():
            raise HTTPError(f"invalid Content-Length {length!r}")
        return await self._exactly(reader, int(n)), True

    async def _exactly(self, reader: asyncio.StreamReader, n: int) -> bytes:
        kept = bytearray()
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
        try:
            while True:
                line = await reader.readuntil(b"\r\n")
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise HTTPError(f"invalid chunk size {size_text[:20]!r}") from None
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

    async def _until_close(self, reader: asyncio.StreamReader) -> bytes:
        kept = bytearray()
        while chunk := await reader.read(65536):
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


_BAD = ("\r", "\n", "\0")


def _request_head(method: str, target: str, headers: dict[str, str], length: int) -> bytes:
    """The request line and headers; refuses characters that would split or smuggle a header."""
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in headers.items():
        if not name or any(c in name for c in (*_BAD, ":", " ", "\t")) or any(c in value for c in _BAD):
            raise HTTPError(f"illegal header {name[:40]!r}")
        if name.lower() not in ("content-length", "transfer-encoding", "connection"):
            lines.append(f"{name}: {value}")
    if any(c in target for c in (*_BAD, " ")):
        raise HTTPError("illegal request target")
    lines.append(f"content-length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _parse_head(raw: bytes) -> tuple[int, str, dict[str, str]]:
    lines = raw[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0") or not (parts[1].isdigit() and len(parts[1]) == 3):
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
