"""``rthub publish`` (tracking logs / backfill) and ``rthub demo`` (generated activity)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from hub.core.creds import creds_allow
from hub.core.natsconn import connect
from hub.core.settings import StreamSettings, from_env
from hub.core.streams import ensure_streams
from hub.core.subjects import RAW_STREAM
from lms_publisher.settings import PublisherSettings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="publish tracking-log files to the raw stream (backfill)",
                       description="Publish Open edX tracking-log events (JSON lines with or without the "
                       "logger prefix, one JSON object per file, plain or gzip, files or directories).")
    p.add_argument("files", nargs="+", metavar="FILE", help="files or directories")
    p.add_argument("--site", help="LMS site the events come from (RTHUB_SITE, default 'default')")
    p.add_argument("--raw", action="store_true",
                   help="send each non-empty line exactly as it is, unchecked (but held to the event limits)")
    p.add_argument("--all-events", action="store_true", help="no allow-list: send every event name")
    p.add_argument("--dry-run", action="store_true", help="parse and count, publish nothing")
    p.add_argument("--batch-size", type=int, help="events per acknowledged batch (RTHUB_PUBLISH_BATCH)")
    p.add_argument("--rate", type=float, default=0.0, help="at most this many events per second (0 = no limit)")
    p.add_argument("--state", type=Path, help="state file remembering each file's position (resumable)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=publish_main)

    d = sub.add_parser("demo", help="publish generated demo activity continuously (Ctrl-C stops)")
    d.add_argument("--rate", type=float, help="events per second (RTHUB_DEMO_RATE, default 20; 0 = flat out)")
    d.add_argument("--courses", type=int, help="number of demo courses (RTHUB_DEMO_COURSES, default 3)")
    d.add_argument("--users", type=int, help="number of demo learners (RTHUB_DEMO_USERS, default 6)")
    d.add_argument("--count", type=int, default=0, help="stop after this many events (0 = run until stopped)")
    d.add_argument("--site", help="LMS site name (RTHUB_SITE)")
    d.set_defaults(func=demo_main)


def publish_main(args: argparse.Namespace) -> int:
    from lms_publisher.publish import allowed_events, backfill

    settings = from_env(PublisherSettings, site=args.site, publish_batch=args.batch_size)
    allow = None if (args.all_events or args.raw) else allowed_events(settings)
    progress = sys.stderr.isatty() if args.progress is None else args.progress

    async def go():
        nc = js = None
        if not args.dry_run:
            nc = await connect(settings, "rthub-publish")
            js = nc.jetstream()
            if creds_allow(settings.nats_creds, f"$JS.API.STREAM.INFO.{RAW_STREAM}"):  # not a per-site publisher
                await ensure_streams(js, from_env(StreamSettings))
        try:
            return await backfill(nc, args.files, settings.site, allow, batch_size=settings.publish_batch,
                                  rate=args.rate, state_path=args.state, dry_run=args.dry_run, raw=args.raw,
                                  progress=progress, limits=settings.limits)
        finally:
            if nc:
                await nc.close()

    try:
        summary = asyncio.run(go())
    except ConnectionError as exc:
        print(f"error: {exc}; run again (with --state to resume)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        print(("dry run: " if args.dry_run else "") + summary.text())
    return 1 if summary.failed else 0


def demo_main(args: argparse.Namespace) -> int:
    from lms_publisher.demo import main

    return main(args)
