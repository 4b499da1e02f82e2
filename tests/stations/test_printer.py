"""Printer: a Marlin prints the stand's body in the visitor's colour, from a checked G-code library.

The machine alone (pure: events in, actions out, the library read from a dict), then a real
node on gpiozero's MockFactory pins with the simulated Marlin on a pty behind its serial port."""

from __future__ import annotations

import hashlib
import re
import shutil
import threading
from pathlib import Path

import pytest
from ledger_kit import NOW
from trailer import EXAMPLES, ROOT, Ticks, example_station, on_loop, run_edge, running, wait_for

from edge.config import load_line, load_station
from edge.engine import (
    Boot,
    Flash,
    Hold,
    InputChanged,
    LedgerChanged,
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
)
from edge.ledger import JobState, StepState
from firmware_bridge.marlin import Marlin, clean_gcode
from firmware_bridge.sim.marlin import MarlinFaults, SimulatedMarlin
from stations.printer import (
    Printer,
    PrinterOptions,
    layer_starts,
    machine,
    resume_preamble,
)

LINE = load_line(EXAMPLES / "line.toml")
ROUTE = tuple(LINE.products["stand"].route)  # intake, laser, printer, transfer, inspection, pickup
LIBRARY = Path("/trailer/library")
EXAMPLE_LIBRARY = ROOT / "examples" / "library" / "printer"
HARDWARE = {"marlin": "serial", "bed_clear": "digital_input", "filament_runout": "digital_input",
            "estop": "emergency_stop"}
INFO = StationInfo("printer-1", "printer", HARDWARE)


# ---------------------------------------------------------------- a library in a dict

def stand_gcode(colour: str = "red", layers: int = 3) -> bytes:
    """A small stand body: 9 lines of heating and homing, 7 lines a layer, 7 lines of end."""
    lines = [f"; stand body, {colour}", "M140 S60", "M104 S205", "M190 S60", "M109 S205", "G90", "M82", "G28",
             "G92 E0"]
    e = 0.0
    for n in range(layers):
        lines += [f";LAYER:{n}", f"G0 Z{0.2 * (n + 1):.1f} F600", "G0 X10 Y10 F6000"]
        for x, y in ((50, 10), (50, 50), (10, 50), (10, 10)):
            e += 1.5
            lines.append(f"G1 X{x} Y{y} E{e:.1f} F1800")
    lines += ["M107", "M104 S0", "M140 S0", "G91", "G1 Z10 F600", "G90", "M84"]
    return ("\n".join(lines) + "\n").encode()


RED = stand_gcode("red")
RED_LINES = tuple(RED.decode().splitlines())
TOTAL = len(RED_LINES)  # 37
LAYERS = (9, 16, 23)


class Disk(dict):
    """Files by path; `read` is the library's reader."""

    def read(self, path: Path) -> bytes:
        if path not in self:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return self[path]


def library(files: dict[str, bytes] | None = None, listed: dict[str, bytes] | None = None) -> Disk:
    """`files` on disk under LIBRARY; the manifest lists the sha256 of `listed` (default: the same)."""
    files = {"stand/red.gcode": RED, "stand/black.gcode": stand_gcode("black")} if files is None else files
    listed = files if listed is None else listed
    manifest = "".join(f'[files."{name}"]\nsha256 = "{hashlib.sha256(data).hexdigest()}"\n'
                       for name, data in listed.items())
    return Disk({LIBRARY / "manifest.toml": manifest.encode(), **{LIBRARY / n: d for n, d in files.items()}})


def printer(disk: Disk | None = None, bed=None, **options) -> Printer:
    """A booted printer with the example's inputs (runout, bed_clear) and `disk` as its library."""
    defaults = {"marlin": "marlin", "library": LIBRARY, "runout": "filament_runout", "bed_clear": "bed_clear"}
    kwargs = {"bed": bed} if bed is not None else {}
    made = machine(PrinterOptions(**{**defaults, **options}), INFO, (disk if disk is not None else library()).read,
                   **kwargs)
    made.handle(Boot(), view())
    return made


def job(name: str = "J1", colour: str | None = "red", position: str = "printer", **status: str) -> JobState:
    """A stand at the printer, intake and laser done; `printer="running"` etc. sets a step's status."""
    steps = [StepState(s, status.get(s, "done" if s in ("intake", "laser") else "pending"), node="printer-1",
                       auto=True) for s in ROUTE]
    order = {"order_id": name, "options": {"text": "ANNA", **({"colour": colour} if colour else {})}}
    return JobState(name, status="in_progress", product="stand", order=order, created_by="intake-1.0000cafe:1",
                    carrier="T01", position=position, steps=steps)


def with_step(state: JobState, **fields) -> JobState:
    step = state.step("printer")
    for key, value in fields.items():
        setattr(step, key, value)
    return state


def view(*jobs: JobState, stopped: bool = False, bed_clear: bool = True, filament_runout: bool = False) -> View:
    table = {j.job: j for j in jobs}
    return View(now=NOW, node="printer-1", kind="printer", mode="auto", jobs=table,
                carriers={j.carrier: j.job for j in jobs}, line=LINE, lookup=lambda name: table.get(name),
                inputs={"bed_clear": bed_clear, "filament_runout": filament_runout}, safe=not stopped,
                stopped=stopped)


def records(actions) -> list[tuple[str, str, dict]]:
    return [(a.job, a.type, dict(a.data)) for a in actions if isinstance(a, Record)]


def streams(actions) -> list[Stream]:
    return [a for a in actions if isinstance(a, Stream)]


def told(actions) -> list[str]:
    return [a.text for a in actions if isinstance(a, Tell)]


def started(made: Printer, state: JobState | None = None) -> JobState:
    """`made` prints J1 (red); returns the job as the ledger folds it once its step runs."""
    state = state or job()
    assert streams(made.handle(Tick(), view(state)))
    return with_step(job(printer="running"), line=0)


# ---------------------------------------------------------------- starting

def test_a_part_at_the_printer_prints_the_file_of_its_colour():
    actions = printer().handle(LedgerChanged(frozenset({"J1"})), view(job()))
    digest = hashlib.sha256(RED).hexdigest()
    assert records(actions) == [("J1", "step_started", {"step": "printer", "auto": True, "file": "stand/red.gcode",
                                                         "lines": TOTAL, "sha256": digest})]
    assert streams(actions) == [Stream("marlin", "J1", RED_LINES)]
    assert "job J1: printing stand/red.gcode" in told(actions)


def test_an_order_without_a_colour_prints_the_line_files_default_colour():
    actions = printer().handle(Tick(), view(job(colour=None)))
    assert records(actions)[0][2]["file"] == "stand/black.gcode"  # the stand's default in line.toml


def test_nothing_starts_while_the_station_is_stopped_or_the_part_is_elsewhere():
    made = printer()
    assert made.handle(Tick(), view(job(), stopped=True)) == []
    assert made.handle(Tick(), view(job(position="laser"))) == []
    assert made.get_status()["printing"] is None


def test_a_new_print_waits_for_the_bed_to_read_clear_and_says_so_once():
    made = printer()
    waiting = made.handle(Tick(), view(job(), bed_clear=False))
    assert not records(waiting) and not streams(waiting)
    assert told(waiting) == ["job J1 waits: the bed is not clear: take the last print off"]
    assert made.handle(Tick(), view(job(), bed_clear=False)) == []  # told once, not every second
    assert made.get_status()["waiting"] == {"job": "J1", "why": "the bed is not clear: take the last print off"}
    cleared = made.handle(InputChanged("bed_clear", True), view(job(), bed_clear=True))
    assert streams(cleared) and records(cleared)[0][1] == "step_started"


def test_no_print_starts_while_the_filament_is_out():
    made = printer()
    assert told(made.handle(Tick(), view(job(), filament_runout=True))) == [
        "job J1 waits: the filament is out: load it"]
    assert streams(made.handle(Tick(), view(job(), filament_runout=False)))


# ---------------------------------------------------------------- the library

def test_a_file_that_is_not_what_the_manifest_lists_is_never_printed():
    disk = library(files={"stand/red.gcode": RED + b"G1 Z50\n"}, listed={"stand/red.gcode": RED})
    made = printer(disk)
    assert "stand/red.gcode is not the file the manifest lists" in made.get_status()["library"]["problems"][0]
    actions = made.handle(Tick(), view(job()))
    assert not streams(actions)
    ((_job, kind, data),) = records(actions)
    assert kind == "step_failed" and data["reason"].startswith(
        "cannot print: stand/red.gcode is not the file the manifest lists (sha256 ")
    assert Flash("red") in actions and made.get_status()["counters"]["refused_files"] == 1


def test_a_file_changed_after_boot_is_caught_at_the_job_start():
    disk = library()
    made = printer(disk)
    assert made.get_status()["library"]["problems"] == []
    disk[LIBRARY / "stand/red.gcode"] = RED.replace(b"S205", b"S260")  # someone edits it on the node
    actions = made.handle(Tick(), view(job()))
    assert not streams(actions) and "is not the file the manifest lists" in records(actions)[0][2]["reason"]


@pytest.mark.parametrize("disk, colour, reason", [
    (library(files={"stand/black.gcode": RED}, listed={"stand/black.gcode": RED, "stand/red.gcode": RED}), "red",
     "cannot print: stand/red.gcode is missing from the G-code library /trailer/library"),
    (library(), "purple", "cannot print: stand/purple.gcode is not in the G-code library's manifest"),
    (library(), "../../etc/passwd", "cannot print: 'stand/../../etc/passwd.gcode' cannot be in the G-code library"),
    (Disk(), "red", "cannot print: /trailer/library/manifest.toml: cannot read the manifest"),
], ids=["missing-file", "not-in-manifest", "not-a-name", "no-manifest"])
def test_a_file_the_library_cannot_give_fails_the_step_with_its_name(disk, colour, reason):
    actions = printer(disk).handle(Tick(), view(job(colour=colour)))
    assert not streams(actions)
    ((_job, kind, data),) = records(actions)
    assert kind == "step_failed" and data["reason"].startswith(reason)


def test_the_example_library_holds_every_stand_colour_and_matches_its_manifest():
    from stations.printer import Library

    example = Library(EXAMPLE_LIBRARY)
    colours = LINE.products["stand"].options["colour"].choices
    assert sorted(example.manifest()) == sorted(f"stand/{c}.gcode" for c in colours)
    assert example.check() == []
    for colour in colours:
        lines = example.load("stand", colour).lines
        assert 40 <= len(lines) <= 200 and len(layer_starts(lines)) == 5
        assert any(line.startswith("M190") for line in lines) and lines[-2].startswith("M84")


def test_the_example_printer_station_passes_check_config():
    result = run_edge("check-config", str(EXAMPLES / "printer.toml"))
    assert result.returncode == 0, result.stderr


def test_a_library_without_a_manifest_is_refused_by_the_config_with_its_line(tmp_path):
    from edge.config import ConfigError

    path = example_station("printer", tmp_path)
    path.write_text(re.sub(r'^library = "[^"]*"', f'library = "{tmp_path / "nowhere"}"', path.read_text(), flags=re.M))
    with pytest.raises(ConfigError, match=r"printer.toml:\d+: \[station\] library: .*manifest.toml: cannot read "
                                          r"the manifest"):
        load_station(path)


def test_hardware_the_keys_name_must_be_declared_with_the_right_type():
    with pytest.raises(ValueError, match=r"runout: \[hardware.estop\] is a emergency_stop, not a digital_input"):
        machine(PrinterOptions(library=LIBRARY, runout="estop"), INFO, library().read)
    by_hand = machine(PrinterOptions(library=LIBRARY), StationInfo("printer-1", "printer", {}), library().read)
    assert by_hand.get_status()["generic"] is True  # no printer wired: the generic station, by hand
    with pytest.raises(ValueError, match=r"\[station\] library: not set"):
        machine(PrinterOptions(), INFO)


# ---------------------------------------------------------------- printing

def test_progress_is_recorded_every_ten_percent_and_at_each_layer():
    made = printer()
    running = started(made)
    got = []
    for done in (4, 8, 10, 12, 17, 30):
        got += records(made.handle(StreamProgress("marlin", "J1", done, TOTAL), view(running)))
    assert got == [
        ("J1", "step_progress", {"step": "printer", "percent": 10, "line": 4, "layer": 0}),
        ("J1", "step_progress", {"step": "printer", "percent": 21, "line": 8, "layer": 0}),
        ("J1", "step_progress", {"step": "printer", "percent": 27, "line": 10, "layer": 1}),  # layer 1 began
        ("J1", "step_progress", {"step": "printer", "percent": 32, "line": 12, "layer": 1}),
        ("J1", "step_progress", {"step": "printer", "percent": 45, "line": 17, "layer": 2}),
        ("J1", "step_progress", {"step": "printer", "percent": 81, "line": 30, "layer": 3}),
    ]
    assert made.get_status()["printing"] == {"job": "J1", "file": "stand/red.gcode", "line": 30, "lines": TOTAL,
                                              "layer": 3, "percent": 81, "held": None}


def test_a_stream_that_ends_whole_is_the_step_done():
    made = printer()
    running = started(made)
    actions = made.handle(StreamEnded("marlin", "J1", True, executed=TOTAL), view(running))
    assert records(actions) == [("J1", "step_done", {"step": "printer", "file": "stand/red.gcode",
                                                      "lines": TOTAL})]
    status = made.get_status()
    assert status["printing"] is None and status["counters"]["printed"] == 1
    assert status["last"] == {"job": "J1", "file": "stand/red.gcode", "lines": TOTAL}


def test_a_stream_that_stops_fails_the_step_to_go_on_from_the_start_of_its_layer():
    made = printer()
    running = started(made)
    actions = made.handle(StreamEnded("marlin", "J1", False, "no answer from Marlin", executed=20), view(running))
    assert records(actions) == [("J1", "step_failed", {"step": "printer", "resume_at": 16,
                                                        "reason": "print stopped: no answer from Marlin"})]
    assert Flash("red") in actions
    assert "`retry J1` goes on from line 17 with the part left on the bed" in told(actions)[0]


def test_a_stream_that_stops_before_the_first_layer_is_printed_again_from_the_start():
    made = printer()
    running = started(made)
    actions = made.handle(StreamEnded("marlin", "J1", False, "Marlin restarted", executed=5), view(running))
    assert records(actions) == [("J1", "step_failed", {"step": "printer",
                                                        "reason": "print stopped: Marlin restarted"})]


def test_a_retried_print_with_its_part_on_the_bed_goes_on_from_its_layer_after_a_preamble():
    retried = with_step(job(), resume_at=16)  # `retry J1`: pending again, its resume_at kept
    actions = printer().handle(Tick(), view(retried, bed_clear=False))  # the part is still on the bed
    assert records(actions)[0][2]["resume_from"] == 16
    (stream,) = streams(actions)
    preamble = resume_preamble(RED_LINES, 16)
    assert stream.lines == (*preamble, *RED_LINES[16:])


def test_a_retried_print_whose_bed_was_cleared_is_printed_again_from_the_start():
    retried = with_step(job(), resume_at=16)
    actions = printer().handle(Tick(), view(retried, bed_clear=True))
    assert "resume_from" not in records(actions)[0][2]
    assert streams(actions)[0].lines == RED_LINES


def test_the_resume_preamble_heats_homes_x_and_y_only_and_puts_the_nozzle_back():
    preamble = resume_preamble(RED_LINES, 16)  # the start of the second layer, printed at Z 0.4
    assert preamble is not None
    codes = [clean_gcode(line) for line in preamble if clean_gcode(line)]
    assert codes[:4] == ["M140 S60", "M104 S205", "M190 S60", "M109 S205"]
    assert "G28 X Y" in codes and "G28" not in codes  # never Z onto the part
    assert codes[codes.index("G28 X Y") - 4:codes.index("G28 X Y")] == ["G92 Z0.4", "G91", "G1 Z5 F600", "G90"]
    assert codes[codes.index("G28 X Y") + 1:] == ["M82", "G92 E6", "G1 X10 Y10 F6000", "G1 Z0.4 F600", "G1 F1800"]
    assert resume_preamble(RED_LINES, 5) is None  # no layer yet: nothing to resume, print it all


# ---------------------------------------------------------------- filament runout

def test_a_runout_holds_the_print_and_resume_after_loading_goes_on():
    made = printer()
    running = started(made)
    made.handle(StreamProgress("marlin", "J1", 20, TOTAL), view(running))
    out = made.handle(InputChanged("filament_runout", True), view(running, filament_runout=True))
    assert Realtime("marlin", "hold") in out
    assert records(out) == [("J1", "step_progress", {"step": "printer", "held": True, "reason": "filament runout",
                                                      "line": 20})]
    assert "job J1: filament out at line 21: the print is held; load filament, then `resume`" in told(out)
    refused = made.handle(Resumed(), view(running, filament_runout=True))
    assert told(refused) == ["job J1: the filament is still out: load it, then `resume`"]
    assert Realtime("marlin", "resume") not in refused
    assert told(made.handle(InputChanged("filament_runout", False), view(running))) == [
        "filament loaded: `resume` goes on with the print"]
    resumed = made.handle(Resumed(), view(running))
    assert Realtime("marlin", "resume") in resumed
    assert records(resumed) == [("J1", "step_progress", {"step": "printer", "held": False})]
    done = made.handle(StreamEnded("marlin", "J1", True, executed=TOTAL), view(running))
    assert records(done)[0][1] == "step_done"  # it waited for the filament: the part is whole
    assert made.get_status()["counters"]["runouts"] == 1


def test_a_runout_the_printer_did_not_wait_for_fails_the_step_at_its_end():
    """Today's engine cannot hold a Marlin: the stream goes on past the hold."""
    made = printer()
    running = started(made)
    made.handle(StreamProgress("marlin", "J1", 20, TOTAL), view(running))
    made.handle(InputChanged("filament_runout", True), view(running, filament_runout=True))
    assert not told(made.handle(StreamProgress("marlin", "J1", 22, TOTAL), view(running)))  # the line on its way
    on = made.handle(StreamProgress("marlin", "J1", 25, TOTAL), view(running))
    assert any("could not be held (filament runout)" in text and "the part is lost" in text for text in told(on))
    ended = made.handle(StreamEnded("marlin", "J1", True, executed=TOTAL), view(running))
    assert records(ended) == [("J1", "step_failed", {
        "step": "printer", "reason": "filament runout at line 21: the print went on without filament"})]


def test_a_print_held_for_a_runout_that_then_stops_fails_with_the_stop_not_the_runout():
    made = printer()
    running = started(made)
    made.handle(StreamProgress("marlin", "J1", 20, TOTAL), view(running))
    made.handle(InputChanged("filament_runout", True), view(running, filament_runout=True))
    ended = made.handle(StreamEnded("marlin", "J1", False, "no answer from Marlin", executed=21), view(running))
    assert records(ended) == [("J1", "step_failed", {"step": "printer", "resume_at": 16,
                                                      "reason": "print stopped: no answer from Marlin"})]


def test_an_emergency_stop_holds_the_print_without_recording_and_reset_resumes_it():
    made = printer()
    running = started(made)
    made.handle(StreamProgress("marlin", "J1", 12, TOTAL), view(running))
    tripped = made.handle(SafetyChanged(True), view(running, stopped=True))
    assert records(tripped) == [] and made.get_status()["printing"]["held"] == "emergency stop"
    resumed = made.handle(Resumed(), view(running))  # the operator's `reset`
    assert Realtime("marlin", "resume") in resumed


def test_an_operators_hold_is_recorded_on_the_job():
    made = printer()
    running = started(made)
    held = made.handle(Hold("marlin"), view(running))
    assert records(held) == [("J1", "step_progress", {"step": "printer", "held": True, "reason": "hold"})]


# ---------------------------------------------------------------- power cut

def cut(line: int) -> JobState:
    """J1's print was running on this node when the power went: its last progress at `line`."""
    return with_step(job(printer="running"), line=line)


def test_a_power_cut_fails_the_print_by_default_and_the_operator_decides():
    made = machine(PrinterOptions(library=LIBRARY), INFO, library().read)
    actions = made.handle(Boot(), view(cut(20)))
    assert records(actions) == [("J1", "step_failed", {
        "step": "printer", "reason": "interrupted by a power cut: the print cannot resume", "resume_at": 16})]
    assert not streams(actions)


def test_resume_after_power_cut_fails_when_nothing_tells_the_bed_temperature():
    made = machine(PrinterOptions(library=LIBRARY, resume_after_power_cut=True), INFO, library().read)
    actions = made.handle(Boot(), view(cut(20)))
    assert records(actions) == [("J1", "step_failed", {
        "step": "printer", "reason": "bed temperature unknown after power cut", "resume_at": 16})]
    assert not streams(actions)


def test_resume_after_power_cut_goes_on_from_its_layer_when_the_bed_held_its_temperature():
    made = machine(PrinterOptions(library=LIBRARY, resume_after_power_cut=True), INFO, library().read,
                   bed=lambda: (58.5, 0.0))
    actions = made.handle(Boot(), view(cut(20), bed_clear=False))
    assert records(actions) == [("J1", "step_progress", {"step": "printer", "resumed": True, "line": 16,
                                                          "layer": 2})]
    (stream,) = streams(actions)
    assert stream.lines == (*resume_preamble(RED_LINES, 16), *RED_LINES[16:])
    assert made.get_status()["counters"]["resumed"] == 1


@pytest.mark.parametrize("line, bed, bed_clear, reason", [
    (20, (30.0, 0.0), False, "the bed cooled to 30 °C during the power cut (printing at 60 °C): the part may "
                             "have come loose"),
    (20, (60.0, 60.0), True, "interrupted by a power cut, and the bed is clear: nothing to resume on"),
    (6, (60.0, 60.0), False, "interrupted by a power cut before its first layer: layer unknown"),
], ids=["bed-cooled", "bed-cleared", "no-layer-yet"])
def test_resume_after_power_cut_fails_when_the_part_may_not_be_where_it_was(line, bed, bed_clear, reason):
    made = machine(PrinterOptions(library=LIBRARY, bed_clear="bed_clear", resume_after_power_cut=True), INFO,
                   library().read, bed=lambda: bed)
    actions = made.handle(Boot(), view(cut(line), bed_clear=bed_clear))
    assert [r[2]["reason"] for r in records(actions)] == [reason] and not streams(actions)


def test_a_station_stopped_at_boot_decides_after_the_reset():
    made = machine(PrinterOptions(library=LIBRARY), INFO, library().read)
    assert made.handle(Boot(), view(cut(20), stopped=True)) == []
    assert records(made.handle(Resumed(), view(cut(20))))[0][1] == "step_failed"


# ---------------------------------------------------------------- the Marlin driver's hold

class CountingMarlin(SimulatedMarlin):
    """The simulated Marlin, counting the idle `wait`s it says (proof it sat with nothing to do)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.waits = 0

    def say(self, *lines: str) -> None:
        self.waits += lines.count("wait")
        super().say(*lines)


def test_a_held_marlin_job_sends_nothing_until_resumed():
    sim = CountingMarlin(wait_interval=0.05).start()
    marlin = Marlin(sim.port)
    held_at: list[int] = []

    def progress(done: int) -> None:
        if done == 12 and not held_at:
            marlin.feed_hold()
            held_at.append(len(sim.executed))

    try:
        marlin.open()
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(report=marlin.stream(RED_LINES, on_progress=progress)))
        runner.start()
        wait_for(lambda: held_at)
        waits = sim.waits
        wait_for(lambda: sim.waits >= waits + 3)  # Marlin idle, three times over: the host holds
        assert marlin.held and len(sim.executed) == held_at[0]
        marlin.resume()
        runner.join(20)
        assert result["report"].position == TOTAL
        assert sim.executed == [c for c in (clean_gcode(line) for line in RED_LINES) if c]  # each once, in order
    finally:
        marlin.close()
        sim.close()


# ---------------------------------------------------------------- a real node

def printer_station(tmp_path: Path, port: str, library_dir: Path = EXAMPLE_LIBRARY, extra: str = "") -> Path:
    """examples/line/printer.toml on mock pins, its library the example's (absolute), its Marlin on `port`."""
    path = example_station("printer", tmp_path, bench=True)  # bench: no serial devices, so add the printer
    text = re.sub(r'^library = "[^"]*"', f'library = "{library_dir}"', path.read_text(), flags=re.M)
    text = text.replace('[station]\n', f'[station]\n{extra}')
    text += f'\n[hardware.marlin]\ntype = "serial"\nport = "{port}"\nbaudrate = 115200\nprotocol = "marlin"\n'
    path.write_text(text)
    return path


def at_the_printer(node, job: str = "VISIT1", colour: str = "red") -> None:
    """The job's events as the intake, the laser and the transfer would have recorded them."""
    on_loop(node, lambda: node.record_many([
        (job, "created", {"product": "stand", "route": list(ROUTE),
                          "order": {"order_id": job, "options": {"colour": colour, "text": "ANNA"}}}),
        (job, "carrier", {"carrier": "T01"}), (job, "step_done", {"step": "intake"}),
        (job, "step_done", {"step": "laser"}), (job, "step_arrived", {"step": "printer", "carrier": "T01"})]))


def step_of(node, job: str = "VISIT1") -> StepState | None:
    state = on_loop(node, lambda: node.store.job(job))
    return state.step("printer") if state is not None else None


def events_of(node, job: str = "VISIT1") -> list:
    return on_loop(node, lambda: node.store.job_events(job))


def file_codes(colour: str = "red") -> list[str]:
    lines = (EXAMPLE_LIBRARY / "stand" / f"{colour}.gcode").read_text().splitlines()
    return [c for c in (clean_gcode(line) for line in lines) if c]


@pytest.fixture
def sim():
    made = {}

    def start(**kwargs) -> SimulatedMarlin:
        made["sim"] = SimulatedMarlin(**kwargs).start()
        return made["sim"]

    yield start
    if "sim" in made:
        made["sim"].close()


def test_a_stand_is_printed_on_a_real_printer_node_once_its_bed_is_clear(tmp_path, monkeypatch, sim):
    from edge.node import Node

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    marlin = sim()
    config = load_station(printer_station(tmp_path, marlin.port))
    node = Node(config, LINE, tick=0.05)
    with running(node):
        status = node.get_status()
        assert status["station"]["fault"] is None and status["station"]["printer"] == "marlin"
        assert "FIRMWARE_NAME:Marlin" in status["devices"]["marlin"]["version"]
        at_the_printer(node)
        wait_for(lambda: node.get_status()["station"]["waiting"] is not None)
        assert node.get_status()["station"]["waiting"]["why"] == "the bed is not clear: take the last print off"
        assert step_of(node).status == "pending" and marlin.executed == ["M115", "M105"]
        node.board.factory.pin(config.hardware["bed_clear"].pin).drive_low()  # the bed is clear now
        wait_for(lambda: step_of(node).status == "done")
        assert marlin.executed == ["M115", "M105", *file_codes("red")]  # every line once, in order
        kinds = [(e.type, e.data.get("file")) for e in events_of(node) if e.data.get("step") == "printer"]
        assert kinds[0] == ("step_arrived", None) and kinds[1] == ("step_started", "stand/red.gcode")
        assert kinds[-1] == ("step_done", "stand/red.gcode")
        assert node.get_status()["station"]["counters"]["printed"] == 1


def test_a_printer_that_keeps_asking_for_a_line_fails_the_step_with_the_reason(tmp_path, monkeypatch, sim):
    from edge.node import Node

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    marlin = sim(faults=MarlinFaults(corrupt_always={40}))  # the 40th line arrives damaged, every time
    config = load_station(printer_station(tmp_path, marlin.port))
    node = Node(config, LINE, tick=0.05)
    with running(node):
        node.board.factory.pin(config.hardware["bed_clear"].pin).drive_low()
        at_the_printer(node)
        wait_for(lambda: step_of(node).status == "failed")
        step = step_of(node)
        assert step.reason.startswith("print stopped: ") and "line N40 asked for again 8 times" in step.reason
        assert step.resume_at == 22  # the first layer (line 23 of the file), printed again by a `retry`
        assert marlin.executed == ["M115", "M105", *file_codes("red")[:39]]  # nothing after the refused line
        status = node.get_status()
        assert status["station"]["printing"] is None and status["state"] == "idle"
        assert status["devices"]["marlin"]["job"] is None  # the stream thread is over


def test_a_damaged_file_on_a_real_node_prints_nothing(tmp_path, monkeypatch, sim):
    from edge.node import Node

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    copy = tmp_path / "library"
    shutil.copytree(EXAMPLE_LIBRARY, copy)
    with (copy / "stand" / "blue.gcode").open("a") as f:
        f.write("G1 Z80 ; not in the manifest's file\n")
    marlin = sim()
    config = load_station(printer_station(tmp_path, marlin.port, copy))
    node = Node(config, LINE, tick=0.05)
    with running(node):
        assert "stand/blue.gcode is not the file" in node.get_status()["station"]["library"]["problems"][0]
        node.board.factory.pin(config.hardware["bed_clear"].pin).drive_low()
        at_the_printer(node, colour="blue")
        wait_for(lambda: step_of(node).status == "failed")
        assert step_of(node).reason.startswith("cannot print: stand/blue.gcode is not the file the manifest lists")
        assert marlin.executed == ["M115", "M105"]


def test_a_runout_on_a_real_node_holds_the_print_until_filament_is_loaded_and_resumed(tmp_path, monkeypatch, sim):
    from edge.node import Node

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    marlin = sim(heat_rate=0.0)  # the bed never warms up: the print waits at M190 until the test says
    config = load_station(printer_station(tmp_path, marlin.port))
    node = Node(config, LINE, tick=0.05)
    replies: list = []
    node.on("test_resume", lambda _e: replies.append(node.commands.run_line("resume")))
    with running(node):
        node.board.factory.pin(config.hardware["bed_clear"].pin).drive_low()
        at_the_printer(node)
        wait_for(lambda: "M190 S60" in marlin.executed)
        runout = node.board.factory.pin(config.hardware["filament_runout"].pin)
        runout.drive_low()  # the filament ran out
        wait_for(lambda: any(e.data.get("reason") == "filament runout" for e in events_of(node)))
        marlin.heat_rate = 400.0  # the bed heats, but the node sends nothing more: the print is held
        sent = len(marlin.executed)
        Ticks(node).wait(10)
        assert len(marlin.executed) <= sent + 1 and step_of(node).status == "running"
        runout.drive_high()  # filament loaded
        node.post("test_resume")
        wait_for(lambda: replies)
        assert replies[0].ok, replies[0].error
        wait_for(lambda: step_of(node).status == "done", 60)
        assert marlin.executed == ["M115", "M105", *file_codes("red")]  # every line once, in order: held, not lost


def cut_mid_print(config) -> None:
    """A node printing VISIT1 to line 100 (layer 3 began at line 88) when the power went."""
    from edge.node import Node

    before = Node(config, LINE, tick=0.05)
    with running(before):
        before.board.factory.pin(config.hardware["bed_clear"].pin).drive_high()  # the part is on the bed
        at_the_printer(before)
        on_loop(before, lambda: before.record_many([
            ("VISIT1", "step_started", {"step": "printer", "auto": True, "file": "stand/red.gcode"}),
            ("VISIT1", "step_progress", {"step": "printer", "percent": 51, "line": 100, "layer": 3})]))


def test_a_power_cut_mid_print_fails_the_step_on_a_real_node_at_its_last_layer(tmp_path, monkeypatch, sim):
    from edge.node import Node

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    marlin = sim()
    config = load_station(printer_station(tmp_path, marlin.port))
    cut_mid_print(config)
    after = Node(config, LINE, tick=0.05)
    with running(after):
        wait_for(lambda: step_of(after).status == "failed")
        step = step_of(after)
        assert (step.reason, step.resume_at) == ("interrupted by a power cut: the print cannot resume", 87)
        assert set(marlin.executed) == {"M115", "M105"}  # identified (and asked its heat) twice, printed nothing


def test_a_power_cut_mid_print_resumes_by_the_rule_when_the_bed_held_its_temperature(tmp_path, monkeypatch, sim):
    from edge.node import Node

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    marlin = sim()
    station = printer_station(tmp_path, marlin.port)
    station.write_text(station.read_text().replace("resume_after_power_cut = false", "resume_after_power_cut = true"))
    config = load_station(station)
    marlin.bed.actual = marlin.bed.target = 60.0  # the bed kept its heat through the cut (its own supply)
    cut_mid_print(config)
    after = Node(config, LINE, tick=0.05)
    with running(after):
        after.board.factory.pin(config.hardware["bed_clear"].pin).drive_high()
        wait_for(lambda: step_of(after).status == "done", 60)
        resumed = [e for e in events_of(after) if e.type == "step_progress" and e.data.get("resumed")]
        assert [e.data["line"] for e in resumed] == [87]  # from the start of layer 3, by the rule
        assert step_of(after).attempts == 1  # never started again
