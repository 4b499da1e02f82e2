"""The files under a node's data dir: the hot set (TinyDB storage written whole, atomically)
and the archive (append-only, CRC-checked JSON lines). Crash-safe writes and recovery from
truncated, zero-filled or garbage-tailed files live here; `edge.store.Store` builds on them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tinydb.storages import Storage

log = logging.getLogger(__name__)

HOT_FILE = "hot.db"
MAGIC = b"FABRIQUE-HOT"
SEGMENT_RECORDS = 1000


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _keep_aside(path: Path, why: str) -> Path | None:
    """Copy a damaged file to corrupt/ (never overwrite an earlier copy) and log it."""
    aside_dir = path.parent / "corrupt" if path.parent.name != "archive" else path.parent.parent / "corrupt"
    aside = aside_dir / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.{time.time_ns() % 10**9:09d}"
    try:
        aside_dir.mkdir(exist_ok=True)
        aside.write_bytes(path.read_bytes())
    except OSError as exc:  # a full disk must not stop the boot
        log.error("%s is damaged (%s); could not keep a copy: %s", path, why, exc)
        return None
    log.warning("%s is damaged (%s); copy kept at %s", path, why, aside)
    return aside


# ---------------------------------------------------------------- hot set

def _parse_hot(blob: bytes) -> tuple[int, dict[str, Any], int]:
    """(generation, tables, stray tail bytes) of a hot file; raises ValueError if unusable."""
    head, sep, rest = blob.partition(b"\n")
    parts = head.split(b" ")
    if not sep or len(parts) != 5 or parts[0] != MAGIC or parts[1] != b"1":
        raise ValueError("no valid header" if blob.strip(b"\0") else "file is empty or zero-filled")
    try:
        gen, length, crc = (int(parts[2][4:]), int(parts[3][4:]), int(parts[4][4:], 16))
    except ValueError:
        raise ValueError("header fields are not numbers") from None
    body = rest[:length]
    if len(body) < length:
        raise ValueError(f"truncated: {len(body)} of {length} bytes")
    if zlib.crc32(body) != crc:
        raise ValueError("checksum mismatch")
    tables = json.loads(body)
    if not isinstance(tables, dict):
        raise ValueError("body is not a table map")
    return gen, tables, len(rest) - length


class HotStorage(Storage):
    """TinyDB storage: the hot set lives in memory and is written whole, atomically.

    Inside `transaction()` TinyDB's writes only touch memory; the file is written once
    when the outermost transaction ends, so one ledger change is one durable write.
    """

    def __init__(self, path: Path, readonly: bool = False):
        self.path = path
        self.readonly = readonly
        self.recovery: list[str] = []
        self.generation, self._data = self._recover()
        self._depth = 0
        self._dirty = False

    def read(self) -> dict[str, Any]:
        return self._data

    def write(self, data: dict[str, Any]) -> None:
        self._data = data
        self._dirty = True
        if self._depth == 0:
            self.flush()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._dirty:
                self.flush()

    def flush(self) -> None:
        """Write the hot set: temp file, fsync, keep the old one as .prev, rename, fsync dir."""
        if self.readonly:
            raise PermissionError("store opened read-only")
        body = _dumps(self._data).encode()
        gen = self.generation + 1
        head = b"%s 1 gen=%d len=%d crc=%08x\n" % (MAGIC, gen, len(body), zlib.crc32(body))
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(head + body)
            f.flush()
            os.fsync(f.fileno())
        if self.path.exists():
            os.replace(self.path, self.path.with_name(self.path.name + ".prev"))
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self.generation, self._dirty = gen, False

    def _recover(self) -> tuple[int, dict[str, Any]]:
        """The newest valid generation among hot.db, its .tmp and its .prev."""
        best: tuple[int, dict[str, Any], Path] | None = None
        for suffix in ("", ".tmp", ".prev"):
            path = self.path.with_name(self.path.name + suffix)
            if not path.exists():
                continue
            blob = path.read_bytes()
            try:
                gen, tables, tail = _parse_hot(blob)
            except ValueError as exc:
                if suffix != ".tmp":  # a torn temp file is the normal trace of a crash
                    self._note(path, str(exc))
                continue
            if tail:
                self._note(path, f"{tail} stray bytes after the last good state")
            if best is None or gen > best[0]:
                best = (gen, tables, path)
        if best is None:
            if self.recovery:
                log.error("no valid hot set in %s; starting empty", self.path.parent)
            return 0, {}
        if best[2] != self.path or self.recovery:
            self.recovery.append(f"recovered generation {best[0]} from {best[2].name}")
            log.warning("hot set recovered: generation %d from %s", best[0], best[2].name)
        return best[0], best[1]

    def _note(self, path: Path, why: str) -> None:
        self.recovery.append(f"{path.name}: {why}")
        if self.readonly:
            log.warning("%s is damaged (%s)", path, why)
        else:
            _keep_aside(path, why)


# ---------------------------------------------------------------- archive

class Archive:
    """Closed jobs, append-only: `archive/seg-NNNNNN.jsonl`, lines `crc<TAB>job<TAB>record`."""

    def __init__(self, root: Path, readonly: bool = False):
        self.root = root
        self.readonly = readonly
        self.recovery: list[str] = []
        self._index: dict[str, tuple[tuple[int, int], ...]] | None = None  # tuples of ints: GC-untracked
        self.tail_jobs: set[str] = set()
        self.last_line: bytes | None = None  # the newest record: the one a crash may have orphaned
        if not readonly:
            root.mkdir(parents=True, exist_ok=True)
        self.segments = sorted(root.glob("seg-*.jsonl")) if root.exists() else []
        self._tail_count = self._check_tail() if self.segments else 0

    def _check_tail(self) -> int:
        """Validate the last segment; cut a torn or garbage tail. Returns its record count."""
        path = self.segments[-1]
        blob = path.read_bytes()
        good, count = 0, 0
        for line in blob.splitlines(keepends=True):
            job = parse_line(line)
            if job is None:
                break
            good += len(line)
            count += 1
            self.tail_jobs.add(job)
            self.last_line = line
        if good < len(blob):
            why = f"{len(blob) - good} bad bytes after record {count}"
            self.recovery.append(f"{path.name}: {why}")
            if self.readonly:
                log.warning("%s: %s", path, why)
            else:
                _keep_aside(path, why)
                with open(path, "r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())
        return count

    def append(self, records: list[tuple[str, dict[str, Any]]], sync: bool = True) -> None:
        """Append (job, record) pairs in one write; durable on return when `sync`."""
        if not records:
            return
        if not self.segments or self._tail_count >= SEGMENT_RECORDS:
            self.segments.append(self.root / f"seg-{len(self.segments) + 1:06d}.jsonl")
            self._tail_count, self.tail_jobs = 0, set()
        path = self.segments[-1]
        new = not path.exists()
        with open(path, "ab") as f:
            offset = f.tell()
            for job, record in records:
                payload = f"{_dumps(job)}\t{_dumps(record)}".encode()
                line = b"%08x\t%s\n" % (zlib.crc32(payload), payload)
                f.write(line)
                self.last_line = line
                if self._index is not None:
                    self._index[job] = self._index.get(job, ()) + ((len(self.segments) - 1, offset),)
                offset += len(line)
                self.tail_jobs.add(job)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        if new and sync:
            _fsync_dir(self.root)
        self._tail_count += len(records)

    def has(self, job: str) -> bool:
        return job in self.tail_jobs or job in self.index()

    def index(self) -> dict[str, tuple[tuple[int, int], ...]]:
        """job -> (segment number, offset) of its records; built on first use, one read of each segment."""
        if self._index is None:
            index: dict[str, tuple[tuple[int, int], ...]] = {}
            for number, path in enumerate(self.segments):
                offset = 0
                with open(path, "rb") as f:
                    for line in f:
                        job = parse_line(line, check=False)
                        if job is not None:
                            index[job] = index.get(job, ()) + ((number, offset),)
                        offset += len(line)
            self._index = index
        return self._index

    def records(self, job: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """(job, record) of one job, or of every job in archive order."""
        if job is not None:
            for number, offset in self.index().get(job, ()):
                with open(self.segments[number], "rb") as f:
                    f.seek(offset)
                    rec = parse_record(f.readline())
                if rec is not None:
                    yield rec
            return
        for path in self.segments:
            with open(path, "rb") as f:
                for line in f:
                    rec = parse_record(line)
                    if rec is not None:
                        yield rec


def parse_line(line: bytes, check: bool = True) -> str | None:
    crc, _, payload = line.rstrip(b"\n").partition(b"\t")
    if not line.endswith(b"\n"):
        return None
    try:
        if check and int(crc, 16) != zlib.crc32(payload):
            return None
        job = json.loads(payload.partition(b"\t")[0])
    except ValueError:
        return None
    return job if isinstance(job, str) else None


def parse_record(line: bytes) -> tuple[str, dict[str, Any]] | None:
    if parse_line(line) is None:
        return None
    job, _, body = line.rstrip(b"\n").partition(b"\t")[2].partition(b"\t")
    return json.loads(job), json.loads(body)
