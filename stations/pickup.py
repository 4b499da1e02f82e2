"""Pickup: the visitor scans the same QR code again and the locker with their stand opens.

Pure: events in, actions out (edge.engine). A job *arrives* here when its next route step is
pickup, every earlier route step is done or skipped and (by default) its part is here: its
position is the pickup (the transfer's beam at the pickup said so). The first free locker is assigned and
recorded (`step_arrived`, `step_started` with the locker, a note "stand in locker N" that
brings the locker back after a restart). The lockers are loaded from the staff side, so the
stand counts as placed when the locker is assigned. The visitor's scan is verified like at
intake; the stand of a finished job: the lock is released (nothing recorded yet) and stays
released while the door is open; when the door shuts again the lock goes back and the job
is `completed`. A lock released `open_s` seconds with no door opening is locked again. A job
not finished yet: where the stand is now and about how long (amber, nothing recorded). A bad
scan: red with its reason. A door that opens while its lock is shut (forced): red, buzzer, a
`note` on the job inside, counted; the job stays in its locker and the node goes on.

`[station]` keys (besides `kind`, `title` and the lamps):
    scanner           the scanner the visitor uses (default: every scanner)
    lockers           [{lock = "<digital_output>", door = "<digital_input>", name = "1"}, ...];
                      the door input reads on while the door is shut; name defaults to 1, 2...
    open_s            seconds a released lock waits for its door to open (default 10)
    minutes_per_step  the estimate told to a visitor per step still to do (default 3)
    arrival           "position" (default): a stand arrives when its position is the pickup;
                      "finished": as soon as every earlier step is finished (no conveyor to the
                      pickup: the staff carry the stands)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from edge.configfile import Section, did_you_mean, type_name
from edge.engine import (
    Action,
    Boot,
    Drive,
    Event,
    Flash,
    InputChanged,
    LedgerChanged,
    Record,
    SafetyChanged,
    Scan,
    StationInfo,
    Tell,
    Tick,
    View,
    check_hardware,
)
from edge.ledger import JobState
from edge.orders import verify_order

LOCKER_RE = re.compile(r"[A-Za-z0-9_-]{1,16}")
CARRIER_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
LOCKER_KEYS = ("lock", "door", "name")
FINISHED = ("done", "skipped")
ARRIVALS = ("position", "finished")


@dataclass(frozen=True)
class LockerSpec:
    name: str
    lock: str
    door: str


@dataclass(frozen=True)
class PickupOptions:
    scanner: str | None = None
    lockers: tuple[LockerSpec, ...] = ()
    open_s: int = 10
    minutes_per_step: int = 3
    arrival: str = "position"


def read_config(s: Section) -> PickupOptions:
    scanner = s.get_str("scanner", None)
    raw = s.get("lockers", (list,), 'a list of lockers, e.g. [{lock = "locker_1", door = "locker_door_1"}]')
    lockers = [spec for i, item in enumerate(raw or ()) if (spec := _read_locker(s, i, item)) is not None]
    if raw is not None and not raw:
        s.issue("lockers", "lists no locker")
    for what in ("name", "lock", "door"):
        names = [getattr(spec, what) for spec in lockers]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            s.issue("lockers", f"{what} {dup[0]!r} is used by two lockers")
    if shared := sorted({sp.lock for sp in lockers} & {sp.door for sp in lockers}):
        s.issue("lockers", f"{shared[0]!r} is both a lock and a door")
    open_s = s.get_int("open_s", 10, 1, 300)
    minutes = s.get_int("minutes_per_step", 3, 1, 120)
    arrival = s.get_str("arrival", "position", choices=ARRIVALS)
    return PickupOptions(scanner, tuple(lockers), open_s or 10, minutes or 3, arrival or "position")


def _read_locker(s: Section, i: int, item: Any) -> LockerSpec | None:
    where = f"locker {i + 1}"
    if not isinstance(item, dict):
        s.issue("lockers", f"{where} must be a table like {{lock = \"locker_1\", door = \"locker_door_1\"}}, "
                           f"not {type_name(item)} ({item!r})")
        return None
    for key in item:
        if key not in LOCKER_KEYS:
            s.issue("lockers", f"{where}: unknown key {key!r}{did_you_mean(key, LOCKER_KEYS)}")
    values = {}
    for key in LOCKER_KEYS:
        value = item.get(key, str(i + 1) if key == "name" else None)
        if not isinstance(value, str) or not value:
            s.issue("lockers", f"{where}: {key} " + ("is required (a device name)" if value is None
                                                     else f"must be a name, not {value!r}"))
            return None
        values[key] = value
    if not LOCKER_RE.fullmatch(values["name"]):
        s.issue("lockers", f"{where}: name {values['name']!r} is not 1-16 of A-Z a-z 0-9 _ -")
        return None
    return LockerSpec(values["name"], values["lock"], values["door"])


@dataclass
class Locker:
    """One locker as the station knows it: which job's stand is inside, its lock and door."""

    spec: LockerSpec
    job: str | None = None
    released_at: float | None = None  # the lock is released for the visitor since then
    door_opened: bool = False  # the door opened during this release: shutting it completes the job
    door_shut: bool = True
    forced: bool = False

    @property
    def state(self) -> str:
        if self.forced:
            return "forced"
        if self.door_opened:
            return "collecting"
        if self.released_at is not None:
            return "released"
        return "holding" if self.job else "free"


@dataclass
class Pickup:
    """The pickup's decisions; its memory is the lockers (rebuilt from the ledger at boot)
    and counters."""

    options: PickupOptions
    info: StationInfo
    lockers: list[Locker] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # finished jobs with no free locker, told once
    collected: int = 0
    opened: int = 0
    relocked: int = 0
    forced: int = 0
    not_ready: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    last: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.lockers = [Locker(spec) for spec in self.options.lockers]

    def handle(self, event: Event, view: View) -> list[Action]:
        if isinstance(event, Boot):
            return self._boot(view)
        if isinstance(event, Scan):
            if self.options.scanner and event.device != self.options.scanner:
                return []
            return self._scanned(event.text.strip(), view)
        if isinstance(event, InputChanged):
            locker = next((lk for lk in self.lockers if lk.spec.door == event.device), None)
            return self._door(locker, event.value, view) if locker is not None else []
        if isinstance(event, LedgerChanged):
            return self._ledger(view)
        if isinstance(event, Tick):
            return self._tick(view)
        if isinstance(event, SafetyChanged) and event.tripped:
            for locker in self.lockers:  # the node put every lock in its safe state: locked
                if not locker.door_opened:
                    locker.released_at = None
        return []

    # -- the ledger: stands arrive, lockers come back after a restart, jobs closed elsewhere
    def _boot(self, view: View) -> list[Action]:
        actions: list[Action] = [Drive(lk.spec.lock, False) for lk in self.lockers]
        for locker in self.lockers:
            locker.job, locker.released_at, locker.door_opened, locker.forced = None, None, False, False
            locker.door_shut = view.inputs.get(locker.spec.door, True)
            if not locker.door_shut:
                actions.append(Tell(f"locker {locker.spec.name}: door is open, please shut it", ok=False))
        for state in view.jobs.values():
            step = state.step(self.info.kind)
            if step is None or step.status != "running" or step.node != view.node:
                continue
            locker = self._locker_named(_noted_locker(state, view.node))
            if locker is not None and locker.job is None:
                locker.job = state.job
            else:  # the note did not make it before a power cut: give the stand a locker again
                actions += self._assign(state.job, view, arrived=True)
        return actions + self._ledger(view)

    def _ledger(self, view: View) -> list[Action]:
        actions: list[Action] = []
        for locker in self.lockers:
            if locker.job is None:
                continue
            state = view.jobs.get(locker.job)
            step = state.step(self.info.kind) if state is not None else None
            if step is None or step.status != "running":  # cancelled, skipped or completed elsewhere
                actions += [Drive(locker.spec.lock, False),
                            Tell(f"locker {locker.spec.name} is free again: job {locker.job} is "
                                 f"{state.status if state else 'closed'}")]
                locker.job, locker.released_at, locker.door_opened = None, None, False
        held = {lk.job for lk in self.lockers if lk.job}
        arrived = [s for s in view.jobs.values() if s.job not in held and self._arrived(s)]
        arrived.sort(key=lambda s: (max((x.ended_ms for x in s.steps), default=0), s.job))
        self.waiting = [j for j in self.waiting if j in {s.job for s in arrived}]
        for state in arrived:
            actions += self._assign(state.job, view)
        return actions

    def _arrived(self, state: JobState) -> bool:
        route = [s for s in state.steps if s.on_route]
        names = [s.step for s in route]
        if not state.is_open or self.info.kind not in names:
            return False
        here = names.index(self.info.kind)
        if self.options.arrival == "position" and state.position != self.info.kind:
            return False  # still on its way
        return route[here].status == "pending" and all(s.status in FINISHED for s in route[:here])

    def _assign(self, job: str, view: View, arrived: bool = False) -> list[Action]:
        locker = next((lk for lk in self.lockers if lk.job is None and not lk.forced), None)
        if locker is None:
            if job in self.waiting:
                return []
            self.waiting.append(job)
            return [Tell(f"job {job} is here but no locker is free: it waits for one", ok=False)]
        if job in self.waiting:
            self.waiting.remove(job)
        locker.job = job
        name = locker.spec.name
        step = {"step": self.info.kind, "locker": name}
        state = view.jobs.get(job)
        here = state is not None and state.position == self.info.kind  # the belt said so already
        records: list[Action] = [] if arrived else [Record(job, "step_started", step)]
        if not arrived and not here:
            records.insert(0, Record(job, "step_arrived", {"step": self.info.kind}))
        return records + [Record(job, "note", {"text": f"stand in locker {name}", "locker": name}),
                          Tell(f"job {job}: put the stand in locker {name}")]

    # -- the visitor
    def _scanned(self, text: str, view: View) -> list[Action]:
        if text in view.carriers:
            job = view.carriers[text]
            self.last = {"ok": True, "carrier": text, "job": job}
            return [Flash("amber"), Tell(f"carrier {text} carries job {job}: {self._where(job, view)}")]
        if view.line is None:
            return self._refuse("no_line", "no line file loaded")
        verdict = verify_order(text, view.line, view.now)
        if not verdict.ok or verdict.order is None:
            if verdict.reason == "bad_format" and CARRIER_RE.fullmatch(text):
                return self._refuse("unknown_carrier", f"{text!r} is not an order, nor the carrier of "
                                                       f"an open job: scan the QR code from the app")
            return self._refuse(verdict.reason, f"order refused: {verdict.reason}: {verdict.detail}")
        job = verdict.order.order_id
        locker = next((lk for lk in self.lockers if lk.job == job), None)
        if locker is not None:
            return self._open(locker, view)
        state = view.jobs.get(job) or view.lookup(job)
        if state is None or not state.created_by:
            return self._refuse("not_launched", f"order {job} was never launched: please go to the intake")
        if not state.is_open:
            why = "its stand was collected" if state.status == "completed" else "ask the staff"
            return self._refuse(f"already_{state.status}", f"order {job} is {state.status}: {why}")
        self.not_ready += 1
        self.last = {"ok": False, "job": job, "reason": "not_ready"}
        return [Flash("amber"), Tell(f"your stand is {self._where(job, view)}")]

    def _open(self, locker: Locker, view: View) -> list[Action]:
        name = locker.spec.name
        self.last = {"ok": True, "job": locker.job, "locker": name}
        if not locker.door_opened:
            locker.released_at = view.now
            self.opened += 1
        return [Drive(locker.spec.lock, True), Flash("green"),
                Tell(f"locker {name} is open: take your stand and shut the door")]

    def _where(self, job: str, view: View) -> str:
        """Where the stand is now and about how long it still takes, in the visitor's words."""
        locker = next((lk for lk in self.lockers if lk.job == job), None)
        if locker is not None:
            return f"ready in locker {locker.spec.name}"
        state = view.jobs.get(job) or view.lookup(job)
        if state is None:
            return "unknown here"
        route = [s for s in state.steps if s.on_route]
        failed = next((s for s in route if s.status == "failed"), None)
        if failed is not None:
            return f"held at the {failed.step}: the staff will help"
        running = next((s for s in route if s.status == "running"), None)
        todo = [s for s in route if s.status not in FINISHED and s.step != self.info.kind]
        if running is not None:
            where = f"at the {running.step}"
        elif not todo and state.position != self.info.kind and self.options.arrival == "position":
            where = "on its way to the pickup"
        elif not todo:
            where = "at the pickup, waiting for a free locker"
        elif state.position == todo[0].step:
            where = f"at the {todo[0].step}"
        else:
            where = f"on its way to the {todo[0].step}"
        minutes = len(todo) * self.options.minutes_per_step
        return f"{where}, about {minutes} minutes" if minutes else f"{where}, any moment now"

    def _refuse(self, reason: str, text: str) -> list[Action]:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self.last = {"ok": False, "reason": reason, "text": text}
        return [Flash("red", buzz=True), Tell(text, ok=False)]

    # -- the doors and the clock
    def _door(self, locker: Locker, shut: bool, view: View) -> list[Action]:
        if shut == locker.door_shut:
            return []
        locker.door_shut = shut
        name, job = locker.spec.name, locker.job
        if not shut:
            if locker.released_at is not None:
                locker.door_opened = True
                return []
            return self._forced(locker)
        if locker.forced:
            locker.forced = False
            return [Tell(f"locker {name}: door shut again after it was forced; check the stand inside",
                         ok=False)]
        collecting, locker.released_at, locker.door_opened = locker.door_opened, None, False
        if not collecting:
            return []
        if job is None:  # the job was closed elsewhere while the door was open
            return [Drive(locker.spec.lock, False)]
        locker.job = None
        self.collected += 1
        return [Drive(locker.spec.lock, False),
                Record(job, "step_done", {"step": self.info.kind, "locker": name}),
                Record(job, "completed", {"locker": name}), Flash("green"),
                Tell(f"job {job} collected from locker {name}: thank you")] + self._ledger(view)

    def _forced(self, locker: Locker) -> list[Action]:
        """A door opened while its lock was shut: told, counted, noted on the job inside; the
        job stays in its locker (the stand may still be there) and the other lockers go on."""
        locker.forced = True
        self.forced += 1
        name, job = locker.spec.name, locker.job
        alarm: list[Action] = [Flash("red", buzz=True)]
        if job is None:
            return alarm + [Tell(f"locker {name}: door forced open (empty)", ok=False)]
        return [Record(job, "note", {"text": f"locker {name} door forced open", "locker": name}), *alarm,
                Tell(f"locker {name}: door forced open (job {job} inside)", ok=False)]

    def _tick(self, view: View) -> list[Action]:
        actions: list[Action] = []
        for locker in self.lockers:
            door = view.inputs.get(locker.spec.door)
            if door is not None and door != locker.door_shut:  # a change the machine did not hear of
                if view.mode == "manual":
                    locker.door_shut = door
                else:
                    actions += self._door(locker, door, view)
            released = locker.released_at
            if released is not None and not locker.door_opened and view.now - released >= self.options.open_s:
                locker.released_at = None
                self.relocked += 1
                actions += [Drive(locker.spec.lock, False),
                            Tell(f"locker {locker.spec.name} locked again: nobody opened it")]
        return actions

    def _locker_named(self, name: str | None) -> Locker | None:
        return next((lk for lk in self.lockers if lk.spec.name == name), None)

    def get_status(self) -> dict[str, Any]:
        return {"lockers": {lk.spec.name: {"job": lk.job, "state": lk.state, "door_shut": lk.door_shut}
                            for lk in self.lockers},
                "waiting_for_locker": list(self.waiting), "collected": self.collected, "opened": self.opened,
                "relocked": self.relocked, "forced": self.forced, "not_ready": self.not_ready,
                "refused": dict(self.refused), "last_scan": self.last}


def _noted_locker(state: JobState, node: str) -> str | None:
    """The locker this node last noted for the job ("<node>: stand in locker N"), if any."""
    pattern = re.compile(rf"{re.escape(node)}: stand in locker ({LOCKER_RE.pattern})")
    found = [m.group(1) for note in state.notes if (m := pattern.fullmatch(note))]
    return found[-1] if found else None


def hardware(options: PickupOptions) -> list[tuple[str, str | None, str]]:
    """The devices the keys name, with the type each must be (checked by `edge check-config`)."""
    return [("scanner", options.scanner, "scanner"),
            *((f"lockers.{sp.name}", sp.lock, "digital_output") for sp in options.lockers),
            *((f"lockers.{sp.name}", sp.door, "digital_input") for sp in options.lockers)]


def machine(options: PickupOptions | None, info: StationInfo) -> Pickup:
    """The pickup machine; a locker or scanner that is not declared hardware of the right type
    is a ValueError (the engine makes it a station fault)."""
    if options is None or not options.lockers:
        raise ValueError("[station] lockers lists no locker")
    check_hardware(hardware(options), info)
    return Pickup(options, info)
