"""`edge demo --chaos`: a day with every kind of fault (the hub's broker frozen or killed, a
station killed, the whole trailer's power cut, a station booting an hour behind, noise on the
printer's cable). Whether the line coped is checked here from the stations' own stores, not from
the report the demo wrote."""

from __future__ import annotations

import json
import random

import pytest
from trailer import run_edge

from edge.sim.day import CHAOS_KINDS, make_visitors, plan_chaos
from edge.sim.report import line_report
from edge.store import Store

STATIONS = ("intake", "laser", "printer", "transfer", "inspection", "pickup")


def test_a_day_with_every_fault_loses_nothing_does_nothing_twice_and_ends_agreed(tmp_path):
    keep = tmp_path / "line"
    result = run_edge("demo", "--visitors", "4", "--chaos", ",".join(CHAOS_KINDS), "--speed", "2", "--seed", "5",
                      "--workdir", str(keep), "--json", str(tmp_path / "r.json"), timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    out = result.stdout
    for kind in CHAOS_KINDS:
        assert f"!! chaos[{kind}]" in out, kind

    ledgers, ids = {}, {}
    for kind in STATIONS:
        store = Store.open(keep / f"{kind}-1" / "data", readonly=True)
        try:
            ledgers[kind] = list(store.events_since({}))
            ids[kind] = [d["id"] for d in store.db.table("events").all()]
            ids[kind] += [e["id"] for _job, rec in store.archive.records() for e in rec.get("events", [])]
            incarnations = store.incarnations
        finally:
            store.close()
        assert len(ids[kind]) == len(set(ids[kind])), f"{kind} stored an event twice"
        assert len(incarnations) >= 1
    mine = line_report(ledgers)
    assert mine["nodes_converged"] and mine["missing"] == {}
    assert mine["lost_events"] == 0 and mine["duplicated_steps"] == 0
    assert mine["jobs_total"] == 4 and mine["jobs_open"] == 0
    assert mine["jobs_completed"] + mine["jobs_failed"] == 4
    assert all(f["reason"] for f in mine["failed"])
    # every station booted again at least once (the trailer's power cut): its boot counter says so,
    # and every station's events are in the pickup's ledger
    for kind in STATIONS:
        assert int((keep / f"{kind}-1" / "data" / "session").read_text()) >= 2, kind
    assert len({e.origin for e in ledgers["pickup"]}) == len(STATIONS)

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["faults_injected"] == {kind: 1 for kind in CHAOS_KINDS}
    assert report["problems"] == []
    for key in ("jobs_total", "jobs_completed", "jobs_failed", "lost_events", "duplicated_steps", "nodes_converged"):
        assert report[key] == mine[key], key
    lat = report["latency_ms"]
    assert {"scan_to_start_p50", "scan_to_start_p99", "handoff_p50", "handoff_p99"} <= set(lat)
    assert report["duration_s"] > 0
    # the broker really was restarted with its persistence (the power cut), and frozen or killed
    log = (keep / "hub" / "mosquitto.log").read_text(errors="replace")
    assert log.count("mosquitto version") >= 2


def test_the_same_seed_plans_the_same_day():
    a = make_visitors(5, random.Random(9))
    b = make_visitors(5, random.Random(9))
    assert [(v.name, v.colour, v.arrives_s) for v in a] == [(v.name, v.colour, v.arrives_s) for v in b]
    assert [v.job for v in a] == sorted(v.job for v in a) and len({v.job for v in a}) == 5
    assert a[0].arrives_s == 0 and all(x.arrives_s < y.arrives_s for x, y in zip(a, a[1:], strict=False))
    many = make_visitors(200, random.Random(9))
    assert len({v.job for v in many}) == 200 and [v.job for v in many] == sorted(v.job for v in many)
    faster = make_visitors(5, random.Random(9), speed=4)
    assert faster[-1].arrives_s == pytest.approx(a[-1].arrives_s / 4, abs=0.05)


def test_faults_are_planned_once_each_in_the_window_and_apart():
    faults = plan_chaos(list(CHAOS_KINDS), random.Random(3), 10, 110, list(STATIONS))
    assert sorted(f.kind for f in faults) == sorted(CHAOS_KINDS)
    times = [f.at_s for f in faults]
    assert times == sorted(times) and times[0] >= 10 and times[-1] <= 110
    assert min(b - a for a, b in zip(times, times[1:], strict=False)) >= 100 / 5 * 0.4 - 0.1
    targets = {f.kind: f.target for f in faults}
    assert targets["node"] in STATIONS and targets["clock"] in STATIONS
    assert targets["broker"] in ("freeze", "kill")
    assert plan_chaos([], random.Random(3), 0, 10, list(STATIONS)) == []


@pytest.mark.parametrize(("args", "message"), [
    (["--chaos", "meteor"], "--chaos: meteor is not a fault kind"),
    (["--visitors", "0"], "--visitors 0: from 1 to 200"),
    (["--speed", "100"], "--speed 100: from 0.25 to 8"),
    (["--mqtt-port", "70000"], "--mqtt-port 70000: not a TCP port"),
])
def test_bad_arguments_are_named_and_nothing_starts(args, message):
    result = run_edge("demo", *args, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr
    assert "broker" not in result.stdout


def test_a_dashboard_port_in_use_is_named():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_edge("demo", "--mqtt-port", str(port), timeout=30)
    assert result.returncode == 2
    assert f"--mqtt-port {port}: cannot listen there" in result.stderr


class ConsoleOfANode:
    """A station's console as the demo's operator meets it: `cancel` with steps left asks to be
    confirmed (an error until `--force`), as the real command registry does."""

    name = "laser-1"
    running = True

    def __init__(self):
        self.lines: list[str] = []

    def command(self, line: str, timeout: float = 5):
        self.lines.append(line)
        if line.startswith("cancel") and not line.endswith("--force"):
            raise RuntimeError("cancel: steps are left; repeat with --force to do it anyway")
        return {"ok": True}


def test_the_demo_operator_unlocks_a_locked_laser_retries_then_takes_the_part_out():
    from edge.sim.day import MAX_RETRIES, Day, Visitor

    class Quiet:
        def operator(self, _text: str) -> None: ...

    day = Day.__new__(Day)  # only what the operator uses: the consoles, the clock, the view
    laser = ConsoleOfANode()
    day.nodes, day.speed, day.view = {"laser": laser, "pickup": laser}, 1.0, Quiet()
    day.retries, day.failed_since, day.operator_actions = {}, {}, {}
    visitor = Visitor("Aurélien", "red", "V1", "FE1:...", 0.0)
    step = {"step": "laser", "status": "failed",
            "reason": "engraving stopped: resume prelude line 'G21G90': error:9 G-code locked out during alarm"}
    now = 0.0
    for _ in range(MAX_RETRIES + 1):
        day._operator(visitor, step, now)  # noticed
        now += 10
        day._operator(visitor, step, now)  # acted on
        now += 10
    assert laser.lines.count("unlock") == MAX_RETRIES  # each retry after looking at the machine
    assert laser.lines.count("retry V1") == MAX_RETRIES
    assert laser.lines[-1].startswith("cancel V1 part taken out") and laser.lines[-1].endswith("--force")
    assert visitor.outcome.startswith("failed: laser: ")  # the day can end: that visitor's stand is out
