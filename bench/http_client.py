"""The deliverer's own HTTP client (``hub/deliver/transport/client.py``) against aiohttp, side by side in one run.

Both POST the same signed webhook body (1.2 kB) to the same local keep-alive receiver, which runs in a process of
its own so the figures are the client's cost. Each client does what the deliverer needs per POST:

- ours: ``ssrf.resolve`` (check the URL, resolve the name, check every address) then ``Client.post`` to the
  checked address, under one ``asyncio.timeout``;
- aiohttp: one ``ClientSession`` whose connector resolves names through a resolver that applies the same SSRF
  check (``ssrf.check_address`` on every address; no DNS cache, so every new connection is checked), the
  literal-address check done before the request (aiohttp does not ask the resolver for literal addresses),
  no redirects, a total timeout, the body read.

Each case runs ``--rounds`` times, the two clients back to back in alternating order; a round's ratio compares
the two runs of that round (the machine's load drifts less within a round than across the run), and the figures
are the medians over the rounds. The host is ``localhost`` (a name, resolved as a real target would be) unless
``--ip`` is given. Printed per round and client: POSTs/s, p50/p99 latency, client CPU per POST, how busy the
receiver was; then the medians, and last the median ratios (> 1 means ours is better): ``c1_ratio=``,
``c16_ratio=`` (POSTs/s, ours / aiohttp), ``c1_p99_ratio=``, ``c16_p99_ratio=`` (p99, aiohttp / ours),
``c1_cpu_ratio=``, ``c16_cpu_ratio=`` (CPU per POST, aiohttp / ours).

Usage: ``.venv/bin/python bench/http_client.py [--seconds 2] [--rounds 5] [--ip]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp.abc import AbstractResolver, ResolveResult  # noqa: E402

from hub.deliver.transport import signing, ssrf  # noqa: E402
from hub.deliver.transport.client import Client  # noqa: E402

ALLOWED = ssrf.networks(["127.0.0.0/8"])
BODY = b'{"id":"' + b"x" * 36 + b'","actor":' + b'{"name":"' + b"a" * 1100 + b'"}}'
SECRET = signing.new_secret()
TIMEOUT = 10.0


# ---- the receiver (own process): answers every request with 200 "ok", keep-alive ---------------------------

class _Answer(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport, self.buf, self.need = transport, bytearray(), -1

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                length = 0
                for line in bytes(buf[:end]).lower().split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line[15:])
                self.need = end + 4 + length
            if len(buf) < self.need:
                return
            del buf[: self.need]
            self.need = -1
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def receiver(port: int) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Answer, "127.0.0.1", port, backlog=512)
        print("ready", flush=True)
        await server.serve_forever()

    asyncio.run(main())


def start_receiver() -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--receiver", str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout and proc.stdout.readline().strip() == "ready"
    return proc, port


# ---- the two clients --------------------------------------------------------------------------------------

class Ours:
    name = "ours"

    def __init__(self, connections: int):
        self.client = Client(connect_timeout=5, max_idle=connections)

    async def post(self, url: str, host_header: str, target: str, headers: dict[str, str], body: bytes) -> int:
        host, ip = await ssrf.resolve(url, ALLOWED, False)
        async with asyncio.timeout(TIMEOUT):
            resp = await self.client.post("http", str(ip), PORT, host, target, {"host": host_header, **headers}, body)
        return resp.status

    async def close(self) -> None:
        await self.client.aclose()


class SSRFResolver(AbstractResolver):
    """aiohttp's resolver with the SSRF check on every address a name resolves to."""

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        out: list[ResolveResult] = []
        for fam, _, proto, _, sockaddr in infos:
            ip = ssrf.ipaddress.ip_address(sockaddr[0].split("%")[0])
            ssrf.check_address(ip, ALLOWED)  # raises Refused: aiohttp reports it as a connection error
            out.append({"hostname": host, "host": sockaddr[0], "port": sockaddr[1], "family": fam, "proto": proto,
                        "flags": socket.AI_NUMERICHOST})
        return out

    async def close(self) -> None:
        pass


class Aio:
    name = "aiohttp"

    def __init__(self, connections: int):
        connector = aiohttp.TCPConnector(resolver=SSRFResolver(), use_dns_cache=False, limit=connections,
                                         limit_per_host=connections)
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT),
                                             auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())

    async def post(self, url: str, host_header: str, target: str, headers: dict[str, str], body: bytes) -> int:
        _, host, _ = ssrf.check_url(url, False)
        try:
            literal = ssrf.ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            ssrf.check_address(literal, ALLOWED)
        async with self.session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
            await resp.read()
            return resp.status

    async def close(self) -> None:
        await self.session.close()


# ---- measuring --------------------------------------------------------------------------------------------

PORT = 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(kind, concurrency: int, seconds: float, url: str, receiver_pid: int) -> dict:
    client = kind(max(concurrency, 1))
    host_header = url.split("/")[2]
    target = "/hook"
    latencies: list[float] = []
    count = 0

    async def worker(until: float, record: bool) -> None:
        nonlocal count
        n = 0
        while time.perf_counter() < until:
            headers = {"content-type": "application/json", "user-agent": "rthub-deliver/0.1",
                       **signing.headers([SECRET], f"msg_{n}", BODY)}
            t0 = time.perf_counter()
            status = await client.post(url, host_header, target, headers, BODY)
            if record:
                latencies.append(time.perf_counter() - t0)
                count += 1
            assert status == 200, status
            n += 1

    try:
        await asyncio.gather(*(worker(time.perf_counter() + 0.3, False) for _ in range(concurrency)))  # warm-up
        cpu0, rx0, t0 = time.process_time(), cpu_seconds(receiver_pid), time.perf_counter()
        await asyncio.gather(*(worker(t0 + seconds, True) for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        rx = cpu_seconds(receiver_pid) - rx0
    finally:
        await client.close()
    latencies.sort()
    return {"rate": count / elapsed, "p50": latencies[len(latencies) // 2] * 1000,
            "p99": latencies[int(len(latencies) * 0.99)] * 1000, "cpu_us": cpu / count * 1e6,
            "rx_busy": rx / elapsed}


async def run(args) -> None:
    global PORT
    proc, PORT = start_receiver()
    url = f"http://{'127.0.0.1' if args.ip else 'localhost'}:{PORT}/hook"
    print(f"receiver on {url}; {args.rounds} rounds of {args.seconds:g} s per client and concurrency",
          file=sys.stderr)
    runs: dict[tuple[str, int], list[dict]] = {}
    try:
        for concurrency in (1, 16):
            for r in range(args.rounds):
                for kind in ((Ours, Aio) if r % 2 == 0 else (Aio, Ours)):
                    got = await measure(kind, concurrency, args.seconds, url, proc.pid)
                    print(f"  c={concurrency:<2} {kind.name:<7} round {r + 1}: {got['rate']:7.0f} POST/s  "
                          f"p50 {got['p50']:.2f} ms  p99 {got['p99']:.2f} ms  cpu {got['cpu_us']:.0f} us/POST  "
                          f"receiver busy {got['rx_busy']:.0%}", file=sys.stderr)
                    runs.setdefault((kind.name, concurrency), []).append(got)
    finally:
        proc.terminate()
        proc.wait(5)
    for concurrency in (1, 16):
        for name in ("ours", "aiohttp"):
            rs = runs[(name, concurrency)]
            print(f"{name}_c{concurrency}: {median(r['rate'] for r in rs):.0f} POST/s, "
                  f"p50 {median(r['p50'] for r in rs):.2f} ms, p99 {median(r['p99'] for r in rs):.2f} ms, "
                  f"{median(r['cpu_us'] for r in rs):.0f} us CPU/POST (medians of {len(rs)} rounds)")
    for what, field in (("ratio", "rate"), ("p99_ratio", "p99"), ("cpu_ratio", "cpu_us")):
        for concurrency in (1, 16):
            pairs = zip(runs[("ours", concurrency)], runs[("aiohttp", concurrency)], strict=True)
            ratios = [o[field] / a[field] if field == "rate" else a[field] / o[field] for o, a in pairs]
            print(f"c{concurrency}_{what}={median(ratios):.2f}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--receiver":
        receiver(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per client, concurrency, round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per concurrency (medians reported)")
    parser.add_argument("--ip", action="store_true", help="POST to 127.0.0.1 instead of localhost (no name to resolve)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
