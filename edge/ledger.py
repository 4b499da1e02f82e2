"""Job events, their fold to job state, and the merge of two ledgers. Pure: no I/O.

An event is `{id: "<node>.<incarnation>:<seq>", job, type, station, hlc, data, sig}`.
The *origin* of an event is `<node>.<incarnation>`: one numbering stream of one store. A
store gets a fresh random incarnation when it is created or rebuilt empty, so a node on a
new SD card, or one whose store was lost, can never issue an id its predecessor issued;
events of a retired incarnation stay valid history. (Ids of the first release, `<node>:<seq>`,
still parse: their origin is the bare node id.) `sig` is the origin node's Ed25519
signature over the rest (`signed_bytes`), so a relayed copy verifies and a forged origin,
content or HLC is refused (`EventVerifier`).

Job state is a fold of the job's events sorted by (hlc, id); merging ledgers is a set union
keyed by id. So replay, duplicates and any delivery order give the same state on every node.

Conflicts are resolved by one rule, the lowest (hlc, id) wins (save where a carrier reader
says who has the part), and are listed in the job state (`JobState.conflicts`) so the line
sees them:
- `duplicate_launch`: the same order was launched twice (two intakes, offline);
- `step_contention`: a step was started by a second node while the first held it (two lasers
  cut off from each other). The first start keeps it, unless the second node has the part:
  it is the node of the step's kind that recorded the step's latest `step_arrived` with the
  job's carrier (`data.carrier`: its carrier reader saw the tray; a `step_failed` or an
  `override` forgets that). It wins though it started later, even after the first reported
  the step done, and the displaced start is the loser. A loser yields: its later
  `step_progress`, `step_done` and `step_failed` on the step are ignored and listed here too
  (until the step's next attempt), as are those of any node while another node's start holds
  the step running (an operator's `override` is not a start: after it, any node but a loser
  may report);
- `event_after_close`: a step or a second closing event came after the job was closed;
- `step_repeated`: a step was started again after it was done (that node's reports on it
  are then ignored, as a loser's are);
- `carrier_changed`: the job was bound to a second carrier.

A step's life: `step_arrived` (the part reached the station: the job's `position`), then
`step_started`, any `step_progress` (percent; or `resumed` after the node rebooted), and
`step_done` or `step_failed` (reason);
`step_skipped` and `override` are an operator's. `carrier` binds the job to the carrier
(tray) it travels on.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

from edge.clock import Timestamp

EVENT_TYPES = ("created", "carrier", "step_arrived", "step_started", "step_progress", "step_done",
               "step_failed", "step_skipped", "override", "cancelled", "completed", "note")
STEP_TYPES = ("step_arrived", "step_started", "step_progress", "step_done", "step_failed", "step_skipped")
STEP_STATUSES = ("pending", "running", "done", "failed", "skipped")
CLOSED = ("completed", "cancelled")

NODE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
INCARNATION_RE = re.compile(r"[0-9a-f]{8}")
ORIGIN_RE = re.compile(r"(?P<node>[a-z0-9][a-z0-9_-]{0,31})(?:\.(?P<inc>[0-9a-f]{8}))?")
SEQ_RE = re.compile(r"[1-9][0-9]{0,17}")  # ASCII digits only: str.isdigit() also takes '²'
JOB_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_DATA_BYTES = 16 * 1024
SIG_PREFIX = b"fabrique-event-v1\n"


def node_of(origin: str) -> str:
    """The node id of an origin (`laser-1.3f9a0c2e` -> `laser-1`)."""
    return origin.partition(".")[0]


@dataclass(frozen=True)
class Event:
    """One fact recorded by one node. `station` is the station kind of the recording node."""

    id: str
    job: str
    type: str
    station: str
    hlc: Timestamp
    data: Mapping[str, Any] = field(default_factory=dict)
    sig: str = ""

    @cached_property
    def origin(self) -> str:
        """The numbering stream that issued the event: `<node>.<incarnation>` (before the ':')."""
        return self.id.rpartition(":")[0]

    @cached_property
    def node(self) -> str:
        """The node that recorded the event, whatever its incarnation."""
        return node_of(self.origin)

    @cached_property
    def seq(self) -> int:
        """The origin's sequence number of the event (1, 2, 3... per node)."""
        return int(self.id.rpartition(":")[2])

    @cached_property
    def key(self) -> tuple[int, int, str, str]:
        """The sort key of the ledger: (hlc, id), flattened so sorting compares plain tuples."""
        return (self.hlc.wall_ms, self.hlc.counter, self.hlc.node, self.id)

    @property
    def step(self) -> str:
        """The route step a step event is about: `data["step"]`, else the station kind."""
        step = self.data.get("step")
        return step if isinstance(step, str) and step else self.station

    def to_json(self) -> dict[str, Any]:
        out = {"id": self.id, "job": self.job, "type": self.type, "station": self.station,
               "hlc": self.hlc.to_json(), "data": dict(self.data)}
        if self.sig:
            out["sig"] = self.sig
        return out

    @classmethod
    def from_json(cls, value: Any) -> Event:
        """Parse and check one event; raises ValueError naming what is wrong. Strict and
        bounded: whatever a peer or a damaged file sends, a bad event is refused here, never
        deeper in the store or the loop."""
        if not isinstance(value, Mapping):
            raise ValueError("an event is a JSON object")
        for name in ("id", "job", "type", "station"):
            if not isinstance(value.get(name), str) or not value[name]:
                raise ValueError(f"event field {name!r} must be a non-empty string")
        origin, sep, seq = value["id"].rpartition(":")
        if not sep or not ORIGIN_RE.fullmatch(origin) or not SEQ_RE.fullmatch(seq):
            raise ValueError(f"event id {value['id'][:80]!r} is not '<node>.<incarnation>:<seq>'")
        if not JOB_RE.fullmatch(value["job"]):
            raise ValueError(f"event job {value['job'][:80]!r} is not a job id (1-64 of A-Z a-z 0-9 _ . : -)")
        if value["type"] not in EVENT_TYPES:
            raise ValueError(f"event type {value['type'][:40]!r} is not one of {', '.join(EVENT_TYPES)}")
        if not NODE_RE.fullmatch(value["station"]):
            raise ValueError(f"event station {value['station'][:40]!r} is not a station kind")
        data = value.get("data", {})
        if not isinstance(data, Mapping):
            raise ValueError("event field 'data' must be an object")
        sig = value.get("sig", "")
        if not isinstance(sig, str) or len(sig) > 100:
            raise ValueError("event field 'sig' must be a base64 signature")
        hlc = Timestamp.from_json(value.get("hlc"))
        if hlc.node != node_of(origin):
            raise ValueError(f"event HLC node {hlc.node[:40]!r} is not the event's node {node_of(origin)!r}")
        return cls(value["id"], value["job"], value["type"], value["station"], hlc, dict(data), sig)

    def canonical(self) -> str:
        """A byte-stable JSON form, used to break ties between two events with one id."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    def signed_bytes(self) -> bytes:
        """What the origin node signs: every field but `sig`, in one byte-stable form.
        Raises ValueError for data that is not plain JSON (NaN, infinities) or too large."""
        body = {"id": self.id, "job": self.job, "type": self.type, "station": self.station,
                "hlc": self.hlc.to_json(), "data": self.data}
        try:
            out = SIG_PREFIX + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                          allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"event data is not plain JSON: {exc}") from None
        if len(out) > MAX_DATA_BYTES + 1024:
            raise ValueError(f"event of {len(out)} bytes exceeds {MAX_DATA_BYTES + 1024}")
        return out


def event_id(origin: str, seq: int) -> str:
    return f"{origin}:{seq}"


# ---------------------------------------------------------------- signatures

class EventSigner:
    """Signs this node's events with its Ed25519 key (the 32-byte seed)."""

    def __init__(self, seed: bytes):
        self._key = SigningKey(seed)
        self.public_key = bytes(self._key.verify_key)

    def sign(self, event: Event) -> Event:
        sig = self._key.sign(event.signed_bytes()).signature
        return Event(event.id, event.job, event.type, event.station, event.hlc, event.data,
                     base64.b64encode(sig).decode("ascii"))


class EventVerifier:
    """Checks events against the line's node keys (`[nodes.keys]` in the line file).

    `check` returns None for a good event, else the reason it is refused: unsigned, a node
    with no key on this line, or a signature that does not match (forged origin, content or HLC).
    """

    def __init__(self, keys: Mapping[str, Sequence[bytes]]):
        self.keys = {node: tuple(k) for node, k in keys.items()}

    def check(self, event: Event) -> str | None:
        keys = self.keys.get(event.node)
        if not keys:
            return f"node {event.node!r} has no key in the line file"
        if not event.sig:
            return "unsigned"
        try:
            sig = base64.b64decode(event.sig, validate=True)
        except (binascii.Error, ValueError):
            return "signature is not base64"
        if len(sig) != 64:
            return "signature is not 64 bytes"
        try:
            signed = sig + event.signed_bytes()
        except ValueError as exc:
            return str(exc)
        for key in keys:
            try:
                crypto_sign_open(signed, key)
                return None
            except (BadSignatureError, ValueError):
                continue
        return f"signature does not match {event.node}'s key"


# ---------------------------------------------------------------- merge

def merge(*ledgers: Iterable[Event]) -> dict[str, Event]:
    """Set union of ledgers, keyed by event id. Commutative, associative, idempotent.

    Two different events carrying one id should never exist (ids are per node); if they
    do, the one with the smaller canonical JSON is kept, so every node keeps the same one.
    """
    out: dict[str, Event] = {}
    for ledger in ledgers:
        for ev in ledger:
            have = out.get(ev.id)
            if have is None or (have != ev and ev.canonical() < have.canonical()):
                out[ev.id] = ev
    return out


def ordered(events: Iterable[Event]) -> list[Event]:
    """Events deduplicated by id and sorted by (hlc, id): the ledger's one true order."""
    return sorted(merge(events).values(), key=lambda e: e.key)


# ---------------------------------------------------------------- fold

@dataclass
class Conflict:
    """A disagreement between stations, resolved by the lowest (hlc, id), kept visible."""

    kind: str
    winner: str
    loser: str
    step: str = ""
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "winner": self.winner, "loser": self.loser,
                "step": self.step, "detail": self.detail}


@dataclass
class StepState:
    """One route step of a job: which station kind, its status and who holds it."""

    step: str
    status: str = "pending"
    node: str = ""
    started_by: str = ""
    attempts: int = 0
    reason: str = ""
    on_route: bool = True
    progress: int | None = None
    started_ms: int = 0
    ended_ms: int = 0
    auto: bool = False  # the holding start was the station's own (`data.auto`), not an operator's
    resume_at: int = 0  # a failed G-code step: the first line not known to have run (`data.resume_at`)
    line: int = 0  # a running G-code step: the lines the machine had answered at its last progress

    def to_json(self) -> dict[str, Any]:
        out = {"step": self.step, "status": self.status, "node": self.node,
               "attempts": self.attempts, "reason": self.reason, "on_route": self.on_route,
               "progress": self.progress, "started_ms": self.started_ms, "ended_ms": self.ended_ms}
        if self.resume_at:
            out["resume_at"] = self.resume_at
        return out


@dataclass
class JobState:
    """The folded state of one job. `status` is one of:

    unknown (events seen, no `created` yet), waiting, in_progress, failed, done (every step
    done or skipped), completed (handed over), cancelled.
    """

    job: str
    status: str = "unknown"
    product: str = ""
    order: dict[str, Any] = field(default_factory=dict)
    steps: list[StepState] = field(default_factory=list)
    created_by: str = ""
    conflicts: list[Conflict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    events: int = 0
    last_hlc: Timestamp | None = None
    closed_by: str = ""
    heads: dict[str, int] = field(default_factory=dict)
    last_node: str = ""
    carrier: str = ""
    position: str = ""

    @property
    def is_open(self) -> bool:
        return self.status not in CLOSED

    @property
    def next_step(self) -> str | None:
        """The first route step still to do (pending or failed); None once none is, or the job is closed."""
        if not self.is_open:
            return None
        for s in self.steps:
            if s.on_route and s.status in ("pending", "failed"):
                return s.step
        return None

    def step(self, name: str) -> StepState | None:
        return next((s for s in self.steps if s.step == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "status": self.status, "product": self.product, "order": self.order,
                "steps": [s.to_json() for s in self.steps], "next_step": self.next_step,
                "created_by": self.created_by, "closed_by": self.closed_by,
                "conflicts": [c.to_json() for c in self.conflicts], "notes": list(self.notes),
                "events": self.events, "last_hlc": self.last_hlc.to_json() if self.last_hlc else None,
                "heads": dict(self.heads), "carrier": self.carrier, "position": self.position}

    def holds(self, heads: Mapping[str, int], vector: Mapping[str, int]) -> bool:
        """Whether a node with version `vector` holds every event of a view of this job with
        `heads` (highest seq per origin among the job's events in that view)."""
        return all(vector.get(origin, 0) >= seq for origin, seq in heads.items())


def fold(job: str, events: Iterable[Event]) -> JobState:
    """The state of `job` from its events, in any order, with any duplicates."""
    state = JobState(job)
    created: Event | None = None
    closed = False
    claims: dict[str, _Claim] = {}
    for ev in ordered(events):  # dedupe before picking the job: one id, one event, everywhere
        if ev.job != job:
            continue
        state.events += 1
        state.last_hlc = ev.hlc
        state.last_node = ev.node
        if ev.seq > state.heads.get(ev.origin, 0):
            state.heads[ev.origin] = ev.seq
        if ev.type == "created":
            if created is None:
                created = ev
                _apply_created(state, ev)
            else:
                state.conflicts.append(Conflict("duplicate_launch", created.id, ev.id,
                                                detail=f"also launched by {ev.node}"))
        elif ev.type == "note":
            text = ev.data.get("text", "")
            state.notes.append(f"{ev.node}: {text}")
        elif ev.type == "carrier":
            carrier = ev.data.get("carrier")
            if isinstance(carrier, str) and state.carrier not in ("", carrier):
                state.conflicts.append(Conflict("carrier_changed", "", ev.id,
                                                detail=f"{ev.node} moved the job from {state.carrier} to {carrier}"))
            state.carrier = carrier if isinstance(carrier, str) else ""
        elif ev.type in CLOSED:
            if not closed:
                closed = True
                state.status = ev.type
                state.closed_by = ev.id
            else:
                state.conflicts.append(Conflict("event_after_close", state.closed_by, ev.id, "",
                                                f"{ev.type} by {ev.node} after the job was {state.status}"))
        elif ev.type == "override":
            _apply_override(state, ev, claims.setdefault(ev.step, _Claim()))
        elif closed:
            state.conflicts.append(Conflict("event_after_close", state.closed_by, ev.id, ev.step,
                                            f"{ev.type} after the job was {state.status}"))
        else:
            _apply_step(state, ev, claims.setdefault(ev.step, _Claim()))
            if ev.type == "step_failed" and isinstance(ev.data.get("redo"), str):
                _apply_redo(state, ev, claims)
    if not closed:
        state.status = _status(state, created is not None)
    return state


def fold_all(events: Iterable[Event]) -> dict[str, JobState]:
    """Every job's state from a mixed bag of events."""
    by_job: dict[str, list[Event]] = {}
    for ev in merge(events).values():
        by_job.setdefault(ev.job, []).append(ev)
    return {job: fold(job, evs) for job, evs in sorted(by_job.items())}


def _apply_created(state: JobState, ev: Event) -> None:
    state.created_by = ev.id
    state.product = str(ev.data.get("product", ""))
    order = ev.data.get("order")
    state.order = dict(order) if isinstance(order, Mapping) else {}
    route = ev.data.get("route")
    route = [r for r in route if isinstance(r, str)] if isinstance(route, list) else []
    seen = {s.step: s for s in state.steps}
    steps = [seen.pop(r, StepState(r)) for r in dict.fromkeys(route)]
    for s in steps:
        s.on_route = True
    for s in seen.values():
        s.on_route = False
    state.steps = steps + list(seen.values())


def _step(state: JobState, name: str) -> StepState:
    found = state.step(name)
    if found is None:
        found = StepState(name, on_route=False)  # `created` puts route steps on the route
        state.steps.append(found)
    return found


@dataclass
class _Claim:
    """What the fold remembers of who may report on one step (not part of the job's state)."""

    losers: set[str] = field(default_factory=set)  # nodes whose start lost this attempt
    reader: str = ""  # the node of the step's kind whose carrier reader last saw the job's carrier
    override: bool = False  # an operator's override, not a start, set the step's status last


def _apply_step(state: JobState, ev: Event, claim: _Claim) -> None:
    step = _step(state, ev.step)
    node = ev.node
    if ev.type == "step_arrived":
        state.position = step.step
        if ev.station == step.step and state.carrier and ev.data.get("carrier") == state.carrier:
            claim.reader = node
        return
    if ev.type in ("step_progress", "step_done", "step_failed") and _outsider(state, step, claim, ev):
        return
    if ev.type == "step_progress":
        percent = ev.data.get("percent")
        if step.status == "running" and isinstance(percent, int) and not isinstance(percent, bool):
            step.progress = max(0, min(100, percent))
        line = ev.data.get("line")
        if step.status == "running" and isinstance(line, int) and not isinstance(line, bool) and line >= 0:
            step.line = line
        return
    if ev.type in ("step_started", "step_done", "step_failed"):
        state.position = step.step
    if ev.type == "step_started":
        _apply_start(state, step, claim, ev)
    elif ev.type == "step_done":
        step.status, step.node, step.reason = "done", node, ""
        step.ended_ms, step.progress = ev.hlc.wall_ms, 100
    elif ev.type == "step_failed":
        if step.status == "done":
            state.conflicts.append(Conflict("step_repeated", step.started_by or step.node, ev.id, step.step,
                                            f"{node} reported {step.step} failed after it was done"))
            return
        step.status, step.node = "failed", node
        step.reason = str(ev.data.get("reason", ""))
        step.ended_ms = ev.hlc.wall_ms
        resume = ev.data.get("resume_at")
        step.resume_at = resume if isinstance(resume, int) and not isinstance(resume, bool) and resume > 0 else 0
        claim.reader = ""  # the part goes back for a retry: a read from before says nothing of it
    elif ev.type == "step_skipped":
        step.status, step.node = "skipped", node
        step.reason = str(ev.data.get("reason", ""))


def _apply_redo(state: JobState, ev: Event, claims: dict[str, _Claim]) -> None:
    """`step_failed {step, reason, redo: <earlier step>}`: the part goes back to be made again
    (an inspection found the engraving missing): the earlier route step, if done, and the
    failing step are pending again, so the job is not failed and the line routes it back."""
    step, target = state.step(ev.step), state.step(ev.data["redo"])
    if step is None or step.status != "failed" or step.node != ev.node:
        return  # the failure itself was ignored (a loser's report)
    if target is None or not target.on_route or target is step or target.status not in ("done", "skipped"):
        return  # nothing to make again: the step stays failed (an operator decides)
    reason = str(ev.data.get("reason", ""))
    target.status, target.reason, target.resume_at, target.progress = "pending", f"redo: {reason}", 0, None
    step.status = "pending"
    claims.setdefault(target.step, _Claim()).reader = ""  # a read from before says nothing of the part now


def _apply_start(state: JobState, step: StepState, claim: _Claim, ev: Event) -> None:
    node = ev.node
    if step.node != node and step.status in ("running", "done"):
        if claim.reader == node and step.started_by and not claim.override:  # it has the part
            was = "held" if step.status == "running" else "reported done"
            state.conflicts.append(Conflict("step_contention", ev.id, step.started_by, step.step,
                                            f"{node} read carrier {state.carrier} at the {step.step}: it has "
                                            f"the part, and {step.node}, which {was} it, yields"))
            claim.losers.add(step.node)
            claim.losers.discard(node)
            step.status, step.node, step.started_by, step.reason = "running", node, ev.id, ""
            step.started_ms, step.ended_ms, step.progress, step.auto = ev.hlc.wall_ms, 0, 0, _auto(ev)
            return
        claim.losers.add(node)
    if step.status == "running" and step.node != node:
        state.conflicts.append(Conflict("step_contention", step.started_by, ev.id, step.step,
                                        f"{node} started {step.step} while {step.node} held it"))
        return
    if step.status == "done":
        state.conflicts.append(Conflict("step_repeated", step.started_by or step.node, ev.id, step.step,
                                        f"{node} started {step.step} after it was done"))
        return
    if step.status != "running":
        step.attempts += 1
        claim.losers.clear()  # a new attempt: whoever lost the last one may take this one
    claim.override = False
    step.status, step.node, step.started_by, step.reason = "running", node, ev.id, ""
    step.started_ms, step.progress, step.auto = ev.hlc.wall_ms, 0, _auto(ev)


def _auto(ev: Event) -> bool:
    return ev.data.get("auto") is True


def _outsider(state: JobState, step: StepState, claim: _Claim, ev: Event) -> bool:
    """Whether `ev` (progress, done, failed) comes from a node that lost the step or does not
    hold it while another node's start does; if so it is listed as a conflict, to be ignored."""
    node = ev.node
    if node != step.node and node in claim.losers:
        why = f"after {step.node} won it"
    elif step.status == "running" and step.node != node and not claim.override:
        why = f"while {step.node} held it"
    else:
        return False
    what = ev.type.removeprefix("step_")
    state.conflicts.append(Conflict("step_contention", step.started_by, ev.id, step.step,
                                    f"{node} reported {step.step} {what} {why}: ignored"))
    return True


def _apply_override(state: JobState, ev: Event, claim: _Claim) -> None:
    """An operator's word is final: `data = {step, to: <step status>, reason}`."""
    to = ev.data.get("to")
    if to not in STEP_STATUSES:
        return
    claim.override, claim.reader = True, ""
    step = _step(state, ev.step)
    step.status, step.node = to, ev.node
    step.reason = f"override: {ev.data.get('reason', '')}".rstrip(": ")
    if to == "running":
        step.started_by, step.auto = ev.id, False


def _status(state: JobState, created: bool) -> str:
    if not created:
        return "unknown"
    route = [s for s in state.steps if s.on_route]
    if any(s.status == "failed" for s in route):
        return "failed"
    if route and all(s.status in ("done", "skipped") for s in route):
        return "done"
    if any(s.status != "pending" for s in state.steps):
        return "in_progress"
    return "waiting"
