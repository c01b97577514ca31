"""``rthub translate`` (offline translation of raw events) and ``rthub courses import`` (course names to KV)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Iterator
from typing import TextIO

import msgspec

from hub.core.events import DEFAULT_LIMITS, InvalidEvent, normalize
from hub.core.protocols import NAMES as PROTOCOLS
from hub.translate import CourseNames, ExternalIds, Rejected, TranslateContext, course_kv_key, translate

DEV_SECRET = "rthub-offline-dev-secret"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("translate", help="translate raw Open edX events to xAPI or Caliper, offline",
                       description="Reads raw events (a JSON object per file, JSON lines, or tracking-log lines; "
                                   "stdin when no FILE), writes one statement per line to stdout, reports "
                                   "rejected inputs on stderr. Exit 1 if anything was rejected.")
    p.add_argument("--protocol", choices=PROTOCOLS, required=True)
    p.add_argument("--lms-url", required=True, help="LMS root URL used in ids and actors")
    p.add_argument("--external-ids", metavar="FILE",
                   help='JSON {user id or username: uuid} ("*" = every user) or CSV of Open edX external ids')
    p.add_argument("--courses", metavar="FILE", help='JSON {course key: display name} ("*" = every course)')
    p.add_argument("--id-secret", default=None,
                   help="secret for anonymized ids of users not in --external-ids (default $RTHUB_ID_SECRET)")
    p.add_argument("files", nargs="*", metavar="FILE")
    p.set_defaults(func=run_translate)

    courses = sub.add_parser("courses", help="course display names in the rthub_courses KV bucket")
    csub = courses.add_subparsers(dest="courses_command", metavar="ACTION", required=True)
    imp = csub.add_parser("import", help="load a JSON map {course key: display name} into the bucket")
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("--nats-url", default=None, help="default $RTHUB_NATS_URL")
    imp.set_defaults(func=run_courses_import)


def _lines(name: str, stream: TextIO) -> Iterator[tuple[int, str]]:
    """``(line number, JSON text)``: a whole-file object counts as line 1; log prefixes are cut off."""
    content = stream.read()
    stripped = content.strip()
    if stripped.startswith("{") and "\n" in stripped:
        try:
            DEFAULT_LIMITS.check(stripped.encode(errors="replace"))  # the hub's limits, before decoding
            json.loads(stripped)
        except ValueError:
            pass
        else:
            yield 1, stripped
            return
    for number, line in enumerate(content.splitlines(), 1):
        line = line.strip()
        if line:
            yield number, line


def _decode(line: str) -> object:
    """A JSON line, or a tracking-log line: logger prefix, then the JSON event."""
    start = 0 if line.startswith(("{", "[", '"')) else line.find("{")
    if start < 0:
        raise ValueError("not JSON (and no event after a log prefix)")
    DEFAULT_LIMITS.check(line[start:].encode(errors="replace"))  # the hub's limits, before decoding
    try:
        return json.loads(line[start:])
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at column {exc.colno + start}") from None


def run_translate(args: argparse.Namespace) -> int:
    secret = args.id_secret or os.environ.get("RTHUB_ID_SECRET")
    if not secret:
        secret = DEV_SECRET
        print("rthub translate: no --id-secret or RTHUB_ID_SECRET, anonymized ids use a development secret",
              file=sys.stderr)
    try:
        ids = ExternalIds.load(args.external_ids, secret) if args.external_ids else ExternalIds(secret)
        names = {}
        if args.courses:
            with open(args.courses, encoding="utf-8") as fh:
                names = json.load(fh)
            if not isinstance(names, dict):
                raise ValueError("--courses must hold a JSON object")
    except (OSError, ValueError) as exc:
        print(f"rthub translate: {exc}", file=sys.stderr)
        return 2
    ctx = TranslateContext(args.lms_url, ids, CourseNames({str(k): str(v) for k, v in names.items()}))
    encode = msgspec.json.Encoder().encode
    out = sys.stdout.buffer
    counts = {"events": 0, "statements": 0, "skipped": 0, "rejected": 0}
    sources = args.files or ["-"]
    for source in sources:
        label = "<stdin>" if source == "-" else source
        try:
            stream = sys.stdin if source == "-" else open(source, encoding="utf-8", errors="replace")  # noqa: SIM115
        except OSError as exc:
            print(f"{label}: cannot read: {exc.strerror}", file=sys.stderr)
            counts["rejected"] += 1
            continue
        with stream:
            for line_no, line in _lines(label, stream):
                counts["events"] += 1
                try:
                    event = normalize(_decode(line))
                    statements = translate(args.protocol, event, ctx)
                except (ValueError, InvalidEvent, Rejected) as exc:
                    reason = exc.reason if isinstance(exc, Rejected) else str(exc)
                    print(f"{label}:{line_no}: rejected: {reason}", file=sys.stderr)
                    counts["rejected"] += 1
                    continue
                if not statements:
                    counts["skipped"] += 1
                for statement in statements:
                    out.write(encode(statement) + b"\n")
                    counts["statements"] += 1
    out.flush()
    print(f"rthub translate: {counts['events']} events, {counts['statements']} statements, "
          f"{counts['skipped']} skipped (unsupported name), {counts['rejected']} rejected, "
          f"{ctx.courses.unknown} without course name", file=sys.stderr)
    return 1 if counts["rejected"] else 0


def run_courses_import(args: argparse.Namespace) -> int:
    try:
        with open(args.file, encoding="utf-8") as fh:
            names = json.load(fh)
    except (OSError, ValueError) as exc:
        print(f"rthub courses import: {exc}", file=sys.stderr)
        return 2
    if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
        print("rthub courses import: expected a JSON object {course key: display name}", file=sys.stderr)
        return 2
    return asyncio.run(_import(names, args.nats_url))


async def put_course_name(js, course_key: str, name: str) -> int:
    """Write one course name to the ``rthub_courses`` bucket (the hub mirrors it into its translators)."""
    from hub.core.subjects import COURSES_BUCKET

    kv = await js.key_value(COURSES_BUCKET)
    return await kv.put(course_kv_key(course_key), name.encode())


async def _import(names: dict[str, str], nats_url: str | None) -> int:

    from hub.core.natsconn import connect
    from hub.core.settings import NatsSettings, from_env
    from hub.core.streams import ensure_bucket
    from hub.core.subjects import COURSES_BUCKET

    settings = from_env(NatsSettings, nats_url=nats_url)
    nc = await connect(settings, "rthub-courses-import")
    try:
        js = nc.jetstream()
        await ensure_bucket(js, COURSES_BUCKET, history=5, replicas=1)  # the project's one way (race-safe)
        for key, name in names.items():
            await put_course_name(js, key, name)
    finally:
        await nc.close()
    print(f"imported {len(names)} course names into {COURSES_BUCKET}")
    return 0
