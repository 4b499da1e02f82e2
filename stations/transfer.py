"""Transfer: the conveyor carries each part to the station its job needs next.

Pure: events in, actions out (edge.engine). One belt runs past the stations in the order of
`beams`; a beam-break sensor at each station's entry says a carrier is there, and the station
holds the carrier until the transfer moves it on. One carrier moves at a time:

    job needs a station with a beam ─▶ target free? ─no─▶ held (status says why)
                                        │ yes
                                        ▼
    Drive conveyor on ─▶ target beam breaks ─▶ step_arrived (the job's position), conveyor off
                     └─▶ no beam in travel_s ─▶ conveyor off, jam: Fault + step_failed

Ledger: a move records `step_arrived {step: transfer}` when it starts (the part is on the
conveyor) and `step_arrived {step: <target>}` when it arrives. When the job's next route step
is `transfer` itself, that move *is* the step: `step_started` at the start, `step_done` then
`step_arrived` for the following step on arrival. A jam or a move cut short by a power cut is
`step_failed {step: transfer}`: such a job is not moved again until an operator `retry`s
(or `skip`s) its transfer step at the console.

`[station]` keys (besides `kind`, `title` and the lamps):
    conveyor          the conveyor motor's digital_output (default "conveyor")
    direction         a digital_output reversing the belt (on = towards the first beam);
                      without it the belt only runs forwards (a loop)
    beams             station kind -> digital_input at its entry, in belt order; the input is
                      active while the beam is broken
    travel_s          a move that reaches no target beam in this time is a jam (default 20)
    debounce_ms       a beam broken again within this time counts once (default 300)
    carrier_scanner   a reader at the belt's start: a part coming from a station without a beam
                      (intake) is moved once its carrier is scanned there; without it, parts
                      are taken first in, first out from the ledger
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge.config import STATION_KINDS
from edge.configfile import Section
from edge.engine import (
    Action,
    Boot,
    Drive,
    Event,
    Fault,
    InputChanged,
    LedgerChanged,
    Record,
    Resumed,
    SafetyChanged,
    Scan,
    StationInfo,
    Tell,
    Tick,
    View,
    check_hardware,
)
from edge.ledger import JobState

STEP = "transfer"
COUNTERS = ("moves", "arrived", "jams", "interrupted", "passed", "flicker", "unexpected", "impossible",
            "unknown_carrier")


@dataclass(frozen=True)
class TransferOptions:
    conveyor: str = "conveyor"
    direction: str | None = None
    beams: tuple[tuple[str, str], ...] = ()  # (station kind, input), in belt order
    travel_s: int = 20
    debounce_ms: int = 300
    carrier_scanner: str | None = None


def read_config(s: Section) -> TransferOptions:
    conveyor = s.get_str("conveyor", "conveyor")
    direction = s.get_str("direction", None)
    beams: list[tuple[str, str]] = []
    for kind, device in s.table("beams").items():
        if kind not in STATION_KINDS or kind == STEP:
            s.issue("beams", f"{kind!r} is not a station the conveyor serves "
                             f"({', '.join(k for k in STATION_KINDS if k != STEP)})")
        elif not isinstance(device, str) or not device:
            s.issue("beams", f"{kind} = {device!r}: name the digital_input at the {kind}'s entry")
        elif device in (d for _k, d in beams):
            s.issue("beams", f"{device!r} is the beam of two stations")
        else:
            beams.append((kind, device))
    travel = s.get_int("travel_s", 20, 1, 600)
    debounce = s.get_int("debounce_ms", 300, 0, 5000)
    scanner = s.get_str("carrier_scanner", None)
    return TransferOptions(conveyor or "conveyor", direction, tuple(beams), travel or 20,
                           300 if debounce is None else debounce, scanner)


def hardware(options: TransferOptions) -> list[tuple[str, str | None, str]]:
    """The devices the keys name, with the type each must be (checked by `edge check-config`)."""
    return [("conveyor", options.conveyor, "digital_output"), ("direction", options.direction, "digital_output"),
            ("carrier_scanner", options.carrier_scanner, "scanner"),
            *((f"beams.{kind}", device, "digital_input") for kind, device in options.beams)]


@dataclass
class Move:
    job: str
    carrier: str
    target: str
    way: tuple[str, ...]  # beams the carrier passes before the target's
    as_step: bool  # the job's own transfer step (step_started/step_done)
    started: float
    seen: set[str] = field(default_factory=set)  # beams broken during this move


@dataclass
class Transfer:
    """The conveyor's decisions. Its memory is what the ledger cannot tell: the move under way,
    the order carriers came in, the beams' last breaks, and a stop it has not seen reset."""

    options: TransferOptions
    info: StationInfo
    move: Move | None = None
    running: bool = False
    stopped: str | None = None  # e-stop or jam, until the engine feeds an input again (see docs)
    jammed_job: str | None = None
    queue: list[str] = field(default_factory=list)  # jobs to move, first in first out
    held: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)  # jobs whose move failed: the operator's
    scanned: list[str] = field(default_factory=list)
    breaks: dict[str, float] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    @property
    def beams(self) -> dict[str, str]:
        return dict(self.options.beams)

    def handle(self, event: Event, view: View) -> list[Action]:
        if isinstance(event, Boot):
            return self._boot(view)
        if isinstance(event, SafetyChanged):
            return self._safety(event)
        actions: list[Action] = []
        if isinstance(event, Resumed):
            return self._resume("the station was reset") + self._next(view) if self.stopped else self._next(view)
        if isinstance(event, (InputChanged, Scan)) and self.stopped:
            actions += self._resume("the station was reset")  # the engine feeds these only then
        if isinstance(event, InputChanged):
            return actions + self._input(event, view)
        if isinstance(event, Scan):
            return actions + self._scan(event, view)
        if isinstance(event, LedgerChanged):
            actions += self._ledger(view)
        if view.mode != "auto":
            self.running = False  # an operator has the belt; the move goes on when back in auto
        elif (isinstance(event, Tick) and self.move is not None and self.running
              and view.now - self.move.started > self.options.travel_s):
            return actions + self._jam(view)
        return actions + self._next(view)

    # -- moving
    def _next(self, view: View) -> list[Action]:
        moving = self.move.job if self.move else None
        self.blocked = [j for j, s in view.jobs.items() if j != moving and s.position == STEP and self._blocked(s)]
        if self.stopped or not view.safe or view.stopped or view.mode != "auto":
            return []
        if self.move is not None:
            if self.running:
                return []
            self.move.started, self.running = view.now, True  # after an e-stop and reset
            return [Drive(self.options.conveyor, True), Tell(f"carrier {self.move.carrier} on its way to the "
                                                 f"{self.move.target} again")]
        wanted = {job: target for job, state in view.jobs.items() if (target := self._target(state))}
        self.queue = [j for j in self.queue if j in wanted] + [j for j in wanted if j not in self.queue]
        held: dict[str, str] = {}
        for job in self.queue:
            busy = self._busy(wanted[job], job, view)
            if busy is None:
                self.held = held
                return self._start(view.jobs[job], wanted[job], view)
            held[job] = busy
        told = [Tell(f"job {j} held: {why}") for j, why in held.items() if self.held.get(j) != why]
        self.held = held
        return told

    def _target(self, state: JobState) -> str | None:
        """The station this job's carrier is to be moved to now, if any."""
        nxt = state.next_step
        if not state.is_open or not state.carrier or nxt is None or self._blocked(state):
            return None
        if any(s.status == "running" for s in state.steps):
            return None  # a station is working on the part
        if nxt == STEP:
            route = [s.step for s in state.steps if s.on_route]
            after = route[route.index(STEP) + 1:]
            target = after[0] if after else None
        else:
            step = state.step(nxt)
            target = nxt if step is not None and step.status == "pending" else None
        if target not in self.beams or state.position == target:
            return None
        if (self.options.carrier_scanner and state.position not in self.beams and state.position != STEP
                and state.carrier not in self.scanned):
            return None  # not on the belt yet: waiting for its carrier at the reader
        return target

    @staticmethod
    def _blocked(state: JobState) -> bool:
        """A move of this job failed, was cut short, or is another node's: an operator decides."""
        own = state.step(STEP)
        if own is not None and own.status in ("failed", "running"):
            return True
        return state.position == STEP and (own is None or own.status != "pending")

    def _busy(self, target: str, job: str, view: View) -> str | None:
        for other, state in view.jobs.items():
            step = state.step(target)
            if other != job and (state.position == target or (step is not None and step.status == "running")):
                return f"the {target} is busy with job {other}"
        return None

    def _start(self, state: JobState, target: str, view: View) -> list[Action]:
        order = [k for k, _d in self.options.beams]
        reverse = False
        if state.position in self.beams:
            here, there = order.index(state.position), order.index(target)
            if there > here:
                way = order[here + 1:there]
            elif self.options.direction:
                way, reverse = order[there + 1:here][::-1], True
            else:
                way = order[here + 1:] + order[:there]  # round the loop
        else:
            way = order[:order.index(target)]
        as_step = state.next_step == STEP
        self.move = Move(state.job, state.carrier, target, tuple(self.beams[k] for k in way), as_step, view.now)
        self.queue.remove(state.job)
        if state.carrier in self.scanned:
            self.scanned.remove(state.carrier)
        self.running = True
        self.counters["moves"] += 1
        data = {"step": STEP, "to": target, "carrier": state.carrier}
        actions: list[Action] = [Record(state.job, "step_started" if as_step else "step_arrived", data)]
        if self.options.direction:
            actions.append(Drive(self.options.direction, reverse))
        return actions + [Drive(self.options.conveyor, True),
                          Tell(f"carrier {state.carrier} (job {state.job}) to the {target}")]

    def _arrive(self, move: Move) -> list[Action]:
        self.move, self.running = None, False
        self.counters["arrived"] += 1
        data = {"step": move.target, "carrier": move.carrier}
        done = [Record(move.job, "step_done", {"step": STEP, "to": move.target})] if move.as_step else []
        return [Drive(self.options.conveyor, False), *done, Record(move.job, "step_arrived", data),
                Tell(f"carrier {move.carrier} (job {move.job}) at the {move.target}")]

    def _jam(self, view: View) -> list[Action]:
        move = self.move
        assert move is not None
        reason = (f"jam: carrier {move.carrier} (job {move.job}) did not reach the {move.target} beam "
                  f"({self.beams[move.target]}) in {self.options.travel_s} s")
        self.move, self.running, self.stopped, self.jammed_job = None, False, reason, move.job
        self.counters["jams"] += 1
        return [Drive(self.options.conveyor, False), Fault(reason),
                Record(move.job, "step_failed", {"step": STEP, "to": move.target, "reason": reason})]

    # -- inputs
    def _input(self, event: InputChanged, view: View) -> list[Action]:
        kinds = {device: kind for kind, device in self.options.beams}
        if event.device not in kinds or not event.value:
            return []
        beam, last = event.device, self.breaks.get(event.device)
        if last is not None and 0 <= view.now - last < self.options.debounce_ms / 1000:
            self.counters["flicker"] += 1
            return []  # the same break, seen twice
        self.breaks[beam] = view.now
        move = self.move
        if move is None or not self.running:
            return self._odd("unexpected", f"beam {beam} at the {kinds[beam]} broken with no carrier on its "
                                           f"way there: ignored")
        others = sorted(b for b in move.seen if b != beam and view.inputs.get(b))
        move.seen.add(beam)
        actions: list[Action] = []
        if others:
            actions += self._odd("impossible", f"beams {beam} and {', '.join(others)} broken at once for "
                                               f"carrier {move.carrier}: a part cannot be at two stations")
        if beam == self.beams[move.target]:
            return actions + self._arrive(move)
        if beam in move.way:
            self.counters["passed"] += 1
            return actions
        return actions + self._odd("unexpected", f"beam {beam} at the {kinds[beam]} broken: carrier "
                                                 f"{move.carrier} is going to the {move.target}; ignored")

    def _odd(self, counter: str, text: str) -> list[Action]:
        self.counters[counter] += 1
        return [Tell(text, ok=False)]

    def _scan(self, event: Scan, view: View) -> list[Action]:
        if event.device != self.options.carrier_scanner:
            return []
        code = event.text.strip()
        if code not in view.carriers:
            return self._odd("unknown_carrier", f"carrier {code[:40]!r} carries no open job: not moved")
        if code not in self.scanned:
            self.scanned.append(code)
        return [Tell(f"carrier {code} (job {view.carriers[code]}) on the belt"), *self._next(view)]

    # -- stops, restarts
    def _safety(self, event: SafetyChanged) -> list[Action]:
        if not event.tripped:
            return []
        self.running = False  # the node forced the outputs safe; the move waits for a reset
        self.stopped = "emergency stop"
        return [Drive(self.options.conveyor, False)]

    def _resume(self, why: str) -> list[Action]:
        cleared = [Fault(None)] if self.jammed_job else []
        self.stopped, self.jammed_job = None, None
        return [*cleared, Tell(f"conveyor may run again: {why}")]

    def _ledger(self, view: View) -> list[Action]:
        actions: list[Action] = []
        if self.jammed_job is not None:
            state = view.jobs.get(self.jammed_job)
            own = state.step(STEP) if state is not None else None
            if state is None or own is None or own.status != "failed":
                actions += self._resume(f"the jammed move of job {self.jammed_job} was retried, skipped or closed")
        move = self.move
        if move is not None and move.job not in view.jobs:
            self.move, self.running = None, False
            actions += [Drive(self.options.conveyor, False),
                        Tell(f"job {move.job} closed while its carrier was moving: conveyor stopped", ok=False)]
        return actions

    def _boot(self, view: View) -> list[Action]:
        actions: list[Action] = []
        for job, state in view.jobs.items():
            own = state.step(STEP)
            if state.position != STEP or (own is not None and own.status == "failed"):
                continue
            self.counters["interrupted"] += 1
            if own is None or own.status != "done":
                actions.append(Record(job, "step_failed", {"step": STEP, "reason": "interrupted: node restarted"}))
            # a move after the transfer's own route step was done: failing that step again would only be a
            # conflict in the ledger; the job stays on the belt until the operator's `retry` puts it back
            actions.append(Tell(f"job {job}: its move was cut by a restart; the part may be anywhere on the belt "
                                f"(retry or skip it at the console)", ok=False))
        return actions

    def get_status(self) -> dict[str, Any]:
        move = self.move
        return {"conveyor": "running" if self.running else "stopped",
                "moving": {"job": move.job, "carrier": move.carrier, "to": move.target} if move else None,
                "queue": [{"job": j, "held": self.held.get(j)} for j in self.queue],
                "failed_moves": sorted(self.blocked),
                "stopped": self.stopped,
                "tracking": "carrier reader" if self.options.carrier_scanner else "first in, first out",
                "counters": dict(self.counters)}


def machine(options: TransferOptions | None, info: StationInfo) -> Transfer:
    options = options or TransferOptions()
    if not options.beams:
        raise ValueError("[station] beams: name the beam-break input at each station's entry")
    check_hardware(hardware(options), info)
    return Transfer(options, info)
