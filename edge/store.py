"""The node's ledger on disk: TinyDB over crash-safe files, a small hot set and an archive.

Layout of a node's data dir:

    hot.db            the hot set, a TinyDB database: open jobs' events, the outbox and the
                      node's own state (incarnation, HLC, version vector). Written whole on every
                      change, atomically: temp file + fsync + rename + fsync of the dir. The
                      file carries a generation number, its length and a CRC-32.
    hot.db.prev       the previous generation (the last good state if hot.db is damaged)
    archive/seg-NNNNNN.jsonl  closed jobs, append-only, one CRC-checked line per record
    corrupt/          damaged copies kept aside by recovery, for a post-mortem
    lock              held (flock) by the one process that writes

A write costs the size of the hot set, not of the history: closed jobs move to the archive.
Recovery never refuses to boot: a truncated, zero-filled or garbage-tailed hot.db falls back
to the newest valid generation; a damaged archive keeps every record whose checksum holds;
bad copies are kept aside and logged.

Ids are never issued twice. The store numbers its events in its *incarnation*, a random id
minted when the store is created and again whenever it cannot prove it holds everything it
issued: the hot set was rebuilt from an older generation or from nothing, or archive records
were lost. What was lost then comes back from peers as history of the old incarnation
(anti-entropy sees the holes in the rebuilt version vector).

A write either is durable or did not happen: when the disk refuses a write (ENOSPC, EIO) the
store reloads its last durable state and re-raises the OSError, so an event that was not
written is never published, and its seq is free again for the next event.

The API the MQTT sync builds on: `append` (local event: seq, HLC, outbox), `ingest` (remote
events: idempotent, deduplicated by id), `outbox_peek` / `outbox_ack`, `vector` (highest
contiguous seq per origin) and `events_since(vector)` for anti-entropy, `job` / `open_jobs`
for state, `archive_closed` to move finished jobs out of the hot set.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinydb import TinyDB

from edge.clock import HybridClock, Observation, Timestamp
from edge.ledger import Event, EventSigner, EventVerifier, JobState, event_id, fold, merge
from edge.storage import HOT_FILE, Archive, HotStorage, parse_record

log = logging.getLogger(__name__)
Wall = Callable[[], int]
LOCK_FILE = "lock"  # flock-ed (exclusive) by the one process that writes the data dir

class StoreBusy(RuntimeError):
    """Another process already writes this data dir."""


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def writer_running(data_dir: str | Path) -> bool:
    """Whether a process (`edge run`) writes this data dir now: its lock is held. Asked without
    waiting and let go at once (a shared lock for an instant); OSError when the lock file cannot
    be opened (permissions)."""
    try:
        fd = os.open(Path(data_dir) / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing lets go of the shared lock
    return False


# ---------------------------------------------------------------- the store

@dataclass
class IngestReport:
    """What `ingest` did with a batch of remote events."""

    added: list[Event] = field(default_factory=list)
    duplicates: int = 0
    rejected: list[str] = field(default_factory=list)
    forged: list[str] = field(default_factory=list)
    clamped: list[Observation] = field(default_factory=list)


def new_incarnation() -> str:
    return secrets.token_hex(4)


class Store:
    """One node's ledger on disk. Open with `Store.open(data_dir, node)`; use as a context manager.

    Not thread-safe: the node's loop thread owns it (DESIGN.md, runtime model). One writer per
    data dir (flock); any number of `readonly=True` readers (the `edge jobs` commands).
    """

    def __init__(self, data_dir: Path, node: str | None = None, readonly: bool = False,
                 wall: Wall = wall_ms, signer: EventSigner | None = None,
                 verifier: EventVerifier | None = None):
        self.data_dir = Path(data_dir)
        self.readonly = readonly
        self.wall = wall
        self.signer = signer
        self.verifier = verifier
        self._lock_fd: int | None = None
        if not readonly:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._lock()
        self.archive = Archive(self.data_dir / "archive", readonly)
        self.recovery: list[str] = list(self.archive.recovery)
        self.clock = HybridClock(node or "")
        self._ahead: tuple[int, float] = (0, 0.0)  # the HLC reading ahead of our wall clock, and since when
        self._ran_on = 0.0  # the time run on from it (ms)
        try:
            self._load(node)
        except ValueError:
            self.close()
            raise
        self._audited = len(self.archive.damaged)
        if self.archive.damaged and not readonly:
            self._rebuild_vector()

    def _load(self, node: str | None) -> None:
        """(Re)build the in-memory state from the hot set on disk."""
        self.hot = HotStorage(self.data_dir / HOT_FILE, self.readonly)
        self.db = TinyDB(storage=lambda: self.hot)  # type: ignore[arg-type,return-value]
        self.recovery += self.hot.recovery
        state = self._node_doc()
        stored = state.get("node")
        if node and stored and node != stored:
            raise ValueError(f"{self.data_dir} belongs to node {stored!r}, not {node!r}")
        self.node: str = node or stored or ""
        if not self.node:
            raise ValueError(f"{self.data_dir} holds no node id yet; give one")
        stored_clock = self._stored(Timestamp.from_json, state.get("hlc"), "HLC")
        if stored_clock is not None and stored_clock > self.clock.last:
            self.clock = HybridClock(self.node, stored_clock)
        self.clock.node = self.node
        self.vectors: dict[str, int] = dict(state.get("vector", {}))
        self.extra: dict[str, set[int]] = {o: set(s) for o, s in state.get("extra", {}).items()}
        self.incarnation: str = state.get("incarnation", "") if isinstance(state.get("incarnation"), str) else ""
        self.incarnations: list[str] = [i for i in state.get("incarnations", []) if isinstance(i, str)]
        self._events: dict[str, Event] = {}
        self._by_job: dict[str, set[str]] = {}
        # the fold of each hot job, kept until one of its events comes or goes: a station reads
        # every open job on every event, and folding them all each time grows with the line
        self._folded: dict[str, JobState] = {}
        self._doc_ids: dict[str, int] = {}
        for doc in self.db.table("events").all():
            ev = self._stored(Event.from_json, doc, "event")
            if ev is not None:
                self._events[ev.id] = ev
                self._by_job.setdefault(ev.job, set()).add(ev.id)
                self._doc_ids[ev.id] = doc.doc_id
        # id -> (doc id, event), oldest first: the drain reads it on every acknowledgement
        self._outbox: dict[str, tuple[int, Event]] = {}
        for doc in sorted(self.db.table("outbox").all(), key=lambda d: d.doc_id):
            ev = self._stored(Event.from_json, doc, "outbox event")
            if ev is not None:
                self._outbox[ev.id] = (doc.doc_id, ev)
        if self.readonly:
            return
        self._finish_interrupted_archive()
        if not self.incarnation or self.hot.suspect:
            self._new_incarnation("a new store" if not stored else
                                  "the hot set was recovered from an older state, so it may lack "
                                  "events it issued" if self.hot.suspect else "a store of the first release")
        elif self.hot.recovery:
            self._save()

    def _new_incarnation(self, why: str) -> None:
        """Number new events in a fresh stream: no id this store issued before can be reissued."""
        old = self.incarnation
        self.incarnation = new_incarnation()
        self.incarnations.append(self.incarnation)
        if old or self.vectors:
            self.recovery.append(f"new incarnation {self.incarnation} ({why})")
            log.warning("store of %s: new incarnation %s (%s); peers give back what was lost",
                        self.node, self.incarnation, why)
        with self.hot.transaction():
            self._save()

    @classmethod
    def open(cls, data_dir: str | Path, node: str | None = None, readonly: bool = False,
             wall: Wall = wall_ms, signer: EventSigner | None = None,
             verifier: EventVerifier | None = None) -> Store:
        """Open (creating if needed) and recover a data dir. Raises StoreBusy if another writer has it.

        With a `signer`, local events are signed; with a `verifier`, remote events whose
        signature does not check are refused (IngestReport.forged)."""
        return cls(Path(data_dir), node, readonly, wall, signer, verifier)

    @property
    def origin(self) -> str:
        """This store's numbering stream, `<node>.<incarnation>`: the origin of its new events."""
        return f"{self.node}.{self.incarnation}" if self.incarnation else self.node

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Several appends in one durable write: all of them are on disk when the block ends,
        or (OSError) none of them is. Nothing appended inside may be published before the end."""
        return self._writing()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One durable change: all of it is written, or the last durable state is reloaded."""
        try:
            with self.hot.transaction():
                yield
        except OSError:
            if self.hot._depth:
                raise
            log.error("store write failed in %s; back to the last durable state", self.data_dir)
            self._load(self.node)
            raise

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _lock(self) -> None:
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreBusy(f"{self.data_dir} is in use by another process (is `edge run` running?)") from None
        self._lock_fd = fd

    # ------------------------------------------------------------ writing

    def append(self, job: str, type: str, station: str, data: Mapping[str, Any] | None = None) -> Event:
        """Record a local event: next seq of this incarnation, a fresh HLC stamp, signed, into
        the outbox. Durable on return.

        Raises ValueError for a bad event (unknown type, bad job id, data too large) and
        OSError when the disk refuses the write: then nothing of it remains, in memory or on disk.
        """
        if self.readonly:
            raise PermissionError("store opened read-only")
        seq = self.vectors.get(self.origin, 0) + 1
        plain = json.loads(json.dumps(dict(data or {}), allow_nan=False))  # what peers will parse
        ev = Event.from_json({"id": event_id(self.origin, seq), "job": job, "type": type, "station": station,
                              "hlc": self.clock.tick(self.wall()).to_json(), "data": plain})
        ev.signed_bytes()  # raises ValueError for data too large to replicate
        if self.signer is not None:
            ev = self.signer.sign(ev)
        with self._writing():
            self._store(ev)
            self._outbox[ev.id] = (self.db.table("outbox").insert(ev.to_json()), ev)
            self._save()
        return ev

    def ingest(self, events: Iterable[Event | Mapping[str, Any]]) -> IngestReport:
        """Take remote events (any order, duplicates welcome). Durable on return; idempotent."""
        report = IngestReport()
        now = self.wall()
        pending: list[Event] = []
        with self._writing():
            for raw in events:
                try:
                    ev = raw if isinstance(raw, Event) else Event.from_json(raw)
                except ValueError as exc:
                    report.rejected.append(str(exc))
                    log.warning("remote event rejected: %s", exc)
                    continue
                if self._seen(ev):
                    report.duplicates += 1
                    continue
                why = self._refuse(ev)
                if why:
                    report.forged.append(f"{ev.id}: {why}")
                    log.warning("remote event %s refused: %s", ev.id, why)
                    continue
                seen = self.clock.observe(ev.hlc, now)
                if seen.clamped:
                    report.clamped.append(seen)
                self._store(ev, pending)
                report.added.append(ev)
            if pending:  # one table update for the batch: TinyDB's insert costs the table's size
                for ev, doc_id in zip(pending, self.db.table("events").insert_multiple(e.to_json() for e in pending),
                                      strict=True):
                    self._doc_ids[ev.id] = doc_id
            if report.added:
                self._save()
        return report

    def outbox_peek(self, limit: int = 100) -> list[Event]:
        """The oldest local events not yet acknowledged by the broker, in the order recorded."""
        return [ev for _doc, ev in itertools.islice(self._outbox.values(), limit)]

    def outbox_ack(self, ids: Iterable[str]) -> int:
        """Drop acknowledged events from the outbox; returns how many were there."""
        with self._writing():
            doc_ids = [self._outbox.pop(i)[0] for i in ids if i in self._outbox]
            if doc_ids:
                self.db.table("outbox").remove(doc_ids=doc_ids)
        return len(doc_ids)

    def archive_closed(self) -> list[str]:
        """Move every completed or cancelled job from the hot set to the archive."""
        closed = [s for s in self.open_jobs(include_closed=True) if not s.is_open]
        if not closed:
            return []
        with self._writing():
            self.archive.append([(s.job, {"state": s.to_json(), "events": [e.to_json() for e in
                                                                            self._job_events(s.job)]})
                                 for s in closed])
            self._drop_from_hot([e.id for s in closed for e in self._job_events(s.job)])
        return [s.job for s in closed]

    def probe(self) -> None:
        """Write the node state once (raises OSError while the disk still refuses)."""
        with self._writing():
            self._save()

    def audit(self) -> bool:
        """Archive damage found since the last look (by a later read) rebuilds the vector so
        peers re-send what was lost. Returns True when it did."""
        if len(self.archive.damaged) == self._audited or self.readonly:
            return False
        self._audited = len(self.archive.damaged)
        self._rebuild_vector()
        return True

    # ------------------------------------------------------------ reading

    def vector(self) -> dict[str, int]:
        """Highest contiguous seq stored per origin node (the anti-entropy summary)."""
        return dict(self.vectors)

    def events_since(self, vector: Mapping[str, int]) -> Iterator[Event]:
        """Every stored event a peer with `vector` lacks (seq above its mark), hot set first.

        Reads the archive too when some origin is behind what the hot set holds.
        """
        def wanted(ev: Event) -> bool:
            return ev.seq > vector.get(ev.origin, 0)

        sent: set[str] = set()
        for ev in sorted(self._events.values(), key=lambda e: e.key):
            if wanted(ev):
                sent.add(ev.id)
                yield ev
        if not self.extra and all(vector.get(o, 0) >= n for o, n in self.vectors.items()):
            return
        for _job, record in self.archive.records():
            for raw in record.get("events", []):
                ev = Event.from_json(raw)
                if ev.id not in sent and wanted(ev):
                    sent.add(ev.id)
                    yield ev

    def job(self, job: str) -> JobState | None:
        """The folded state of a job, open or archived; None if this node never heard of it."""
        events = self.job_events(job)
        return fold(job, events) if events else None

    def job_events(self, job: str) -> list[Event]:
        """A job's events from hot set and archive, deduplicated, in ledger order."""
        archived = [Event.from_json(e) for _j, r in self.archive.records(job) for e in r.get("events", [])]
        return sorted(merge(archived, self._job_events(job)).values(), key=lambda e: e.key)

    def in_hot_set(self, job: str) -> bool:
        """Whether the job is in the hot set (open, or closed and not archived yet)."""
        return job in self._by_job

    def open_jobs(self, include_closed: bool = False) -> list[JobState]:
        """States of the jobs in the hot set (closed ones too if asked), oldest first. Shared:
        read them, never change them."""
        states = []
        for job in self._by_job:
            state = self._folded.get(job)
            if state is None:
                state = self._folded[job] = fold(job, self._job_events(job))
            states.append(state)
        states.sort(key=lambda s: (s.last_hlc or Timestamp(0, 0, ""), s.job))
        return [s for s in states if include_closed or s.is_open]

    def archived_jobs(self) -> Iterator[dict[str, Any]]:
        """The last known state (JSON) of every archived job, in archive order."""
        latest: dict[str, dict[str, Any]] = {}
        for job, record in self.archive.records():
            latest[job] = record.get("state", {"job": job})
        yield from latest.values()

    def outbox_ids(self) -> set[str]:
        """Ids of the local events not yet acknowledged by the broker (no event is parsed)."""
        return set(self._outbox)

    def outbox_size(self) -> int:
        return len(self._outbox)

    def best_time_s(self) -> float:
        """Unix seconds, never below the latest HLC reading: pass this as `now` to verify_order,
        so a Pi that boots in 1970 (no RTC) still refuses orders that expired before it stopped.

        While our wall clock is behind that reading (a Pi booted without an RTC, its peers ahead),
        the time runs on from the reading as the seconds pass (monotonic), rather than standing
        still until the wall clock catches up: the stations time their debounces and timeouts
        with it."""
        wall, last = self.wall() + self.clock.offset_ms, self.clock.last.wall_ms
        if last <= wall:
            return wall / 1000
        seen, since = self._ahead
        if last != seen:
            self._ahead = (last, time.monotonic())
            ran_on = float(last)
        else:
            ran_on = last + (time.monotonic() - since) * 1000
        self._ran_on = max(self._ran_on, ran_on)  # a newer reading a little behind it never turns time back
        return max(wall, self._ran_on) / 1000

    # ------------------------------------------------------------ internals

    def _job_events(self, job: str) -> list[Event]:
        return [self._events[i] for i in self._by_job.get(job, ())]

    def _seen(self, ev: Event) -> bool:
        return (ev.seq <= self.vectors.get(ev.origin, 0) or ev.seq in self.extra.get(ev.origin, ())
                or ev.id in self._events)

    def _refuse(self, ev: Event) -> str | None:
        """Why a new remote event must not be stored, or None."""
        if ev.origin == self.origin:
            return "claims this store's own incarnation, which issued no such event"
        if self.verifier is not None:
            return self.verifier.check(ev)
        try:
            ev.signed_bytes()  # plain JSON of a bounded size, even where signatures are not checked
        except ValueError as exc:
            return str(exc)
        return None

    def _rebuild_vector(self) -> None:
        """Set the version vector to what is really held (hot set and a full read of the
        archive), so anti-entropy fetches every lost event back; own lost events come back as
        history of the incarnation that is retired here."""
        held: dict[str, set[int]] = {}
        for ev in self._events.values():
            held.setdefault(ev.origin, set()).add(ev.seq)
        for _job, record in self.archive.records():
            for raw in record.get("events", []):
                ev = self._stored(Event.from_json, raw, "archived event")
                if ev is not None:
                    held.setdefault(ev.origin, set()).add(ev.seq)
        before = dict(self.vectors)
        self.vectors, self.extra = {}, {}
        for origin, seqs in held.items():
            mark = 0
            while mark + 1 in seqs:
                mark += 1
            self.vectors[origin] = mark
            if seqs - set(range(1, mark + 1)):
                self.extra[origin] = {n for n in seqs if n > mark}
        lost = {o: n - self.vectors.get(o, 0) for o, n in before.items() if n > self.vectors.get(o, 0)}
        log.warning("archive damage: version vector rebuilt from what is held; %d origin(s) with holes: %s",
                    len(lost), lost)
        self.recovery.append(f"version vector rebuilt after archive damage (holes: {lost})")
        if self.origin in lost or any(v > self.vectors.get(self.origin, 0) for v in
                                       self.extra.get(self.origin, ())):
            self._new_incarnation("archived events of this incarnation were lost")
        else:
            with self._writing():
                self._save()

    def _store(self, ev: Event, pending: list[Event] | None = None) -> None:
        """Put a new event in the hot set (or beside its archived job) and mark it seen."""
        in_hot = ev.job in self._by_job
        if not in_hot and self.archive.has(ev.job):
            events = self.job_events(ev.job) + [ev]
            self.archive.append([(ev.job, {"state": fold(ev.job, events).to_json(), "events": [ev.to_json()]})])
        else:
            self._events[ev.id] = ev
            self._by_job.setdefault(ev.job, set()).add(ev.id)
            self._folded.pop(ev.job, None)
            if pending is None:
                self._doc_ids[ev.id] = self.db.table("events").insert(ev.to_json())
            else:
                pending.append(ev)
        self._mark_seen(ev)

    def _mark_seen(self, ev: Event) -> None:
        """Advance the version vector (highest contiguous seq) or park the seq above a gap."""
        mark = self.vectors.get(ev.origin, 0)
        extra = self.extra.setdefault(ev.origin, set())
        extra.add(ev.seq)
        while mark + 1 in extra:
            mark += 1
            extra.discard(mark)
        self.vectors[ev.origin] = mark
        if not extra:
            del self.extra[ev.origin]

    def _save(self) -> None:
        doc = {"node": self.node, "incarnation": self.incarnation, "incarnations": self.incarnations,
               "hlc": self.clock.last.to_json(), "vector": self.vectors,
               "extra": {o: sorted(s) for o, s in self.extra.items()}}
        table = self.db.table("node")
        if table.contains(doc_id=1):
            table.update(doc, doc_ids=[1])
        else:
            table.insert(doc)

    def _stored(self, parse: Callable[[Any], Any], value: Any, what: str) -> Any:
        """Parse a stored record; a bad one is skipped and reported, never fatal at boot."""
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as exc:
            self.recovery.append(f"skipped a bad stored {what}: {exc}")
            log.error("skipped a bad stored %s: %s", what, exc)
            return None

    def _node_doc(self) -> dict[str, Any]:
        doc = self.db.table("node").get(doc_id=1)
        return dict(doc) if isinstance(doc, dict) else {}

    def _drop_from_hot(self, ids: list[str]) -> None:
        doc_ids = [self._doc_ids.pop(i) for i in ids if i in self._doc_ids]
        for i in ids:
            ev = self._events.pop(i, None)
            if ev is not None:
                self._folded.pop(ev.job, None)
                same_job = self._by_job.get(ev.job)
                if same_job is not None:
                    same_job.discard(i)
                    if not same_job:
                        del self._by_job[ev.job]
        if doc_ids:
            self.db.table("events").remove(doc_ids=doc_ids)

    def _finish_interrupted_archive(self) -> None:
        """A crash between the archive append and the hot write leaves a job in both: finish it."""
        both = {e.job for e in self._events.values()} & self.archive.tail_jobs
        drop = []
        for job in both:
            archived = {e["id"] for _j, r in self.archive.records(job) for e in r.get("events", [])}
            hot = [e.id for e in self._job_events(job)]
            if set(hot) <= archived:
                drop += hot
        if drop:
            self.recovery.append(f"finished archiving {len(both)} job(s) interrupted by a crash")
            log.warning("finishing an archive interrupted by a crash (%d events)", len(drop))
            self._drop_from_hot(drop)
        # An event for an archived job goes to the archive first: if the crash came before the
        # hot write, mark it seen now, so its seq is never issued again nor its HLC undercut.
        record = parse_record(self.archive.last_line) if self.archive.last_line else None
        orphans = [ev for raw in (record[1].get("events", []) if record else [])
                   if (ev := self._stored(Event.from_json, raw, "archived event")) and not self._seen(ev)]
        for ev in orphans:
            self._mark_seen(ev)
            self.clock.observe(ev.hlc, self.wall())
        if orphans:
            self.recovery.append(f"adopted {len(orphans)} archived event(s) written just before a crash")
            self._save()
