"""The webhook endpoint and the xAPI LRS that the compose tests deliver to, run as compose services
(``python -m tests.compose.receivers webhook|lrs``, port 8000). Both record every request; ``GET /_received``
returns them as JSON so a test in another container can count what arrived, ``GET /_health`` answers 200."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys

from tests.deliver_receivers import LRS, Answer, Receiver, Request, ok


def serve(kind: str, port: int = 8000) -> None:
    lrs = LRS() if kind == "lrs" else None
    receiver: Receiver

    def handle(req: Request) -> Answer:
        if req.method == "GET" and req.path == "/_health":
            return 200, {}, b"ok"
        if req.method == "GET" and req.path == "/_received":
            return 200, {"content-type": "application/json"}, json.dumps(dump(receiver)).encode()
        return lrs(req) if lrs else ok(req)

    async def main() -> None:
        nonlocal receiver
        # As PID 1 of its container nothing stops us without a handler: `docker compose stop` waited 10 s and
        # killed it (exit 137). SIGTERM / SIGINT close the server and exit 0.
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        receiver = await Receiver(handle, port=port, host="0.0.0.0").start()
        print(f"{kind} receiver on :{port}", flush=True)
        await stop.wait()
        await receiver.stop()
        print(f"{kind} receiver stopped", flush=True)

    asyncio.run(main())


def dump(receiver: Receiver) -> list[dict]:
    """Every POST so far: method, path, headers and the body (base64, it may be any bytes)."""
    return [{"path": r.path, "headers": r.headers, "body": base64.b64encode(r.body).decode()}
            for r in receiver.requests if r.method == "POST"]


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[1] not in ("webhook", "lrs"):
        raise SystemExit("usage: python -m tests.compose.receivers webhook|lrs [PORT]")
    serve(sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 8000)
