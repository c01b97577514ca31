"""Database engine selection, table binding and migrations (piccolo's own forwards runner)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine

from portal.settings import PortalSettings

log = logging.getLogger("rthub.portal.db")
# aiosqlite logs every statement with its parameters at DEBUG: that would put password hashes, session
# token hashes and not-yet-shown webhook secrets into logs. Keep it quiet whatever the root level is.
logging.getLogger("aiosqlite").setLevel(logging.INFO)


def engine_for(settings: PortalSettings) -> Engine:
    """PostgreSQL when a ``postgres://``/``postgresql://`` URL is configured, else SQLite in the data dir."""
    url = settings.db_url()
    if url.startswith(("postgres://", "postgresql://")):
        return PostgresEngine(config={"dsn": url}, log_queries=False)
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
    elif url:
        raise SystemExit(f"unsupported database URL scheme in {url.split(':', 1)[0]!r}: use postgresql:// or sqlite:///")
    else:
        path = settings.sqlite_path()
        private_dir(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    return SQLiteEngine(path=str(path))


def private_file(path: Path) -> None:
    """Accounts, sessions and sealed secrets: the SQLite file is readable by the portal's user only."""
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)


def private_dir(path: Path) -> None:
    """Create the data directory, or tighten an existing one, to 0700 (owner only)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


def bind(engine: Engine) -> None:
    """Point every portal table, piccolo's migration table and piccolo_conf at ``engine``.

    Piccolo tables are process-wide classes, so one process talks to one portal database at a time.
    """
    os.environ.setdefault("PICCOLO_CONF", "portal.piccolo_conf")
    from piccolo.apps.migrations.tables import Migration

    import portal.piccolo_conf as conf
    from portal.tables import TABLES

    conf.DB = engine
    for table in (*TABLES, Migration):
        table._meta.db = engine


async def migrate(settings: PortalSettings) -> Engine:
    """Bind the engine of ``settings`` and run every migration not yet applied; returns the engine."""
    from piccolo.apps.migrations.commands.forwards import ForwardsMigrationManager

    engine = engine_for(settings)
    if isinstance(engine, SQLiteEngine):
        private_file(Path(engine.path))
    bind(engine)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = await ForwardsMigrationManager(app_name="portal").run()
    for line in out.getvalue().splitlines():
        if line.strip():
            log.debug("migrate: %s", line.strip())
    if not result.success:
        raise RuntimeError(f"portal migrations failed: {result.message}")
    return engine


async def close(engine: Engine) -> None:
    if isinstance(engine, PostgresEngine) and engine.pool is not None:  # no pool: nothing to close (piccolo warns)
        with contextlib.suppress(Exception):
            await engine.close_connection_pool()
