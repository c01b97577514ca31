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

from hub.deliver.transport import ssrf
from hub.deliver.transport.client import Client, HTTPError
from hub.deliver.transport.request import Sender

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


@pytest.mark.parametrize("size_line", [
    b"-1", b"0x10", b"1_0", b"+5", b" 5", b"", b"5 5", b"12345678901234567", b"\xb2", b"5\x00", b"5;a\x01b"])
async def test_malformed_chunk_sizes_are_rejected(size_line: bytes):
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size_line + b"\r\nhello\r\n0\r\n\r\n"
    server = await Server(answer(raw)).start()
    client = Client(connect_timeout=2)
    try:
        with pytest.raises(HTTPError, match="invalid chunk size line"):
            await post(client, server)
    finally:
        await client.aclose()
        await server.stop()


async def test_strict_framing_accepts_what_the_grammar_allows_and_limits_the_body():
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"0000000000000005 ;name=value;x=\"q\"\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n")
    server = await Server(answer(raw)).start()
    client = Client(connect_timeout=2)
    small = Client(connect_timeout=2, max_body=12)
    try:
        assert (await post(client, server)).body == b"hello0123456789"
        with pytest.raises(HTTPError, match="larger than 12 bytes"):
            await post(small, server)
        for length in (b"\xb2", b"-1", b"1e3", b"+7", b"0x7"):  # latin-1 superscript two passes str.isdigit()
            bad = await Server(answer(b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\n\r\nhello!!")).start()
            with pytest.raises(HTTPError, match="invalid Content-Length"):
                await post(client, bad)
            await bad.stop()
        big = await Server(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n0123456789abc")).start()
        with pytest.raises(HTTPError, match="larger than 12 bytes"):
            await post(small, big)
        await big.stop()
        odd = await Server(answer(b"HTTP/1.1 2\xb20 OK\r\nContent-Length: 0\r\n\r\n")).start()
        with pytest.raises(HTTPError, match="not an HTTP/1.x answer"):
            await post(client, odd)
        await odd.stop()
    finally:
        await client.aclose()
        await small.aclose()
        await server.stop()


class Proxy:
    """A forwarding HTTP proxy on 127.0.0.1: ``CONNECT host:port`` tunnels and absolute-form requests, with a
    hosts table of its own (it resolves names the deliverer's DNS does not know)."""

    def __init__(self, hosts: dict[str, str], refuse_connect: bool = False):
        self.hosts, self.refuse_connect = hosts, refuse_connect
        self.lines: list[str] = []  # request lines seen, in order
        self.auth: list[str | None] = []
        self.connections = 0

    async def start(self) -> Proxy:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.server.close()

    async def open(self, authority: str):
        host, _, port = authority.rpartition(":")
        return await asyncio.open_connection(self.hosts.get(host, host), int(port))

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            while True:
                try:
                    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                except asyncio.IncompleteReadError:
                    return
                seen = Seen(head[:-4], b"", self.connections)
                self.lines.append(seen.line)
                self.auth.append(seen.headers.get("proxy-authorization"))
                method, target, _ = seen.line.split(" ")
                if method == "CONNECT":
                    if self.refuse_connect:
                        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                        return
                    up_reader, upstream = await self.open(target)
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await asyncio.gather(pipe(reader, upstream), pipe(up_reader, writer))
                    return
                body = await reader.readexactly(int(seen.headers.get("content-length", "0")))
                authority, _, path = target.removeprefix("http://").partition("/")
                up_reader, upstream = await self.open(authority)
                lines = head.split("\r\n")
                kept = [x for x in lines[1:] if x and not x.lower().startswith("proxy-authorization")]
                upstream.write(("\r\n".join([f"{method} /{path} HTTP/1.1", *kept]) + "\r\n\r\n").encode() + body)
                answer_head = await up_reader.readuntil(b"\r\n\r\n")
                length = int(Seen(answer_head.decode()[:-4], b"", 0).headers.get("content-length", "0"))
                writer.write(answer_head + await up_reader.readexactly(length))
                upstream.close()
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if upstream is not None:
                upstream.close()
            writer.close()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def test_proxies_from_the_environment_connect_absolute_form_and_no_proxy(certs: Path, monkeypatch):
    names: list[str | None] = []
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(certs / "leaf.pem", certs / "leaf.key")
    server_ctx.sni_callback = lambda _sock, name, _ctx: names.append(name)
    plain = await Server(answer(OK)).start()
    tls = await Server(answer(OK), tls=server_ctx).start()
    proxy = await Proxy({"hook.test": "127.0.0.1"}).start()
    monkeypatch.setenv("HTTP_PROXY", f"http://user:p%40ss@127.0.0.1:{proxy.port}")
    monkeypatch.setenv("HTTPS_PROXY", f"127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", "direct.test, .inside.test")
    client = Client(connect_timeout=2, ssl_context=ssl.create_default_context(cafile=str(certs / "ca.pem")))
    unroutable = "192.0.2.1"  # TEST-NET-1: through a proxy the checked address is not what is dialled
    try:
        for i in range(2):
            resp = await client.post("http", unroutable, plain.port, "hook.test", "/hook?x=1",
                                     {"host": f"hook.test:{plain.port}"}, b"%d" % i)
            assert (resp.status, resp.body) == (200, b"ok")
        assert proxy.lines == [f"POST http://hook.test:{plain.port}/hook?x=1 HTTP/1.1"] * 2
        assert proxy.auth == ["Basic dXNlcjpwQHNz"] * 2  # user:p@ss
        assert proxy.connections == 1  # the kept-alive connection to the proxy was reused
        assert [(r.line, r.headers["host"], r.body) for r in plain.requests] == [
            ("POST /hook?x=1 HTTP/1.1", f"hook.test:{plain.port}", b"0"),
            ("POST /hook?x=1 HTTP/1.1", f"hook.test:{plain.port}", b"1")]
        assert "proxy-authorization" not in plain.requests[0].headers

        resp = await client.post("https", unroutable, tls.port, "hook.test", "/h", {"host": "hook.test"}, b"x")
        assert (resp.status, resp.body) == (200, b"ok")
        assert proxy.lines[2] == f"CONNECT hook.test:{tls.port} HTTP/1.1" and proxy.auth[2] is None
        assert names == ["hook.test"] and tls.requests[0].line == "POST /h HTTP/1.1"
        assert (await client.post("https", unroutable, tls.port, "hook.test", "/h", {"host": "hook.test"},
                                   b"y")).status == 200
        assert len(proxy.lines) == 3 and tls.connections == 1  # the tunnel is kept alive too

        for name in ("direct.test", "a.inside.test"):  # NO_PROXY: straight to the checked address
            resp = await client.post("http", "127.0.0.1", plain.port, name, "/d", {"host": name}, b"d")
            assert resp.status == 200 and plain.requests[-1].line == "POST /d HTTP/1.1"
        assert len(proxy.lines) == 3 and [r.conn for r in plain.requests[2:]] == [3, 4]  # direct, a pool per name
    finally:
        await client.aclose()
        for s in (plain, tls, proxy):
            await s.stop()


async def test_a_refused_tunnel_is_an_error_and_the_guard_checks_the_target_first(certs: Path, monkeypatch):
    proxy = await Proxy({}, refuse_connect=True).start()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    client = Client(connect_timeout=2)
    sender = Sender(2, 5, [], False, 512, 4)  # nothing private allowed
    try:
        with pytest.raises(HTTPError, match="proxy answered 403 to CONNECT hook.test:443"):
            await client.post("https", "192.0.2.1", 443, "hook.test", "/", {"host": "hook.test"}, b"")
        result = await sender.post("http://127.0.0.1:9/hook", {}, b"{}")
        assert result.error == "refused: 127.0.0.1: address not allowed (not a public address)"
        assert proxy.lines == ["CONNECT hook.test:443 HTTP/1.1"]  # the refused target never reached the proxy
    finally:
        await client.aclose()
        await sender.close()
        await proxy.stop()


def test_one_url_parser_for_the_guard_and_the_client():
    u = ssrf.parse("https://Bücher.example:8443/a b?c=ü")
    assert u == ssrf.URL("https", "xn--bcher-kva.example", 8443, "/a%20b?c=%C3%BC", "xn--bcher-kva.example:8443",
                         None)
    assert ssrf.check_url("https://Bücher.example:8443/", True) == ("https", u.host, 8443)
    assert ssrf.parse("http://[::1]:80/x").netloc == "[::1]" and str(ssrf.parse("http://[::1]/").ip) == "::1"
    for url, why in [("http://127.1/", "non-canonical"), ("http://0x7f000001/", "non-canonical"),
                     ("http://2130706433/", "non-canonical"), ("http://h.example\\@10.0.0.1/", "backslash"),
                     ("http://h.example/\n", "control"), (" http://h.example/", "control"),
                     ("http://u@h.example/", "credentials"), ("http://h.example:99999/", "port"),
                     ("http://a..b/", "host name"), ("http://[1.2.3.4]/", "brackets"), ("http://[::1/", "invalid URL"), ("gopher://h/", "scheme")]:
        with pytest.raises(ssrf.Refused, match=why):
            ssrf.parse(url)


async def test_a_kept_dns_answer_is_checked_again_on_every_use():
    loopback = ssrf.networks(["127.0.0.0/8", "::1/128"])
    host, ip = await ssrf.resolve("http://localhost:8080/x", loopback, False)
    assert host == "localhost" and ip.is_loopback
    with pytest.raises(ssrf.Refused, match="localhost: address not allowed"):
        await ssrf.resolve("http://localhost:8080/x", [], False)  # the same kept answer, no longer allowed
