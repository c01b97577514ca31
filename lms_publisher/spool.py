"""A durable local spool: append-only segment files of records, replayed oldest first.

One line per record: ``<subject> <msg id> <json>\\n`` (subjects and ids hold no spaces, msgspec JSON no
newline). Appends are flushed to the OS at once, so they survive the process being killed; segments are
fsynced when they are closed. The replay position is kept in ``head.pos`` and advanced only after JetStream
acknowledged the records, so a crash mid-replay re-sends a little (dropped by de-duplication) and loses
nothing. The total size is bounded: when full, new records are refused with one clear error log line.

Several processes on one machine (LMS workers) each lock their own slot directory ``w<N>`` under the spool
directory; a restarted process takes over a slot whose owner died, and replays what it left.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from lms_publisher.codec import Record

log = logging.getLogger("rthub.spool")


def encode_records(records: Iterable[Record]) -> bytes:
    """One line per record: ``subject msg_id[|traceparent] payload`` (a spool written before tracing reads
    the same)."""
    return b"".join(b"%s %s%s %s\n" % (r.subject.encode(), r.msg_id.encode(),
                                        b"|" + r.trace.encode() if r.trace else b"", r.payload) for r in records)


def decode_line(line: bytes) -> Record:
    subj, msg_id, payload = line.rstrip(b"\n").split(b" ", 2)
    mid, _, tp = msg_id.decode().partition("|")
    return Record(subj.decode(), mid, payload, tp)


class Spool:
    def __init__(self, base: Path | str, max_bytes: int = 256 << 20, segment_bytes: int = 4 << 20,
                 slots: int = 256):
        self.base = Path(base)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.lock = threading.Lock()
        self.dropped = 0
        self.written = 0
        self._full = False
        self.dir, self._lockfile = self._claim_slot(slots)
        self._writer = None
        self._writer_path: Path | None = None
        head = self.dir / "head.pos"
        self._head_name, self._head_off = "", 0
        if head.exists():
            name, _, off = head.read_text().partition(" ")
            self._head_name, self._head_off = name, int(off or 0)
        segs = self._segments()
        self._next = int(segs[-1].stem.split("-")[1]) + 1 if segs else 1
        self.size = sum(s.stat().st_size for s in segs) - (self._head_off if self._head_name else 0)
        if segs and self._head_name not in {s.name for s in segs}:
            self._head_name, self._head_off = segs[0].name, 0
            self.size = sum(s.stat().st_size for s in segs)
        if self.size > 0:
            log.info("spool %s holds %d bytes from an earlier run: replaying them", self.dir, self.size)

    def _claim_slot(self, slots: int) -> tuple[Path, int]:
        self.base.mkdir(parents=True, exist_ok=True)
        for i in range(slots):
            d = self.base / f"w{i}"
            d.mkdir(exist_ok=True)
            fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return d, fd
            except OSError:
                os.close(fd)
        raise RuntimeError(f"all {slots} spool slots under {self.base} are taken")

    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob("seg-*.spool"))

    def pending(self) -> bool:
        return self.size > 0

    def append(self, records: list[Record]) -> int:
        """Append records; returns how many were accepted (0 when the spool is full: they are dropped)."""
        if not records:
            return 0
        data = encode_records(records)
        with self.lock:
            if self.size + len(data) > self.max_bytes:
                self.dropped += len(records)
                if not self._full:
                    self._full = True
                    log.error("SPOOL FULL: %s holds %d bytes (limit RTHUB_SPOOL_MAX_BYTES=%d); events are being "
                              "DROPPED until NATS is reachable and the spool drains", self.dir, self.size,
                              self.max_bytes)
                return 0
            if self._full:
                self._full = False
                log.warning("spool accepts events again (%d were dropped while it was full)", self.dropped)
            if self._writer is None or self._writer.tell() >= self.segment_bytes:
                self._rotate()
            self._writer.write(data)
            self._writer.flush()
            self.size += len(data)
            self.written += len(records)
            return len(records)

    def _rotate(self) -> None:
        self._close_writer()
        self._writer_path = self.dir / f"seg-{self._next:012d}.spool"
        self._next += 1
        self._writer = open(self._writer_path, "ab")  # noqa: SIM115 - kept open across appends
        if not self._head_name:
            self._head_name, self._head_off = self._writer_path.name, 0

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            os.fsync(self._writer.fileno())
            self._writer.close()
            self._writer = None

    def read(self, max_records: int) -> tuple[list[Record], tuple[str, int, int]] | None:
        """The oldest unacknowledged records and a token for :meth:`commit`; None when the spool is empty."""
        with self.lock:
            while True:
                segs = self._segments()
                if not segs:
                    self._head_name, self._head_off, self.size = "", 0, 0
                    return None
                if self._head_name != segs[0].name:
                    self._head_name, self._head_off = segs[0].name, 0
                seg = segs[0]
                with open(seg, "rb") as f:
                    f.seek(self._head_off)
                    lines = []
                    for line in f:
                        if not line.endswith(b"\n"):
                            break  # a torn last line (killed mid-write) is ignored
                        lines.append(line)
                        if len(lines) >= max_records:
                            break
                if lines:
                    records = []
                    for line in lines:
                        try:
                            records.append(decode_line(line))
                        except ValueError:
                            log.error("spool %s: unreadable line skipped", seg)
                    return records, (seg.name, self._head_off, sum(map(len, lines)))
                # this segment is used up: remove it (closing the writer first if it is the active one)
                if self._writer_path == seg:
                    self._close_writer()
                    self._writer_path = None
                self.size -= max(seg.stat().st_size - self._head_off, 0)
                seg.unlink()
                self._head_name, self._head_off = "", 0
                self._save_head()

    def commit(self, token: tuple[str, int, int]) -> None:
        """Mark the records of a :meth:`read` as acknowledged."""
        name, start, nbytes = token
        with self.lock:
            if name == self._head_name and start == self._head_off:
                self._head_off += nbytes
                self.size -= nbytes
                self._save_head()

    def _save_head(self) -> None:
        tmp = self.dir / "head.tmp"
        tmp.write_text(f"{self._head_name} {self._head_off}")
        os.replace(tmp, self.dir / "head.pos")

    def close(self) -> None:
        with self.lock:
            self._close_writer()
        os.close(self._lockfile)
