"""Inspection: the camera checks each part, keeps its snapshot, passes, rejects or sends it back.

The machine alone (pure: events in, actions out; its `Capture` run on rendered frames, as the
engine's worker would), the ledger's redo rule, the snapshots' disk budget, a real node on mock
pins with the image-folder camera, and `edge inspection calibrate`."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import pytest
from PIL import Image
from trailer import EXAMPLES, run_edge

from edge.config import load_line
from edge.engine import (
    Boot,
    Capture,
    Captured,
    Drive,
    LedgerChanged,
    Record,
    Resumed,
    SafetyChanged,
    StationInfo,
    Tick,
    View,
)
from edge.ledger import JobState, StepState
from edge.sim.parts import render
from edge.snapshots import Snapshots
from stations.inspection import (
    Inspection,
    InspectionOptions,
    expected_strokes,
    load_calibration,
    machine,
    product_layout,
)

LINE = load_line(EXAMPLES / "line.toml")
STAND = LINE.products["stand"]
HARDWARE = {"camera": "camera", "reject_gate": "digital_output", "ring_light": "digital_output",
            "estop": "emergency_stop"}
INFO = StationInfo("inspection-1", "inspection", HARDWARE)
ROUTE = ["intake", "laser", "printer", "transfer", "inspection", "pickup"]


def job(colour: str = "red", text: str = "Hélène", status: str = "pending", node: str = "", laser_attempts: int = 1,
        position: str = "inspection", name: str = "J1", carrier: str = "T01") -> JobState:
    steps = [StepState("intake", "done"), StepState("laser", "done", attempts=laser_attempts),
             StepState("printer", "done"), StepState("transfer", "done"),
             StepState("inspection", status, node=node, attempts=1 if status != "pending" else 0), StepState("pickup")]
    return JobState(name, status="in_progress", product="stand", created_by="intake-1.0000cafe:1", carrier=carrier,
                    position=position, steps=steps,
                    order={"order_id": name, "product": "stand", "options": {"colour": colour, "text": text}})


def view(*jobs: JobState, stopped: bool = False, now: float = 100.0, mode: str = "auto") -> View:
    return View(now=now, node="inspection-1", kind="inspection", mode=mode, jobs={s.job: s for s in jobs},
                carriers={s.carrier: s.job for s in jobs}, inputs={}, safe=not stopped, line=LINE,
                lookup=lambda _j: None, stopped=stopped)


def frame(colour: str = "red", text: str | None = "Hélène", label: str = "T01", **scene) -> object:
    strokes = expected_strokes(STAND, {"text": text}, LINE) if text is not None else None
    return render(layout=product_layout(STAND), label=label, colour=LINE.colours[colour].srgb, strokes=strokes,
                  **scene)


def records(actions) -> list[tuple[str, str, dict]]:
    return [(a.job, a.type, dict(a.data)) for a in actions if isinstance(a, Record)]


def capture_of(actions) -> Capture:
    found = [a for a in actions if isinstance(a, Capture)]
    assert len(found) == 1, actions
    return found[0]


def looked(capture: Capture, image, files: dict | None = None) -> Captured:
    """What the engine's worker posts after `look` ran on `image`."""
    result, images = capture.look(image)
    assert set(images) == {n for n in images if n.endswith(".jpg")} and len(images) == 2
    return Captured(capture.device, capture.job, True, result,
                    files or {f"jobs/{capture.job}/{n}": "ab" * 32 for n in images})


def inspection(**options) -> Inspection:
    return machine(InspectionOptions(**options), INFO)


# ---------------------------------------------------------------- the machine

def test_a_good_part_passes_with_every_measured_value_and_its_snapshot_in_the_ledger():
    m = inspection()
    actions = m.handle(LedgerChanged(frozenset({"J1"})), view(job()))
    assert records(actions) == [("J1", "step_started", {"step": "inspection", "auto": True})]
    assert Drive("ring_light", True) in actions
    capture = capture_of(actions)
    assert capture.device == "camera" and capture.keep == frozenset({"J1"})
    done = m.handle(looked(capture, frame()), view(job(status="running", node="inspection-1")))
    [(_, kind, data)] = records(done)
    assert kind == "step_done" and data["verdict"] == "pass", data
    values = data["values"]
    assert values["label"] == "T01" and values["delta_e"] < 12 and values["engraving_score"] >= 0.65
    assert len(values["lab"]) == 3
    assert data["snapshot"].startswith("jobs/J1/inspection-") and data["snapshot"].endswith(".jpg")
    assert data["annotated"].endswith("-annotated.jpg") and len(data["sha256"]) == 64
    assert Drive("ring_light", False) in done and not any(isinstance(a, Capture) for a in done)
    assert m.get_status()["counters"]["passed"] == 1


def test_a_part_of_the_wrong_colour_is_rejected_down_the_chute_for_reject_s():
    m = inspection()
    capture = capture_of(m.handle(Tick(), view(job(colour="red"))))
    running = job(colour="red", status="running", node="inspection-1")
    actions = m.handle(looked(capture, frame(colour="blue")), view(running))
    [(_, kind, data)] = records(actions)
    assert kind == "step_failed" and data["check"] == "colour" and "redo" not in data
    assert "colour" in data["reason"] and "blue" in data["reason"], data["reason"]
    assert data["values"]["delta_e"] > 12
    assert Drive("reject_gate", True) in actions
    assert m.handle(Tick(), view(now=101.0)) == []  # the gate stays open reject_s (3 s)
    assert Drive("reject_gate", False) in m.handle(Tick(), view(now=103.5))


def test_a_missing_engraving_goes_back_to_the_laser_once_then_is_rejected():
    m = inspection()
    capture = capture_of(m.handle(Tick(), view(job())))
    actions = m.handle(looked(capture, frame(text=None)), view(job(status="running", node="inspection-1")))
    [(_, kind, data)] = records(actions)
    assert kind == "step_failed" and data["check"] == "engraving" and data["redo"] == "laser"
    assert not any(isinstance(a, Drive) and a.device == "reject_gate" for a in actions)  # back on the belt
    # the second time (the laser made it twice already): rejected
    capture = capture_of(m.handle(Tick(), view(job(laser_attempts=2))))
    actions = m.handle(looked(capture, frame(text=None)), view(job(laser_attempts=2, status="running",
                                                                       node="inspection-1")))
    [(_, kind, data)] = records(actions)
    assert kind == "step_failed" and "redo" not in data and Drive("reject_gate", True) in actions


def test_frames_that_cannot_be_judged_are_taken_again_then_the_part_fails_with_the_last_reason():
    m = inspection(retakes=2)
    capture = capture_of(m.handle(Tick(), view(job())))
    running = view(job(status="running", node="inspection-1"))
    retakes = []
    for _ in range(2):
        actions = m.handle(Captured("camera", "J1", False, error="[hardware.camera] /dev/video0: no frame (unplugged?)"),
                           running)
        retakes += records(actions)
        capture = capture_of(actions)
    assert [(k, d["retake"]) for _, k, d in retakes] == [("step_progress", 1), ("step_progress", 2)]
    assert "unplugged" in retakes[0][2]["reason"]
    actions = m.handle(looked(capture, frame(light=0.1)), running)  # and the last one too dark
    [(_, kind, data)] = records(actions)
    assert kind == "step_failed" and data["reason"].startswith("no judgeable frame after 3 tries: ")
    assert "dark" in data["reason"] and Drive("reject_gate", True) in actions
    assert m.get_status()["counters"]["camera_errors"] == 2


def test_another_parts_label_is_a_retake_not_a_verdict():
    m = inspection()
    capture = capture_of(m.handle(Tick(), view(job())))
    actions = m.handle(looked(capture, frame(label="T09")), view(job(status="running", node="inspection-1")))
    [(_, kind, data)] = records(actions)
    assert kind == "step_progress" and "T09" in data["reason"] and data["snapshot"].startswith("jobs/J1/")
    capture_of(actions)


def test_a_stop_while_the_camera_looks_is_no_verdict_it_looks_again_after_the_reset():
    m = inspection()
    capture = capture_of(m.handle(Tick(), view(job())))
    running = job(status="running", node="inspection-1")
    m.handle(SafetyChanged(True), view(running, stopped=True))
    assert m.handle(looked(capture, frame(colour="blue")), view(running, stopped=True)) == []
    assert m.handle(Tick(), view(running, stopped=True)) == []
    again = m.handle(Resumed(), view(running))
    capture_of(again)


def test_nothing_starts_while_stopped_in_manual_or_while_the_part_is_elsewhere():
    m = inspection()
    assert m.handle(Tick(), view(job(), stopped=True)) == []
    assert m.handle(Tick(), view(job(), mode="manual")) == []
    assert m.handle(Tick(), view(job(position="transfer"))) == []


def test_after_a_restart_a_part_it_was_inspecting_is_looked_at_again():
    m = inspection()
    actions = m.handle(Boot(), view(job(status="running", node="inspection-1")))
    assert ("J1", "step_progress", {"step": "inspection", "resumed": True}) in records(actions)
    assert Drive("reject_gate", False) in actions
    capture_of(actions)


def test_a_calibration_file_replaces_the_nominal_colours_and_a_bad_one_is_refused(tmp_path):
    good = tmp_path / "calibration.toml"
    good.write_text('[colours.red]\nlab = [40.0, 55.0, 35.0]\ntolerance = 6\n')
    m = machine(InspectionOptions(calibration=good), INFO)
    assert m.calibration == {"red": ((40.0, 55.0, 35.0), 6.0)} and "red" in m.get_status()["calibration"]
    bad = tmp_path / "bad.toml"
    bad.write_text('[colours.red]\nlab = [40.0, 55.0]\ntolerance = 6\n')
    with pytest.raises(ValueError, match=r"colours.red.lab must be \[L, a, b\]"):
        load_calibration(bad)
    missing = machine(InspectionOptions(calibration=tmp_path / "none.toml"), INFO)
    assert "not calibrated" in missing.get_status()["calibration"]


def test_the_example_inspection_station_file_loads_with_this_module():
    from edge.config import load_station

    config = load_station(EXAMPLES / "inspection.toml")
    options = config.station.options
    assert isinstance(options, InspectionOptions) and options.retakes == 3 and options.calibration is not None
    m = machine(options, StationInfo("inspection-1", "inspection", {n: d.type for n, d in config.hardware.items()}))
    assert m.options.reject_gate == "reject_gate" and m.options.light == "ring_light" and m.options.camera == "camera"
    only = machine(options, StationInfo("inspection-1", "inspection", {"overhead": "camera"}))
    assert only.options.camera == "overhead"  # the only camera declared, whatever its name


# ---------------------------------------------------------------- the ledger's redo

def test_a_redo_puts_the_earlier_step_and_the_inspection_back_to_pending_and_the_job_stays_open():
    from ledger_kit import event

    from edge.ledger import fold

    evs = [event("intake-1", 1, "J1", "created", 1, product="stand", route=ROUTE)]
    for seq, kind in enumerate(ROUTE[:4], start=2):
        evs += [event(f"{kind}-1", seq, "J1", "step_started", seq * 10, station=kind),
                event(f"{kind}-1", seq + 10, "J1", "step_done", seq * 10 + 5, station=kind)]
    evs += [event("inspection-1", 1, "J1", "step_started", 100, station="inspection", auto=True),
            event("inspection-1", 2, "J1", "step_failed", 101, station="inspection", reason="engraving: missing",
                  redo="laser")]
    state = fold("J1", evs)
    assert state.status == "in_progress" and state.next_step == "laser"
    assert state.step("laser").status == "pending" and state.step("laser").reason == "redo: engraving: missing"
    assert state.step("inspection").status == "pending"
    evs += [event("laser-1", 30, "J1", "step_started", 110, station="laser"),  # made again: no conflict
            event("laser-1", 31, "J1", "step_done", 111, station="laser")]
    state = fold("J1", evs)
    assert state.step("laser").attempts == 2 and state.next_step == "inspection" and not state.conflicts
    # a redo naming a step not done (or not on the route) changes nothing: the part has failed
    odd = [*evs[:-4], event("inspection-1", 2, "J1", "step_failed", 101, station="inspection", reason="x",
                            redo="pickup")]
    assert fold("J1", odd).status == "failed"


# ---------------------------------------------------------------- snapshots under a budget

def test_snapshots_rotate_out_oldest_first_never_those_of_open_jobs(tmp_path):
    import os

    shots = Snapshots(tmp_path)
    image = frame()
    for n, job_id in enumerate(["OLD1", "OLD2", "OPEN"]):
        files = shots.save(job_id, {"inspection-1.jpg": image})
        [(path, digest)] = files.items()
        assert hashlib.sha256((tmp_path / path).read_bytes()).hexdigest() == digest
        os.utime(tmp_path / path, (1000 + n, 1000 + n))
    size = (tmp_path / "jobs" / "OPEN" / "inspection-1.jpg").stat().st_size
    removed = shots.rotate(int(size * 2.5), keep={"OPEN"})
    assert [p.parent.name for p in removed] == ["OLD1"]
    removed = shots.rotate(0, keep={"OPEN"})  # even over budget, the open job's stays
    assert [p.parent.name for p in removed] == ["OLD2"]
    assert (tmp_path / "jobs" / "OPEN" / "inspection-1.jpg").exists()
    with pytest.raises(ValueError):
        shots.save("../escape", {"x.jpg": image})


# ---------------------------------------------------------------- a real node, the image-folder camera

def inspection_node(tmp_path, monkeypatch):
    from trailer import example_station

    from edge.config import load_station
    from edge.node import Node

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    config = load_station(example_station("inspection", tmp_path, bench=True))
    node = Node(config, LINE, tick=0.1)

    def arrive(event) -> None:  # on the loop thread: the finished part reaches the camera
        j, colour = event.data["job"], event.data["colour"]
        node.record_many([(j, "created", {"product": "stand", "route": ROUTE, "order": {
            "order_id": j, "product": "stand", "options": {"colour": colour, "text": "Zoë"}}}),
            (j, "carrier", {"carrier": event.data["carrier"]}),
            *[(j, "step_done", {"step": s}) for s in ("intake", "laser", "printer", "transfer")],
            (j, "step_arrived", {"step": "inspection", "carrier": event.data["carrier"]})])

    node.on("test_arrive", arrive)
    return node, tmp_path / "frames"


def status(node, job_id: str, step: str | None = None) -> str:
    """A job's status, or one of its steps'."""
    state = node.store.job(job_id)
    if state is None:
        return "unknown"
    return state.status if step is None else state.step(step).status


def show(folder: Path, image) -> None:
    """Put exactly this picture in front of the file camera."""
    for old in folder.iterdir():
        old.unlink()
    tmp = folder.parent / "next.png"
    Image.fromarray(image).save(tmp)
    tmp.rename(folder / "frame.png")


def test_a_real_node_inspects_keeps_the_snapshot_rejects_and_goes_on_without_a_camera(tmp_path, monkeypatch):
    from trailer import pin_history, running, wait_for

    node, folder = inspection_node(tmp_path, monkeypatch)
    text = expected_strokes(STAND, {"text": "Zoë"}, LINE)
    with running(node):
        gate = node.board.outputs["reject_gate"]
        show(folder, render(layout=product_layout(STAND), label="T04", colour=LINE.colours["green"].srgb,
                            strokes=text, size=(1640, 1232), angle_deg=4))
        node.post("test_arrive", {"job": "J1", "colour": "green", "carrier": "T04"})
        wait_for(lambda: status(node, "J1", "inspection") == "done", 30)
        show(folder, render(layout=product_layout(STAND), label="T05", colour=LINE.colours["white"].srgb,
                            strokes=text, size=(1640, 1232)))
        node.post("test_arrive", {"job": "J2", "colour": "black", "carrier": "T05"})
        wait_for(lambda: status(node, "J2") == "failed", 30)
        for old in folder.iterdir():  # the camera gives nothing any more
            old.unlink()
        node.post("test_arrive", {"job": "J3", "colour": "red", "carrier": "T06"})
        wait_for(lambda: status(node, "J3") == "failed", 30)
        wait_for(lambda: pin_history(gate).count(True) == 2 and not gate.value, 10)  # opened, shut reject_s later
        levels = pin_history(gate)
        assert node.running and node.get_status()["station"]["counters"]["rejected"] == 2
    done = [e for e in node.store.job_events("J1") if e.type == "step_done" and e.step == "inspection"][-1]
    shot = tmp_path / "inspection" / "files" / done.data["snapshot"]
    assert hashlib.sha256(shot.read_bytes()).hexdigest() == done.data["sha256"]
    assert (tmp_path / "inspection" / "files" / done.data["annotated"]).exists()
    assert done.data["values"]["label"] == "T04"
    j2 = node.store.job("J2").step("inspection")
    assert "colour" in j2.reason and "white" in j2.reason, j2.reason
    j3 = node.store.job("J3").step("inspection")
    assert j3.reason.startswith("no judgeable frame after 4 tries: camera: ") and "no images" in j3.reason
    assert levels == [False, True, False, True, False]  # the gate opened for each reject, and shut


# ---------------------------------------------------------------- edge inspection calibrate

def calibration_station(tmp_path) -> Path:
    from trailer import example_station

    path = example_station("inspection", tmp_path, bench=True)
    text = re.sub(r'^calibration = "[^"]*"', f'calibration = "{tmp_path / "cal.toml"}"', path.read_text(), flags=re.M)
    assert str(tmp_path / "cal.toml") in text
    path.write_text(text)
    return path


def test_calibrate_measures_each_colour_and_writes_tolerances_the_station_then_uses(tmp_path):
    from edge import vision

    station = calibration_station(tmp_path)
    for colour in ("red", "blue"):
        (tmp_path / "ref" / colour).mkdir(parents=True)
        for n in range(4):  # the camera sees a spool a little warmer than its nominal colour
            image = render(layout=product_layout(STAND), label="T01", colour=LINE.colours[colour].srgb,
                           strokes=None, angle_deg=3 * n - 4, noise=2, light=0.95 + 0.03 * n, seed=n)
            Image.fromarray(image).save(tmp_path / "ref" / colour / f"{n}.png")
    result = run_edge("inspection", "calibrate", "--config", str(station), "--images", str(tmp_path / "ref"),
                      "--colour", "red", "--colour", "blue", "--frames", "4", "--yes")
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "red" in result.stdout
    doc = tomllib.loads((tmp_path / "cal.toml").read_text())
    red = doc["colours"]["red"]
    assert vision.delta_e(red["lab"], vision.hex_to_lab(LINE.colours["red"].srgb)) < 4
    assert red["tolerance"] == min(12, red["nearest_delta_e"] / 2) and red["frames"] == 4  # the line file's 12
    assert load_calibration(tmp_path / "cal.toml")["blue"][1] == doc["colours"]["blue"]["tolerance"]
    # measuring one colour again keeps the other
    again = run_edge("inspection", "calibrate", "--config", str(station), "--images", str(tmp_path / "ref"),
                     "--colour", "blue", "--frames", "2", "--yes")
    assert again.returncode == 0, again.stderr
    assert set(tomllib.loads((tmp_path / "cal.toml").read_text())["colours"]) == {"red", "blue"}


def test_calibrate_asks_for_each_colour_and_measures_the_stations_own_camera(tmp_path):
    station = calibration_station(tmp_path)
    image = render(layout=product_layout(STAND), label="T01", colour=LINE.colours["green"].srgb, strokes=None)
    Image.fromarray(image).save(tmp_path / "frames" / "green.png")
    skip_but_green = "".join("\n" if c == "green" else "s\n" for c in sorted(LINE.colours))
    result = run_edge("inspection", "calibrate", "--config", str(station), "--frames", "2", input=skip_but_green)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("reference part in its tray under the camera") == len(LINE.colours)
    assert set(tomllib.loads((tmp_path / "cal.toml").read_text())["colours"]) == {"green"}
    cut = run_edge("inspection", "calibrate", "--config", str(station), "--colour", "red", input="")
    assert cut.returncode == 1 and "no answer (end of input): nothing written" in cut.stderr


def test_calibrate_says_what_is_wrong(tmp_path):
    station = calibration_station(tmp_path)
    (tmp_path / "ref" / "red").mkdir(parents=True)
    Image.fromarray(render(layout=product_layout(STAND), label="", colour=LINE.colours["red"].srgb,
                           strokes=None)).save(tmp_path / "ref" / "red" / "0.png")
    no_label = run_edge("inspection", "calibrate", "--config", str(station), "--images", str(tmp_path / "ref"),
                        "--colour", "red", "--frames", "2", "--yes")
    assert no_label.returncode == 1 and "red: only 0 of 2 frames could be measured" in no_label.stderr
    assert "label" in no_label.stderr
    unknown = run_edge("inspection", "calibrate", "--config", str(station), "--colour", "purple", "--yes")
    assert unknown.returncode == 2 and "purple" in unknown.stderr
    laser = run_edge("inspection", "calibrate", "--config", str(EXAMPLES / "laser.toml"), "--yes")
    assert laser.returncode == 2 and "calibration is for an inspection station" in laser.stderr
    station.write_text(re.sub(r'^calibration = "[^"]*"\n', "", station.read_text(), flags=re.M))
    plain = run_edge("inspection", "calibrate", "--config", str(station), "--yes")
    assert plain.returncode == 2 and "no calibration file" in plain.stderr


def test_measured_values_reach_the_ledger_as_plain_json():
    import numpy as np

    from stations.inspection import plain

    got = plain({"lab": (np.float32(42.5), 1, float("nan")), "n": np.int64(3), "ok": np.bool_(True),
                 "inf": float("inf"), "text": "T01"})
    assert got == {"lab": [42.5, 1, None], "n": 3, "ok": True, "inf": None, "text": "T01"}


def test_the_simulated_world_shows_each_part_and_its_defects_to_the_camera(tmp_path, monkeypatch):
    """`edge run --world`: the frames are rendered from the job at the station; a part without its
    engraving goes back to the laser (the line file's redo), a dark frame is taken again."""
    from trailer import running, wait_for

    from edge.sim.world import World

    node, _folder = inspection_node(tmp_path, monkeypatch)
    world = World(node)
    with running(node):
        assert node.board.cameras["camera"].status()["source"] == "rendered"
        world.defect("no_engraving")
        node.post("test_arrive", {"job": "J1", "colour": "blue", "carrier": "T02"})
        wait_for(lambda: (s := node.store.job("J1")) is not None and s.next_step == "laser", 30)
        world.defect("dark")
        node.post("test_arrive", {"job": "J2", "colour": "white", "carrier": "T03"})
        wait_for(lambda: status(node, "J2", "inspection") == "done", 30)
    j1 = node.store.job("J1")
    assert j1.status == "in_progress" and j1.step("laser").status == "pending"
    assert j1.step("laser").reason.startswith("redo: engraving: ")
    [failed] = [e for e in node.store.job_events("J1") if e.type == "step_failed"]
    assert failed.data["redo"] == "laser" and failed.data["check"] == "engraving"
    retakes = [e.data for e in node.store.job_events("J2") if e.type == "step_progress" and "retake" in e.data]
    assert len(retakes) == 1 and "too dark" in retakes[0]["reason"]
    done = [e for e in node.store.job_events("J2") if e.type == "step_done"][-1]
    assert done.data["values"]["label"] == "T03" and done.data["takes"] == 2


def test_a_calibration_file_of_any_shape_loads_or_says_what_is_wrong(tmp_path):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    path = tmp_path / "cal.toml"
    numbers = st.one_of(st.integers(-300, 300), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3))
    entry = st.fixed_dictionaries({}, optional={"lab": st.lists(numbers, max_size=4), "tolerance": numbers})

    @settings(max_examples=150, deadline=None)
    @given(st.one_of(st.text(max_size=60), st.dictionaries(st.sampled_from(["red", "blue"]), entry, max_size=2)))
    def check(content):
        import tomli_w

        try:
            path.write_text(content if isinstance(content, str) else tomli_w.dumps({"colours": content}))
        except (ValueError, TypeError):
            return  # not writable as TOML (NaN): nothing to load
        try:
            loaded = load_calibration(path)
        except ValueError as exc:
            assert str(exc).startswith(f"calibration {path}")
            return
        for lab, tolerance in loaded.values():
            assert len(lab) == 3 and 0 < tolerance <= 100

    check()
