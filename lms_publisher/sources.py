"""Reading tracking logs: plain or gzip files, directories, JSON lines with or without the logger prefix,
or one JSON document per file. Pure parsing, plus file reading that reports byte positions for resuming."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import msgspec

from hub.core.events import DEFAULT_LIMITS, InvalidEvent, Limits

_decoder = msgspec.json.Decoder()


def expand(paths: list[str]) -> list[Path]:
    """Files named on the command line; a directory stands for every regular file under it, sorted."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out.extend(sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith(".")))
        else:
            out.append(path)
    return out


def parse_line(line: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """The JSON value of one log line, after any ``... logger.py:41 - `` prefix; raises InvalidEvent (also
    for a line over the event limits, checked before decoding)."""
    start = line.find(b"{")
    if start < 0:
        raise InvalidEvent("no JSON object on the line")
    text = line[start:].strip()
    limits.check(text)
    try:
        return _decoder.decode(text)
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"not JSON ({exc})") from None


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def open_source(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """``(text stream, underlying file)``: the underlying file's position measures progress through gzip."""
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if _is_gzip(path):
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    return raw, raw


def _whole_document(first: bytes, limits: Limits) -> bool:
    """A file holding one pretty-printed JSON object (or a list): its first line alone is no JSON."""
    s = first.strip()
    if not s or s[:1] not in (b"{", b"["):
        return False
    try:
        limits.check(s)
    except InvalidEvent:
        return False  # read as lines: parse_line rejects it with the reason
    try:
        _decoder.decode(s)
        return False
    except msgspec.DecodeError:
        return True


def read_items(path: Path, start: int = 0,
               limits: Limits = DEFAULT_LIMITS) -> Iterator[tuple[int, int, Any | InvalidEvent]]:
    """Yield ``(position after the item, bytes of the file read so far, value or InvalidEvent)``.

    Positions count decompressed bytes, so ``start`` resumes a gzip file too (by reading past it). A JSON
    list as a whole document yields one item per element, all at the document's end position.
    """
    stream, raw = open_source(path)
    try:
        first = stream.readline()
        if start == 0 and _whole_document(first, limits):
            body = first + stream.read()
            try:
                # a document may hold many events (no size limit here: each is checked once encoded), but
                # never more nesting than an event plus the list around it
                Limits(len(body), limits.max_depth + 1).check(body)
                doc = _decoder.decode(body)
            except InvalidEvent as exc:
                yield len(body), raw.tell(), exc
                return
            except msgspec.DecodeError as exc:
                yield len(body), raw.tell(), InvalidEvent(f"not JSON ({exc})")
                return
            for item in doc if isinstance(doc, list) else [doc]:
                yield len(body), raw.tell(), item
            return
        pos = start
        lines = [first] if start == 0 else []
        if start:
            stream.seek(start)
        for line in _chain(lines, stream):
            pos += len(line)
            if not line.strip():
                continue
            try:
                yield pos, raw.tell(), parse_line(line, limits)
            except InvalidEvent as exc:
                yield pos, raw.tell(), exc
    finally:
        stream.close()
        raw.close()


def _chain(first: list[bytes], stream: IO[bytes]) -> Iterator[bytes]:
    yield from first
    yield from stream


def total_size(paths: list[Path]) -> int:
    return sum(os.path.getsize(p) for p in paths if p.exists())
