"""The world around a simulated node: what its outputs do to the parts and people at the station.

A node on mock pins drives outputs nobody sees and waits for inputs nobody changes. `edge run
--world` puts a small physical world behind those pins, so a simulated line runs by itself:

    transfer  the belt: while the conveyor output is on, the carrier the transfer released
              travels one beam every SEGMENT_S seconds (backwards while the direction output
              is on; round the loop after the last beam without one) and breaks each beam it
              passes for PULSE_S. A carrier starts at the belt's start (from the intake) unless
              the world last saw it, on the same job, at a beam.
    pickup    the visitor: every locker door starts shut; a lock released for the visitor is
              opened VISITOR_S later, the stand taken, the door shut again TAKE_S after that.
    printer   the bed reads clear (`bed_clear`): each print is taken off at once.
    inspection  the camera: each frame is rendered (edge.sim.parts) from the part the station is
              looking at, in its carrier tray: the carrier's QR label, the ordered colour, the
              laser's strokes for the ordered text, turned and shifted a little, with some noise
              and a lamp that varies, as a real tray never lies twice the same. `defect(kind)`
              spoils what comes next: "wrong_colour" or "no_engraving" (the next part), "dark",
              "blurred" or "no_label" (the next frame only).

The world only reads outputs and drives inputs, like the wiring it stands for; which carrier
rides the belt is the one fact it takes from the transfer (physically, the one its gate let go).
`jam()` makes the next carrier stick where it is (a fault to try the jam detection on).
`speed` runs the world that many times faster (belt, visitors). `clock_skew_s` sets the node's wall clock off by that much (`edge run --world --clock-skew -3600`:
a Pi without a real-time clock, booted after a power cut with the time it last saved).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Any

from edge.hw.gpio import HardwareError, is_mock

if TYPE_CHECKING:
    from edge.node import Node

log = logging.getLogger(__name__)
SEGMENT_S = 1.0
PULSE_S = 0.15
VISITOR_S = 1.0
TAKE_S = 1.5
STEP_S = 0.02
PART_DEFECTS = ("wrong_colour", "no_engraving")
FRAME_DEFECTS = ("dark", "blurred", "no_label")


class World:
    """The simulated surroundings of one node, on a thread of their own once the pins exist."""

    def __init__(self, node: Node, clock_skew_s: float = 0.0, speed: float = 1.0):
        self.node = node
        self.scale = 1.0 / speed  # `speed` times faster: every delay of the world shorter
        if clock_skew_s:  # a Pi with no RTC boots with its clock wherever it was last saved
            from edge.store import wall_ms

            skew_ms = int(clock_skew_s * 1000)
            node.wall = lambda: wall_ms() + skew_ms
            log.warning("simulated world: this node's wall clock is %+.0f s off (no RTC)", clock_skew_s)
        self.parts: list[Belt | Visitor | Lens] = []
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        node.board_ready.append(self.wire)

    def wire(self) -> None:
        board = self.node.board
        kind = self.node.config.station.kind
        if board.factory is not None and not is_mock(board.factory):
            raise HardwareError("--world simulates the parts around a node on mock pins; this node has real "
                                "pins (set [node] pin_factory = \"mock\" or GPIOZERO_PIN_FACTORY=mock)")
        options = self.node.config.station.options
        if kind == "transfer" and options is not None:
            self.parts.append(Belt(self, options))
        elif kind == "pickup" and options is not None:
            self.parts.append(Visitor(self, options))
        elif kind == "inspection" and options is not None:
            self.parts.append(Lens(self, options))
        bed = getattr(options, "bed_clear", None)
        if kind == "printer" and bed in self.node.board.inputs:
            self.set_input(bed, True)  # the gripper takes each print off at once: the bed reads clear
        if self.parts:
            log.info("simulated world: %s", ", ".join(p.describe() for p in self.parts))
            self.thread = threading.Thread(target=self._run, name="world", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(STEP_S):
            now = time.monotonic()
            for part in self.parts:
                try:
                    part.step(now)
                except Exception:  # a device closed under us at shutdown, or a bug: the node goes on
                    if not self.stopping.is_set() and self.node.running:
                        log.exception("simulated world: %s failed", type(part).__name__)
                    return

    def stop(self) -> None:
        self.stopping.set()

    def jam(self) -> None:
        for part in self.parts:
            if isinstance(part, Belt):
                part.jam_next = True

    def defect(self, kind: str) -> None:
        """Spoil the next part or frame under the inspection camera (see the module docstring)."""
        if kind not in PART_DEFECTS + FRAME_DEFECTS:
            raise ValueError(f"defect {kind!r} is not one of {', '.join(PART_DEFECTS + FRAME_DEFECTS)}")
        for part in self.parts:
            if isinstance(part, Lens):
                part.defects.append(kind)

    # -- the wiring
    def output(self, name: str) -> bool:
        out = self.node.board.outputs.get(name)
        return out is not None and out.value

    def set_input(self, name: str, active: bool) -> None:
        """Make input `name` read `active` (a broken beam, a shut door), whatever its pull."""
        device = self.node.board.inputs[name].device
        pin = device.pin
        if pin is None:  # closed: the node is stopping
            return
        (pin.drive_low if active == device.pull_up else pin.drive_high)()


class Belt:
    """Carriers on the conveyor, breaking the beams at the stations' entries."""

    def __init__(self, world: World, options: Any):
        self.world = world
        self.conveyor: str = options.conveyor
        self.direction: str | None = options.direction
        self.beams: list[str] = [device for _kind, device in options.beams]
        self.where: dict[str, tuple[str, int]] = {}  # carrier -> (job, beam index) where last seen
        self.pulses: dict[str, float] = {}  # beam -> when the passing carrier clears it
        self.move: Any = None
        self.travelled = 0.0
        self.last: float | None = None
        self.jammed = False
        self.jam_next = False
        self.passed = 0

    def describe(self) -> str:
        return f"a belt past {len(self.beams)} beams ({SEGMENT_S * self.world.scale:g} s apart)"

    def step(self, now: float) -> None:
        for beam, until in list(self.pulses.items()):
            if now >= until:
                del self.pulses[beam]
                self.world.set_input(beam, False)
        if not self.world.output(self.conveyor):
            self.last, self.travelled = None, 0.0
            return
        dt, self.last = (0.0 if self.last is None else now - self.last), now
        move = getattr(self.world.node.station, "machine", None)
        move = getattr(move, "move", None)
        if move is None:
            return  # the belt runs empty
        if move is not self.move:  # the transfer let another carrier go
            self.move, self.travelled = move, 0.0
            self.jammed, self.jam_next = self.jam_next, False
        self.travelled += dt
        if self.jammed or self.travelled < SEGMENT_S * self.world.scale:
            return
        self.travelled = 0.0
        job, at = self.where.get(move.carrier, ("", -1))
        if job != move.job:
            at = -1  # a tray back from the pickup, or a new one: at the belt's start
        if self.direction and self.world.output(self.direction):
            if at <= 0:
                return  # pressed against the start of the belt
            at -= 1
        else:
            at = (at + 1) % len(self.beams)
        self.where[move.carrier] = (move.job, at)
        beam = self.beams[at]
        self.passed += 1
        self.pulses[beam] = now + PULSE_S * self.world.scale
        self.world.set_input(beam, True)


class Visitor:
    """Visitors at the pickup lockers: each opens a released locker, takes the stand, shuts it."""

    def __init__(self, world: World, options: Any):
        self.world = world
        self.lockers = list(options.lockers)
        self.plans: dict[str, tuple[str, float]] = {}  # locker -> (what next, when)
        for spec in self.lockers:
            world.set_input(spec.door, True)  # every door shut (reads on while shut)
        self.collected = 0

    def describe(self) -> str:
        return f"a visitor at {len(self.lockers)} locker(s)"

    def step(self, now: float) -> None:
        for spec in self.lockers:
            plan = self.plans.get(spec.name)
            if plan is None:
                if self.world.output(spec.lock):
                    self.plans[spec.name] = ("open", now + VISITOR_S * self.world.scale)
                continue
            what, when = plan
            if now < when:
                continue
            if what == "open":
                if not self.world.output(spec.lock):
                    del self.plans[spec.name]  # locked again before the visitor got there
                    continue
                self.world.set_input(spec.door, False)
                self.plans[spec.name] = ("shut", now + TAKE_S * self.world.scale)
            else:
                self.world.set_input(spec.door, True)
                self.collected += 1
                del self.plans[spec.name]


class Lens:
    """The inspection camera's view, rendered: the board's camera is replaced by one whose frames
    show the part the station is looking at. What each open job's part looks like is read from
    the ledger on the loop thread; a frame is drawn on the capture's thread from that."""

    def __init__(self, world: World, options: Any):
        from edge.hw.camera import Camera

        self.world = world
        node = world.node
        self.font: str = getattr(options, "font", "futural")
        from stations.inspection import camera_of

        self.name = camera_of(options, {n: d.type for n, d in node.config.hardware.items()})
        self.looks: dict[str, dict[str, Any]] = {}  # job -> what its part looks like
        self.seen = threading.Condition()
        self.defects: list[str] = []
        self.spoilt: dict[str, str] = {}  # job -> its part's defect
        self.random = random.Random(7)
        self.frames = 0
        old = node.board.cameras.get(self.name)
        config = node.config.hardware.get(self.name)
        lens = self

        class Rendered(Camera):
            source = "rendered"

            def _capture(self) -> Any:
                return lens.frame(self.resolution)

        if config is None:
            raise HardwareError(f"--world: the inspection's camera [hardware.{self.name}] is not declared")
        if old is not None:
            old.close()
        node.board.cameras[self.name] = Rendered(config)
        node.board.faults.pop(self.name, None)
        node.on("ledger_changed", lambda _e: self.refresh())
        self.refresh()

    @property
    def tray(self) -> Any:
        """The layout of the line's first inspected product: what an empty tray is drawn with."""
        from stations.inspection import product_layout

        line = self.world.node.line
        product = next(p for p in (line.products.values() if line else ()) if p.inspection is not None)
        return product_layout(product)

    def describe(self) -> str:
        return f"a camera over the inspection tray ([hardware.{self.name}], frames rendered from the jobs)"

    def step(self, now: float) -> None:
        pass

    def refresh(self) -> None:
        """On the loop thread: what the parts at the inspection look like."""
        from stations.inspection import expected_strokes, order_options, ordered_colour, product_layout

        node = self.world.node
        line = node.line
        if node.store is None or line is None:
            return
        for state in node.store.open_jobs():
            product = line.products.get(state.product)
            if state.position != "inspection" or product is None or product.inspection is None:
                continue
            options = order_options(state)
            colour = ordered_colour(product, options) or "white"
            try:
                strokes = expected_strokes(product, options, line, self.font)
            except ValueError:
                strokes = None  # the laser refused it: nothing was burnt
            look = {"layout": product_layout(product), "label": state.carrier or state.job,
                    "colour": line.colours[colour].srgb if colour in line.colours else colour,
                    "strokes": strokes, "others": sorted(line.colours)}
            with self.seen:
                self.looks[state.job] = look
                self.seen.notify_all()

    def frame(self, size: tuple[int, int]) -> Any:
        """On the capture's thread: the part being inspected, or an empty tray."""
        from edge.sim.parts import render

        looking = getattr(getattr(self.world.node.station, "machine", None), "looking", None)
        look = None
        if looking is not None:  # a station that started on a tick may be ahead of the ledger event
            with self.seen:  # the world reads on the loop: wait for it to see the part arrive
                self.seen.wait_for(lambda: looking.job in self.looks, timeout=2.0)
                look = self.looks.get(looking.job)
        self.frames += 1
        r = self.random
        scene: dict[str, Any] = {"angle_deg": r.uniform(-6, 6), "offset_mm": (r.uniform(-3, 3), r.uniform(-3, 3)),
                                 "light": r.uniform(0.9, 1.1), "noise": 2.0, "seed": self.frames}
        if look is None:  # an empty tray: no label, a grey pocket where a part would lie
            return render(layout=self.tray, label="", colour="#6a6c70", strokes=None, size=size, **scene)
        job = looking.job
        if job not in self.spoilt:
            part = [d for d in self.defects if d in PART_DEFECTS]
            self.spoilt[job] = part[0] if part else ""
            if part:
                self.defects.remove(part[0])
        look = dict(look)
        others = look.pop("others")
        if self.spoilt[job] == "wrong_colour":
            line = self.world.node.line
            current = next((n for n in others if line is not None and line.colours[n].srgb == look["colour"]), "")
            other = next(n for n in others if n != current)
            look["colour"] = line.colours[other].srgb if line is not None else other
        elif self.spoilt[job] == "no_engraving":
            look["strokes"] = None
        frame_defect = next((d for d in self.defects if d in FRAME_DEFECTS), None)
        if frame_defect is not None:
            self.defects.remove(frame_defect)
            if frame_defect == "dark":
                scene["light"] = 0.05  # the label's white near L* 20: "too dark"
            elif frame_defect == "blurred":
                scene["blur"] = 1.5
            else:
                look["label"] = ""
        return render(size=size, **look, **scene)
