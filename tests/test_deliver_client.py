"""The deliverer's HTTP/1.1 keep-alive client against real servers on 127.0.0.1 (plain and TLS).

Each test server answers with raw bytes written by the test, so framing, keep-alive, closes and TLS names are
exercised exactly; the server records every connection and request it saw.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from hub.deliver import ssrf
from hub.deliver.client import Client, HTTPError
from hub.deliver.http import Sender

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Seen:
    def __init__(self, head: str, body: bytes, conn: int):
        lines = head.split("\r\n")
        self.line, self.conn, self.body = lines[0], conn, body
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}


# handler(request, index of the request on its connection, writer) -> True to keep the connection open
Handler = Callable[[Seen, int, asyncio.StreamWriter], Awaitable[bool]]


class Server:
    """An HTTP/1.1 server reading Content-Length requests; ``handler`` writes each answer."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None):
        self.handler, self.tls = handler, tls
        self.requests: list[Seen] = []
        self.connections = 0

    async def start(self) -> Server:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn, n = self.connections, 0
        try:
            while True:
                try:
                    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                except asyncio.IncompleteReadError:
                    return
                seen = Seen(head[:-4], b"", conn)
                seen.body = await reader.readexactly(int(seen.headers.get("content-length", "0")))
                self.requests.append(seen)
                keep = await self.handler(seen, n, writer)
                n += 1
                await writer.drain()
                if not keep:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        self.server.close()


def answer(raw: bytes, keep: bool = True) -> Handler:
    async def handler(_: Seen, __: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        return keep
    return handler


async def post(client: Client, server: Server, body: bytes = b'{"a":1}', **headers: str):
    return await client.post("http", "127.0.0.1", server.port, "127.0.0.1", "/hook?x=1",
                             {"host": f"hook.example:{server.port}", **headers}, body)


async def test_keep_alive_reuses_one_connection_and_sends_what_it_was_given():
    server = await Server(answer(OK)).start()
    client = Client(connect_timeout=2)
    try:
        for i in range(5):
            resp = await post(client, server, body=b'{"n":%d}' % i, **{"webhook-id": f"id{i}"})
            assert (resp.status, resp.body) == (200, b"ok")
        assert server.connections == 1
        first = server.requests[0]
        assert first.line == "POST /hook?x=1 HTTP/1.1"
        assert first.headers["host"] == f"hook.example:{server.port}"
        assert first.headers["content-length"] == "7" and first.body == b'{"n":0}'
        assert [r.headers["webhook-id"] for r in server.requests] == [f"id{i}" for i in range(5)]
    finally:
        await client.aclose()
        await server.stop()


async def test_chunked_and_headers_and_excerpt_limit():
    raw = (b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
           b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: t\r\n\r\n")
    server = await Server(answer(raw)).start()
    client = Client(connect_timeout=2, keep_body=8)
    try:
        resp = await post(client, server)
        assert resp.status == 503 and resp.headers["retry-after"] == "7" and resp.headers["x-a"] == "1, 2"
        assert resp.body == b"hello wo"  # the whole body was read, the first keep_body bytes kept
        assert (await post(client, server)).status == 503
        assert server.connections == 1  # the chunked body was consumed exactly, so the connection was reused
    finally:
        await client.aclose()
        await server.stop()


async def test_answers_that_end_the_connection_are_not_reused():
    answers = [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na",
               b"HTTP/1.0 201 Created\r\nContent-Length: 1\r\n\r\nb",
               b"HTTP/1.1 202 Accepted\r\n\r\nread until close",
               OK]

    async def handler(seen: Seen, _: int, writer: asyncio.StreamWriter) -> bool:
        index = len(server.requests) - 1
        writer.write(answers[index])
        return index == len(answers) - 1

    server = await Server(handler).start()
    client = Client(connect_timeout=2)
    try:
        got = [(r.status, r.body) for r in [await post(client, server) for _ in answers]]
        assert got == [(200, b"a"), (201, b"b"), (202, b"read until close"), (200, b"ok")]
        assert [r.conn for r in server.requests] == [1, 2, 3, 4]
    finally:
        await client.aclose()
        await server.stop()


async def test_idle_connection_closed_by_the_server_is_replaced():
    async def handler(_: Seen, n: int, writer: asyncio.StreamWriter) -> bool:
        if n == 1:
            return False  # read the second request on a kept-alive connection, then hang up without answering
        writer.write(OK)
        return True

    server = await Server(handler).start()
    client = Client(connect_timeout=2)
    try:
        assert (await post(client, server, body=b"1")).status == 200
        assert (await post(client, server, body=b"2")).status == 200
        # the unanswered request was sent again on a fresh connection (receivers dedupe by webhook-id)
        assert [(r.conn, r.body) for r in server.requests] == [(1, b"1"), (1, b"2"), (2, b"2")]
    finally:
        await client.aclose()
        await server.stop()


async def test_failures_are_errors_not_loops():
    server = await Server(answer(b"", keep=False)).start()  # every fresh connection hangs up unanswered
    client = Client(connect_timeout=2)
    try:
        with pytest.raises(HTTPError, match="without answering"):
            await post(client, server)
        assert len(server.requests) == 1
        with pytest.raises(HTTPError, match="illegal header"):
            await post(client, server, **{"x-evil": "a\r\nx-injected: 1"})
        assert len(server.requests) == 1  # nothing was sent
        garbage = await Server(answer(b"SSH-2.0-OpenSSH\r\n\r\n")).start()
        with pytest.raises(HTTPError, match="not an HTTP/1.x answer"):
            await post(client, garbage)
        await garbage.stop()
        port = server.port
        await server.stop()
        await server.server.wait_closed()
        with pytest.raises(HTTPError, match="cannot connect"):
            await client.post("http", "127.0.0.1", port, "127.0.0.1", "/", {"host": "x"}, b"")
    finally:
        await client.aclose()


async def test_timeout_closes_the_connection_and_sender_reports_it():
    async def handler(_: Seen, n: int, writer: asyncio.StreamWriter) -> bool:
        if n == 0 and len(server.requests) == 1:
            await asyncio.Event().wait()  # never answer the very first request
        writer.write(OK)
        return True

    server = await Server(handler).start()
    sender = Sender(2, 0.3, ssrf.networks(["127.0.0.1/32"]), False, 512, 4)
    try:
        url = f"http://127.0.0.1:{server.port}/hook"
        result = await sender.post(url, {"content-type": "application/json"}, b"{}")
        assert result.status is None and result.error == "timeout after 0.3s"
        result = await sender.post(url, {"content-type": "application/json"}, b"{}")
        assert (result.status, result.excerpt, result.error) == (200, "ok", None)
        assert [r.conn for r in server.requests] == [1, 2]  # the timed-out connection was not reused
        assert server.requests[1].headers["host"] == f"127.0.0.1:{server.port}"
    finally:
        await sender.close()
        await server.stop()


async def test_sender_refuses_before_connecting_and_reports_redirects():
    server = await Server(answer(b"HTTP/1.1 302 Found\r\nLocation: http://10.0.0.1/\r\nContent-Length: 0\r\n\r\n")).start()
    sender = Sender(2, 5, ssrf.networks(["127.0.0.1/32"]), False, 512, 4)
    try:
        result = await sender.post(f"http://127.0.0.1:{server.port}/", {}, b"{}")
        assert result.status == 302 and result.error == "redirect not followed (Location: http://10.0.0.1/)"
        strict = Sender(2, 5, [], False, 512, 4)
        result = await strict.post(f"http://127.0.0.1:{server.port}/", {}, b"{}")
        await strict.close()
        assert result.error == "refused: 127.0.0.1: address not allowed (not a public address)"
        assert len(server.requests) == 1
    finally:
        await sender.close()
        await server.stop()


def test_route_keeps_the_name_for_the_host_header():
    sender = Sender(2, 5, [], False, 512, 4)
    assert sender.route("https://Bücher.example:8443/a b?c=1") == (
        "https", 8443, "/a%20b?c=1", "xn--bcher-kva.example:8443")
    assert sender.route("http://h.example") == ("http", 80, "/", "h.example")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test CA")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=rthub test CA")
    run("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=hook.test")
    (d / "ext").write_text("subjectAltName=DNS:hook.test\n")
    run("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "leaf.pem", "-days", "2", "-extfile", "ext")
    return d


async def test_tls_to_the_checked_address_verifies_the_url_host_name(certs: Path):
    names: list[str | None] = []
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(certs / "leaf.pem", certs / "leaf.key")
    server_ctx.sni_callback = lambda _sock, name, _ctx: names.append(name)
    server = await Server(answer(OK), tls=server_ctx).start()
    client_ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    client = Client(connect_timeout=2, ssl_context=client_ctx)
    try:
        resp = await client.post("https", "127.0.0.1", server.port, "hook.test", "/h", {"host": "hook.test"}, b"x")
        assert (resp.status, resp.body) == (200, b"ok")
        assert names == ["hook.test"] and server.requests[0].headers["host"] == "hook.test"
        with pytest.raises(HTTPError, match="certificate verify failed"):
            await client.post("https", "127.0.0.1", server.port, "other.test", "/h", {"host": "other.test"}, b"x")
        untrusting = Client(connect_timeout=2, ssl_context=ssl.create_default_context(cafile=str(certs / "leaf.pem")))
        with pytest.raises(HTTPError, match="certificate verify failed"):
            await untrusting.post("https", "127.0.0.1", server.port, "hook.test", "/h", {"host": "hook.test"}, b"x")
        assert len(server.requests) == 1
        await untrusting.aclose()
    finally:
        await client.aclose()
        await server.stop()
