"""A damaged archive keeps every good record: bit flips, torn tails and a full disk, on real files."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import storage
from edge.storage import Archive, parse_line

Record = tuple[str, dict[str, Any]]


def _records(count: int, first: int = 0, pad: int = 270) -> list[Record]:
    """Records about the size of a closed job's (~300 bytes a line), one job each."""
    return [(f"J{n:04d}", {"state": {"job": f"J{n:04d}"}, "pad": "x" * pad}) for n in range(first, first + count)]


def _spans(segment: Path) -> list[tuple[int, int]]:
    """(start, end) of every line of a segment, newline included."""
    spans, start = [], 0
    for line in segment.read_bytes().splitlines(keepends=True):
        spans.append((start, start + len(line)))
        start += len(line)
    return spans


def _set_byte(segment: Path, offset: int, value: int) -> None:
    blob = bytearray(segment.read_bytes())
    blob[offset] = value
    segment.write_bytes(bytes(blob))


def _flip_bit(segment: Path, offset: int) -> None:
    _set_byte(segment, offset, segment.read_bytes()[offset] ^ 0x04)


def _held(archive: Archive) -> Counter[str]:
    """Every record the archive gives back, as canonical JSON, counted."""
    return Counter(json.dumps(rec, sort_keys=True) for rec in archive.records())


def _as_held(records: list[Record]) -> Counter[str]:
    return Counter(json.dumps([job, rec], sort_keys=True) for job, rec in records)


def _state(archive: Archive) -> tuple[Any, ...]:
    """Everything an append changes in memory."""
    index = None if archive._index is None else dict(archive._index)
    return index, set(archive.tail_jobs), archive.last_line, archive._tail_count, list(archive.segments)


@pytest.fixture
def segments_of_16(monkeypatch: pytest.MonkeyPatch) -> None:
    """The archive starts a new segment every 16 records, so a test can have old segments."""
    monkeypatch.setattr(storage, "SEGMENT_RECORDS", 16)


# ---------------------------------------------------------------- bit flips at boot

def test_a_flipped_bit_in_the_first_record_keeps_the_fifteen_after_it(tmp_path, caplog):
    root = tmp_path / "archive"
    written = _records(16)
    Archive(root).append(written)
    segment = root / "seg-000001.jsonl"
    good_lines = segment.read_bytes().splitlines(keepends=True)
    _flip_bit(segment, 40)  # inside the first record's payload

    with caplog.at_level(logging.WARNING, logger="edge.storage"):
        archive = Archive(root)

    assert _held(archive) == _as_held(written[1:])
    assert segment.read_bytes() == b"".join(good_lines[1:])
    assert archive.damaged and "seg-000001.jsonl" in archive.damaged[0] and "1 bad line" in archive.damaged[0]
    assert archive.recovery
    copies = list((tmp_path / "corrupt").iterdir())
    assert len(copies) == 1 and copies[0].name.startswith("seg-000001.jsonl")
    told = [r.getMessage() for r in caplog.records if "15 good records kept" in r.getMessage()]
    assert len(told) == 1 and "1 bad line dropped" in told[0]


def test_appends_after_a_repaired_segment_are_found_by_their_offsets(tmp_path):
    root = tmp_path / "archive"
    Archive(root).append(_records(16))
    _flip_bit(root / "seg-000001.jsonl", 40)
    archive = Archive(root)
    late = _records(1, first=99)
    archive.append(late)

    assert list(archive.records("J0099")) == late
    assert list(archive.records("J0005")) == _records(1, first=5)
    again = Archive(root)
    assert not again.recovery and not again.damaged
    assert _held(again) == _as_held(_records(15, first=1) + late)


def test_a_destroyed_newline_loses_the_two_merged_records_and_keeps_every_other(tmp_path):
    root = tmp_path / "archive"
    written = _records(16)
    Archive(root).append(written)
    segment = root / "seg-000001.jsonl"
    _set_byte(segment, _spans(segment)[6][1] - 1, ord("x"))  # lines 6 and 7 become one bad line

    archive = Archive(root)

    assert _held(archive) == _as_held(written[:6] + written[8:])
    assert "1 bad line" in archive.damaged[0]
    assert all(parse_line(line) for line in segment.read_bytes().splitlines(keepends=True))


def test_an_added_newline_loses_the_split_record_and_keeps_every_other(tmp_path):
    root = tmp_path / "archive"
    written = _records(16)
    Archive(root).append(written)
    segment = root / "seg-000001.jsonl"
    start, end = _spans(segment)[9]
    _set_byte(segment, (start + end) // 2, ord("\n"))  # line 9 becomes two bad lines

    archive = Archive(root)

    assert _held(archive) == _as_held(written[:9] + written[10:])
    assert "2 bad lines" in archive.damaged[0]
    assert len(segment.read_bytes().splitlines()) == 15


def test_a_reader_skips_a_bad_line_without_touching_the_file(tmp_path):
    root = tmp_path / "archive"
    written = _records(16)
    Archive(root).append(written)
    segment = root / "seg-000001.jsonl"
    _flip_bit(segment, _spans(segment)[3][0] + 50)
    damaged = segment.read_bytes()

    reader = Archive(root, readonly=True)

    assert _held(reader) == _as_held(written[:3] + written[4:])
    assert len(reader.damaged) == 1
    assert segment.read_bytes() == damaged
    assert not (tmp_path / "corrupt").exists()


# ---------------------------------------------------------------- older segments

def test_a_bad_line_in_an_older_segment_is_skipped_by_records_and_reported(tmp_path, segments_of_16):
    root = tmp_path / "archive"
    written = _records(40)
    Archive(root).append(written[:16])
    Archive(root).append(written[16:])
    older = root / "seg-000001.jsonl"
    _flip_bit(older, _spans(older)[7][0] + 30)

    archive = Archive(root)
    assert not archive.damaged  # boot checks only the newest segment

    assert _held(archive) == _as_held(written[:7] + written[8:])
    assert len(archive.damaged) == 1 and archive.damaged[0].startswith("seg-000001.jsonl: 1 bad line")
    list(archive.records())
    assert len(archive.damaged) == 1  # one note per damaged segment, however often it is read


def test_a_bad_line_in_an_older_segment_is_left_out_of_the_index_and_reported(tmp_path, segments_of_16):
    root = tmp_path / "archive"
    written = _records(40)
    Archive(root).append(written[:16])
    Archive(root).append(written[16:])
    older = root / "seg-000002.jsonl"
    _flip_bit(older, _spans(older)[0][0] + 30)  # J0016

    archive = Archive(root)
    index = archive.index()

    assert set(index) == {job for job, _rec in written} - {"J0016"}
    assert not archive.has("J0016") and archive.has("J0017")
    assert list(archive.records("J0017")) == [written[17]]
    assert archive.damaged == ["seg-000002.jsonl: 1 bad line, their records lost"]


# ---------------------------------------------------------------- torn tails

def test_a_torn_tail_is_cut_and_the_next_append_starts_a_clean_line(tmp_path):
    root = tmp_path / "archive"
    written = _records(16)
    Archive(root).append(written)
    segment = root / "seg-000001.jsonl"
    good = segment.read_bytes()
    segment.write_bytes(good + _records(1, first=16)[0][0].encode() + b'\t{"state": {"jo')  # power cut

    archive = Archive(root)
    assert segment.read_bytes() == good
    assert archive.recovery and not archive.damaged  # a torn write held no acknowledged record
    assert any(p.name.startswith("seg-000001.jsonl") for p in (tmp_path / "corrupt").iterdir())
    archive.append(_records(1, first=16))

    assert all(parse_line(line) for line in segment.read_bytes().splitlines(keepends=True))
    assert _held(Archive(root)) == _as_held(_records(17))


def test_a_flipped_bit_in_the_last_record_is_cut_like_a_tail_and_reported(tmp_path):
    root = tmp_path / "archive"
    written = _records(16)
    Archive(root).append(written)
    segment = root / "seg-000001.jsonl"
    _flip_bit(segment, _spans(segment)[15][0] + 30)

    archive = Archive(root)

    assert _held(archive) == _as_held(written[:15])
    assert archive.damaged == ["seg-000001.jsonl: 1 bad line, their records lost"]


# ---------------------------------------------------------------- a full disk

class _FullDiskOs:
    """`os` as edge.storage sees it on a disk with `room` bytes left (the fallback of `small_disk`)."""

    def __init__(self, room: int):
        self.room = room

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: bytes) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = os.write(fd, bytes(data[:self.room]))
        self.room -= written
        return written


class SmallDisk:
    """A 64 KiB tmpfs at `root` that a test fills and frees; a patched `os` where mount is refused."""

    def __init__(self, root: Path, mounted: bool, monkeypatch: pytest.MonkeyPatch):
        self.root, self.mounted, self._monkeypatch = root, mounted, monkeypatch

    def fill(self) -> None:
        if not self.mounted:
            self._monkeypatch.setattr(storage, "os", _FullDiskOs(room=100))
            return
        fd = os.open(self.root / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def free(self) -> None:
        if self.mounted:
            (self.root / "filler").unlink()
        else:
            self._monkeypatch.setattr(storage, "os", os)


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmallDisk]:
    """A real, small filesystem: tmpfs, mounted as root. Where mounting is refused (no root, a
    locked-down container) the disk is simulated by giving edge.storage an `os` whose write takes
    100 bytes then raises ENOSPC: the same short write then failure a real full disk produces."""
    root = tmp_path / "disk"
    root.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(root)],
                                 capture_output=True).returncode == 0
    except OSError:  # no mount command at all
        mounted = False
    try:
        yield SmallDisk(root, mounted, monkeypatch)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root)], check=True)


def test_an_append_on_a_full_disk_leaves_the_segment_as_it_was(small_disk):
    """On a real 64 KiB tmpfs; where mounting is refused, on a patched os.write (see small_disk)."""
    root = small_disk.root / "archive"
    archive = Archive(root)
    written = _records(3)
    archive.append(written)
    archive.index()
    segment = root / "seg-000001.jsonl"
    before, state = segment.read_bytes(), _state(archive)
    big = [("J-big", {"pad": "y" * 12_000}), ("J-big2", {"pad": "z" * 100})]
    small_disk.fill()

    with pytest.raises(OSError) as failed:
        archive.append(big)

    assert failed.value.errno == errno.ENOSPC
    assert segment.read_bytes() == before
    assert _state(archive) == state
    small_disk.free()
    archive.append(big)
    assert list(archive.records("J-big")) == big[:1]
    reopened = Archive(root)
    assert not reopened.recovery and not reopened.damaged
    assert _held(reopened) == _as_held(written + big)


def test_a_segment_begun_on_a_full_disk_is_removed(small_disk, monkeypatch):
    """On a real 64 KiB tmpfs; where mounting is refused, on a patched os.write (see small_disk)."""
    monkeypatch.setattr(storage, "SEGMENT_RECORDS", 3)
    root = small_disk.root / "archive"
    archive = Archive(root)
    written = _records(3)
    archive.append(written)
    state = _state(archive)
    small_disk.fill()

    with pytest.raises(OSError):
        archive.append(_records(1, first=3))

    assert not (root / "seg-000002.jsonl").exists()
    assert _state(archive) == state
    small_disk.free()
    archive.append(_records(1, first=3))
    assert [p.name for p in archive.segments] == ["seg-000001.jsonl", "seg-000002.jsonl"]
    assert _held(Archive(root)) == _as_held(_records(4))


# ---------------------------------------------------------------- any single byte

@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.integers(0, 200), min_size=1, max_size=20), older=st.booleans(), data=st.data())
def test_any_damaged_byte_loses_only_the_records_it_touches(sizes, older, data):
    """A record is lost only if a byte of its line, or the newline that ends the line before it,
    changed (a destroyed newline merges two lines into one bad one); nothing else is lost, nothing
    is made up, nothing comes back twice. `older`: the segment is not the newest one."""
    written = [(f"J{n:03d}", {"n": n, "pad": "x" * size}) for n, size in enumerate(sizes)]
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        root = Path(tmp) / "archive"
        patch.setattr(storage, "SEGMENT_RECORDS", len(written))
        Archive(root).append(written)
        if older:
            Archive(root).append([("J-newer", {"n": -1})])
        segment = root / "seg-000001.jsonl"
        spans = _spans(segment)
        newlines = [end - 1 for _start, end in spans]
        offset = data.draw(st.one_of(st.sampled_from(newlines), st.integers(0, spans[-1][1] - 1)))
        old = segment.read_bytes()[offset]
        _set_byte(segment, offset, data.draw(st.integers(0, 255).filter(lambda b: b != old)))
        hit = next(n for n, (start, end) in enumerate(spans) if start <= offset < end)
        lost = {hit, hit + 1} if offset == spans[hit][1] - 1 else {hit}
        kept = [rec for n, rec in enumerate(written) if n not in lost] + ([("J-newer", {"n": -1})] if older else [])

        archive = Archive(root)

        assert _held(archive) == _as_held(kept)
        assert set(archive.index()) == {job for job, _rec in kept}
        assert len(archive.damaged) == 1 and archive.damaged[0].startswith("seg-000001.jsonl")
        if not older:
            again = Archive(root)
            assert not again.recovery and not again.damaged
            assert _held(again) == _as_held(kept)
