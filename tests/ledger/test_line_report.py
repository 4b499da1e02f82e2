"""The simulated line's report, checked from the nodes' ledgers: lost events, nodes that have not
converged, steps done twice, jobs left open, and the latencies between stations."""

from __future__ import annotations

from ledger_kit import event

from edge.sim.report import checks, line_report

ROUTE = ["intake", "laser", "inspection", "pickup"]


def made(job: str = "J1", wall: int = 1000, redo: bool = False) -> list:
    """One job through its route: intake-1 launches it, each station starts and finishes its step."""
    evs = [event("intake-1", 1, job, "created", wall, product="keyring", route=ROUTE),
           event("intake-1", 2, job, "step_done", wall + 1, station="intake")]
    seq = {"laser": 0, "inspection": 0, "pickup": 0}
    t = wall + 100
    plan = ["laser", "inspection", "laser", "inspection", "pickup"] if redo else ["laser", "inspection", "pickup"]
    for n, kind in enumerate(plan):
        node = f"{kind}-1"
        seq[kind] += 2
        evs.append(event(node, seq[kind] - 1, job, "step_started", t, station=kind))
        if redo and n == 1:
            evs.append(event(node, seq[kind], job, "step_failed", t + 50, station=kind, reason="engraving: missing",
                             redo="laser"))
        else:
            evs.append(event(node, seq[kind], job, "step_done", t + 50, station=kind))
        t += 250
    evs.append(event("pickup-1", 3, job, "completed", t, station="pickup"))
    return evs


def test_a_good_run_is_complete_converged_and_its_latencies_come_from_the_clocks():
    evs = made()
    report = line_report({"intake-1": evs, "laser-1": evs, "pickup-1": evs})
    assert (report["jobs_total"], report["jobs_completed"], report["jobs_failed"]) == (1, 1, 0)
    assert report["lost_events"] == 0 and report["nodes_converged"] and report["duplicated_steps"] == 0
    assert report["latency_ms"]["scan_to_start_p50"] == 100.0  # created at 1000, laser started at 1100
    assert report["latency_ms"]["handoff_p50"] == 200.0  # done at +50, next started 250 later
    assert checks(report, expected_jobs=1) == []


def test_an_event_nobody_holds_and_a_node_behind_are_named():
    evs = made()
    lost = [e for e in evs if e.id != "laser-1:1"]  # the laser's step_started: issued, held by nobody
    report = line_report({"intake-1": lost, "pickup-1": lost[:-1]})
    assert report["lost_events"] == 1
    assert report["missing"] == {"pickup-1": 1} and not report["nodes_converged"]
    problems = checks(report)
    assert any("1 event(s) issued that no node holds" in p for p in problems)
    assert any("pickup-1 lacks 1" in p for p in problems)


def test_a_step_done_twice_is_a_duplicate_but_a_redo_is_not():
    evs = made()
    twice = [*evs, event("laser-1", 7, "J1", "step_done", 1500, station="laser")]
    report = line_report({"a": twice})
    assert report["duplicates"] == [{"job": "J1", "step": "laser"}]
    assert any("J1/laser" in p for p in checks(report))
    redone = made(redo=True)
    report = line_report({"a": redone})
    assert report["duplicated_steps"] == 0 and report["jobs_completed"] == 1, report


def test_a_job_left_open_or_failed_without_a_reason_fails_the_run():
    evs = made()
    report = line_report({"a": evs[:-3]})  # the pickup never happened
    assert report["jobs_open"] == 1 and "1 job(s) neither completed nor failed" in checks(report)
    failed = [*evs[:4], event("laser-1", 2, "J1", "step_failed", 1200, station="laser", reason="")]
    report = line_report({"a": failed})
    assert report["jobs_failed"] == 1 and "a failed job without a reason" in checks(report)
    assert "1 job(s) in the ledgers, 2 launched" in checks(report, expected_jobs=2)  # a visitor's job never made
