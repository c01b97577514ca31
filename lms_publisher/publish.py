"""Publishing events to the raw stream: the library functions and the ``rthub publish`` backfill tool.

Every message carries its stable id as ``Nats-Msg-Id``, so a retried batch, a resumed backfill or a file
published twice never shows the hub a duplicate inside the stream's duplicate window.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hub.core.events import DEFAULT_LIMITS, InvalidEvent, Limits, normalize
from hub.core.publish import AckedPublisher
from lms_publisher.codec import Record, raw_record, to_record
from lms_publisher.settings import PublisherSettings
from lms_publisher.sources import expand, read_items, total_size

log = logging.getLogger("rthub.publish")
MSG_ID = "Nats-Msg-Id"


def allowed_events(settings: PublisherSettings) -> frozenset[str]:
    """The allow-list: the configured names, else every name the translators support; the learner group
    membership events (:mod:`lms_publisher.groups`) always pass."""
    from hub.core.groups import MEMBERSHIP_EVENTS

    if settings.allow_events:
        return frozenset(settings.allow_events) | MEMBERSHIP_EVENTS
    from hub.core.subjects import PROTOCOLS
    from hub.translate import supported

    return frozenset().union(*(supported(p) for p in PROTOCOLS)) | MEMBERSHIP_EVENTS


class Summary:
    """Counts of what happened to each input item, with reasons."""

    def __init__(self) -> None:
        self.published = 0
        self.duplicates = 0
        self.skipped: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.failed = 0

    @property
    def seen(self) -> int:
        return self.published + self.duplicates + sum(self.skipped.values()) + sum(self.rejected.values())

    def as_dict(self) -> dict[str, Any]:
        return {"published": self.published, "duplicates": self.duplicates,
                "skipped": sum(self.skipped.values()), "rejected": sum(self.rejected.values()),
                "failed": self.failed, "skipped_reasons": dict(self.skipped),
                "rejected_reasons": dict(self.rejected)}

    def text(self) -> str:
        d = self.as_dict()
        lines = [f"published={d['published']} duplicates={d['duplicates']} skipped={d['skipped']} "
                 f"rejected={d['rejected']} failed={d['failed']}"]
        for title, reasons in (("skipped", self.skipped), ("rejected", self.rejected)):
            for reason, n in reasons.most_common():
                lines.append(f"  {title} {n}: {reason}")
        return "\n".join(lines)


def prepare(obj: Any, site: str, allow: frozenset[str] | None, summary: Summary,
            limits: Limits = DEFAULT_LIMITS) -> Record | None:
    """Normalise and encode one parsed item, or count why not (rejected: unusable or over the event limits,
    with the hub's reason; skipped: not allowed)."""
    if isinstance(obj, InvalidEvent):
        summary.rejected[_short(str(obj))] += 1
        return None
    try:
        event = normalize(obj, limits)
        if allow is not None and event["name"] not in allow:
            summary.skipped[f"event {event['name'][:80]!r} is not in the allow-list"] += 1
            return None
        return to_record(event, site, limits)
    except InvalidEvent as exc:
        summary.rejected[str(exc)] += 1
        return None


def _short(reason: str) -> str:
    """Decoder messages name the byte offset; drop it so reasons group."""
    head, _, tail = reason.partition(" - at position")
    return head + (")" if tail else "")


async def publish_records(pub: AckedPublisher, records: list[Record], ack_timeout: float = 10.0,
                          retries: int = 5) -> tuple[int, int]:
    """Publish a batch with acks; retries what failed (safe: same ids). Returns ``(new, duplicates)``."""
    pending = records
    new = dup = 0
    for attempt in range(retries + 1):
        futures = [await pub.publish(r.subject, r.payload, {MSG_ID: r.msg_id}) for r in pending]
        results = await asyncio.gather(*(asyncio.wait_for(f, ack_timeout) for f in futures),
                                       return_exceptions=True)
        pub.forget()
        failed = []
        for record, result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                failed.append(record)
            elif result.duplicate:
                dup += 1
            else:
                new += 1
        if not failed:
            return new, dup
        log.warning("%d of %d publishes failed (%s); retry %d", len(failed), len(pending),
                    next(r for r in results if isinstance(r, BaseException)).__class__.__name__, attempt + 1)
        pending = failed
        await asyncio.sleep(min(0.2 * 2**attempt, 3.0))
    raise ConnectionError(f"{len(pending)} events could not be published after {retries} retries")


async def publish_events(nc, events: Iterable[dict[str, Any]], site: str = "default",
                         allow: frozenset[str] | None = None, batch_size: int = 1000) -> Summary:
    """Publish events of either shape on connection ``nc`` (the library entry point used by ``rthub up --demo``)."""
    summary = Summary()
    batch: list[Record] = []
    async with AckedPublisher(nc) as pub:
        for obj in events:
            record = prepare(obj, site, allow, summary)
            if record is not None:
                batch.append(record)
            if len(batch) >= batch_size:
                await _flush(pub, batch, summary)
        await _flush(pub, batch, summary)
    return summary


async def publish_raw(nc, payloads: Iterable[bytes], site: str = "default") -> Summary:
    """Send bytes exactly as given, valid or not: how tests feed the hub's quarantine."""
    summary = Summary()
    async with AckedPublisher(nc) as pub:
        await _flush(pub, [raw_record(p, site) for p in payloads], summary)
    return summary


async def _flush(pub: AckedPublisher, batch: list[Record], summary: Summary) -> None:
    if batch:
        new, dup = await publish_records(pub, batch)
        summary.published += new
        summary.duplicates += dup
        batch.clear()


class RateLimit:
    """At most ``rate`` items per second (0 = unlimited), smoothed over short bursts."""

    def __init__(self, rate: float):
        self.rate = rate
        self.start = time.monotonic()
        self.count = 0

    async def take(self, n: int = 1) -> None:
        if self.rate <= 0:
            return
        self.count += n
        ahead = self.count / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            await asyncio.sleep(ahead)


class State:
    """Backfill positions, one per file (absolute path -> decompressed byte offset), saved atomically."""

    def __init__(self, path: Path | None):
        self.path = path
        self.files: dict[str, dict[str, int]] = {}
        if path and path.exists():
            self.files = json.loads(path.read_text() or "{}")

    def start(self, file: Path) -> int:
        entry = self.files.get(str(file.resolve()))
        if not entry:
            return 0
        if entry.get("size", 0) > file.stat().st_size:  # file replaced (log rotated): read it from the start
            return 0
        return int(entry.get("offset", 0))

    def done(self, file: Path) -> bool:
        entry = self.files.get(str(file.resolve()))
        return bool(entry and entry.get("done") and entry.get("size") == file.stat().st_size)

    def mark(self, file: Path, offset: int, done: bool = False) -> None:
        self.files[str(file.resolve())] = {"offset": offset, "size": file.stat().st_size, "done": int(done)}
        if self.path:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.files, indent=1))
            os.replace(tmp, self.path)


class Progress:
    """``\\r``-updated progress line on stderr: items, rate, percent of bytes and ETA."""

    def __init__(self, total_bytes: int, enabled: bool):
        self.total = max(total_bytes, 1)
        self.enabled = enabled
        self.start = time.monotonic()
        self.last = 0.0

    def update(self, items: int, done_bytes: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.5):
            return
        self.last = now
        elapsed = max(now - self.start, 1e-6)
        frac = min(done_bytes / self.total, 1.0)
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        sys.stderr.write(f"\r[{bar}] {frac:6.1%} {items} events {items / elapsed:,.0f}/s ETA {eta:,.0f}s   ")
        sys.stderr.flush()

    def close(self, items: int) -> None:
        if self.enabled:
            self.update(items, self.total, force=True)
            sys.stderr.write("\n")


async def backfill(nc, paths: list[str], site: str, allow: frozenset[str] | None, batch_size: int = 1000,
                   rate: float = 0.0, state_path: Path | None = None, dry_run: bool = False, raw: bool = False,
                   progress: bool = False, limits: Limits = DEFAULT_LIMITS) -> Summary:
    """Publish every event of the given files/directories; resumable through ``state_path``.

    Every item is held to ``limits`` (size, nesting depth) before it is decoded, ``raw`` lines too: an event
    the hub would quarantine for them is rejected here, counted with the same reason.

    A file's position is saved only after its batch is acknowledged, so an interrupted run resumes without
    loss (and anything re-sent is dropped by JetStream's de-duplication). ``nc`` is None for a dry run.
    """
    if dry_run:
        return await _backfill(None, paths, site, allow, batch_size, rate, state_path, True, raw, progress, limits)
    async with AckedPublisher(nc) as pub:
        return await _backfill(pub, paths, site, allow, batch_size, rate, state_path, False, raw, progress, limits)


async def _backfill(pub: AckedPublisher | None, paths: list[str], site: str, allow: frozenset[str] | None,
                    batch_size: int, rate: float, state_path: Path | None, dry_run: bool, raw: bool,
                    progress: bool, limits: Limits) -> Summary:
    files = expand(paths)
    summary = Summary()
    state = State(state_path)
    limiter = RateLimit(rate)
    done_before = 0
    prog = Progress(total_size(files), progress)
    for file in files:
        if not file.exists():
            summary.rejected[f"{file}: no such file"] += 1
            continue
        if state.done(file):
            summary.skipped[f"{file}: already published (state file)"] += 1
            done_before += file.stat().st_size
            continue
        start = state.start(file)
        batch: list[Record] = []
        position = start
        for position, file_bytes, item in _items(file, start, raw, limits):
            record = _raw(item, site, limits, summary) if raw else prepare(item, site, allow, summary, limits)
            if record is None:
                continue
            await limiter.take()
            if dry_run:
                summary.published += 1
            else:
                batch.append(record)
                if len(batch) >= batch_size:
                    await _flush(pub, batch, summary)
                    state.mark(file, position)
            prog.update(summary.seen, done_before + file_bytes)
        if not dry_run:
            await _flush(pub, batch, summary)
            state.mark(file, position, done=True)
        done_before += file.stat().st_size
    prog.close(summary.seen)
    return summary


def _raw(data: bytes, site: str, limits: Limits, summary: Summary) -> Record | None:
    try:
        limits.check(data)
    except InvalidEvent as exc:
        summary.rejected[str(exc)] += 1
        return None
    return raw_record(data, site)


def _items(file: Path, start: int, raw: bool, limits: Limits):
    if not raw:
        yield from read_items(file, start, limits)
        return
    from lms_publisher.sources import open_source

    stream, underlying = open_source(file)
    with stream, underlying:
        stream.seek(start)
        pos = start
        for line in stream:
            pos += len(line)
            body = line.rstrip(b"\r\n")
            if body:
                yield pos, underlying.tell(), body
