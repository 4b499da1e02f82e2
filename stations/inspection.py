"""Inspection: a camera checks each part before it is handed over, and keeps its picture.

Pure: events in, actions out (edge.engine); the analysis itself is edge.vision, run by the
engine's `Capture` on a worker thread. A part arrives (the job's position is the inspection, its
step pending); the ring light goes on and the camera takes a frame, in which edge.vision finds
the carrier tray's QR label (is it this job's part?), judges the light and the focus, measures
the body colour in CIELAB against the ordered colour and compares the engraving with the laser's
toolpath for the job's text (where: the line file's `[products.<id>.inspection]`):

    step_started ─▶ Capture ─▶ pass    ─▶ step_done {values, snapshot, sha256}
                            ├▶ retake  ─▶ step_progress {retake, reason} ─▶ Capture again (up to `retakes`)
                            │             then step_failed "no judgeable frame: <reason>" ─▶ reject gate
                            └▶ reject  ─▶ step_failed {reason, values} ─▶ reject gate (the chute)
                                          or, when the line file says so (`redo`), back to the
                                          station that makes it again: step_failed {redo: laser}

Every measured value goes into the ledger event; each frame is kept as a JPEG with the job
(`jobs/<job>/inspection-<ms>.jpg`, its sha256 in the event) with an annotated copy for people;
old snapshots rotate out under `snapshot_budget_mb`, never those of open jobs. A camera that
gives no frame is a retake with its reason; after the last, the step fails and the node goes on.

`[station]` keys (besides `kind`, `title` and the lamps):
    camera              the camera device (default: "camera", or the only camera declared)
    reject_gate         a digital_output sending the part down the reject chute (default
                        "reject_gate" when declared); opened for `reject_s` seconds (default 3)
    light               the ring light, on while the camera looks (default "ring_light" when declared)
    calibration         a file written by `edge inspection calibrate`: the colours as this
                        camera sees them, and their tolerances (default: the line file's nominal
                        colours); missing: the nominal colours, and the status says so
    retakes             frames taken again after a frame that cannot be judged (default 3)
    min_engraving       the engraving score (0..1) a part needs (default edge.vision's)
    font                the laser's font, to draw the expected engraving (default "futural")
    snapshot_budget_mb  disk the snapshots may take (default 500)
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge.config import LineConfig, Product
from edge.configfile import Section
from edge.engine import (
    Action,
    Boot,
    Capture,
    Captured,
    Drive,
    Event,
    Flash,
    LedgerChanged,
    Record,
    Resumed,
    SafetyChanged,
    StationInfo,
    Tell,
    Tick,
    View,
    check_hardware,
)
from edge.ledger import JobState
from firmware_bridge.engrave import FONTS, EngravingArea, LaserMaterial, engrave

STEP = "inspection"
COUNTERS = ("inspected", "passed", "rejected", "redone", "retakes", "camera_errors")


@dataclass(frozen=True)
class InspectionOptions:
    camera: str | None = None
    reject_gate: str | None = None
    light: str | None = None
    calibration: Path | None = None
    retakes: int = 3
    reject_s: int = 3
    min_engraving: float | None = None
    font: str = "futural"
    snapshot_budget_mb: int = 500


def read_config(s: Section) -> InspectionOptions:
    camera = s.get_str("camera", None)
    gate = s.get_str("reject_gate", None)
    light = s.get_str("light", None)
    calibration = s.get_path("calibration", None)
    retakes = s.get_int("retakes", 3, 0, 10)
    reject_s = s.get_int("reject_s", 3, 1, 60)
    score = s.get("min_engraving", (int, float), "a score from 0 to 1", None)
    if score is not None and not 0 <= score <= 1:
        s.issue("min_engraving", f"{score} is out of range 0..1")
        score = None
    font = s.get_str("font", "futural", choices=FONTS)
    budget = s.get_int("snapshot_budget_mb", 500, 1, 1_000_000)
    return InspectionOptions(camera, gate, light, calibration, 3 if retakes is None else retakes,
                             reject_s or 3, score, font or "futural", budget or 500)


def hardware(options: InspectionOptions) -> list[tuple[str, str | None, str]]:
    """The devices the keys name, with the type each must be (checked by `edge check-config`)."""
    return [("camera", options.camera, "camera"), ("reject_gate", options.reject_gate, "digital_output"),
            ("light", options.light, "digital_output")]


def load_calibration(path: Path) -> dict[str, tuple[tuple[float, float, float], float]]:
    """A calibration file -> {colour: (lab, tolerance)}; ValueError naming what is wrong."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"calibration {path}: {exc}") from exc
    out = {}
    colours = doc.get("colours", {})
    if not isinstance(colours, dict):
        raise ValueError(f"calibration {path}: [colours] must be a table")
    for name, entry in colours.items():
        lab = entry.get("lab") if isinstance(entry, dict) else None
        tolerance = entry.get("tolerance") if isinstance(entry, dict) else None
        if (not isinstance(lab, list) or len(lab) != 3
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in lab)):
            raise ValueError(f"calibration {path}: colours.{name}.lab must be [L, a, b], not {lab!r}")
        if not isinstance(tolerance, int | float) or isinstance(tolerance, bool) or not 0 < tolerance <= 100:
            raise ValueError(f"calibration {path}: colours.{name}.tolerance must be a ΔE in 0..100, not {tolerance!r}")
        out[name] = ((float(lab[0]), float(lab[1]), float(lab[2])), float(tolerance))
    return out


@dataclass
class Look:
    """The part under the camera now."""

    job: str
    attempt: int  # the step's attempt (a redo is a new one)
    take: int = 1  # frames taken for this attempt
    interrupted: bool = False  # a stop came while the camera looked: look again after the reset


@dataclass
class Inspection:
    options: InspectionOptions
    info: StationInfo
    calibration: dict[str, tuple[tuple[float, float, float], float]] = field(default_factory=dict)
    calibration_note: str = ""
    looking: Look | None = None
    gate_until: float | None = None
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    last: dict[str, Any] | None = None

    def handle(self, event: Event, view: View) -> list[Action]:
        if isinstance(event, Boot):
            return self._boot(view)
        if isinstance(event, SafetyChanged):
            if event.tripped and self.looking is not None:
                self.looking.interrupted = True
            return self._gate(False, view) if event.tripped else []
        if isinstance(event, Captured):
            return self._captured(event, view)
        if isinstance(event, Tick) and self.gate_until is not None and view.now >= self.gate_until:
            return [*self._gate(False, view), *self._next(view)]
        if isinstance(event, (Tick, LedgerChanged, Resumed)):
            return self._next(view)
        return []

    # -- starting
    def _next(self, view: View) -> list[Action]:
        look = self.looking
        if look is not None:
            state = view.jobs.get(look.job)
            step = state.step(STEP) if state is not None else None
            if step is None or step.status != "running" or step.node != view.node:
                self.looking = None  # an operator took it over (done, skipped) or the job closed
                return [*self._light(False), Tell(f"job {look.job}: inspection taken over elsewhere", ok=False)]
            if look.interrupted and not view.stopped and view.mode == "auto":
                look.interrupted = False
                return [*self._light(True), self._capture(look, view)]
            return []
        if view.stopped or view.mode != "auto" or self.gate_until is not None:
            return []  # the gate still open: the rejected part is on its way down the chute
        for job, state in view.jobs.items():
            step = state.step(STEP)
            if step is not None and step.status == "pending" and state.next_step == STEP and state.position == STEP:
                self.looking = Look(job, step.attempts + 1)
                self.counters["inspected"] += 1
                return [Record(job, "step_started", {"step": STEP, "auto": True}), *self._light(True),
                        self._capture(self.looking, view), Tell(f"job {job}: inspecting")]
        return []

    def _capture(self, look: Look, view: View) -> Capture:
        state = view.jobs[look.job]
        name = f"inspection-{int(view.now * 1000)}"
        expected, layout, thresholds, problem = self._expected(state, view)

        def look_at(frame: Any) -> tuple[dict[str, Any], dict[str, Any]]:
            from edge import vision

            if problem:
                finding = vision.Finding("reject", problem, "setup", {}, {})
            else:
                finding = vision.inspect(frame, expected, layout, thresholds)
            result = {"verdict": finding.verdict, "reason": finding.reason, "check": finding.check,
                      "values": plain(finding.values)}
            return result, {f"{name}.jpg": frame, f"{name}-annotated.jpg": vision.annotate(frame, finding)}

        return Capture(self.options.camera or "camera", look.job, look_at, keep=frozenset(view.jobs),
                       budget_mb=self.options.snapshot_budget_mb)

    def _expected(self, state: JobState, view: View) -> tuple[Any, Any, Any, str]:
        """What this job's part must look like: (Expected, Layout, Thresholds, problem), where a
        problem (the line file cannot say what to expect) fails the part with that reason."""
        from edge import vision

        thresholds = vision.Thresholds()
        if self.options.min_engraving is not None:
            thresholds = replace(thresholds, min_engraving=float(self.options.min_engraving))
        line = view.line
        product = line.products.get(state.product) if line is not None else None
        labels = tuple(t for t in (state.carrier, state.job) if t)
        if line is None or product is None or product.inspection is None:
            return (vision.Expected(labels), vision.Layout(16.0, (0, 0, 1, 1), (0, 0, 1, 1)), thresholds,
                    f"product {state.product!r} has no [products.{state.product}.inspection] in the line file")
        spec = product.inspection
        options = order_options(state)
        refs = {name: self._reference(name, c.srgb, c.tolerance) for name, c in line.colours.items()}
        colour, problem = None, ""
        if spec.colour_region is not None:
            wanted = ordered_colour(product, options)
            colour = refs.get(wanted) if wanted is not None else None
            if colour is None:
                problem = f"colour {wanted!r} is not in the line file's [colours]"
        strokes = None
        if spec.engraving_at is not None:
            try:
                strokes = expected_strokes(product, options, line, self.options.font)
            except ValueError as exc:
                problem = problem or f"cannot draw the expected engraving: {exc}"
        others = tuple(r for n, r in refs.items() if colour is None or n != colour.name)
        return vision.Expected(labels, colour, strokes, others), product_layout(product), thresholds, problem

    def _reference(self, name: str, srgb: str, tolerance: float) -> Any:
        from edge import vision

        if name in self.calibration:
            lab, tol = self.calibration[name]
            return vision.ColourRef(name, lab, tol)
        return vision.ColourRef.of_hex(name, srgb, tolerance)

    # -- deciding
    def _captured(self, event: Captured, view: View) -> list[Action]:
        look = self.looking
        if look is None or event.job != look.job:
            return []
        if look.interrupted or view.stopped:
            look.interrupted = True  # judged again after the reset: a stop is no verdict
            return []
        snapshot = self._snapshot(event.files)
        if not event.ok:
            self.counters["camera_errors"] += 1
            verdict, reason, check, values = "retake", f"camera: {event.error}", "camera", {}
        else:
            result = event.result
            verdict, reason = str(result.get("verdict", "retake")), str(result.get("reason", ""))
            check, values = str(result.get("check", "")), dict(result.get("values") or {})
        self.last = {"job": look.job, "verdict": verdict, "reason": reason, "values": values, **snapshot}
        if verdict == "pass":
            return self._pass(look, values, snapshot)
        if verdict == "retake" and look.take <= self.options.retakes:
            look.take += 1
            self.counters["retakes"] += 1
            return [Record(look.job, "step_progress", {"step": STEP, "retake": look.take - 1, "reason": reason,
                                                       **snapshot}),
                    Tell(f"job {look.job}: taking another picture ({reason})", ok=False),
                    self._capture(look, view)]
        if verdict == "retake":
            reason = f"no judgeable frame after {look.take} tries: {reason}"
        return self._reject(look, check, reason, values, snapshot, view)

    @staticmethod
    def _snapshot(files: Any) -> dict[str, Any]:
        paths = sorted(files)
        shot = next((p for p in paths if not p.endswith("-annotated.jpg")), None)
        if shot is None:
            return {}
        out = {"snapshot": shot, "sha256": files[shot]}
        annotated = next((p for p in paths if p.endswith("-annotated.jpg")), None)
        if annotated is not None:
            out["annotated"] = annotated
        return out

    def _pass(self, look: Look, values: dict[str, Any], snapshot: dict[str, Any]) -> list[Action]:
        self.looking = None
        self.counters["passed"] += 1
        return [Record(look.job, "step_done", {"step": STEP, "verdict": "pass", "takes": look.take,
                                               "values": values, **snapshot}),
                *self._light(False), Flash("green"), Tell(f"job {look.job}: inspection passed")]

    def _reject(self, look: Look, check: str, reason: str, values: dict[str, Any], snapshot: dict[str, Any],
                view: View) -> list[Action]:
        self.looking = None
        state = view.jobs.get(look.job)
        data: dict[str, Any] = {"step": STEP, "verdict": "reject", "check": check, "reason": reason,
                                "takes": look.take, "values": values, **snapshot}
        redo = self._redo(state, check, view)
        if redo is not None:
            self.counters["redone"] += 1
            return [Record(look.job, "step_failed", {**data, "redo": redo}), *self._light(False), Flash("amber"),
                    Tell(f"job {look.job}: {reason}: back to the {redo} to be made again", ok=False)]
        self.counters["rejected"] += 1
        return [Record(look.job, "step_failed", data), *self._light(False), *self._gate(True, view),
                Flash("red"), Tell(f"job {look.job}: rejected: {reason}", ok=False)]

    def _redo(self, state: JobState | None, check: str, view: View) -> str | None:
        """The step that makes the part again after `check` failed, if the line file names one and
        the job has not been sent back to it `max_redos` times already."""
        line = view.line
        product = line.products.get(state.product) if line is not None and state is not None else None
        spec = getattr(product, "inspection", None)
        if state is None or spec is None or check not in spec.redo:
            return None
        step = state.step(spec.redo[check])
        if step is None or step.status != "done" or step.attempts > spec.max_redos:
            return None
        return step.step

    # -- outputs
    def _light(self, on: bool) -> list[Action]:
        return [Drive(self.options.light, on)] if self.options.light else []

    def _gate(self, open_: bool, view: View) -> list[Action]:
        if not self.options.reject_gate:
            return []
        if open_:
            self.gate_until = view.now + self.options.reject_s
        elif self.gate_until is None:
            return []
        else:
            self.gate_until = None
        return [Drive(self.options.reject_gate, open_)]

    def _boot(self, view: View) -> list[Action]:
        """After a power cut, a part this node was inspecting is looked at again from the start:
        looking harms nothing, and the frame before the cut may never have been judged."""
        actions: list[Action] = [*self._light(False)]
        if self.options.reject_gate:
            actions.append(Drive(self.options.reject_gate, False))
        for job, state in view.jobs.items():
            step = state.step(STEP)
            if step is not None and step.status == "running" and step.node == view.node and self.looking is None:
                self.looking = Look(job, step.attempts, interrupted=True)
                actions += [Record(job, "step_progress", {"step": STEP, "resumed": True}),
                            Tell(f"job {job}: inspection cut by a restart; looking again")]
        return [*actions, *self._next(view)]

    def get_status(self) -> dict[str, Any]:
        look = self.looking
        return {"inspecting": {"job": look.job, "take": look.take} if look else None,
                "reject_gate_open": self.gate_until is not None, "last": self.last,
                "calibration": self.calibration_note, "counters": dict(self.counters)}


def plain(value: Any) -> Any:
    """A measured value as the ledger takes it: JSON, no NaN or infinity (those become None)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:  # a numpy number
        return plain(value.item())
    except AttributeError:
        return str(value)


# ---------------------------------------------------------------- what a part looks like (the world renders it too)

def order_options(state: JobState) -> dict[str, Any]:
    options = state.order.get("options", {}) if isinstance(state.order, dict) else {}
    return options if isinstance(options, dict) else {}


def ordered_colour(product: Product, options: dict[str, Any]) -> str | None:
    """The body colour of an order: its colour option, or the option's default."""
    spec = product.inspection
    name = spec.colour_option if spec is not None else "colour"
    wanted = options.get(name)
    if wanted is None:
        option = product.options.get(name)
        wanted = option.default if option is not None else None
    return wanted if isinstance(wanted, str) else None


def product_layout(product: Product) -> Any:
    """Where the camera finds the label, the colour and the engraving on a product (edge.vision.Layout)."""
    from edge import vision

    spec = product.inspection
    if spec is None:
        raise ValueError(f"product {product.id!r} has no [products.{product.id}.inspection]")
    engraving = (0.0, 0.0, 1.0, 1.0)
    if spec.engraving_at is not None and product.engraving is not None:
        engraving = (*spec.engraving_at, product.engraving.width_mm, product.engraving.height_mm)
    return vision.Layout(spec.label_mm, spec.colour_region or (0.0, 0.0, 1.0, 1.0), engraving)


def expected_strokes(product: Product, options: dict[str, Any], line: LineConfig,
                     font: str = "futural") -> tuple[Any, ...] | None:
    """The laser's toolpath for an order's text (what the engraving must look like); () when no
    text was ordered (the area must be blank), None when the product is not engraved; ValueError
    when the text cannot be engraved."""
    area = product.engraving
    if area is None:
        return None
    text = options.get(area.text_option, "")
    if not isinstance(text, str):
        raise ValueError(f"option {area.text_option!r} is not a text")
    if not text.strip():
        return ()
    material = line.materials.get(area.material)
    if material is None:
        raise ValueError(f"material {area.material!r} is not in the line file")
    return engrave(text, EngravingArea.of(area), LaserMaterial.of(material), font).strokes


def camera_of(options: InspectionOptions, hardware: dict[str, str]) -> str:
    """The camera the station looks through: the one named, else "camera", else the only one."""
    if options.camera:
        return options.camera
    cameras = [name for name, kind in hardware.items() if kind == "camera"]
    return "camera" if "camera" in cameras or len(cameras) != 1 else cameras[0]


def machine(options: InspectionOptions | None, info: StationInfo) -> Inspection:
    options = options or InspectionOptions()
    hw = dict(info.hardware)
    options = replace(options, camera=camera_of(options, hw))
    if options.reject_gate is None and hw.get("reject_gate") == "digital_output":
        options = replace(options, reject_gate="reject_gate")
    if options.light is None and hw.get("ring_light") == "digital_output":
        options = replace(options, light="ring_light")
    check_hardware(hardware(options), info)
    calibration: dict[str, tuple[tuple[float, float, float], float]] = {}
    note = "not calibrated: the line file's nominal colours"
    if options.calibration is not None:
        if options.calibration.exists():
            calibration = load_calibration(options.calibration)  # a bad file: a station fault, said at start
            note = f"{options.calibration} ({', '.join(sorted(calibration)) or 'no colours'})"
        else:
            note = f"not calibrated: no {options.calibration} yet (`edge inspection calibrate`)"
    return Inspection(options, info, calibration, note)
