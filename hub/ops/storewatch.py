"""``rthub up`` watches the JetStream store of its nats-server: a full disk is said, and healed once space is back.

After a real ENOSPC the server keeps running and answers ``/healthz`` with ok, but JetStream stores nothing
more (publishes time out) and it does not recover when space is freed: it needed a manual restart. So the
supervisor reads what the server logs ("no space left on device", "insufficient resources", "out of
resources"), says "store full" (a line on stderr, ``nats-status.json`` in the data directory, which the
portal's ``/health`` reads), and once the disk under the store has ``min_free`` bytes again it restarts the
server once (the LMS side spools meanwhile and replays; the services reconnect by themselves).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

STATUS_FILE = "nats-status.json"
_STATUS_BYTES = 1024  # the file's fixed size (see StoreWatch._write)
MIN_FREE = 64 * 1024 * 1024  # restart once this much is free again under the store
FULL_SIGNS = ("no space left on device", "insufficient resources", "out of resources", "insufficient storage")


@dataclass
class StoreStatus:
    state: str = "ok"  # "ok" or "full"
    detail: str = ""
    since: float = 0.0
    free_bytes: int | None = None
    restarts: int = 0


def full_sign(log_text: str) -> str | None:
    """The first line of server log text that says the store is full, or None."""
    for line in log_text.splitlines():
        low = line.lower()
        if any(sign in low for sign in FULL_SIGNS):
            return line.strip()
    return None


def read_status(data_dir: Path | str) -> StoreStatus | None:
    """What the supervisor last wrote (None: no supervisor, or nothing written yet)."""
    try:
        return StoreStatus(**json.loads((Path(data_dir) / STATUS_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


class StoreWatch:
    """Call :meth:`check` every few seconds from the supervisor loop; it returns lines to print."""

    def __init__(self, server, data_dir: Path, min_free: int = MIN_FREE):
        self.server, self.data_dir, self.min_free = server, Path(data_dir), min_free
        self.status = StoreStatus(since=time.time())
        self.offset = self._log_size()
        self._write()

    def _log_size(self) -> int:
        try:
            return self.server.log_file.stat().st_size
        except OSError:
            return 0

    def _new_log(self) -> str:
        try:
            with open(self.server.log_file, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return ""
        self.offset += len(data)
        return data.decode(errors="replace")

    def _free(self) -> int | None:
        try:
            return shutil.disk_usage(self.server.store_dir).free
        except OSError:
            return None

    def _write(self) -> None:
        """Overwrite the status in place, padded to a fixed size: on a full disk a new file (or a longer one)
        could not be written, and this is when it matters."""
        status = asdict(self.status)
        status["detail"] = status["detail"][:500]
        text = json.dumps(status)
        try:
            fd = os.open(self.data_dir / STATUS_FILE, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.write(fd, (text + " " * (_STATUS_BYTES - 1 - len(text)) + "\n").encode())
            finally:
                os.close(fd)
        except OSError:
            pass  # said on stderr anyway; written at the next check

    def check(self) -> list[str]:
        said: list[str] = []
        free = self._free()
        self.status.free_bytes = free
        sign = full_sign(self._new_log())
        if sign and self.status.state == "ok":
            self.status.state, self.status.since = "full", time.time()
            self.status.detail = f"JetStream store full: {sign[-300:]}"
            said.append(f"nats-server: JetStream store full ({free if free is not None else '?'} bytes free under "
                        f"{self.server.store_dir}); the LMS side spools meanwhile. Free space: the server is "
                        f"restarted once {self.min_free} bytes are free")
        elif self.status.state == "full" and free is not None and free >= self.min_free:
            self.server.stop()
            self.server.start()
            self.offset = self._log_size()
            self.status.restarts += 1
            self.status.state, self.status.since, self.status.detail = "ok", time.time(), ""
            said.append(f"nats-server restarted: the store has space again ({free} bytes free)")
        self._write()
        return said
