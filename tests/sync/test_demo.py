"""`edge demo`, the README's first command: the example stations make a stand by themselves,
from a visitor's scan at intake to the locker at pickup, with nobody driving a console."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from trailer import run_edge

from edge.store import Store

STATIONS = ("intake", "laser", "printer", "transfer", "inspection", "pickup")


def store_carrier(events, job: str) -> str:
    return next(e.data["carrier"] for e in events if e.job == job and e.type == "carrier")


def test_the_demo_line_makes_the_stands_by_itself_and_every_station_agrees(tmp_path):
    result = run_edge("demo", "--visitors", "2", "--workdir", str(tmp_path / "line"), "--json", str(tmp_path / "r.json"),
                      timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "refused, red light: bad_signature" in out
    assert "2 of 2 visitor(s) took their stand home" in out
    assert out.count("collected from locker") == 2
    assert (tmp_path / "line" / "hub" / "mosquitto.conf").exists()

    store = Store.open(tmp_path / "line" / "pickup-1" / "data", readonly=True)
    try:
        events = list(store.events_since({}))
        jobs = {e.job for e in events}
        assert len(jobs) == 2
        for job in jobs:
            state = store.job(job)
            assert state.status == "completed"
            # every step done once, by the station of its kind, on its own
            assert {(s.step, s.status, s.node, s.attempts if s.step != "intake" else 1)
                    for s in state.steps} == {(k, "done", f"{k}-1", 1) for k in STATIONS}
    finally:
        store.close()
    # the laser engraved each visitor's own text through GRBL, the printer printed their colour
    for job in jobs:
        created = next(e for e in events if e.job == job and e.type == "created")
        options = created.data["order"]["options"]
        laser = next(e for e in events if e.job == job and e.type == "step_started" and e.step == "laser")
        printer = next(e for e in events if e.job == job and e.type == "step_started" and e.step == "printer")
        assert laser.data["text"] == options["text"] and laser.data["lines"] > 20
        assert printer.data["file"] == f"stand/{options['colour']}.gcode"
    preview = out.split("The laser's toolpath of order ")[1].split(": ", 1)[1].split("\n")[0]
    assert Path(preview).stat().st_size > 1000
    # the inspection camera looked at each stand (frames rendered by the world) and passed it, its
    # snapshot kept with the job, the snapshot's hash and every measured value in the ledger
    for job in jobs:
        done = next(e for e in events if e.job == job and e.type == "step_done" and e.step == "inspection")
        assert done.data["verdict"] == "pass" and done.data["values"]["label"] == store_carrier(events, job)
        assert done.data["values"]["delta_e"] < 12 and done.data["values"]["engraving_score"] >= 0.65
        shot = tmp_path / "line" / "inspection-1" / "data" / "files" / done.data["snapshot"]
        assert hashlib.sha256(shot.read_bytes()).hexdigest() == done.data["sha256"]
    assert "What the inspection camera saw of it: " in out
    # the run's report, from the six stations' ledgers
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["jobs_total"], report["jobs_completed"], report["jobs_failed"]) == (2, 2, 0)
    assert report["lost_events"] == 0 and report["duplicated_steps"] == 0 and report["nodes_converged"] is True
    assert report["problems"] == [] and report["faults_injected"] == {} and report["operator_actions"] == {}
    assert report["events"] == len(events) and report["latency_ms"]["handoff_p50"] > 0
    # the dashboard never shows a job going backwards
    for job in jobs:
        shown = [line.split(f"job {job} ", 1)[1] for line in out.splitlines() if f"[dashboard] job {job} " in line]
        done_steps = [{part.split(":")[0] for part in state.split()[1:] if part.endswith(":done")} for state in shown]
        assert all(a <= b for a, b in zip(done_steps, done_steps[1:], strict=False)), shown
    operator = [e for e in events if e.type in ("override", "step_skipped", "cancelled") or e.data.get("manual")]
    assert operator == []  # no console command moved the line
    assert len({e.id for e in events}) == len(events)


def test_every_visitor_name_the_demo_draws_is_an_order_the_line_takes_and_the_laser_can_draw():
    from trailer import EXAMPLES

    from edge.config import load_line
    from edge.sim.day import NAMES
    from stations.inspection import expected_strokes

    line = load_line(EXAMPLES / "line.toml")
    stand = line.products["stand"]
    charset = set(stand.options["text"].charset)
    for name in NAMES:
        assert set(name) <= charset and len(name) <= stand.options["text"].max_length, name
        assert expected_strokes(stand, {"text": name}, line), name  # engraved (raises if it cannot be)


def test_the_demo_cameras_pass_every_visitor_stand_in_every_colour():
    """What the simulated world shows the inspection (turned, shifted, a lamp that varies, noise)
    passes for every name and colour the demo draws: a random seed never fails a good stand."""
    import random

    from trailer import EXAMPLES

    from edge import vision
    from edge.config import load_line
    from edge.sim.day import COLOURS, NAMES
    from edge.sim.parts import render
    from stations.inspection import expected_strokes, product_layout

    line = load_line(EXAMPLES / "line.toml")
    stand = line.products["stand"]
    layout = product_layout(stand)
    refs = {n: vision.ColourRef.of_hex(n, c.srgb, c.tolerance) for n, c in line.colours.items()}
    r = random.Random(3)
    verdicts = []
    for i, (name, colour) in enumerate((n, c) for n in NAMES for c in COLOURS):
        strokes = expected_strokes(stand, {"text": name}, line)
        frame = render(layout=layout, label="T01", colour=line.colours[colour].srgb, strokes=strokes,
                       angle_deg=r.uniform(-6, 6), offset_mm=(r.uniform(-3, 3), r.uniform(-3, 3)),
                       light=r.uniform(0.9, 1.1), noise=2.0, seed=i)
        finding = vision.inspect(frame, vision.Expected(("T01",), refs[colour], strokes, tuple(refs.values())), layout)
        verdicts.append((name, colour, finding.verdict, finding.reason))
    assert all(v == "pass" for _n, _c, v, _r in verdicts), [v for v in verdicts if v[2] != "pass"]
