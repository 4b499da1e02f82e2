"""The generic station (a kind whose module has not landed): a part that arrives gets its step
done after a dwell; an operator's step stays the operator's; two nodes of a kind share a step."""

from __future__ import annotations

from edge.engine import Boot, LedgerChanged, PassThrough, Record, Resumed, Scan, StationInfo, Tick, View
from edge.ledger import JobState, StepState

INFO = StationInfo("laser-1", "laser", {})


def job(position: str = "laser", laser: str = "pending", node: str = "", carrier: str = "T01",
        auto: bool = False) -> JobState:
    return JobState("J1", status="in_progress", created_by="intake-1.0000cafe:1", carrier=carrier, position=position,
                    steps=[StepState("intake", "done"), StepState("laser", laser, node=node, auto=auto)])


def view(state: JobState, now: float = 100.0, safe: bool = True) -> View:
    return View(now=now, node="laser-1", kind="laser", mode="auto", jobs={state.job: state},
                carriers={state.carrier: state.job} if state.carrier else {}, inputs={}, safe=safe, line=None,
                lookup=lambda _j: None, stopped=not safe)


def test_a_part_that_arrived_gets_its_step_started_then_done_after_the_dwell():
    machine = PassThrough(INFO, dwell_s=2)
    assert machine.handle(LedgerChanged(frozenset({"J1"})), view(job())) == [
        Record("J1", "step_started", {"step": "laser", "auto": True})]
    running = job(laser="running", node="laser-1")
    assert machine.handle(Tick(), view(running, now=101)) == []
    assert machine.handle(Tick(), view(running, now=102)) == [Record("J1", "step_done", {"step": "laser"})]


def test_a_part_not_here_yet_or_a_stopped_station_starts_nothing():
    machine = PassThrough(INFO)
    assert machine.handle(Tick(), view(job(position="intake"))) == []
    assert machine.handle(Tick(), view(job(), safe=False)) == []


def test_a_step_an_operator_started_stays_the_operators():
    machine = PassThrough(INFO, dwell_s=0)
    assert machine.handle(Tick(), view(job(laser="running", node="laser-1"), now=500)) == []


def test_when_another_laser_won_the_step_this_one_yields():
    machine = PassThrough(INFO, dwell_s=1)
    machine.handle(Tick(), view(job()))
    assert machine.handle(Tick(), view(job(laser="running", node="laser-2"), now=200)) == []
    assert machine.get_status()["working_on"] == []


def test_a_carrier_read_at_the_station_is_its_arrival():
    machine = PassThrough(INFO, carrier_scanner="reader")
    assert machine.handle(Scan("reader", "T01"), view(job(position="intake"))) == [
        Record("J1", "step_arrived", {"step": "laser", "carrier": "T01"})]
    unknown = machine.handle(Scan("reader", "T99"), view(job(position="intake")))
    assert "carries no open job" in unknown[0].text


def test_a_stopped_station_starts_nothing_until_it_is_resumed():
    from dataclasses import replace

    machine = PassThrough(INFO)
    stopped = replace(view(job()), stopped=True)  # a released emergency stop, not reset yet
    assert machine.handle(Tick(), stopped) == []
    assert machine.handle(Resumed(), view(job())) == [Record("J1", "step_started", {"step": "laser", "auto": True})]


def test_a_step_it_was_running_at_a_power_cut_is_resumed_at_boot_never_started_again():
    machine = PassThrough(INFO, dwell_s=2)  # a fresh machine: the node came back from a power cut
    mine = job(laser="running", node="laser-1", auto=True)
    assert machine.handle(Boot(), view(mine, now=300)) == [
        Record("J1", "step_progress", {"step": "laser", "resumed": True})]
    assert machine.get_status()["working_on"] == ["J1"]
    assert machine.handle(Tick(), view(mine, now=301)) == []  # the dwell runs again from boot
    assert machine.handle(Tick(), view(mine, now=302)) == [Record("J1", "step_done", {"step": "laser"})]


def test_at_boot_an_operators_step_and_another_lasers_step_are_left_alone():
    for state in (job(laser="running", node="laser-1", auto=False), job(laser="running", node="laser-2", auto=True)):
        machine = PassThrough(INFO, dwell_s=0)
        assert machine.handle(Boot(), view(state, now=300)) == []
        assert machine.handle(Tick(), view(state, now=400)) == []


def test_a_node_that_booted_in_manual_resumes_its_step_when_switched_to_auto():
    machine = PassThrough(INFO, dwell_s=2)  # in manual the engine fed it no Boot
    mine = job(laser="running", node="laser-1", auto=True)
    assert machine.handle(Resumed(), view(mine, now=300)) == [
        Record("J1", "step_progress", {"step": "laser", "resumed": True})]
    assert machine.handle(Resumed(), view(mine, now=301)) == []  # resumed once, not per Resumed
    assert machine.handle(Tick(), view(mine, now=302)) == [Record("J1", "step_done", {"step": "laser"})]


def test_a_laser_that_lost_the_step_records_nothing_more_for_it():
    machine = PassThrough(INFO, dwell_s=1)
    assert machine.handle(Tick(), view(job())) == [Record("J1", "step_started", {"step": "laser", "auto": True})]
    for state in (job(laser="running", node="laser-2", auto=True), job(laser="done", node="laser-2")):
        for event in (Tick(), LedgerChanged(frozenset({"J1"})), Resumed(), Boot()):
            assert machine.handle(event, view(state, now=500)) == []


def test_a_carrier_read_here_is_recorded_once_even_when_the_belt_already_put_the_part_here():
    machine = PassThrough(INFO, carrier_scanner="reader")
    at_laser = job(position="laser")
    assert machine.handle(Scan("reader", "T01"), view(at_laser)) == [
        Record("J1", "step_arrived", {"step": "laser", "carrier": "T01"})]  # which laser has it
    assert machine.handle(Scan("reader", "T01"), view(at_laser)) == []
    assert machine.get_status()["tracking"] == "carrier reader"
    assert "no carrier reader" in PassThrough(INFO).get_status()["tracking"]
