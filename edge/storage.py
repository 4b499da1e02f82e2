"""The files under a node's data dir: the hot set (TinyDB storage written whole, atomically)
and the archive (append-only, CRC-checked JSON lines). Crash-safe writes and recovery from
truncated, zero-filled or garbage-tailed files live here; `edge.store.Store` builds on them.

The archive keeps every record whose CRC holds. An append is all or nothing: a failed write
(a full disk) is cut back, never left as a partial line for the next append to follow. At boot
a torn tail of the newest segment is cut; a bad line with good records after it (a flipped
bit) is dropped by rewriting the segment atomically, the damaged copy kept aside. Reads skip
bad lines in older segments. `Archive.damaged` names every segment that lost records, so the
store can fetch them back from its peers.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from tinydb.storages import Storage

log = logging.getLogger(__name__)

HOT_FILE = "hot.db"
MAGIC = b"FABRIQUE-HOT"
SEGMENT_RECORDS = 1000


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def _dump_hot(value: Any) -> bytes:
    """The hot set as compact UTF-8 JSON: orjson, about ten times faster than json on the
    megabytes a busy offline day puts there; json for what orjson will not take exactly
    (integers past 64 bits, NaN: orjson would write those as errors or null)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


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
        body = _dump_hot(self._data)
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
        """The newest valid generation among hot.db, its .tmp and its .prev.

        Sets `suspect` when the state found may be older than the last one written (hot.db
        damaged, or only .prev left): the store then numbers new events in a new incarnation.
        A crash between the temp file and its rename is not suspect: .tmp is the newest."""
        best: tuple[int, dict[str, Any], Path] | None = None
        self.suspect = False
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
                    self.suspect = self.suspect or suffix == ""
                continue
            if tail:
                self._note(path, f"{tail} stray bytes after the last good state")
            if best is None or gen > best[0]:
                best = (gen, tables, path)
        if best is None:
            if self.recovery:
                self.suspect = True
                log.error("no valid hot set in %s; starting empty", self.path.parent)
            return 0, {}
        if best[2].name.endswith(".prev"):
            self.suspect = True
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
    """Closed jobs, append-only: `archive/seg-NNNNNN.jsonl`, lines `crc<TAB>job<TAB>record`.

    A bad line never hides the good ones around it: reads skip it, boot drops it from the newest
    segment (a copy kept aside) and `damaged` names every segment that lost a record since this
    object was created, so the store can fetch the lost events back from its peers.
    """

    def __init__(self, root: Path, readonly: bool = False):
        self.root = root
        self.readonly = readonly
        self.recovery: list[str] = []
        self.damaged: list[str] = []  # one note per segment that lost records: ask a peer for them
        self._damaged_names: set[str] = set()
        self._index: dict[str, tuple[tuple[int, int], ...]] | None = None  # tuples of ints: GC-untracked
        self.tail_jobs: set[str] = set()
        self.last_line: bytes | None = None  # the newest record: the one a crash may have orphaned
        if not readonly:
            root.mkdir(parents=True, exist_ok=True)
        self.segments = sorted(root.glob("seg-*.jsonl")) if root.exists() else []
        self._tail_count = self._check_tail() if self.segments else 0

    def _check_tail(self) -> int:
        """Validate the newest segment: cut a torn tail, drop bad lines between good records.

        Returns its record count. Bytes after the last good record are a tail (most often a write
        torn by a power cut) and are cut off; a bad line with good records after it is damage, and
        the segment is rewritten atomically without it, so offsets and later appends stay sane.
        """
        path = self.segments[-1]
        lines = list(io.BytesIO(path.read_bytes()))  # split at b"\n" only, as reading the file does
        jobs = [parse_line(line) for line in lines]
        good = [line for line, job in zip(lines, jobs, strict=True) if job is not None]
        self.tail_jobs.update(job for job in jobs if job is not None)
        self.last_line = good[-1] if good else None
        end = max((n + 1 for n, job in enumerate(jobs) if job is not None), default=0)
        dropped, tail = jobs[:end].count(None), lines[end:]
        if not dropped and not tail:
            return len(good)
        tail_bytes = sum(map(len, tail))
        if dropped:
            why = f"{_lines(dropped)} dropped, {len(good)} good records kept"
            if tail:
                why += f", {tail_bytes} bad bytes after the last one cut"
        else:
            why = f"{tail_bytes} bad bytes after record {len(good)}"
        self.recovery.append(f"{path.name}: {why}")
        # A torn fragment at the very end held no acknowledged record (appends are fsynced before
        # they return), unless it is a whole record whose newline was flipped.
        lost = dropped + sum(line.endswith(b"\n") or parse_line(line[:-1] + b"\n") is not None
                             for line in tail)
        if lost:
            self._damage(path, lost, log_it=False)
        if self.readonly:
            log.warning("%s: %s", path, why)
            return len(good)
        _keep_aside(path, why)
        if not dropped or not _rewrite(path, b"".join(good)):
            with open(path, "r+b") as f:
                f.truncate(sum(map(len, lines[:end])))
                os.fsync(f.fileno())
        return len(good)

    def append(self, records: list[tuple[str, dict[str, Any]]], sync: bool = True) -> None:
        """Append (job, record) pairs in one write, all or nothing; durable on return when `sync`.

        If the write fails (a full disk: ENOSPC), the segment is cut back to its size before the
        call, a segment this call created is removed, nothing in memory changes, and the OSError
        is raised: no partial line is left for a later append to write after.
        """
        if not records:
            return
        lines = [_line(job, record) for job, record in records]
        new = not self.segments or self._tail_count >= SEGMENT_RECORDS
        path = self.root / f"seg-{len(self.segments) + 1:06d}.jsonl" if new else self.segments[-1]
        offset = _append_all_or_nothing(path, b"".join(lines), sync)
        if new:
            self.segments.append(path)
            self._tail_count, self.tail_jobs = 0, set()
        for (job, _record), line in zip(records, lines, strict=True):
            if self._index is not None:
                self._index[job] = self._index.get(job, ()) + ((len(self.segments) - 1, offset),)
            offset += len(line)
            self.tail_jobs.add(job)
        self.last_line = lines[-1]
        self._tail_count += len(records)

    def has(self, job: str) -> bool:
        return job in self.tail_jobs or job in self.index()

    def index(self) -> dict[str, tuple[tuple[int, int], ...]]:
        """job -> (segment number, offset) of its good records; built on first use, one read of each segment."""
        if self._index is None:
            index: dict[str, tuple[tuple[int, int], ...]] = {}
            for number in range(len(self.segments)):
                for offset, _line, job in self._good_lines(number):
                    index[job] = index.get(job, ()) + ((number, offset),)
            self._index = index
        return self._index

    def records(self, job: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """(job, record) of one job, or of every job in archive order; bad lines are skipped and noted."""
        if job is not None:
            for number, offset in self.index().get(job, ()):
                with open(self.segments[number], "rb") as f:
                    f.seek(offset)
                    line = f.readline()
                if parse_line(line) is None:  # damaged since the index was built
                    self._damage(self.segments[number], 1)
                    continue
                yield _split(line)
            return
        for number in range(len(self.segments)):
            for _offset, line, _job in self._good_lines(number):
                yield _split(line)

    def _good_lines(self, number: int) -> Iterator[tuple[int, bytes, str]]:
        """(offset, line, job) of every good line of a segment; bad ones are counted and noted at its end."""
        path, newest = self.segments[number], number == len(self.segments) - 1
        offset, bad = 0, 0
        with open(path, "rb") as f:
            for line in f:
                job = parse_line(line)
                if job is not None:
                    yield offset, line, job
                elif line.endswith(b"\n") or not newest:  # not an append still being written
                    bad += 1
                offset += len(line)
        if bad:
            self._damage(path, bad)

    def _damage(self, path: Path, bad: int, log_it: bool = True) -> None:
        """Note (once per segment) that records were lost there: the store asks peers for them."""
        if path.name in self._damaged_names:
            return
        self._damaged_names.add(path.name)
        self.damaged.append(f"{path.name}: {_lines(bad)}, their records lost")
        if log_it:
            log.warning("%s: %s skipped; their records must come back from a peer", path, _lines(bad))


def _lines(n: int) -> str:
    return f"{n} bad line{'' if n == 1 else 's'}"


def _line(job: str, record: dict[str, Any]) -> bytes:
    payload = f"{_dumps(job)}\t{_dumps(record)}".encode()
    return b"%08x\t%s\n" % (zlib.crc32(payload), payload)


def _append_all_or_nothing(path: Path, blob: bytes, sync: bool) -> int:
    """Append `blob` to `path` and return the offset it starts at; on any failure, undo and raise."""
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            rest = memoryview(blob)
            while rest:
                rest = rest[os.write(fd, rest):]  # a full disk may take part of it, then raise
            if sync:
                os.fsync(fd)
                if created:
                    _fsync_dir(path.parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
                os.fsync(fd)
            if created:
                with contextlib.suppress(OSError):
                    path.unlink()
                    _fsync_dir(path.parent)
            raise
    finally:
        os.close(fd)
    return start


def write_atomic(path: os.PathLike[str] | str, body: bytes, tmp_name: str | None = None) -> None:
    """Replace a file by `body` whole or not at all: a temp file beside it (`tmp_name`, default
    `<name>.tmp`), fsync, rename, fsync the folder. OSError if the disk refused; nothing is
    left behind then."""
    path = Path(path)
    tmp = path.with_name(tmp_name or path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _rewrite(path: Path, body: bytes) -> bool:
    """Replace a file by `body` atomically; False if it failed."""
    try:
        write_atomic(path, body)
    except OSError as exc:  # a full disk must not stop the boot: the bad lines stay, reads skip them
        log.error("%s: could not rewrite it without its bad lines: %s", path, exc)
        return False
    return True


_CRC_FIELD = re.compile(rb"[0-9a-f]{8}")


def parse_line(line: bytes, check: bool = True) -> str | None:
    """The job of one archive line; None if it is torn, garbled or fails its CRC (when `check`)."""
    if not line.endswith(b"\n"):
        return None
    crc, _, payload = line[:-1].partition(b"\t")
    if not _CRC_FIELD.fullmatch(crc) or (check and int(crc, 16) != zlib.crc32(payload)):
        return None
    try:
        job = json.loads(payload.partition(b"\t")[0])
    except ValueError:
        return None
    return job if isinstance(job, str) else None


def parse_record(line: bytes) -> tuple[str, dict[str, Any]] | None:
    """(job, record) of one archive line; None if the line is bad."""
    return _split(line) if parse_line(line) is not None else None


def _split(line: bytes) -> tuple[str, dict[str, Any]]:
    job, _, body = line[:-1].partition(b"\t")[2].partition(b"\t")
    return json.loads(job), json.loads(body)
