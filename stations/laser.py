"""Laser: engraves the visitor's text on their stand, through a GRBL controller.

Pure: events in, actions out (edge.engine). A part arrives (the job's position is the laser,
its step pending); the text of the order (the product's `text_option`) is laid out in the
product's engraving area with the material's power and feed (line file:
`[products.<id>.engraving]`, `[materials.<id>]`; firmware_bridge.engrave), and:

    step_started {lines, text, preview}  ─▶ enable relay + extractor on ─▶ Stream (worker thread)
    StreamProgress ─▶ step_progress {percent, line} every `progress_percent`
    StreamEnded ok ─▶ relays off, step_done       failed ─▶ relays off, step_failed {reason, resume_at}

A text it cannot engrave (a character the font lacks, too long for the area, empty): the step
fails with the reason, nothing burns. The lid (a door interlock) or the e-stop opening: the node
drops every relay and puts GRBL in feed hold at once, from the input's own callback; the job is
held (`step_progress {held}`), and goes on from where it stopped only when an operator types
`resume` (the engine's `Resumed`). A failed job (alarm, refused line, unplugged, a power cut of
the node: at `Boot`) is never burned again from the start by itself: `retry` at the console
starts it again from its `resume_at` line (the streamer replays the modal state first).

`[station]` keys (besides `kind`, `title` and the lamps):
    grbl              the GRBL controller, a `serial` device with protocol "grbl" (default: the
                      device named "grbl" if declared; a laser station with no GRBL at all is
                      driven by hand and runs the generic station, see docs/stations.md)
    enable            a digital_output relay in series with the laser's power (default
                      "laser_enable" when declared)
    extractor         a digital_output for the fume extractor (default "fume_extractor" when declared)
    font              the single-stroke Hershey font (default "futural")
    check             run the job through GRBL's check mode before burning (default false)
    progress_percent  a `step_progress` event every this many percent (default 10)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge.configfile import Section
from edge.engine import (
    Action,
    Boot,
    Drive,
    Event,
    Flash,
    Hold,
    LedgerChanged,
    PassThrough,
    Realtime,
    Record,
    Resumed,
    SafetyChanged,
    StationInfo,
    Stream,
    StreamEnded,
    StreamProgress,
    Tell,
    Tick,
    View,
    WriteFile,
    check_hardware,
)
from edge.ledger import JobState
from firmware_bridge.engrave import FONTS, EngravingArea, LaserMaterial, engrave, preview_png
from firmware_bridge.gcode import PLANNER_BLOCKS

STEP = "laser"

PLANNER_LINES = PLANNER_BLOCKS + 1  # lines GRBL answered that may not have burned yet


@dataclass(frozen=True)
class LaserOptions:
    grbl: str | None = None
    enable: str | None = None
    extractor: str | None = None
    font: str = "futural"
    check: bool = False
    progress_percent: int = 10


def read_config(s: Section) -> LaserOptions:
    grbl = s.get_str("grbl", None)
    enable = s.get_str("enable", None)
    extractor = s.get_str("extractor", None)
    font = s.get_str("font", "futural")
    check = s.get_bool("check", False)
    percent = s.get_int("progress_percent", 10, 1, 100)
    if font is not None and font not in FONTS:
        s.issue("font", f"{font!r} is not one of {', '.join(FONTS)}")
    return LaserOptions(grbl, enable, extractor, font or "futural", bool(check), percent or 10)


def hardware(options: LaserOptions) -> list[tuple[str, str | None, str]]:
    """The devices the keys name, with the type each must be (checked by `edge check-config`)."""
    return [("grbl", options.grbl, "serial"), ("enable", options.enable, "digital_output"),
            ("extractor", options.extractor, "digital_output")]


@dataclass
class Burn:
    """The job on the laser now."""

    job: str
    total: int
    start: int
    last_percent: int = 0
    held: bool = False


@dataclass
class Laser:
    options: LaserOptions
    info: StationInfo
    burning: Burn | None = None
    counters: dict[str, int] = field(default_factory=lambda: {"engraved": 0, "failed": 0, "held": 0,
                                                              "refused_texts": 0})
    last: dict[str, Any] | None = None

    @property
    def grbl(self) -> str:
        return self.options.grbl or "grbl"

    @property
    def relays(self) -> tuple[str, ...]:
        return tuple(d for d in (self.options.enable, self.options.extractor) if d)

    def handle(self, event: Event, view: View) -> list[Action]:
        if isinstance(event, Boot):
            return self._boot(view)
        if isinstance(event, SafetyChanged):
            return self._safety(event.tripped)
        if isinstance(event, Hold) and event.device == self.grbl:
            return [*self._relays(False), *self._safety(True)]
        if isinstance(event, StreamProgress):
            return self._progress(event)
        if isinstance(event, StreamEnded):
            return self._ended(event)
        if isinstance(event, Resumed) and self.burning is not None and self.burning.held:
            return self._resume()
        if isinstance(event, (Tick, LedgerChanged, Resumed)):
            return self._next(view)
        return []

    # -- starting
    def _next(self, view: View) -> list[Action]:
        if self.burning is not None:
            state = view.jobs.get(self.burning.job)
            step = state.step(STEP) if state is not None else None
            if step is None or step.status != "running" or step.node != view.node:
                return [Realtime(self.grbl, "hold"), *self._relays(False),
                        Tell(f"job {self.burning.job}: its laser step was taken over elsewhere: held", ok=False)]
            return []
        if view.stopped or view.mode != "auto":
            return []
        for job, state in view.jobs.items():
            step = state.step(STEP)
            if step is not None and step.status == "pending" and state.next_step == STEP and state.position == STEP:
                return self._start(job, state, step.resume_at, view)
        return []

    def _start(self, job: str, state: JobState, resume_at: int, view: View) -> list[Action]:
        try:
            area, material, text = self._what(state, view)
            engraving = engrave(text, area, material, self.options.font)
        except ValueError as exc:
            self.counters["refused_texts"] += 1
            reason = f"cannot engrave: {exc}"
            return [Record(job, "step_failed", {"step": STEP, "reason": reason}), Flash("red"),
                    Tell(f"job {job}: {reason}", ok=False)]
        gcode = tuple(engraving.gcode)
        start = min(resume_at, len(gcode))
        preview = f"jobs/{job}/laser-preview.png"
        self.burning = Burn(job, len(gcode), start)
        self.last = {"job": job, "text": text, "lines": len(gcode), "preview": preview}
        data: dict[str, Any] = {"step": STEP, "auto": True, "text": text, "lines": len(gcode), "preview": preview,
                                "letter_height_mm": round(engraving.letter_height_mm, 2)}
        if start:
            data["resume_from"] = start
        return [Record(job, "step_started", data),
                WriteFile(preview, lambda path: preview_png(engraving, area, path)),
                *self._relays(True),
                Stream(self.grbl, job, gcode, start, safe=self.relays, check=self.options.check),
                Tell(f"job {job}: engraving {text!r}" + (f" from line {start + 1}" if start else ""))]

    def _what(self, state: JobState, view: View) -> tuple[EngravingArea, LaserMaterial, str]:
        """The engraving area, the material and the text of a job, from the line file."""
        line = view.line
        product = line.products.get(state.product) if line is not None else None
        spec = getattr(product, "engraving", None)
        if product is None or spec is None:
            raise ValueError(f"product {state.product!r} has no engraving area in the line file")
        material = line.materials.get(spec.material) if line is not None else None
        if material is None:
            raise ValueError(f"material {spec.material!r} is not in the line file")
        options = state.order.get("options", {}) if isinstance(state.order, dict) else {}
        text = options.get(spec.text_option, "")
        if not isinstance(text, str):
            raise ValueError(f"option {spec.text_option!r} is not a text")
        return EngravingArea.of(spec), LaserMaterial.of(material), text

    def _relays(self, on: bool) -> list[Action]:
        return [Drive(device, on) for device in self.relays]

    # -- running
    def _progress(self, event: StreamProgress) -> list[Action]:
        burn = self.burning
        if burn is None or event.job != burn.job or not event.total:
            return []
        percent = event.done * 100 // event.total
        if percent < burn.last_percent + self.options.progress_percent or percent >= 100:
            return []
        burn.last_percent = percent - percent % self.options.progress_percent
        return [Record(burn.job, "step_progress", {"step": STEP, "percent": percent, "line": event.done})]

    def _ended(self, event: StreamEnded) -> list[Action]:
        burn = self.burning
        if burn is None or event.job != burn.job:
            return []
        self.burning = None
        if event.ok:
            self.counters["engraved"] += 1
            return [*self._relays(False), Record(burn.job, "step_done", {"step": STEP, "lines": burn.total}),
                    Tell(f"job {burn.job}: engraved")]
        self.counters["failed"] += 1
        data: dict[str, Any] = {"step": STEP, "reason": f"engraving stopped: {event.reason}",
                                "resume_at": event.executed}
        if event.refused:
            data["refused"] = [n + 1 for n in event.refused]
        return [*self._relays(False), Record(burn.job, "step_failed", data), Flash("red"),
                Tell(f"job {burn.job}: engraving stopped at line {event.executed + 1}: {event.reason} "
                     f"(`retry {burn.job}` goes on from there)", ok=False)]

    # -- stops
    def _safety(self, tripped: bool) -> list[Action]:
        burn = self.burning
        if not tripped or burn is None or burn.held:
            return []
        burn.held = True  # the node held GRBL and dropped the relays already, from the callback
        self.counters["held"] += 1
        return [Record(burn.job, "step_progress", {"step": STEP, "held": True}),
                Tell(f"job {burn.job}: engraving held (hold, lid or emergency stop); `resume` when safe", ok=False)]

    def _resume(self) -> list[Action]:
        burn = self.burning
        assert burn is not None
        burn.held = False
        return [*self._relays(True), Realtime(self.grbl, "resume"),
                Record(burn.job, "step_progress", {"step": STEP, "held": False}),
                Tell(f"job {burn.job}: engraving resumed")]

    def _boot(self, view: View) -> list[Action]:
        """A step this node was burning when it went down is failed, never started again: the
        resume point is the last line reported less what GRBL may not have burned yet."""
        actions: list[Action] = [*self._relays(False)]
        for job, state in view.jobs.items():
            step = state.step(STEP)
            if step is None or step.status != "running" or step.node != view.node:
                continue
            resume = max(0, step.line - PLANNER_LINES)
            actions += [Record(job, "step_failed", {"step": STEP, "reason": "interrupted: node restarted",
                                                    "resume_at": resume}),
                        Tell(f"job {job}: engraving cut by a restart; `retry {job}` goes on from line "
                             f"{resume + 1}", ok=False)]
        return actions

    def required_settings(self) -> dict[str, tuple[dict[int, str], str]]:
        """What the engine checks on the controller at start: GRBL's laser mode, without
        which every rapid move between letters would burn a line."""
        return {self.grbl: ({32: "1"}, "laser mode: the laser is off during rapid moves")}

    def get_status(self) -> dict[str, Any]:
        burn = self.burning
        return {"engraving": {"job": burn.job, "lines": burn.total, "held": burn.held,
                              "percent": burn.last_percent} if burn else None,
                "last": self.last, "counters": dict(self.counters)}


def machine(options: LaserOptions | None, info: StationInfo) -> Laser | PassThrough:
    """The laser machine; with no GRBL named or declared, the generic station (by hand)."""
    from dataclasses import replace

    options = options or LaserOptions()
    hw = dict(info.hardware)
    if options.grbl is None:
        if hw.get("grbl") != "serial":
            return PassThrough.of(info)
        options = replace(options, grbl="grbl")
    if options.enable is None and hw.get("laser_enable") == "digital_output":
        options = replace(options, enable="laser_enable")
    if options.extractor is None and hw.get("fume_extractor") == "digital_output":
        options = replace(options, extractor="fume_extractor")
    check_hardware(hardware(options), info)
    return Laser(options, info)
