"""Transfer: the conveyor carries each carrier to the station its job needs next.

The machine alone (pure: events in, actions out), then a real node with gpiozero's MockFactory
pins, where a carrier breaking a beam is a pin pulled low."""

from __future__ import annotations

import re
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_kit import NOW

from edge.engine import (
    Boot,
    Drive,
    Fault,
    InputChanged,
    LedgerChanged,
    Record,
    Resumed,
    SafetyChanged,
    StationInfo,
    Tell,
    Tick,
    View,
)
from edge.ledger import JobState, StepState
from stations.transfer import Transfer, TransferOptions, machine

ROUTE = ("intake", "laser", "printer", "transfer", "inspection", "pickup")
BEAMS = (("laser", "beam_laser"), ("printer", "beam_printer"), ("inspection", "beam_inspection"),
         ("pickup", "beam_pickup"))
HARDWARE = {"conveyor": "digital_output", **{d: "digital_input" for _k, d in BEAMS}}
INFO = StationInfo("transfer-1", "transfer", HARDWARE)
ON, OFF = Drive("conveyor", True), Drive("conveyor", False)


def transfer(**options) -> Transfer:
    return machine(TransferOptions(**{"beams": BEAMS, **options}), INFO)


def job(name: str, position: str, done: tuple[str, ...] = ("intake",), carrier: str = "T01",
        **status: str) -> JobState:
    steps = [StepState(s, "done" if s in done else status.get(s, "pending"), node="transfer-1") for s in ROUTE]
    return JobState(name, status="in_progress", created_by="intake-1.0000cafe:1", carrier=carrier,
                    position=position, steps=steps)


def view(*jobs: JobState, now: float = NOW, safe: bool = True, stopped: bool | None = None,
         **inputs: bool) -> View:
    table = {j.job: j for j in jobs}
    return View(now=now, node="transfer-1", kind="transfer", mode="auto", jobs=table,
                carriers={j.carrier: j.job for j in jobs}, inputs=inputs, safe=safe, line=None,
                lookup=lambda name: table.get(name), stopped=not safe if stopped is None else stopped)


def records(actions) -> list[tuple[str, str, dict]]:
    return [(a.job, a.type, dict(a.data)) for a in actions if isinstance(a, Record)]


def test_a_carrier_goes_to_the_station_its_job_needs_next():
    machine_ = transfer()
    started = machine_.handle(Tick(), view(job("J1", "intake")))
    assert ON in started
    assert records(started) == [("J1", "step_arrived", {"step": "transfer", "to": "laser", "carrier": "T01"})]
    on_belt = job("J1", "transfer")
    arrived = machine_.handle(InputChanged("beam_laser", True), view(on_belt, now=NOW + 4, beam_laser=True))
    assert OFF in arrived
    assert records(arrived) == [("J1", "step_arrived", {"step": "laser", "carrier": "T01"})]
    assert machine_.get_status()["conveyor"] == "stopped"


def test_the_transfer_step_is_the_move_to_the_following_station():
    machine_ = transfer()
    ready = job("J1", "printer", done=("intake", "laser", "printer"))
    started = machine_.handle(Tick(), view(ready))
    assert records(started) == [("J1", "step_started", {"step": "transfer", "to": "inspection", "carrier": "T01"})]
    moving = job("J1", "transfer", done=("intake", "laser", "printer"), transfer="running")
    arrived = machine_.handle(InputChanged("beam_inspection", True), view(moving, now=NOW + 3))
    assert records(arrived) == [("J1", "step_done", {"step": "transfer", "to": "inspection"}),
                                ("J1", "step_arrived", {"step": "inspection", "carrier": "T01"})]


def test_a_busy_station_holds_the_next_carrier():
    machine_ = transfer()
    waiting = job("J1", "laser", done=("intake", "laser"))
    busy = job("J2", "printer", done=("intake", "laser"), carrier="T02", printer="running")
    held = machine_.handle(Tick(), view(waiting, busy))
    assert ON not in held and not records(held)
    assert Tell("job J1 held: the printer is busy with job J2") in held
    assert machine_.get_status()["queue"] == [{"job": "J1", "held": "the printer is busy with job J2"}]
    assert not machine_.handle(Tick(), view(waiting, busy, now=NOW + 1))  # told once, not every second
    gone = job("J2", "transfer", done=("intake", "laser", "printer"), carrier="T02", transfer="failed")
    assert ON in machine_.handle(Tick(), view(waiting, gone, now=NOW + 2))


def test_a_beam_not_reached_in_time_is_a_jam_and_stops_the_conveyor():
    machine_ = transfer(travel_s=20)
    machine_.handle(Tick(), view(job("J1", "intake")))
    on_belt = job("J1", "transfer")
    assert not machine_.handle(Tick(), view(on_belt, now=NOW + 20))
    jammed = machine_.handle(Tick(), view(on_belt, now=NOW + 21))
    assert jammed[0] == OFF
    fault = [a for a in jammed if isinstance(a, Fault)][0]
    assert fault.reason == ("jam: carrier T01 (job J1) did not reach the laser beam (beam_laser) in 20 s")
    assert records(jammed) == [("J1", "step_failed", {"step": "transfer", "to": "laser", "reason": fault.reason})]
    failed = job("J1", "transfer", transfer="failed")
    assert ON not in machine_.handle(LedgerChanged(frozenset({"J1"})), view(failed, now=NOW + 22))
    assert machine_.get_status()["failed_moves"] == ["J1"]
    retried = machine_.handle(LedgerChanged(frozenset({"J1"})), view(job("J1", "transfer"), now=NOW + 60))
    assert retried[0] == Fault(None) and ON in retried  # `retry J1` at the console: it goes again


def test_a_flickering_beam_counts_once():
    machine_ = transfer()
    machine_.handle(Tick(), view(job("J1", "intake", done=("intake", "laser"))))  # to the printer
    on_belt = job("J1", "transfer", done=("intake", "laser"))
    for dt, value in ((1.0, True), (1.05, False), (1.1, True), (1.15, False), (1.2, True)):
        assert not records(machine_.handle(InputChanged("beam_laser", value), view(on_belt, now=NOW + dt)))
    arrived = []
    for dt, value in ((3.0, True), (3.02, False), (3.04, True)):
        arrived += machine_.handle(InputChanged("beam_printer", value), view(on_belt, now=NOW + dt))
    assert records(arrived) == [("J1", "step_arrived", {"step": "printer", "carrier": "T01"})]
    counters = machine_.get_status()["counters"]
    assert (counters["passed"], counters["flicker"], counters["arrived"]) == (1, 3, 1)


def test_a_beam_broken_where_no_carrier_is_going_is_told_and_records_nothing():
    machine_ = transfer()
    actions = machine_.handle(InputChanged("beam_pickup", True), view())
    told = [a for a in actions if isinstance(a, Tell)][0]
    assert not told.ok and "no carrier on its way there" in told.text
    assert not records(actions) and machine_.get_status()["counters"]["unexpected"] == 1


def test_a_part_seen_at_two_stations_is_told_impossible_and_the_line_goes_on():
    machine_ = transfer()
    machine_.handle(Tick(), view(job("J1", "intake", done=("intake", "laser"))))
    on_belt = job("J1", "transfer", done=("intake", "laser"))
    machine_.handle(InputChanged("beam_laser", True), view(on_belt, now=NOW + 1, beam_laser=True))
    both = machine_.handle(InputChanged("beam_printer", True),
                           view(on_belt, now=NOW + 2, beam_laser=True, beam_printer=True))
    told = [a for a in both if isinstance(a, Tell) and not a.ok][0]
    assert "cannot be at two stations" in told.text
    assert records(both) == [("J1", "step_arrived", {"step": "printer", "carrier": "T01"})]
    assert machine_.get_status()["counters"]["impossible"] == 1


def test_an_estop_mid_move_never_restarts_the_conveyor_by_itself():
    machine_ = transfer()
    machine_.handle(Tick(), view(job("J1", "intake")))
    on_belt = job("J1", "transfer")
    assert machine_.handle(SafetyChanged(True), view(on_belt, safe=False)) == [OFF]
    assert not machine_.handle(Tick(), view(on_belt, now=NOW + 1, safe=False))
    assert not machine_.handle(SafetyChanged(False), view(on_belt, now=NOW + 2))
    for second in range(3, 40):  # released, not reset: the engine still feeds ticks
        assert ON not in machine_.handle(Tick(), view(on_belt, now=NOW + second))
    assert machine_.get_status()["stopped"] == "emergency stop"
    # after `reset` the engine feeds inputs again: the first one is the machine's word of it
    machine_.handle(InputChanged("beam_pickup", False), view(on_belt, now=NOW + 41))
    resumed = machine_.handle(Tick(), view(on_belt, now=NOW + 42))
    assert ON in resumed and not records(resumed)  # the same move goes on, not a second one
    assert not machine_.handle(Tick(), view(on_belt, now=NOW + 60))  # its jam clock started again


def test_a_move_interrupted_by_a_power_cut_is_failed_not_repeated():
    machine_ = transfer()
    cut = job("J1", "transfer", done=("intake", "laser", "printer"), transfer="running")
    booted = machine_.handle(Boot(), view(cut))
    assert records(booted) == [("J1", "step_failed", {"step": "transfer", "reason": "interrupted: node restarted"})]
    failed = job("J1", "transfer", done=("intake", "laser", "printer"), transfer="failed")
    for second in range(1, 5):
        assert ON not in machine_.handle(Tick(), view(failed, now=NOW + second))
    assert machine_.get_status()["failed_moves"] == ["J1"]


def test_hardware_the_keys_name_must_be_declared_with_the_right_type():
    wrong = StationInfo("transfer-1", "transfer", {**HARDWARE, "beam_printer": "digital_output"})
    with pytest.raises(ValueError, match=r"beams.printer: \[hardware.beam_printer\] is a digital_output"):
        machine(TransferOptions(beams=BEAMS), wrong)
    with pytest.raises(ValueError, match=r"direction: no device \[hardware.reverse\]"):
        machine(TransferOptions(beams=BEAMS, direction="reverse"), INFO)


def test_a_station_file_naming_a_beam_for_an_unknown_station_is_refused_with_its_line(tmp_path):
    from trailer import example_station

    from edge.config import load_station

    path = example_station("transfer", tmp_path)
    path.write_text(path.read_text().replace("printer = \"beam_printer\"", "priter = \"beam_printer\""))
    with pytest.raises(Exception, match=r"transfer.toml:\d+: \[station\] beams: 'priter' is not a station"):
        load_station(path)


def test_a_beam_naming_no_declared_input_is_refused_by_check_config_with_its_line(tmp_path):
    from trailer import example_station, run_edge

    path = example_station("transfer", tmp_path)
    path.write_text(path.read_text().replace('printer = "beam_printer"', 'printer = "beam_printr"')
                    .replace('conveyor = "conveyor"', 'conveyor = "beam_laser"'))
    result = run_edge("check-config", str(path))
    assert result.returncode == 1
    assert re.search(r"transfer.toml:\d+: \[station\] beams: printer: no device \[hardware.beam_printr\] "
                     r"\(did you mean 'beam_printer'\?\)", result.stdout + result.stderr)
    assert "[station] conveyor: [hardware.beam_laser] is a digital_input, not a digital_output" in result.stderr


# ---------------------------------------------------------------- random beams

STEPS = st.lists(st.one_of(
    st.tuples(st.just("beam"), st.sampled_from([d for _k, d in BEAMS] + ["part_at_start"]), st.booleans()),
    st.tuples(st.just("tick"), st.floats(0, 30), st.booleans()),
    st.tuples(st.just("estop"), st.booleans(), st.booleans()),
    st.tuples(st.just("reset"), st.booleans(), st.booleans()),
    st.tuples(st.just("ledger"), st.sampled_from(["intake", "laser", "printer", "transfer"]), st.booleans()),
), max_size=60)


@settings(max_examples=200, deadline=None)
@given(STEPS)
def test_random_beams_and_ticks_never_raise_nor_run_the_conveyor_in_a_fault(steps):
    """The engine's rules around the machine: no inputs while in fault or stopped, `reset` clears."""
    machine_ = transfer()
    now, fault, latched, tripped = float(NOW), None, False, False
    position, inputs = "intake", {}
    machine_.handle(Boot(), view(job("J1", position)))
    for kind, a, b in steps:
        event = None
        if kind == "beam":
            if fault or latched:
                continue
            inputs[a] = b
            event = InputChanged(a, b)
        elif kind == "tick":
            now += a
            event = Tick()
        elif kind == "estop":
            tripped, latched = a, latched or a
            event = SafetyChanged(a)
        elif kind == "reset" and not tripped:
            fault, latched = None, False
            event = Resumed()
        elif kind == "ledger":
            position = a
            event = LedgerChanged(frozenset({"J1"}))
        if event is None:
            continue
        state = job("J1", position, transfer="failed" if b and kind == "ledger" else "pending")
        stopped = bool(fault) or latched or tripped
        for action in machine_.handle(event, view(state, now=now, safe=not tripped, stopped=stopped, **inputs)):
            if isinstance(action, Fault):
                fault = action.reason
            assert action != ON or not (fault or latched or tripped), action
        assert machine_.get_status()["conveyor"] in ("running", "stopped")


# ---------------------------------------------------------------- a real node

def test_a_carrier_on_a_real_transfer_node_runs_to_its_beam_and_stops(tmp_path, monkeypatch):
    from trailer import EXAMPLES, example_station, wait_for

    from edge.config import load_line, load_station
    from edge.node import Node

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    station = example_station("transfer", tmp_path, bench=True)
    config = load_station(station)
    node = Node(config, load_line(EXAMPLES / "line.toml"), tick=0.1)
    node.start()
    runner = threading.Thread(target=node.loop, daemon=True)
    runner.start()

    def launch(_event) -> None:  # on the loop thread, like an event from the intake
        node.record("VISIT1", "created", {"product": "stand", "route": list(ROUTE)})
        node.record("VISIT1", "carrier", {"carrier": "T01"})
        node.record("VISIT1", "step_done", {"step": "intake"})

    node.on("test_launch", launch)
    conveyor = node.board.outputs["conveyor"].device.pin
    try:
        assert node.get_status()["station"]["fault"] is None
        node.post("test_launch")
        wait_for(lambda: any(s.state for s in conveyor.states))
        assert node.store.job("VISIT1").position == "transfer"
        node.board.factory.pin(config.hardware["beam_laser"].pin).drive_low()  # pull-up: broken = low
        wait_for(lambda: node.store.job("VISIT1").position == "laser")
        wait_for(lambda: not conveyor.state)
        levels = [bool(s.state) for s in conveyor.states]
        assert levels[-2:] == [True, False]
        assert node.get_status()["station"]["counters"]["arrived"] == 1
    finally:
        node.post("stop", {"reason": "test over"})
        runner.join(10)
        node.shutdown()



def test_an_estop_on_a_real_transfer_node_stops_the_belt_and_only_reset_lets_it_run_again(tmp_path, monkeypatch):
    from trailer import EXAMPLES, example_station, running, wait_for

    from edge.config import load_line, load_station
    from edge.node import Node

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    station = example_station("transfer", tmp_path, bench=True)
    config = load_station(station)
    node = Node(config, load_line(EXAMPLES / "line.toml"), tick=0.1)

    def launch(_event) -> None:  # on the loop thread, like an event from the intake
        node.record_many([("VISIT2", "created", {"product": "stand", "route": list(ROUTE)}),
                          ("VISIT2", "carrier", {"carrier": "T02"}), ("VISIT2", "step_done", {"step": "intake"})])

    replies: list = []
    node.on("test_launch", launch)
    node.on("test_reset", lambda _e: replies.append(node.commands.run_line("reset")))
    with running(node):
        conveyor = node.board.outputs["conveyor"].device.pin
        estop = node.board.factory.pin(config.hardware["estop"].pin)
        node.post("test_launch")
        wait_for(lambda: conveyor.state)
        estop.drive_high()  # the loop is opened: the stop is pressed mid-move
        wait_for(lambda: node.state == "estop")
        assert not conveyor.state  # off at once, from the input's own callback
        estop.drive_low()  # released
        wait_for(lambda: "released" in (node.reason or ""))
        time.sleep(0.5)  # ticks go by: nothing restarts by itself
        assert not conveyor.state and node.state == "estop"
        node.post("test_reset")
        wait_for(lambda: replies and conveyor.state)  # the operator's reset, and the move carries on
        assert replies[0].ok and "emergency stop" in replies[0].result["cleared"]
        # the reset is in the ledger, on the job whose part was on the belt
        assert "transfer-1: operator: reset, cleared emergency stop" in node.store.job("VISIT2").notes


def test_a_part_the_inspection_sends_back_is_carried_round_the_loop_to_the_laser():
    """After the inspection's redo (the laser and the inspection pending again, the part still at
    the inspection), the belt takes it on, past the pickup and round, to the laser's beam."""
    machine_ = transfer()
    sent_back = job("J1", "inspection", done=("intake", "printer", "transfer"))
    started = machine_.handle(Tick(), view(sent_back))
    assert ON in started
    assert records(started) == [("J1", "step_arrived", {"step": "transfer", "to": "laser", "carrier": "T01"})]
    on_belt = job("J1", "transfer", done=("intake", "printer", "transfer"))
    passing = machine_.handle(InputChanged("beam_pickup", True), view(on_belt, now=NOW + 1, beam_pickup=True))
    assert OFF not in passing and records(passing) == []  # not there yet: it rides on
    arrived = machine_.handle(InputChanged("beam_laser", True), view(on_belt, now=NOW + 2, beam_laser=True))
    assert OFF in arrived and records(arrived) == [("J1", "step_arrived", {"step": "laser", "carrier": "T01"})]
