"""A full disk under a real nats-server, for tests/test_storewatch.py: run as
``unshare --mount [--user --map-root-user] python -m tests.storewatch_drill DIR`` so the small tmpfs mounted at
DIR is private to this process. Prints one JSON object: what the watch said and whether JetStream stored again."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import nats

from hub.ops.natsserver import NatsServer, free_port
from hub.ops.storewatch import STATUS_FILE, StoreWatch


async def drill(root: Path) -> dict:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(root)], check=True)
    server = NatsServer(free_port(), root / "nats", name="storewatch").start()
    watch = StoreWatch(server, root, min_free=2 * 1024 * 1024)
    out: dict = {"said": []}
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        with open(root / "filler", "wb") as fh:  # the disk fills up (ENOSPC)
            try:
                while True:
                    fh.write(b"x" * 65536)
                    fh.flush()
            except OSError:
                pass
        deadline = time.monotonic() + 30
        while watch.status.state == "ok" and time.monotonic() < deadline:
            try:
                await js.publish("t.x", b"y" * 4000, timeout=0.5)
            except Exception:  # noqa: BLE001 - expected: the store cannot write
                pass
            out["said"] += watch.check()
        out["full_status"] = json.loads((root / STATUS_FILE).read_text())
        try:
            await js.publish("t.x", b"still full?", timeout=1)
            out["stored_while_full"] = True
        except Exception:  # noqa: BLE001
            out["stored_while_full"] = False
        (root / "filler").unlink()  # space is back
        deadline = time.monotonic() + 30
        while watch.status.restarts == 0 and time.monotonic() < deadline:
            out["said"] += watch.check()
            await asyncio.sleep(0.2)
        stored = False
        deadline = time.monotonic() + 30
        while not stored and time.monotonic() < deadline:
            try:
                await js.publish("t.x", b"after", timeout=1)
                stored = True
            except Exception:  # noqa: BLE001 - reconnecting after the restart
                await asyncio.sleep(0.2)
        out["stored_after"] = stored
        out["final_status"] = json.loads((root / STATUS_FILE).read_text())
    finally:
        await nc.close()
        server.stop()
        subprocess.run(["umount", str(root)])
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(drill(Path(sys.argv[1])))))
