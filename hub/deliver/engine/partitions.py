"""Course partitions: one ordered integration spread over several deliverer processes.

JetStream consumers filter by subject, not by hash, so the partition must be in the subject. The protocol
streams keep their subjects (direct subscribers, grants' filter subjects and NATS permissions are unchanged);
instead the stream ``DELIVERY_PARTS`` *sources* them with a subject transform that inserts a partition number
computed by the server from the site, org and course tokens::

    xapi.<site>.<org>.<course>.<event>  ->  part.xapi.<0..n-1>.<site>.<org>.<course>.<event>

It has interest retention (a message is dropped once every integration's partition consumer acked it, and not
kept at all when no consumer wants it) and no subjects of its own (nobody publishes to it). An ordered
integration then has ``n`` durable consumers ``rthub_<id>_p<k>``, each held by one process through its lease
``lease.<id>.p<k>``; a course is always in the same partition, so per-course order holds as with one lease.
Processes announce themselves (``alive.<process>`` in the state bucket) and each holds about ``n / processes``
partitions: one that holds more hands the extra ones over (in order, as a stopping runner does), one that
holds fewer takes free or stale ones.
"""

from __future__ import annotations

import datetime as dt

from nats.aio.msg import Msg
from nats.js.api import RetentionPolicy, StorageType, StreamConfig, StreamSource, SubjectTransform

from hub.core.grants import Grant
from hub.core.streams import DAY, MAX_CONSUMERS
from hub.core.subjects import PARTS_STREAM, PROTOCOL_STREAMS

PREFIX = "part."


def parts_stream_config(partitions: int, replicas: int, max_age_days: int,
                        start: dt.datetime | None = None) -> StreamConfig:
    """``start``: source from then on (the stream's creation). Without it a new partition stream would copy the
    protocol streams' whole history (30 days) through the server before anything new: the first bench with
    partitions spent its time sourcing ~100,000 old statements."""
    sources = [
        StreamSource(name=stream, opt_start_time=start, subject_transforms=[SubjectTransform(
            src=f"{protocol}.*.*.*.*",
            dest=f"{PREFIX}{protocol}.{{{{partition({partitions},1,2,3)}}}}."
                 "{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}.{{wildcard(4)}}")])
        for protocol, stream in PROTOCOL_STREAMS.items()]
    return StreamConfig(name=PARTS_STREAM, retention=RetentionPolicy.INTEREST, storage=StorageType.FILE,
                        num_replicas=replicas, max_age=max_age_days * DAY, sources=sources, max_consumers=MAX_CONSUMERS,
                        description=f"protocol streams in {partitions} course partitions, for ordered push delivery")


def part_filters(grant: Grant, k: int) -> list[str]:
    """``grant``'s filter subjects inside partition ``k``."""
    return [f"{PREFIX}{f.split('.', 1)[0]}.{k}.{f.split('.', 1)[1]}" for f in grant.filter_subjects()]


def original_subject(subject: str) -> str:
    """``part.xapi.3.<site>...`` -> ``xapi.<site>...``; other subjects unchanged."""
    if not subject.startswith(PREFIX):
        return subject
    _, protocol, _, rest = subject.split(".", 3)
    return f"{protocol}.{rest}"


def origin(msg: Msg) -> tuple[str, int] | None:
    """``(protocol stream, sequence)`` a partitioned copy came from (the server's ``Nats-Stream-Source``)."""
    source = (msg.headers or {}).get("Nats-Stream-Source")
    if not source or not msg.subject.startswith(PREFIX):
        return None
    parts = source.split(" ")
    try:
        return parts[0], int(parts[1])
    except (IndexError, ValueError):
        return None


def fair_share(partitions: int, processes: list[str], me: str) -> int:
    """Partitions ``me`` should hold: ``partitions / len(processes)``, the remainder going to the first ones by
    id, so that every process alive agrees and the shares add up to ``partitions``."""
    alive = sorted(set(processes) | {me})
    base, extra = divmod(partitions, len(alive))
    return base + (1 if alive.index(me) < extra else 0)


def preference(partitions: int, process_id: str) -> list[int]:
    """The order in which a process tries to take partitions: rotated by its id, so several new processes do
    not all reach for the same free partition first."""
    start = sum(process_id.encode()) % max(1, partitions)
    return [(start + i) % partitions for i in range(partitions)]
