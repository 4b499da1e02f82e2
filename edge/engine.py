"""The station engine: runs a station kind's pure machine on the node loop.

    scanners, pins, ledger, clock ──▶ Node loop ──▶ Engine.feed(event)
                                                      │ View: now, mode, open jobs, carriers, inputs
                                                      ▼
                              machine.handle(event, view) -> [Action]    stations/<kind>.py, pure
                                                      │
               outputs, ledger events, lamps, fault ◀─┘ Engine.apply(actions)

A station module `stations/<kind>.py` gives `read_config(section)` (its `[station]` keys,
typed, with located errors) and `machine(options, info)`, a pure state machine: events in,
actions out, `now` passed in, no I/O. The engine owns everything station-agnostic: the mode
(`auto` or `manual`: in manual the machine is not fed, an operator drives), the stack light and
buzzer, the latch of a released emergency stop (nothing restarts by itself: `reset`), the
operator's `mode`, `reset`, `retry` and `skip`, and a machine that raises (a station fault,
never a crash of the node).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from edge.config import LineConfig, hardware_problems
from edge.ledger import JobState

if TYPE_CHECKING:
    from edge.node import Node

log = logging.getLogger(__name__)
FLASH_S = 2.0


# ---------------------------------------------------------------- events (into a machine)

@dataclass(frozen=True)
class Boot:
    """The station starts (also after a power cut): steps it was running may need a rule.
    `readings`: what each G-code machine reported at start (a printer's `bed`: (actual, target))."""

    readings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Scan:
    device: str
    text: str


@dataclass(frozen=True)
class InputChanged:
    device: str
    value: bool


@dataclass(frozen=True)
class Tick:
    """About once a second: timeouts (jams, lockers, lamps) are decided here."""


@dataclass(frozen=True)
class LedgerChanged:
    jobs: frozenset[str]


@dataclass(frozen=True)
class SafetyChanged:
    tripped: bool


@dataclass(frozen=True)
class Resumed:
    """An operator's `reset` cleared a fault or the latch of a released emergency stop: the
    station may move again (the only way it does after a stop)."""


@dataclass(frozen=True)
class Hold:
    """An operator's `hold`: the machine `device` was put in feed hold (its relays go off)."""

    device: str


@dataclass(frozen=True)
class StreamProgress:
    """A G-code job on `device` has `done` of its `total` lines answered (about twice a second)."""

    device: str
    job: str
    done: int
    total: int
    readings: Mapping[str, Any] = field(default_factory=dict)  # a printer's temperatures, when known


@dataclass(frozen=True)
class StreamEnded:
    """A G-code job ended: `ok`, or the `reason`; `executed` is the first line not known to have
    run (where a resume starts), `refused` the lines the machine refused."""

    device: str
    job: str
    ok: bool
    reason: str = ""
    executed: int = 0
    refused: tuple[int, ...] = ()


@dataclass(frozen=True)
class Captured:
    """A `Capture` ended: `ok` with what `look` returned (`result`) and the snapshots kept
    (`files`: path under the node's files -> sha256 of its bytes), or not `ok` with the camera's
    (or the analysis') `error`."""

    device: str
    job: str
    ok: bool
    result: Mapping[str, Any] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    error: str = ""


# ---------------------------------------------------------------- actions (out of a machine)

@dataclass(frozen=True)
class Drive:
    device: str
    value: bool


@dataclass(frozen=True)
class Record:
    """A ledger event for a job (durable before the next action runs)."""

    job: str
    type: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Flash:
    """Light one lamp of the stack light (green, amber, red) for a moment: a visitor's answer."""

    lamp: str
    seconds: float = FLASH_S
    buzz: bool = False


@dataclass(frozen=True)
class Tell:
    """A message for the people at the station (status, dashboards, log)."""

    text: str
    ok: bool = True


@dataclass(frozen=True)
class Fault:
    """The station cannot go on: `reason`; None clears the machine's fault."""

    reason: str | None


@dataclass(frozen=True)
class Stream:
    """Stream G-code `lines` (from index `start`) to the machine `device` for `job`, on a worker
    thread; `safe` are outputs put in their safe state at once, from that thread, if it fails."""

    device: str
    job: str
    lines: tuple[str, ...]
    start: int = 0
    safe: tuple[str, ...] = ()
    check: bool = False  # GRBL's check mode first: nothing moves unless every line parses


@dataclass(frozen=True)
class Realtime:
    """`hold` (feed hold) or `resume` (cycle start) on the machine `device`."""

    device: str
    command: str


@dataclass(frozen=True)
class WriteFile:
    """A file for a job (a toolpath preview): `write(path)` is called with `path` under the
    node's data dir; the machine records the relative path itself."""

    path: str
    write: Callable[[Any], Any]


@dataclass(frozen=True)
class Capture:
    """Take a frame from the camera `device` on a worker thread and call `look(frame)` there: it
    returns (result, images), a JSON-able result and {name: RGB array} to keep as JPEG snapshots
    under `jobs/<job>/` of the node's files; the station then hears `Captured`. Snapshots rotate
    out, oldest first, while they take more than `budget_mb`, never those of the jobs in `keep`."""

    device: str
    job: str
    look: Callable[[Any], tuple[Mapping[str, Any], Mapping[str, Any]]]
    keep: frozenset[str] = frozenset()
    budget_mb: float = 500.0


Event = (Boot | Scan | InputChanged | Tick | LedgerChanged | SafetyChanged | Resumed | Hold | StreamProgress
         | StreamEnded | Captured)
Action = Drive | Record | Flash | Tell | Fault | Stream | Realtime | WriteFile | Capture


@dataclass(frozen=True)
class StationInfo:
    node: str
    kind: str
    hardware: Mapping[str, str]  # device name -> type


def check_hardware(needs: list[tuple[str, str | None, str]], info: StationInfo) -> None:
    """Raise ValueError naming every device a `[station]` key names (`needs`: key, device,
    type) that the station does not declare with that type: a station fault, not a crash."""
    problems = hardware_problems(needs, info.hardware)
    if problems:
        raise ValueError("; ".join(f"[station] {key}: {problem}" for key, problem in problems))


@dataclass(frozen=True)
class View:
    """What a machine may know when it decides: read-only, built fresh for each event."""

    now: float
    node: str
    kind: str
    mode: str
    jobs: Mapping[str, JobState]  # open jobs of the line, as this node's ledger folds them
    carriers: Mapping[str, str]  # carrier code -> open job bound to it
    inputs: Mapping[str, bool]
    safe: bool  # no safety circuit is open
    line: LineConfig | None
    lookup: Callable[[str], JobState | None]  # any job, open or archived
    stopped: bool = False  # a circuit is open, a released stop is not reset yet, or the node is in fault


class Machine(Protocol):
    def handle(self, event: Event, view: View) -> list[Action]: ...

    def get_status(self) -> dict[str, Any]: ...


# ---------------------------------------------------------------- the engine

class Engine:
    """One station's machine on the node loop; every method runs on the loop thread."""

    def __init__(self, node: Node, machine: Machine):
        self.node = node
        self.machine = machine
        self.mode = node.config.station.mode
        self.latched = False  # an emergency stop was released: `reset` before anything moves
        self.fault: str | None = None
        self.message: dict[str, Any] | None = None
        self.flash: tuple[str, float, bool] | None = None
        self.lamps = dict(node.config.station.lights)
        self.blink = False
        self.snapshots: Any = None  # edge.snapshots.Snapshots, made at the first Capture
        node.on("scan", lambda e: self.feed(Scan(e.data["device"], e.data["text"])))
        node.on("input", lambda e: self.feed(InputChanged(e.data["device"], bool(e.data["value"]))))
        node.on("safety", lambda e: self.feed(SafetyChanged(bool(e.data["tripped"]))))
        node.on("ledger_changed", lambda e: self.feed(LedgerChanged(frozenset(e.data["jobs"]))))
        node.on("stream_progress", lambda e: self.feed(StreamProgress(
            e.data["device"], e.data["job"], e.data["done"], e.data["total"], e.data.get("readings") or {})))
        node.on("stream_end", lambda e: self.feed(StreamEnded(
            e.data["device"], e.data["job"], bool(e.data["ok"]), e.data.get("reason", ""),
            int(e.data.get("executed") or 0), tuple(e.data.get("refused") or ()))))
        node.on("captured", lambda e: self.feed(Captured(
            e.data["device"], e.data["job"], bool(e.data["ok"]), e.data.get("result") or {},
            e.data.get("files") or {}, e.data.get("error", ""))))

    # -- feeding
    def feed(self, event: Event) -> None:
        if isinstance(event, SafetyChanged) and event.tripped:
            self.flash = None  # a visitor's green must not come back over the stop's red
            if not self.latched:
                self.latched = True
                self.node._update_state()
        if self.mode == "manual" and not isinstance(event, (SafetyChanged, Hold, StreamProgress, StreamEnded,
                                                            Captured)):
            if isinstance(event, Tick):
                self.light()
            return  # an operator drives the station: the machine neither hears nor acts (back: Resumed)
        if (self.latched or self.fault) and isinstance(event, (Scan, InputChanged)):
            if isinstance(event, Scan):
                self.apply([Tell(f"scan ignored: station is {'stopped' if self.latched else 'in fault'}",
                                 ok=False), Flash("red")])
            return
        try:
            actions = self.machine.handle(event, self.view())
        except Exception as exc:  # a station bug is a station fault, not a dead node
            log.exception("station machine failed on %s", type(event).__name__)
            actions = [Fault(f"station logic failed: {type(exc).__name__}: {exc}")]
        self.apply(actions)
        if isinstance(event, (Tick, SafetyChanged)):
            self.light()

    def view(self) -> View:
        store = self.node.store
        jobs = {s.job: s for s in store.open_jobs()} if store is not None else {}
        carriers = {s.carrier: s.job for s in jobs.values() if s.carrier}
        board = self.node.board
        return View(now=store.best_time_s() if store is not None else time.time(), node=self.node.config.node.id,
                    kind=self.node.config.station.kind, mode=self.mode, jobs=jobs, carriers=carriers,
                    inputs={n: bool(d.value) for n, d in board.inputs.items()}, safe=not board.tripped(),
                    stopped=bool(board.tripped() or board.faults) or self.latched or bool(self.fault),
                    line=self.node.line, lookup=store.job if store is not None else (lambda _j: None))

    # -- acting
    def apply(self, actions: list[Action]) -> None:
        records: list[Record] = []
        for action in [*actions, None]:
            if isinstance(action, Record):
                records.append(action)  # consecutive ledger events: one durable write
                continue
            if records:
                try:
                    self.node.record_many([(r.job, r.type, dict(r.data)) for r in records])
                except Exception as exc:  # disk full: the node is in fault; what follows must not run
                    log.error("could not record %s: %s", ", ".join(f"{r.type} {r.job}" for r in records), exc)
                    return
                records = []
            if action is None:
                break
            if isinstance(action, Drive):
                refused = self.node.drive_now(action.device, action.value)
                if refused:
                    log.warning("station drive %s=%s refused: %s", action.device, action.value, refused)
            elif isinstance(action, Flash):
                self.flash = (action.lamp, time.monotonic() + action.seconds, action.buzz)
                self.light()
            elif isinstance(action, Tell):
                self.message = {"text": action.text, "ok": action.ok, "at": time.time()}
                (log.info if action.ok else log.warning)("%s", action.text)
            elif isinstance(action, Stream):
                self._stream(action)
            elif isinstance(action, Realtime):
                machine = self.node.board.gcode.get(action.device)
                if machine is not None:
                    machine.resume() if action.command == "resume" else machine.hold()
            elif isinstance(action, WriteFile):
                self._write_file(action)
            elif isinstance(action, Capture):
                self._capture(action)
            elif isinstance(action, Fault):
                if action.reason != self.fault:
                    (log.error if action.reason else log.info)("station fault: %s", action.reason or "cleared")
                self.fault = action.reason
                self.node._update_state()

    def _stream(self, action: Stream) -> None:
        machine = self.node.board.gcode.get(action.device)
        outputs = self.node.board.outputs

        def on_fault() -> None:  # on the worker thread, before anything else: the relays first
            for name in action.safe:
                if name in outputs:
                    outputs[name].safe()

        why = (machine.start(action.job, action.lines, action.start, on_fault, action.check) if machine is not None
               else f"no G-code machine [hardware.{action.device}]")
        if why:
            on_fault()
            self.node.post("stream_end", {"device": action.device, "job": action.job, "ok": False,
                                          "reason": why, "executed": action.start})

    def _capture(self, action: Capture) -> None:
        """The camera and the analysis on a thread of their own: a capture takes a moment, an
        analysis tens of milliseconds, and the loop must keep answering stops and scans."""
        from pathlib import Path

        from edge.snapshots import Snapshots

        camera = self.node.board.cameras.get(action.device)
        if self.snapshots is None:
            self.snapshots = Snapshots(Path(self.node.config.node.data_dir) / "files")
        snapshots = self.snapshots  # one capture at a time: the station waits for its Captured
        post = self.node.post

        def work() -> None:
            out: dict[str, Any] = {"device": action.device, "job": action.job, "ok": False}
            try:
                if camera is None:
                    raise LookupError(f"no camera [hardware.{action.device}] on this node")
                frame = camera.capture()
            except Exception as exc:  # unplugged, no frame: the station decides (retake, fail)
                post("captured", {**out, "error": str(exc)})
                return
            try:
                result, images = action.look(frame)
                files = snapshots.save(action.job, images)
            except Exception as exc:
                log.exception("inspection of %s failed", action.job)
                post("captured", {**out, "error": f"analysis failed: {type(exc).__name__}: {exc}"})
                return
            try:
                snapshots.rotate(int(action.budget_mb * 1e6), action.keep | {action.job})
            except OSError as exc:
                log.warning("could not rotate snapshots: %s", exc)
            post("captured", {**out, "ok": True, "result": dict(result), "files": files})

        threading.Thread(target=work, name=f"capture-{action.device}", daemon=True).start()

    def _write_file(self, action: WriteFile) -> None:
        from pathlib import Path

        root = Path(self.node.config.node.data_dir) / "files"
        path = (root / action.path).resolve()
        if root.resolve() not in path.parents:
            log.error("refused to write %s: outside %s", action.path, root)
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            action.write(path)
        except Exception as exc:  # a preview that cannot be written never stops the station
            log.warning("could not write %s: %s", path, exc)

    def light(self) -> None:
        """The stack light: green idle, amber working, red fault or stop, amber blinking in
        manual; a flash (a visitor's answer) wins for its moment."""
        if not self.lamps:
            return
        state = self.node.state
        lit = {"red": state in ("fault", "estop"), "amber": state == "busy", "green": state == "idle"}
        if state == "manual":
            self.blink = not self.blink
            lit = {"red": False, "amber": self.blink, "green": False}
        buzz = False
        if self.flash is not None:
            lamp, until, buzz = self.flash
            if time.monotonic() < until:
                lit = {name: name == lamp for name in lit}
            else:
                self.flash, buzz = None, False
        wanted = {self.lamps[k]: v for k, v in lit.items() if k in self.lamps}
        if "buzzer" in self.lamps:
            wanted[self.lamps["buzzer"]] = buzz
        for device, value in wanted.items():
            self.node.drive_now(device, value)

    # -- the operator's
    def set_mode(self, mode: str) -> dict[str, Any]:
        was, self.mode = self.mode, mode
        self.node._update_state()
        if was == "manual" and mode == "auto":
            self.feed(Resumed())  # the machine looks at the line afresh
        self.light()
        return {"mode": self.mode}

    def reset(self) -> dict[str, Any]:
        """Clear a fault, or the latch of a released emergency stop (never while it is open)."""
        if self.node.board.tripped():
            raise ValueError(f"safety circuit still open: {', '.join(self.node.board.tripped())}")
        cleared = [what for what, on in (("emergency stop", self.latched), ("fault", bool(self.fault))) if on]
        self.latched, self.fault = False, None
        for machine in self.node.board.gcode.values():
            machine.release()
        self.node._update_state()
        self.feed(Resumed())
        self.light()
        return {"cleared": cleared, "state": self.node.state}

    def hold(self, device: str) -> None:
        """An operator's feed hold: the machine at once, then the station hears of it."""
        self.node.board.gcode[device].hold()
        self.feed(Hold(device))

    def resume(self) -> dict[str, Any]:
        """Go on after a hold, a lid or a released stop: `reset` if a stop or fault is latched,
        else `Resumed` alone (the machine sends cycle start to a held job)."""
        if self.latched or self.fault:
            return self.reset()
        self.feed(Resumed())
        return {"cleared": [], "state": self.node.state}

    def get_status(self) -> dict[str, Any]:
        return {"mode": self.mode, "latched": self.latched, "fault": self.fault, "message": self.message,
                **self.machine.get_status()}


# ---------------------------------------------------------------- a kind with no module yet

@dataclass
class PassThrough:
    """The generic station of a kind whose module has not landed (laser, printer, inspection
    today): a part that arrives (the job's position is this kind, its step pending: the
    transfer's beam, or this station's carrier reader) gets its step started and, `dwell_s`
    later, done (not while the station is stopped: after the `reset`). Steps an operator starts
    at the console stay the operator's. At boot, a step
    it had started and not finished (a power cut) is resumed, never started again: a
    `step_progress {resumed}` tells the ledger, and the dwell runs again from boot (or from
    the switch to auto, for a node that booted in manual)."""

    info: StationInfo
    dwell_s: float = 2.0
    carrier_scanner: str | None = None
    running: dict[str, float] = field(default_factory=dict)  # job -> when this machine started it
    read: set[str] = field(default_factory=set)  # jobs whose carrier this station's reader saw
    done: int = 0

    @classmethod
    def of(cls, info: StationInfo) -> PassThrough:
        """The generic station of a node: its first scanner, if any, reads carriers."""
        return cls(info, carrier_scanner=next((n for n, t in info.hardware.items() if t == "scanner"), None))

    def handle(self, event: Event, view: View) -> list[Action]:
        actions: list[Action] = []
        kind = self.info.kind
        if isinstance(event, Scan) and event.device == self.carrier_scanner:
            job = view.carriers.get(event.text.strip())
            if job is None:
                return [Tell(f"carrier {event.text.strip()[:40]!r} carries no open job", ok=False), Flash("red")]
            if view.jobs[job].position != kind or job not in self.read:
                # also when the belt said the part is at this kind: with two lasers, the read
                # tells which of them has it (the ledger's rule for a shared step)
                self.read.add(job)
                actions.append(Record(job, "step_arrived", {"step": kind, "carrier": event.text.strip()}))
            return actions
        if isinstance(event, (Boot, Resumed)):  # Resumed too: a node that booted in manual mode
            actions += self._resume(view)
        if not isinstance(event, (Tick, LedgerChanged, Resumed)):
            return actions
        for job, state in view.jobs.items():
            step = state.step(kind)
            if job in self.running:
                if step is None or step.status != "running" or step.node != view.node:
                    del self.running[job]  # overridden, or another node of this kind won it
                elif view.now - self.running[job] >= self.dwell_s and not view.stopped:
                    del self.running[job]
                    self.done += 1
                    actions.append(Record(job, "step_done", {"step": kind}))
            elif (step is not None and step.status == "pending" and state.next_step == kind
                  and state.position == kind and not view.stopped):
                self.running[job] = view.now
                actions.append(Record(job, "step_started", {"step": kind, "auto": True}))
        return actions

    def _resume(self, view: View) -> list[Action]:
        actions: list[Action] = []
        for job, state in view.jobs.items():
            step = state.step(self.info.kind)
            if (step is not None and step.status == "running" and step.node == view.node and step.auto
                    and job not in self.running):
                self.running[job] = view.now
                actions.append(Record(job, "step_progress", {"step": self.info.kind, "resumed": True}))
        return actions

    def get_status(self) -> dict[str, Any]:
        tracking = ("carrier reader" if self.carrier_scanner else
                    "the job's position (the transfer's first in, first out): no carrier reader")
        return {"generic": True, "working_on": sorted(self.running), "steps_done": self.done, "tracking": tracking}
