"""Issue 20 item 7: a full JetStream store under ``rthub up``'s nats-server is said (stderr line,
nats-status.json, the portal's /health) and healed once space is back (a restart: after a real ENOSPC the server
stored nothing more, even once space was freed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from hub.ops.storewatch import STATUS_FILE, StoreStatus, full_sign, read_status
from portal import outage
from tests.helpers import ROOT


def test_full_signs_in_the_server_log():
    log = ("[1] [INF] Server is ready\n"
           "[1] [ERR] JetStream failed to store a msg on stream '$G > T': write /x/1.blk: no space left on device\n")
    assert full_sign(log).endswith("no space left on device")
    assert full_sign("[1] [WRN] JetStream resource limits exceeded for account: insufficient resources")
    assert full_sign("[1] [INF] Server is ready\n[1] [INF] Listening for client connections") is None


class _Portal:
    """What portal.outage reads of the portal: its settings' data directory and the NATS state."""

    def __init__(self, data_dir):
        self.settings = type("S", (), {"data_dir": str(data_dir)})()

    def nats_down(self):
        return None


def test_the_portal_health_names_a_full_store(tmp_path):
    portal = _Portal(tmp_path)
    assert outage.down(portal) == []
    (tmp_path / STATUS_FILE).write_text(json.dumps({"state": "full", "detail": "JetStream store full: disk",
                                                    "since": 1.0, "free_bytes": 0, "restarts": 0}))
    assert outage.down(portal) == ["jetstream-store"] and outage.store_full(portal) == "JetStream store full: disk"
    assert read_status(tmp_path) == StoreStatus(state="full", detail="JetStream store full: disk", since=1.0,
                                                free_bytes=0, restarts=0)


def test_a_real_enospc_is_said_and_healed_by_a_restart_once_space_is_back(tmp_path):
    root = tmp_path / "small-disk"
    root.mkdir()
    ns = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    done = subprocess.run([*ns, sys.executable, "-m", "tests.storewatch_drill", str(root)], cwd=ROOT,
                          capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    out = json.loads(done.stdout.decode().splitlines()[-1])
    assert out["full_status"]["state"] == "full" and "no space left on device" in out["full_status"]["detail"]
    assert out["stored_while_full"] is False  # the server really was stuck
    assert any(line.startswith("nats-server: JetStream store full") for line in out["said"]), out["said"]
    assert any(line.startswith("nats-server restarted: the store has space again") for line in out["said"])
    assert out["stored_after"] is True
    assert out["final_status"]["state"] == "ok" and out["final_status"]["restarts"] == 1
