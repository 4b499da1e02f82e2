"""An emergency stop during every active step of every station of the example line.

Each case runs a real node from examples/line/<kind>.toml on gpiozero's MockFactory, brings it
into one active step (the conveyor mid-move, a generic station's step running with its outputs
on, a locker released or its door open, the intake's lamp answering a scan), opens the stop's
loop, lets ticks go by, closes the loop, lets ticks go by, and types `reset` at the console.
The MockPin state histories are the evidence: every digital_output is at the pin level of its
safe state (`safe_state` through `active_high`, as the example file declares them) the moment
the loop opens, and no output leaves it again until `reset`, except the stack light's red lamp,
which shows the stop once the loop is closed again ("red: fault or stopped"). The ledger is
the other evidence: nothing is recorded while the station is stopped, no event of a job is
lost, and no step is started or done twice (nor a conveyor move started twice).

Every case is told once per module and read by several tests, one behaviour each.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from trailer import EXAMPLES, Ticks, example_station, on_loop, pin_history, running, wait_for

from edge.config import load_line, load_station
from edge.ledger import Event, JobState
from edge.node import Node
from edge.sim.line import example_order
from firmware_bridge.sim.grbl import SimulatedGrbl
from firmware_bridge.sim.marlin import SimulatedMarlin

LINE = load_line(EXAMPLES / "line.toml")
STAND = list(LINE.products["stand"].route)  # intake, laser, printer, transfer, inspection, pickup
KEYRING = list(LINE.products["keyring"].route)  # intake, laser, inspection, pickup
JOB = "VISIT1"
TICK_S = 0.02


class LampClock:
    """The engine's clock, held still: a visitor's answer (a Flash) lasts the whole story, so
    the stop always comes, and goes, while the lamp still flashes. The ledger keeps real time."""

    @staticmethod
    def monotonic() -> float:
        return 1000.0

    @staticmethod
    def time() -> float:
        return time.time()


# ---------------------------------------------------------------- the bench: one node, its pins, its console

@dataclass
class Bench:
    node: Node
    ticks: Ticks
    scanner: int | None = None  # the write end of the scanner's FIFO
    machines: dict[str, Any] = field(default_factory=dict)  # device -> its simulator (GRBL, Marlin)

    def pin(self, device: str) -> Any:
        return self.node.board.factory.pin(self.node.config.hardware[device].pin)

    def on(self, output: str) -> bool:
        return self.node.board.outputs[output].value

    def console(self, line: str) -> Any:
        return on_loop(self.node, lambda: self.node.commands.run_line(line))

    def record(self, *events: tuple[str, dict[str, Any]]) -> None:
        """The job's events as peers would have recorded them, one durable write on the loop."""
        on_loop(self.node, lambda: self.node.record_many([(JOB, type_, data) for type_, data in events]))

    def scan(self, text: str) -> None:
        assert self.scanner is not None, "this station has no scanner"
        os.write(self.scanner, (text + "\n").encode())

    def job(self) -> JobState | None:
        return on_loop(self.node, lambda: self.node.store.job(JOB))  # type: ignore[return-value]

    def ledger(self) -> list[Event]:
        """Every event this node holds, of every job."""
        def read() -> list[Event]:
            store = self.node.store
            return [e for s in store.open_jobs(include_closed=True) for e in store.job_events(s.job)]
        return on_loop(self.node, read)  # type: ignore[return-value]

    def step(self, step: str) -> str | None:
        state = self.job()
        found = state.step(step) if state is not None else None
        return found.status if found is not None else None


def launched(route: list[str], done: list[str], product: str = "stand") -> list[tuple[str, dict[str, Any]]]:
    return [("created", {"product": product, "route": route, "order": {"order_id": JOB}}),
            ("carrier", {"carrier": "T01"}), *[("step_done", {"step": s}) for s in done]]


# ---------------------------------------------------------------- the active steps

def transfer_mid_move(bench: Bench) -> None:
    bench.record(*launched(STAND, ["intake"]))  # the transfer moves it to the laser
    wait_for(lambda: bench.on("conveyor"))
    assert bench.console("drive gripper off --force").ok  # the operator opened the gripper's valve, too


def transfer_own_step(bench: Bench) -> None:
    """The job's own transfer step: the move from the printer to the inspection *is* the step."""
    bench.record(*launched(STAND, ["intake", "laser", "printer"]), ("step_arrived", {"step": "printer"}))
    wait_for(lambda: bench.on("conveyor"))
    assert bench.step("transfer") == "running"


def transfer_carries_on(to: str) -> Callable[[Bench], None]:
    def after(bench: Bench) -> None:
        wait_for(lambda: bench.on("conveyor"))  # the same move goes on after `reset`...
        bench.pin(f"beam_{to}").drive_low()  # ...until its carrier breaks the target's beam
        wait_for(lambda: (s := bench.job()) is not None and s.position == to and not bench.on("conveyor"))
    return after


def pickup_lock_released(bench: Bench) -> None:
    for door in ("locker_door_1", "locker_door_2"):
        bench.pin(door).drive_low()  # reed switches to GND: both doors shut
    bench.record(*launched(KEYRING, KEYRING[:-1], product="keyring"),
                 ("step_arrived", {"step": "pickup", "carrier": "T01"}))  # as the transfer's beam says
    wait_for(lambda: bench.node.get_status()["station"]["lockers"]["1"]["job"] == JOB)
    bench.scan(example_order(JOB))  # the visitor's QR code: locker 1 is released
    wait_for(lambda: bench.on("locker_1"))


def pickup_door_open(bench: Bench) -> None:
    pickup_lock_released(bench)
    bench.pin("locker_door_1").drive_high()  # the visitor opened the door
    wait_for(lambda: bench.node.get_status()["station"]["lockers"]["1"]["state"] == "collecting")


def pickup_door_shut(bench: Bench) -> None:
    bench.pin("locker_door_1").drive_low()  # the stand taken, the door shut after `reset`
    wait_for(lambda: (s := bench.job()) is not None and s.status == "completed")


def intake_green(bench: Bench) -> None:
    wait_for(lambda: bench.node.state == "idle")
    bench.scan(example_order(JOB, text="Zoe"))
    wait_for(lambda: bench.job() is not None and bench.on("light_green"))


def intake_red(bench: Bench) -> None:
    wait_for(lambda: bench.node.state == "idle")
    bench.scan("not an order at all")
    wait_for(lambda: bench.node.get_status()["station"]["refused"] and bench.on("light_red"))


def nothing(_bench: Bench) -> None:
    pass


def laser_engraving(bench: Bench) -> None:
    """The laser station on the GRBL simulator, burning the visitor's text."""
    order = {"order_id": JOB, "product": "stand", "options": {"colour": "red", "text": "Hélène"}}
    bench.record(("created", {"product": "stand", "route": STAND, "order": order}), ("carrier", {"carrier": "T01"}),
                 ("step_done", {"step": "intake"}), ("step_arrived", {"step": "laser", "carrier": "T01"}))
    grbl = bench.machines["grbl"]
    wait_for(lambda: len(grbl.executed) > 5, 30)
    assert grbl.state == "Run"


def laser_held(bench: Bench) -> None:
    assert bench.machines["grbl"].state.startswith("Hold")  # the feed hold came with the stop


def laser_burns_on(bench: Bench) -> None:
    """After `reset` the held engraving goes on from where it stopped, to its end."""
    wait_for(lambda: bench.step("laser") == "done", 120)


def printer_printing(bench: Bench) -> None:
    """The printer station on the Marlin simulator, its bed heating (M190 holds the print)."""
    bench.pin("bed_clear").drive_low()  # the bed is clear (pull-up: active low)
    order = {"order_id": JOB, "product": "stand", "options": {"colour": "red", "text": "Hélène"}}
    bench.record(("created", {"product": "stand", "route": STAND, "order": order}), ("carrier", {"carrier": "T01"}),
                 ("step_done", {"step": "intake"}), ("step_done", {"step": "laser"}),
                 ("step_arrived", {"step": "printer", "carrier": "T01"}))
    wait_for(lambda: bench.step("printer") == "running", 30)


def printer_prints_on(bench: Bench) -> None:
    bench.machines["marlin"].heat_rate = 400.0  # the bed warms: the print goes on to its end
    wait_for(lambda: bench.step("printer") == "done", 120)


class Shutter:
    """The file camera with its shutter held until the story lets it go: the inspection's step
    stays running, its ring light on, for as long as the story needs."""

    def __init__(self, camera: Any):
        self.camera = camera
        self.release = threading.Event()

    def capture(self) -> Any:
        self.release.wait(30)
        return self.camera.capture()

    def status(self) -> dict[str, Any]:
        return self.camera.status()

    def close(self) -> None:
        self.release.set()
        self.camera.close()


def inspection_looking(bench: Bench) -> None:
    """The part under the camera, the ring light on, the frame not taken yet."""
    from PIL import Image

    from edge.sim.parts import render
    from stations.inspection import expected_strokes, product_layout

    stand = LINE.products["stand"]
    camera = bench.node.board.cameras["camera"]
    image = render(layout=product_layout(stand), label="T01", colour=LINE.colours["red"].srgb,
                   strokes=expected_strokes(stand, {"text": "Zoé"}, LINE))
    Image.fromarray(image).save(camera.path / "part.png")
    bench.machines["shutter"] = shutter = Shutter(camera)
    on_loop(bench.node, lambda: bench.node.board.cameras.__setitem__("camera", shutter))
    order = {"order_id": JOB, "product": "stand", "options": {"colour": "red", "text": "Zoé"}}
    bench.record(("created", {"product": "stand", "route": STAND, "order": order}), ("carrier", {"carrier": "T01"}),
                 *[("step_done", {"step": s}) for s in STAND[:STAND.index("inspection")]],
                 ("step_arrived", {"step": "inspection", "carrier": "T01"}))
    wait_for(lambda: bench.step("inspection") == "running" and bench.on("ring_light"))


def inspection_frame_while_open(bench: Bench) -> None:
    """The frame comes while the loop is open: no verdict on it (the part is looked at again)."""
    bench.machines["shutter"].release.set()
    wait_for(lambda: bench.node.board.cameras["camera"].camera.frames >= 1)
    bench.ticks.wait(3)
    assert bench.step("inspection") == "running"


def inspection_passes(bench: Bench) -> None:
    wait_for(lambda: bench.step("inspection") == "done", 30)


@dataclass(frozen=True)
class Case:
    kind: str
    step: str
    bring: Callable[[Bench], None]  # into the active step
    live: tuple[str, ...]  # the outputs out of their safe state when the stop opens
    while_open: Callable[[Bench], None] = nothing
    after_reset: Callable[[Bench], None] = nothing
    settled: dict[str, str] = field(default_factory=dict)  # the job at the end: step -> status
    machines: tuple[tuple[str, Callable[[], Any]], ...] = ()  # device -> a simulator to start

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.step}"


CASES = [
    Case("transfer", "mid-move", transfer_mid_move, ("conveyor", "gripper"),
         after_reset=transfer_carries_on("laser"),
         settled={"intake": "done", "laser": "pending", "position": "laser"}),
    Case("transfer", "own-step-move", transfer_own_step, ("conveyor",),
         after_reset=transfer_carries_on("inspection"),
         settled={"transfer": "done", "inspection": "pending", "position": "inspection"}),
    Case("laser", "engraving", laser_engraving, ("fume_extractor", "laser_enable"), while_open=laser_held,
         after_reset=laser_burns_on, settled={"laser": "done", "position": "laser"},
         machines=(("grbl", lambda: SimulatedGrbl(time_scale=0.5)),)),
    Case("printer", "printing", printer_printing, (), after_reset=printer_prints_on,
         settled={"printer": "done", "position": "printer"},
         machines=(("marlin", lambda: SimulatedMarlin(heat_rate=0.0)),)),
    Case("inspection", "looking", inspection_looking, ("ring_light",), while_open=inspection_frame_while_open,
         after_reset=inspection_passes, settled={"inspection": "done", "position": "inspection"}),
    Case("pickup", "lock-released", pickup_lock_released, ("locker_1", "light_green"),
         settled={"pickup": "running", "status": "in_progress"}),
    Case("pickup", "door-open", pickup_door_open, ("locker_1", "light_green"), after_reset=pickup_door_shut,
         settled={"pickup": "done", "status": "completed"}),
    Case("intake", "green-flash", intake_green, ("light_green",),
         settled={"intake": "done", "status": "in_progress"}),
    Case("intake", "red-flash", intake_red, ("light_red",)),
]


# ---------------------------------------------------------------- the story of one case

PHASES = ("trip", "release", "reset", "end")  # the moments histories and the ledger are read at


@dataclass
class Story:
    case: Case
    safe: dict[str, bool]  # output -> the pin level of its safe state
    stop_lamp: str | None  # the stack light's red lamp: it shows the stop once the loop is closed
    before: dict[str, bool]  # output -> pin level just before the loop opened
    at_trip: dict[str, bool]  # output -> pin level the moment the loop opened (before the node loop hears)
    marks: dict[str, dict[str, int]]  # phase -> output -> length of its pin history then
    histories: dict[str, list[bool]]  # output -> every pin level of the whole story
    ledger: dict[str, list[Event]]  # phase -> every event the node held then
    reset_while_open: Any
    reset: Any
    final: JobState | None

    def left_safe(self, start: str, end: str, but: tuple[str, ...] = ()) -> dict[str, list[bool]]:
        """Outputs whose pin took a level other than its safe one between two moments."""
        out = {}
        for name, levels in self.histories.items():
            window = levels[self.marks[start][name]:self.marks[end][name]]
            if name not in but and any(level != self.safe[name] for level in window):
                out[name] = window
        return out


def tell(case: Case, tmp_path: Path) -> Story:
    """Bring a real node into the case's step, open the stop, close it, `reset`; keep the evidence."""
    fifo = tmp_path / "scanner.fifo"
    os.mkfifo(fifo)
    machines = {device: make().start() for device, make in case.machines}
    try:
        return _tell(case, tmp_path, fifo, machines)
    finally:
        for machine in machines.values():
            machine.close()


def _tell(case: Case, tmp_path: Path, fifo: Path, machines: dict[str, Any]) -> Story:
    station = load_station(example_station(case.kind, tmp_path, scanner_fifo=fifo, bench=True,
                                           ports={d: m.port for d, m in machines.items()}))
    node = Node(station, LINE, tick=TICK_S)
    outputs = [name for name, d in station.hardware.items() if d.type == "digital_output"]
    safe = {name: bool(station.hardware[name].safe_state) == bool(station.hardware[name].active_high)
            for name in outputs}  # the pin level of the safe state: an active-low "on" is a low pin
    marks: dict[str, dict[str, int]] = {}
    ledger: dict[str, list[Event]] = {}
    with running(node):
        bench = Bench(node, Ticks(node), machines=machines)
        pins = {name: node.board.outputs[name].device.pin for name in outputs}

        def mark(phase: str) -> None:
            marks[phase] = {name: len(pin.states) for name, pin in pins.items()}
            ledger[phase] = bench.ledger()

        if node.board.scanners:
            bench.scanner = os.open(fifo, os.O_WRONLY)
        try:
            case.bring(bench)
            estop = bench.pin("estop")
            bench.ticks.wait(2)
            mark("trip")
            before = {name: bool(pin.state) for name, pin in pins.items()}
            estop.drive_high()  # the loop opens: the stop is pressed (its callback runs in this call)
            at_trip = {name: bool(pin.state) for name, pin in pins.items()}
            wait_for(lambda: node.state == "estop")
            bench.ticks.wait()
            reset_while_open = bench.console("reset")
            case.while_open(bench)
            bench.ticks.wait()
            mark("release")
            estop.drive_low()  # the loop is closed again: released, not reset
            wait_for(lambda: "released" in (node.reason or ""))
            bench.ticks.wait()
            mark("reset")
            reset = bench.console("reset")
            bench.ticks.wait(2)
            case.after_reset(bench)
            bench.ticks.wait(2)
            mark("end")
            final = bench.job()
        finally:
            if bench.scanner is not None:
                os.close(bench.scanner)
        histories = {name: pin_history(node.board.outputs[name]) for name in outputs}
    return Story(case, safe, station.station.lights.get("red"), before, at_trip, marks, histories, ledger,
                 reset_while_open, reset, final)


@pytest.fixture(scope="module")
def story(tmp_path_factory) -> Callable[[Case], Story]:
    """Each case told once for the module, on first use, and read by every test of it."""
    told: dict[str, Story] = {}

    def get(case: Case) -> Story:
        if case.id not in told:
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("GPIOZERO_PIN_FACTORY", "mock")
                mp.setattr("edge.engine.time", LampClock)
                told[case.id] = tell(case, tmp_path_factory.mktemp(case.id))
        return told[case.id]
    return get


def cases(bugs: dict[str, str] | None = None) -> list[Any]:
    """Every case, each its own test id; the ones with a known bug marked strict xfail."""
    bugs = bugs or {}
    return [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=bugs[c.id])] if c.id in bugs
                         else []) for c in CASES]


# ---------------------------------------------------------------- outputs

@pytest.mark.parametrize("case", cases())
def test_every_output_is_at_its_safe_level_the_moment_the_stop_opens(story, case):
    told = story(case)
    assert {n for n in case.live if told.before[n] == told.safe[n]} == set(), "the step was not active"
    assert {n: level for n, level in told.at_trip.items() if level != told.safe[n]} == {}


@pytest.mark.parametrize("case", cases())
def test_nothing_leaves_its_safe_state_while_the_stop_is_open(story, case):
    told = story(case)
    assert told.left_safe("trip", "release") == {}
    assert not told.reset_while_open.ok and "safety circuit still open: estop" in told.reset_while_open.error


@pytest.mark.parametrize("case", cases())  # a visitor's green flash set before the stop included
def test_nothing_but_the_red_lamp_comes_on_after_release_until_reset(story, case):
    told = story(case)
    assert told.left_safe("release", "reset", but=(told.stop_lamp,) if told.stop_lamp else ()) == {}
    assert told.reset.ok and "emergency stop" in told.reset.result["cleared"]


# ---------------------------------------------------------------- the jobs

@pytest.mark.parametrize("case", cases())  # a generic step whose dwell ran out while stopped included
def test_nothing_is_recorded_while_the_station_is_stopped(story, case):
    told = story(case)
    new = [e for e in told.ledger["reset"] if e not in told.ledger["trip"]]
    # a G-code station notes the hold itself (its outputs were cut first): nothing else
    assert [(e.type, dict(e.data)) for e in new if not (e.type == "step_progress" and e.data.get("held"))] == []


@pytest.mark.parametrize("case", cases())
def test_the_jobs_keep_every_event_and_no_step_starts_twice(story, case):
    told = story(case)
    final = told.ledger["end"]
    for phase in PHASES:
        assert [e for e in told.ledger[phase] if e not in final] == [], f"lost after {phase}"
    starts = Counter((e.job, e.type, e.step, e.data.get("to")) for e in final
                     if e.type in ("step_started", "step_done")
                     or (e.type, e.step) == ("step_arrived", "transfer"))  # a conveyor move starts so
    assert {k: n for k, n in starts.items() if n > 1} == {}
    if not case.settled:
        assert final == []  # a refused scan records nothing, before, during or after the stop
        return
    assert told.final is not None and not told.final.conflicts
    got = {**{s.step: s.status for s in told.final.steps}, "position": told.final.position,
           "status": told.final.status}
    assert {k: got.get(k) for k in case.settled} == case.settled
