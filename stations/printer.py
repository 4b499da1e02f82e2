"""Printer: a Marlin printer prints the stand's body in the visitor's colour.

Pure: events in, actions out (edge.engine). A part arrives (the job's position is the printer,
its step pending); the job's product and colour (the order's `colour`, else the line file's
default) name a file of the G-code library, read and checked against its manifest, and:

    step_started {file, lines, sha256}  ─▶ Stream (worker thread)
    StreamProgress ─▶ step_progress {percent, line, layer} every `progress_percent` and at each layer
    StreamEnded ok ─▶ step_done         failed ─▶ step_failed {reason, resume_at: that layer's start}

A file that is missing, not in the manifest or not the bytes the manifest lists: the step fails
with the file's name, nothing prints. With a `bed_clear` input a new print starts only while it
reads clear (the last print taken off). A failed print `retry`'d with its part still on the bed
goes on from its `resume_at` (the start of the layer it stopped in, printed again), after a
preamble that heats up again, homes X and Y only (never Z onto the part) and puts the nozzle and
extruder where that line expects them; a cleared bed prints it again from the start.

Filament runout (the `runout` input goes active): the print is held (`Realtime hold`) and the
operator told; `resume` once loaded goes on. A Marlin has no realtime hold: the host stops
sending lines (the few Marlin has queued still print). Should the stream go on anyway (a
driver that cannot hold), the rest is printed without filament: the step fails at its end
with "filament runout", never done.

After a power cut (`Boot` with this node's print running) the step fails by default ("the print
cannot resume", resume_at = the start of the last layer recorded): the operator decides. With
`resume_after_power_cut` it goes on from there by itself if the layer is known, the bed does not
read clear and the bed held its temperature (the printer's M105 at boot, `Boot.readings`; no
answer: "bed temperature unknown after power cut", a failed step too).

The library is read at the edge: `machine()` reads and checks every file once (problems go to
the status and are told at boot); each job start reads its file and the manifest again through
`Library.read` (a file read; tests hand in their own), so a file changed since boot is caught.

    <library>/manifest.toml             [files."stand/red.gcode"] sha256 = "<64 hex digits>"
    <library>/<product>/<colour>.gcode

`[station]` keys (besides `kind`, `title` and the lamps):
    marlin                  the printer, a `serial` device with protocol "marlin" (default
                            "marlin" when declared)
    library                 the G-code library folder (relative to the station file)
    runout                  a digital_input, active while the filament is out (optional)
    bed_clear               a digital_input, active while the bed is clear (optional)
    resume_after_power_cut  go on by itself after a power cut when it is safe (default false)
    progress_percent        a `step_progress` event every this many percent (default 10)
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge.configfile import Section
from edge.engine import (
    Action,
    Boot,
    Event,
    Flash,
    Hold,
    InputChanged,
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
    check_hardware,
)
from edge.ledger import JobState, StepState

STEP = "printer"
MANIFEST = "manifest.toml"
FILE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}/[a-z0-9][a-z0-9_-]{0,31}\.gcode")
SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
WORD_RE = re.compile(r"([A-Z])\s*(-?\d*\.?\d+)")
HOLD_SLACK = 2  # lines a held job may still get answered (the one on its way)
BED_HELD_C = 5.0  # a bed this close to its target held the part through a power cut
LIFT_MM = 5
TAKEN = "taken over elsewhere"


# ---------------------------------------------------------------- config

@dataclass(frozen=True)
class PrinterOptions:
    marlin: str | None = None
    library: Path | None = None
    runout: str | None = None
    bed_clear: str | None = None
    resume_after_power_cut: bool = False
    progress_percent: int = 10


def read_config(s: Section) -> PrinterOptions:
    marlin = s.get_str("marlin", None)
    library = s.get_path("library", None)
    runout = s.get_str("runout", None)
    bed_clear = s.get_str("bed_clear", None)
    resume = s.get_bool("resume_after_power_cut", False)
    percent = s.get_int("progress_percent", 10, 1, 100)
    if library is not None:
        try:
            Library(library).manifest()
        except LibraryError as exc:
            s.issue("library", str(exc))
    return PrinterOptions(marlin, library, runout, bed_clear, bool(resume), percent or 10)


def hardware(options: PrinterOptions) -> list[tuple[str, str | None, str]]:
    """The devices the keys name, with the type each must be (checked by `edge check-config`)."""
    return [("marlin", options.marlin, "serial"), ("runout", options.runout, "digital_input"),
            ("bed_clear", options.bed_clear, "digital_input")]


# ---------------------------------------------------------------- the library

class LibraryError(ValueError):
    """A G-code file that must not be printed, or a manifest that cannot be read."""


@dataclass(frozen=True)
class Gcode:
    file: str  # "stand/red.gcode", relative to the library
    sha256: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Library:
    """`<root>/<product>/<colour>.gcode`, each listed with its sha256 in `<root>/manifest.toml`."""

    root: Path
    read: Callable[[Path], bytes] = Path.read_bytes

    def manifest(self) -> dict[str, str]:
        """file -> sha256, as the manifest lists them."""
        path = self.root / MANIFEST
        try:
            data = tomllib.loads(self.read(path).decode("utf-8"))
        except OSError as exc:
            raise LibraryError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise LibraryError(f"{path}: not a TOML manifest ({exc})") from None
        files = data.get("files")
        if not isinstance(files, dict) or not files:
            raise LibraryError(f'{path}: lists no files: [files."<product>/<colour>.gcode"] sha256 = "..."')
        out = {}
        for name, entry in files.items():
            digest = entry.get("sha256") if isinstance(entry, dict) else None
            if not FILE_RE.fullmatch(name):
                raise LibraryError(f'{path}: [files."{name}"]: not a <product>/<colour>.gcode name')
            if not isinstance(digest, str) or not SHA256_RE.fullmatch(digest):
                raise LibraryError(f'{path}: [files."{name}"] sha256: must be 64 hex digits')
            out[name] = digest.lower()
        return out

    def load(self, product: str, colour: str) -> Gcode:
        """The lines of one file, read now and checked against the manifest."""
        name = f"{product}/{colour}.gcode"
        if not FILE_RE.fullmatch(name):
            raise LibraryError(f"{name!r} cannot be in the G-code library (lower-case names only)")
        listed = self.manifest().get(name)
        if listed is None:
            raise LibraryError(f"{name} is not in the G-code library's manifest")
        try:
            data = self.read(self.root / name)
        except FileNotFoundError:
            raise LibraryError(f"{name} is missing from the G-code library {self.root}") from None
        except OSError as exc:
            raise LibraryError(f"{name}: cannot read it ({exc.strerror or exc})") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != listed:
            raise LibraryError(f"{name} is not the file the manifest lists (sha256 {digest[:12]}..., "
                               f"manifest {listed[:12]}...): changed or damaged")
        try:
            lines = tuple(data.decode("ascii").splitlines())
        except UnicodeDecodeError:
            raise LibraryError(f"{name} is not plain ASCII G-code") from None
        if not any(_code(line) for line in lines):
            raise LibraryError(f"{name} holds no G-code")
        return Gcode(name, digest, lines)

    def check(self) -> list[str]:
        """Every problem of the library: each listed file read and hashed."""
        try:
            names = self.manifest()
        except LibraryError as exc:
            return [str(exc)]
        problems = []
        for name in names:
            product, _, colour = name.removesuffix(".gcode").partition("/")
            try:
                self.load(product, colour)
            except LibraryError as exc:
                problems.append(str(exc))
        return problems


# ---------------------------------------------------------------- reading G-code

def _code(line: str) -> str:
    return line.split(";", 1)[0].strip().upper()


def _words(line: str) -> tuple[str, dict[str, float]]:
    head, _, rest = _code(line).partition(" ")
    return head, {k: float(v) for k, v in WORD_RE.findall(rest)}


def layer_starts(lines: Sequence[str]) -> tuple[int, ...]:
    """The line where each layer begins: the slicer's `;LAYER:` / `;LAYER_CHANGE` comments when
    the file has them, else each rise of Z above the highest so far."""
    marked = tuple(i for i, line in enumerate(lines) if line.lstrip().upper().startswith((";LAYER:", ";LAYER_CHANGE")))
    if marked:
        return marked
    starts, top = [], None
    for i, line in enumerate(lines):
        head, p = _words(line)
        if head in ("G0", "G1") and "Z" in p and (top is None or p["Z"] > top):
            top = p["Z"]
            starts.append(i)
    return tuple(starts)


@dataclass
class Where:
    """What the lines before one line left the printer at."""

    bed: float | None = None
    hotend: float | None = None
    fan: float | None = None
    feed: float | None = None
    x: float | None = None
    y: float | None = None
    z: float | None = None
    e: float = 0.0
    relative: bool = False  # G91
    relative_e: bool = False  # M83


def where(lines: Sequence[str], at: int) -> Where:
    w = Where()
    for line in lines[:at]:
        head, p = _words(line)
        if head in ("M140", "M190") and "S" in p:
            w.bed = p["S"]
        elif head in ("M104", "M109") and "S" in p:
            w.hotend = p["S"]
        elif head in ("M106", "M107"):
            w.fan = p.get("S", 255.0) if head == "M106" else None
        elif head in ("G90", "G91"):
            w.relative = head == "G91"
        elif head in ("M82", "M83"):
            w.relative_e = head == "M83"
        elif head in ("G0", "G1", "G92"):
            moved = head != "G92" and w.relative
            for axis in ("X", "Y", "Z"):
                if axis in p:
                    was = getattr(w, axis.lower())
                    setattr(w, axis.lower(), (was or 0.0) + p[axis] if moved else p[axis])
            if "E" in p and (head == "G92" or not (w.relative or w.relative_e)):
                w.e = p["E"]
            if head != "G92":
                w.feed = p.get("F", w.feed)
    return w


def resume_point(layers: Sequence[int], line: int) -> int:
    """Where a print stopped after `line` lines goes on: the start of the layer it was in (that
    layer is printed again; 0: no layer had begun, print it all)."""
    layer = bisect_right(layers, line - 1)
    return layers[layer - 1] if layer else 0


def _n(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".")


def layer_height(lines: Sequence[str], at: int) -> float | None:
    """The height the layer beginning at line `at` is printed at: where a stop in it left the nozzle."""
    for i in range(at, len(lines)):
        head, p = _words(lines[i])
        if head in ("G0", "G1") and "Z" in p:
            return where(lines, i + 1).z
        if head in ("G0", "G1") and "E" in p:
            break  # it prints at the height it is at
    return where(lines, at).z


def resume_preamble(lines: Sequence[str], at: int) -> tuple[str, ...] | None:
    """G-code that brings the printer back to where line `at` expects it, the part on the bed:
    heated again, X and Y homed (never Z), Z and the extruder set to that point; None when no
    layer had begun there (nothing to resume: print it from the start)."""
    w, z = where(lines, at), layer_height(lines, at)
    if w.z is None or z is None:
        return None
    out = [f"; resume at line {at + 1}: the part is on the bed, Z is not homed"]
    out += [f"M140 S{_n(w.bed)}"] if w.bed is not None else []
    out += [f"M104 S{_n(w.hotend)}"] if w.hotend is not None else []
    out += [f"M190 S{_n(w.bed)}"] if w.bed is not None else []
    out += [f"M109 S{_n(w.hotend)}"] if w.hotend is not None else []
    out += [f"G92 Z{_n(z)} ; where the nozzle was left", "G91", f"G1 Z{LIFT_MM} F600", "G90", "G28 X Y",
            "M83" if w.relative_e else "M82", f"G92 E{_n(w.e)}"]
    out += [f"G1 X{_n(w.x)} Y{_n(w.y)} F6000"] if w.x is not None and w.y is not None else []
    out += [f"G1 Z{_n(z)} F600"]
    out += [f"M106 S{_n(w.fan)}"] if w.fan is not None else []
    out += [f"G1 F{_n(w.feed)}"] if w.feed is not None else []
    out += ["G91"] if w.relative else []
    return tuple(out)


# ---------------------------------------------------------------- the machine

@dataclass
class Print:
    """The job on the printer now; `line` counts the file's lines answered."""

    job: str
    file: str
    total: int
    layers: tuple[int, ...]
    start: int = 0  # the file line it began at (a resume)
    preamble: int = 0  # lines streamed before the file's own (a resume's)
    line: int = 0
    layer: int = 0
    last_percent: int = 0
    held: str | None = None  # why it is held
    held_at: int = 0
    unheld: bool = False  # the stream went on through the hold: the node cannot hold this printer
    runout_at: int | None = None  # the filament ran out here and the print did not wait for it

    def file_line(self, done: int) -> int:
        return min(self.total, self.start + max(0, done - self.preamble))

    def layer_of(self, line: int) -> int:
        """Layers begun among the first `line` lines (0: heating, homing, purging)."""
        return bisect_right(self.layers, line - 1)


BedReading = Callable[[], "tuple[float, float | None] | None"]


def no_bed_reading() -> tuple[float, float | None] | None:
    return None  # the printer's own report at boot (`Boot.readings`) is used then


@dataclass
class Printer:
    options: PrinterOptions
    info: StationInfo
    library: Library
    bed: BedReading = no_bed_reading  # (actual, target) of the bed now, if the node can tell
    problems: list[str] = field(default_factory=list)  # the library's, at load
    printing: Print | None = None
    recovered: bool = False  # the power-cut rule ran
    boot_bed: tuple[float, float | None] | None = None  # the bed as the printer reported it at boot
    waiting: tuple[str, str] | None = None  # (job, why) told once
    last: dict[str, Any] | None = None
    counters: dict[str, int] = field(default_factory=lambda: {"printed": 0, "failed": 0, "refused_files": 0,
                                                              "runouts": 0, "held": 0, "resumed": 0})

    @property
    def marlin(self) -> str:
        assert self.options.marlin is not None
        return self.options.marlin

    def handle(self, event: Event, view: View) -> list[Action]:
        if isinstance(event, Boot) and "bed" in event.readings.get(self.marlin, {}):
            self.boot_bed = tuple(event.readings[self.marlin]["bed"])  # the printer's M105 at start
        if not self.recovered and isinstance(event, (Boot, Resumed, Tick, LedgerChanged)):
            if view.stopped:
                return []  # after the `reset`: nothing is recorded while the station is stopped
            self.recovered = True
            return self._recover(view)
        if isinstance(event, StreamProgress) and event.device == self.marlin:
            return self._progress(event)
        if isinstance(event, StreamEnded) and event.device == self.marlin:
            return self._ended(event)
        if isinstance(event, SafetyChanged):
            return self._hold("emergency stop", record=False) if event.tripped else []
        if isinstance(event, Hold) and event.device == self.marlin:
            return self._hold("hold", record=True)
        if isinstance(event, InputChanged):
            return self._input(event, view)
        if isinstance(event, Resumed) and self.printing is not None and self.printing.held:
            return self._resume(view)
        if isinstance(event, (Tick, LedgerChanged, Resumed)):
            return self._next(view)
        return []

    # -- starting
    def _next(self, view: View) -> list[Action]:
        if self.printing is not None:
            state = view.jobs.get(self.printing.job)
            step = state.step(STEP) if state is not None else None
            p = self.printing
            if (step is None or step.status != "running" or step.node != view.node) and p.held != TAKEN:
                p.held, p.held_at = TAKEN, p.line  # an operator's override, or another printer won the step
                return [Realtime(self.marlin, "hold"), Tell(f"job {p.job}: its printer step was {TAKEN}: held",
                                                            ok=False)]
            return []
        if view.stopped or view.mode != "auto" or not self.recovered:
            return []
        for job, state in view.jobs.items():
            step = state.step(STEP)
            if step is not None and step.status == "pending" and state.next_step == STEP and state.position == STEP:
                return self._start(job, state, step, view)
        self.waiting = None
        return []

    def _start(self, job: str, state: JobState, step: StepState, view: View) -> list[Action]:
        clear = self._bed_clear(view)
        resume = step.resume_at if clear is not True else 0  # a cleared bed: the failed part is gone
        if self._filament_out(view):
            return self._wait(job, "the filament is out: load it")
        if not resume and clear is False:
            return self._wait(job, "the bed is not clear: take the last print off")
        self.waiting = None
        try:
            gcode = self._gcode(state, view)
        except LibraryError as exc:
            self.counters["refused_files"] += 1
            reason = f"cannot print: {exc}"
            return [Record(job, "step_failed", {"step": STEP, "reason": reason}), Flash("red"),
                    Tell(f"job {job}: {reason}", ok=False)]
        stream, at = self._begin(job, gcode, resume)
        data: dict[str, Any] = {"step": STEP, "auto": True, "file": gcode.file, "lines": len(gcode.lines),
                                "sha256": gcode.sha256}
        if at:
            data["resume_from"] = at
        return [Record(job, "step_started", data), *stream]

    def _gcode(self, state: JobState, view: View) -> Gcode:
        options = state.order.get("options", {}) if isinstance(state.order, dict) else {}
        colour = options.get("colour") if isinstance(options, dict) else None
        if colour is None:
            product = view.line.products.get(state.product) if view.line is not None else None
            spec = product.options.get("colour") if product is not None else None
            colour = spec.default if spec is not None else None
        if not isinstance(colour, str) or not colour:
            raise LibraryError(f"job has no colour, and the line file gives product {state.product!r} no default")
        return self.library.load(state.product, colour)

    def _begin(self, job: str, gcode: Gcode, at: int) -> tuple[list[Action], int]:
        """Stream `gcode` from line `at` (a resume: after its preamble); returns the actions and
        the line it really starts at (0 when nothing had been printed there)."""
        preamble = resume_preamble(gcode.lines, at) if at else None
        at = at if preamble is not None else 0
        layers = layer_starts(gcode.lines)
        self.printing = Print(job, gcode.file, len(gcode.lines), layers, at, len(preamble or ()), at)
        self.printing.layer = self.printing.layer_of(at)
        self.last = {"job": job, "file": gcode.file, "lines": len(gcode.lines)}
        lines = (*(preamble or ()), *gcode.lines[at:])
        return [Stream(self.marlin, job, lines),
                Tell(f"job {job}: printing {gcode.file}" + (f" from line {at + 1}" if at else ""))], at

    def _wait(self, job: str, why: str) -> list[Action]:
        if self.waiting == (job, why):
            return []
        self.waiting = (job, why)
        return [Tell(f"job {job} waits: {why}", ok=False)]

    def _bed_clear(self, view: View) -> bool | None:
        return None if self.options.bed_clear is None else bool(view.inputs.get(self.options.bed_clear))

    def _filament_out(self, view: View) -> bool:
        return self.options.runout is not None and bool(view.inputs.get(self.options.runout))

    # -- running
    def _progress(self, event: StreamProgress) -> list[Action]:
        p = self.printing
        if p is None or event.job != p.job or not event.total:
            return []
        actions: list[Action] = []
        line = p.file_line(event.done)
        if p.held and not p.unheld and line > p.held_at + HOLD_SLACK:
            p.unheld = True
            actions.append(self._not_held(p))
        p.line = line
        layer, percent = p.layer_of(line), line * 100 // p.total
        new_layer, p.layer = layer != p.layer, layer
        every = self.options.progress_percent
        crossed = p.last_percent + every <= percent < 100
        if crossed:
            p.last_percent = percent - percent % every
        if crossed or new_layer:  # a layer change too: after a stop, the layer is known
            data: dict[str, Any] = {"step": STEP, "percent": percent, "line": line, "layer": layer}
            for heater in ("bed", "hotend"):  # (actual, target) °C, as Marlin last reported them
                if heater in event.readings:
                    data[heater] = [round(float(v), 1) if v is not None else None for v in event.readings[heater]]
            actions.append(Record(p.job, "step_progress", data))
        return actions

    def _not_held(self, p: Print) -> Tell:
        then = ("it prints on without filament: the step fails at its end (the part is lost)"
                if p.runout_at is not None else "it prints on")
        return Tell(f"job {p.job}: the printer could not be held ({p.held}): this node cannot pause a Marlin "
                    f"print; {then}", ok=False)

    def _ended(self, event: StreamEnded) -> list[Action]:
        p = self.printing
        if p is None or event.job != p.job:
            return []
        self.printing = None
        if p.held == TAKEN:  # not this node's step any more: nothing to record
            return [Tell(f"job {p.job}: its print ended ({'whole' if event.ok else event.reason}); the step is "
                         f"not this printer's", ok=False)]
        if p.runout_at is not None and (p.unheld or event.ok):  # it ended: it did not wait for the filament
            return self._fail(p.job, f"filament runout at line {p.runout_at + 1}: the print went on without "
                                     f"filament", 0)
        if event.ok:
            self.counters["printed"] += 1
            return [Record(p.job, "step_done", {"step": STEP, "file": p.file, "lines": p.total}),
                    Tell(f"job {p.job}: printed {p.file}")]
        # Marlin answers a line when it queues it: lines answered may not have printed yet
        resume = max(p.start, resume_point(p.layers, p.file_line(event.executed)))
        return self._fail(p.job, f"print stopped: {event.reason}", resume)

    def _fail(self, job: str, reason: str, resume_at: int) -> list[Action]:
        self.counters["failed"] += 1
        data: dict[str, Any] = {"step": STEP, "reason": reason}
        then = "take the part off for a new print"
        if resume_at:
            data["resume_at"] = resume_at
            then = (f"`retry {job}` goes on from line {resume_at + 1} with the part left on the bed, "
                    f"or take it off for a new print")
        return [Record(job, "step_failed", data), Flash("red"), Tell(f"job {job}: {reason}; {then}", ok=False)]

    # -- holds
    def _input(self, event: InputChanged, view: View) -> list[Action]:
        if event.device == self.options.runout and event.value:
            return self._runout()
        if event.device == self.options.runout:
            held = self.printing is not None and self.printing.held
            return [Tell("filament loaded" + (": `resume` goes on with the print" if held else ""))]
        if event.device == self.options.bed_clear and event.value:
            return self._next(view)
        return []

    def _runout(self) -> list[Action]:
        self.counters["runouts"] += 1
        p = self.printing
        if p is None:
            return [Flash("amber", buzz=True), Tell("filament out: no print starts until it is loaded", ok=False)]
        p.runout_at = p.line
        actions: list[Action] = []
        if not p.held:
            p.held, p.held_at = "filament runout", p.line
            actions.append(Realtime(self.marlin, "hold"))
        tell = self._not_held(p) if p.unheld else Tell(
            f"job {p.job}: filament out at line {p.line + 1}: the print is held; load filament, then `resume`",
            ok=False)
        return [*actions, Record(p.job, "step_progress", {"step": STEP, "held": True, "reason": "filament runout",
                                                          "line": p.line}), Flash("amber", buzz=True), tell]

    def _hold(self, why: str, record: bool) -> list[Action]:
        """A stop or an operator's hold: the node already asked the printer to hold."""
        p = self.printing
        if p is None or p.held:
            return []
        p.held, p.held_at = why, p.line
        self.counters["held"] += 1
        actions: list[Action] = [Record(p.job, "step_progress", {"step": STEP, "held": True, "reason": why})] \
            if record else []
        return [*actions, Tell(f"job {p.job}: print held ({why}) at line {p.line + 1}; `resume` goes on", ok=False)]

    def _resume(self, view: View) -> list[Action]:
        p = self.printing
        assert p is not None and p.held
        if p.held == TAKEN:
            return [Tell(f"job {p.job}: its printer step was {TAKEN}: not resumed", ok=False)]
        if self._filament_out(view):
            return [Tell(f"job {p.job}: the filament is still out: load it, then `resume`", ok=False)]
        was, p.held = p.held, None
        if p.unheld:  # nothing to resume: it never stopped
            p.unheld = False
            return [Tell(f"job {p.job}: the print was never held ({was})" +
                         (": it fails at its end (printed without filament)" if p.runout_at is not None else ""),
                         ok=p.runout_at is None)]
        p.runout_at = None  # it waited: nothing was printed without filament
        return [Realtime(self.marlin, "resume"), Record(p.job, "step_progress", {"step": STEP, "held": False}),
                Tell(f"job {p.job}: print resumed")]

    # -- power cut
    def _recover(self, view: View) -> list[Action]:
        actions: list[Action] = [Tell(f"G-code library: {len(self.problems)} problem(s): {self.problems[0]}",
                                      ok=False)] if self.problems else []
        for job, state in view.jobs.items():
            step = state.step(STEP)
            if step is not None and step.status == "running" and step.node == view.node and step.auto:
                return [*actions, *self._power_cut(job, state, step, view)]
        return actions

    def _power_cut(self, job: str, state: JobState, step: StepState, view: View) -> list[Action]:
        """The rule for a print a power cut interrupted: fail it (the operator decides), or go on
        from the start of its last layer when the part is surely still where it was."""
        try:
            gcode = self._gcode(state, view)
        except LibraryError as exc:
            return self._fail(job, f"interrupted by a power cut: {exc}", 0)
        layers = layer_starts(gcode.lines)
        at = resume_point(layers, step.line)
        if not self.options.resume_after_power_cut:
            return self._fail(job, "interrupted by a power cut: the print cannot resume", at)
        w = where(gcode.lines, at)
        if not at or w.z is None:
            return self._fail(job, "interrupted by a power cut before its first layer: layer unknown", 0)
        if self._bed_clear(view):
            return self._fail(job, "interrupted by a power cut, and the bed is clear: nothing to resume on", 0)
        bed = self.bed() or self.boot_bed
        if bed is None:
            return self._fail(job, "bed temperature unknown after power cut", at)
        target = w.bed
        if target is not None and bed[0] < target - BED_HELD_C:
            return self._fail(job, f"the bed cooled to {bed[0]:.0f} °C during the power cut (printing at "
                                   f"{target:.0f} °C): the part may have come loose", at)
        self.counters["resumed"] += 1
        stream, at = self._begin(job, gcode, at)
        return [Record(job, "step_progress", {"step": STEP, "resumed": True, "line": at,
                                               "layer": bisect_right(layers, at)}), *stream]

    def get_status(self) -> dict[str, Any]:
        p = self.printing
        return {"printer": self.options.marlin,  # its firmware: the node's status, devices.<printer>.version
                "printing": {"job": p.job, "file": p.file, "line": p.line, "lines": p.total, "layer": p.layer,
                             "percent": p.line * 100 // p.total if p.total else 0, "held": p.held}
                if p else None,
                "waiting": {"job": self.waiting[0], "why": self.waiting[1]} if self.waiting else None,
                "library": {"path": str(self.library.root), "problems": list(self.problems)},
                "last": self.last, "counters": dict(self.counters)}


def machine(options: PrinterOptions | None, info: StationInfo, read: Callable[[Path], bytes] = Path.read_bytes,
            bed: BedReading = no_bed_reading) -> Printer | PassThrough:
    options = options or PrinterOptions()
    if options.marlin is None and info.hardware.get("marlin") == "serial":
        options = replace(options, marlin="marlin")
    if options.marlin is None:  # no printer wired: an operator prints by hand, the generic station
        return PassThrough.of(info)
    if options.library is None:
        raise ValueError("[station] library: not set: the folder of <product>/<colour>.gcode files and "
                         "their manifest.toml")
    check_hardware(hardware(options), info)
    library = Library(options.library, read)
    return Printer(options, info, library, bed, library.check())
