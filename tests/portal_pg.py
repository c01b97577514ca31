"""A PostgreSQL server for the portal's PostgreSQL tests: the one RTHUB_TEST_DATABASE_URL (else DATABASE_URL)
names, else a private one started from the local binaries on a free port (never a shared server at :5432);
skipped when neither exists. Tests make a database of their own on it and drop it afterwards."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_url() -> Iterator[str]:
    """The URL of a PostgreSQL server to use: the one named by the environment, else a private one (stopped
    and deleted on exit). Use it in a module fixture: ``with postgres_url() as url: yield url``."""
    named = os.environ.get("RTHUB_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if named:
        yield named
        return
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no RTHUB_TEST_DATABASE_URL and no PostgreSQL binaries (initdb, pg_ctl) to start one")
    # Not under pytest's tmp directory: that is private to root, and the server runs as another user.
    base = Path(tempfile.mkdtemp(prefix="rthub-pg-"))
    data, run = base / "data", base / "run"
    run.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as the postgres user
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to start a private server")
        for path in (base, run):
            os.chown(path, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
                   check=True, capture_output=True)
    port = _free_port()
    # -w: pg_ctl returns once the server accepts connections (or fails after its own timeout).
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60", "-o",
                    f"-p {port} -h 127.0.0.1 -k {run} -F", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
