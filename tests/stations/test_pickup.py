"""Pickup: the visitor's same QR code opens the locker with their stand; shutting the door
completes the job.

The machine alone (pure: events in, actions out), then a real node with a FIFO scanner and
gpiozero's MockFactory pins, where the only inputs are the scan and the door switch."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_kit import NOW, ROGUE_KEY, make_line, signed

from edge.config import ConfigError, load_station
from edge.engine import (
    Boot,
    Drive,
    Fault,
    Flash,
    InputChanged,
    LedgerChanged,
    Record,
    Scan,
    StationInfo,
    Tell,
    Tick,
    View,
)
from edge.ledger import JobState, StepState
from stations.pickup import LockerSpec, Pickup, PickupOptions, machine

LOCKERS = (LockerSpec("1", "locker_1", "locker_door_1"), LockerSpec("2", "locker_2", "locker_door_2"))
HARDWARE = {"scanner": "scanner", "locker_1": "digital_output", "locker_2": "digital_output",
            "locker_door_1": "digital_input", "locker_door_2": "digital_input"}
INFO = StationInfo("pickup-1", "pickup", HARDWARE)
LINE = make_line()
ROUTE = ("intake", "laser", "printer", "pickup")


def job(name: str, *statuses: str, position: str = "", carrier: str = "", notes: tuple[str, ...] = (),
        status: str = "in_progress", node: str = "pickup-1") -> JobState:
    """A job of the demo route with its steps' statuses (intake, laser, printer, pickup)."""
    steps = [StepState(step, st_, node=node if step == "pickup" else f"{step}-1")
             for step, st_ in zip(ROUTE, statuses + ("pending",) * (4 - len(statuses)), strict=True)]
    return JobState(name, status=status, created_by=f"intake-1.0000cafe:{len(name)}", steps=steps,
                    position=position, carrier=carrier, notes=list(notes))


def finished(name: str, position: str = "pickup", **kw) -> JobState:
    return job(name, "done", "done", "done", position=position, **kw)


def in_locker(name: str, locker: str) -> JobState:
    return job(name, "done", "done", "done", "running", position="pickup",
               notes=(f"pickup-1: stand in locker {locker}",))


def view(*jobs: JobState, now: float = NOW, inputs: dict[str, bool] | None = None, archived=(),
         mode: str = "auto") -> View:
    open_jobs = {s.job: s for s in jobs if s.is_open}
    every = {s.job: s for s in (*jobs, *archived)}
    return View(now=now, node="pickup-1", kind="pickup", mode=mode, jobs=open_jobs,
                carriers={s.carrier: s.job for s in open_jobs.values() if s.carrier}, inputs=inputs or {},
                safe=True, line=LINE, lookup=every.get)


def pickup(**options) -> Pickup:
    return Pickup(PickupOptions(**{"lockers": LOCKERS, **options}), INFO)


def holding(*jobs: tuple[str, str]) -> Pickup:
    """A pickup that came back from a power cut with these (job, locker) stands inside."""
    machine_ = pickup()
    machine_.handle(Boot(), view(*(in_locker(j, lk) for j, lk in jobs)))
    return machine_


def records(actions) -> list[tuple[str, str, dict]]:
    return [(a.job, a.type, dict(a.data)) for a in actions if isinstance(a, Record)]


def told(actions) -> Tell:
    return [a for a in actions if isinstance(a, Tell)][-1]


# ---------------------------------------------------------------- arrival

def test_a_finished_stand_is_given_the_first_free_locker_and_the_ledger_says_which():
    actions = pickup().handle(LedgerChanged(frozenset({"A1"})), view(finished("A1")))
    assert records(actions) == [  # the belt recorded its arrival: not once more here
        ("A1", "step_started", {"step": "pickup", "locker": "1"}),
        ("A1", "note", {"text": "stand in locker 1", "locker": "1"}),
    ]
    assert "put the stand in locker 1" in told(actions).text
    carried = pickup(arrival="finished").handle(LedgerChanged(frozenset({"A1"})),
                                                view(finished("A1", position="inspection")))
    assert records(carried)[0] == ("A1", "step_arrived", {"step": "pickup"})  # the staff carried it here


def test_a_finished_stand_gets_a_locker_only_once_the_belt_brought_it_here():
    on_belt = finished("A1", position="transfer")
    assert pickup().handle(LedgerChanged(frozenset({"A1"})), view(on_belt)) == []
    carried = pickup(arrival="finished").handle(LedgerChanged(frozenset({"A1"})), view(on_belt))
    assert ("A1", "step_started", {"step": "pickup", "locker": "1"}) in records(carried)


def test_a_stand_still_on_the_line_gets_no_locker():
    machine_ = pickup()
    assert machine_.handle(LedgerChanged(frozenset({"A1"})), view(job("A1", "done", "done", "running"))) == []
    assert machine_.get_status()["lockers"]["1"] == {"job": None, "state": "free", "door_shut": True}


def test_with_every_locker_full_a_stand_waits_and_gets_the_next_one_freed():
    machine_ = holding(("A1", "1"), ("A2", "2"))
    first = machine_.handle(LedgerChanged(frozenset({"A3"})), view(in_locker("A1", "1"), in_locker("A2", "2"),
                                                                     finished("A3")))
    assert not records(first) and "no locker is free" in told(first).text
    again = machine_.handle(LedgerChanged(frozenset({"A3"})), view(in_locker("A1", "1"), in_locker("A2", "2"),
                                                                     finished("A3")))
    assert again == []  # told once, not on every ledger change
    machine_.handle(Scan("scanner", signed(order_id="A1")), view(now=NOW))
    machine_.handle(InputChanged("locker_door_1", False), view())
    done = machine_.handle(InputChanged("locker_door_1", True),
                           view(in_locker("A1", "1"), in_locker("A2", "2"), finished("A3")))
    assert ("A3", "step_started", {"step": "pickup", "locker": "1"}) in records(done)
    assert machine_.get_status()["waiting_for_locker"] == []


# ---------------------------------------------------------------- the visitor

def test_the_same_qr_code_opens_the_locker_with_the_stand():
    machine_ = holding(("A1", "1"), ("A2", "2"))
    actions = machine_.handle(Scan("scanner", signed(order_id="A2")),
                              view(in_locker("A1", "1"), in_locker("A2", "2")))
    assert Drive("locker_2", True) in actions and Drive("locker_1", True) not in actions
    assert Flash("green") in actions and "locker 2 is open" in told(actions).text
    assert records(actions) == []  # nothing is recorded until the door shuts again
    assert machine_.get_status()["lockers"]["2"]["state"] == "released"


def test_shutting_the_door_after_taking_the_stand_completes_the_job():
    machine_ = holding(("A1", "1"))
    machine_.handle(Scan("scanner", signed(order_id="A1")), view(in_locker("A1", "1")))
    assert machine_.handle(InputChanged("locker_door_1", False), view(in_locker("A1", "1"))) == []
    actions = machine_.handle(InputChanged("locker_door_1", True), view(in_locker("A1", "1")))
    assert actions[0] == Drive("locker_1", False)
    assert records(actions) == [("A1", "step_done", {"step": "pickup", "locker": "1"}),
                                ("A1", "completed", {"locker": "1"})]
    status = machine_.get_status()
    assert status["lockers"]["1"]["job"] is None and status["collected"] == 1


def test_a_released_lock_nobody_opens_is_locked_again_after_open_s():
    machine_ = holding(("A1", "1"))
    machine_.handle(Scan("scanner", signed(order_id="A1")), view(in_locker("A1", "1"), now=NOW))
    assert machine_.handle(Tick(), view(in_locker("A1", "1"), now=NOW + 9)) == []
    actions = machine_.handle(Tick(), view(in_locker("A1", "1"), now=NOW + 10))
    assert Drive("locker_1", False) in actions and "locked again" in told(actions).text
    assert machine_.get_status()["lockers"]["1"] == {"job": "A1", "state": "holding", "door_shut": True}


def test_the_lock_stays_released_while_the_visitor_has_the_door_open():
    machine_ = holding(("A1", "1"))
    machine_.handle(Scan("scanner", signed(order_id="A1")), view(in_locker("A1", "1"), now=NOW))
    machine_.handle(InputChanged("locker_door_1", False), view(in_locker("A1", "1"), now=NOW + 2))
    assert machine_.handle(Tick(), view(in_locker("A1", "1"), now=NOW + 60)) == []
    assert machine_.get_status()["lockers"]["1"]["state"] == "collecting"


def test_a_stand_not_ready_yet_says_where_it_is():
    machine_ = pickup()
    actions = machine_.handle(Scan("scanner", signed(order_id="A1")),
                              view(job("A1", "done", "running", position="laser")))
    assert told(actions).text == "your stand is at the laser, about 6 minutes"
    assert Flash("amber") in actions
    assert not [a for a in actions if isinstance(a, (Drive, Record))]
    assert machine_.get_status()["not_ready"] == 1


@pytest.mark.parametrize(("state", "where"), [
    (job("A1", "done", "done", position="laser"), "on its way to the printer, about 3 minutes"),
    (job("A1", "done", "done", "pending", position="printer"), "at the printer, about 3 minutes"),
    (job("A1", "done", "failed", position="laser"), "held at the laser: the staff will help"),
    (finished("A1", position="printer"), "on its way to the pickup, any moment now"),
    (finished("A1"), "at the pickup, waiting for a free locker, any moment now"),
], ids=["on_its_way", "arrived", "failed_step", "on_its_way_to_the_pickup", "waiting_for_a_locker"])
def test_the_answer_names_the_place_in_the_visitors_words(state, where):
    actions = pickup(minutes_per_step=3).handle(Scan("scanner", signed(order_id="A1")), view(state))
    assert told(actions).text == f"your stand is {where}"


@pytest.mark.parametrize(("payload", "reason"), [
    ("hello world", "bad_format"),
    ("", "bad_format"),
    ("T99", "unknown_carrier"),
    (signed(order_id="A1", key=ROGUE_KEY), "bad_signature"),
    (signed(order_id="A1", issued_at=NOW - 90 * 86400, expires_at=0), "expired"),
    (signed(order_id="NEVER"), "not_launched"),
    (signed(order_id="OLD"), "already_completed"),
], ids=["garbage", "empty", "unknown_carrier", "forged", "expired", "never_launched", "collected_before"])
def test_a_bad_code_is_refused_red_with_its_reason_and_nothing_opens(payload, reason):
    machine_ = holding(("A1", "1"))
    old = job("OLD", "done", "done", "done", "done", status="completed")
    actions = machine_.handle(Scan("scanner", payload), view(in_locker("A1", "1"), archived=[old]))
    assert not [a for a in actions if isinstance(a, (Drive, Record))]
    assert Flash("red", buzz=True) in actions and not told(actions).ok
    assert machine_.get_status()["refused"] == {reason: 1}
    assert machine_.get_status()["last_scan"]["reason"] == reason


def test_a_carrier_label_tells_the_staff_where_its_job_is_and_opens_nothing():
    machine_ = holding(("A1", "1"))
    actions = machine_.handle(Scan("scanner", "T03"), view(job("A2", "done", "running", carrier="T03")))
    assert told(actions).text == "carrier T03 carries job A2: at the laser, about 6 minutes"
    assert not [a for a in actions if isinstance(a, (Drive, Record))]


def test_a_scan_on_another_scanner_is_not_the_visitors():
    assert pickup(scanner="scanner").handle(Scan("staff_reader", signed(order_id="A1")), view()) == []


# ---------------------------------------------------------------- doors

def test_a_forced_locker_door_is_reported_and_nothing_is_lost():
    machine_ = holding(("A1", "1"))
    actions = machine_.handle(InputChanged("locker_door_1", False), view(in_locker("A1", "1")))
    assert records(actions) == [("A1", "note", {"text": "locker 1 door forced open", "locker": "1"})]
    assert Flash("red", buzz=True) in actions and "door forced open (job A1 inside)" in told(actions).text
    assert not [a for a in actions if isinstance(a, (Fault, Drive))]  # the other lockers go on
    assert machine_.get_status()["forced"] == 1
    assert machine_.get_status()["lockers"]["1"]["state"] == "forced"
    shut = machine_.handle(InputChanged("locker_door_1", True), view(in_locker("A1", "1")))
    assert not records(shut) and "check the stand inside" in told(shut).text
    machine_.handle(Scan("scanner", signed(order_id="A1")), view(in_locker("A1", "1")))
    machine_.handle(InputChanged("locker_door_1", False), view(in_locker("A1", "1")))
    done = machine_.handle(InputChanged("locker_door_1", True), view(in_locker("A1", "1")))
    assert ("A1", "completed", {"locker": "1"}) in records(done)  # the job was kept: still collectable


def test_a_door_change_missed_while_in_manual_mode_is_not_a_forced_door():
    machine_ = holding(("A1", "1"))
    missed = view(in_locker("A1", "1"), inputs={"locker_door_1": False}, mode="manual")
    assert machine_.handle(Tick(), missed) == []
    assert machine_.get_status()["lockers"]["1"]["door_shut"] is False
    assert machine_.get_status()["forced"] == 0


# ---------------------------------------------------------------- restarts and the rest of the line

def test_after_a_power_cut_every_lock_is_shut_and_the_stands_come_back_from_the_ledger():
    machine_ = pickup()
    lost_note = job("A3", "done", "done", "done", "running", position="pickup")
    actions = machine_.handle(Boot(), view(in_locker("A2", "2"), lost_note, inputs={"locker_door_1": True}))
    assert Drive("locker_1", False) in actions and Drive("locker_2", False) in actions
    assert records(actions) == [("A3", "note", {"text": "stand in locker 1", "locker": "1"})]
    lockers = machine_.get_status()["lockers"]
    assert (lockers["1"]["job"], lockers["2"]["job"]) == ("A3", "A2")


def test_a_door_open_at_boot_is_told_not_taken_for_a_forced_one():
    actions = pickup().handle(Boot(), view(inputs={"locker_door_2": False}))
    assert "locker 2: door is open" in told(actions).text and not records(actions)


def test_a_job_cancelled_elsewhere_frees_its_locker():
    machine_ = holding(("A1", "1"))
    cancelled = job("A1", "done", "done", "done", "running", status="cancelled")
    actions = machine_.handle(LedgerChanged(frozenset({"A1"})), view(cancelled))
    assert "locker 1 is free again: job A1 is closed" in told(actions).text
    assert machine_.get_status()["lockers"]["1"]["job"] is None


# ---------------------------------------------------------------- any scan at all

@settings(max_examples=300)
@given(st.one_of(st.text(max_size=300), st.sampled_from(["READY", "LATE", "NEVER"]).map(
    lambda order: signed(order_id=order))))
def test_any_scanned_text_is_answered_and_only_the_code_of_a_finished_job_opens_a_lock(text):
    machine_ = holding(("READY", "2"))
    actions = machine_.handle(Scan("scanner", text),
                              view(in_locker("READY", "2"), job("LATE", "done", "running")))
    assert [a for a in actions if isinstance(a, Tell)]
    assert not [a for a in actions if isinstance(a, Record)]
    opened = [a for a in actions if isinstance(a, Drive) and a.value]
    assert opened == ([Drive("locker_2", True)] if text == signed(order_id="READY") else [])


# ---------------------------------------------------------------- config

def _station(tmp_path, lockers: str, open_s: int = 10) -> str:
    from trailer import example_station

    path = example_station("pickup", tmp_path)
    text = path.read_text().replace("open_s = 10 ", f"open_s = {open_s} ")
    start = text.index("lockers = [")
    end = text.index("]\n", start) + 2
    path.write_text(text[:start] + lockers + "\n" + text[end:])
    return str(path)


def test_the_example_lockers_are_read_with_their_names():
    from trailer import EXAMPLES

    options = load_station(EXAMPLES / "pickup.toml").station.options
    assert options.lockers == (LockerSpec("1", "locker_1", "locker_door_1"),
                               LockerSpec("2", "locker_2", "locker_door_2"))
    assert (options.open_s, options.minutes_per_step, options.scanner) == (10, 3, "scanner")


def test_a_wrong_locker_entry_is_located_and_named(tmp_path):
    path = _station(tmp_path, 'lockers = [{lock = "locker_1", dor = "locker_door_1"}, '
                              '{lock = "locker_1", door = "locker_door_2"}, "locker_2"]', open_s=0)
    with pytest.raises(ConfigError) as err:
        load_station(path)
    text = str(err.value)
    assert "[station] lockers: locker 1: unknown key 'dor' (did you mean 'door'?)" in text
    assert "locker 1: door is required" in text
    assert "locker 3 must be a table" in text
    assert "[station] open_s: 0 is out of range" in text
    assert f"{path}:" in text


def test_two_lockers_on_one_lock_are_refused(tmp_path):
    path = _station(tmp_path, 'lockers = [{lock = "locker_1", door = "locker_door_1"}, '
                              '{lock = "locker_1", door = "locker_door_2"}]')
    with pytest.raises(ConfigError, match="lock 'locker_1' is used by two lockers"):
        load_station(path)


def test_a_locker_on_hardware_of_the_wrong_type_is_a_clear_station_fault():
    options = PickupOptions(lockers=(LockerSpec("1", "locker_door_1", "locker_1"),
                                     LockerSpec("2", "nope", "locker_door_2")))
    with pytest.raises(ValueError) as err:
        machine(options, INFO)
    assert str(err.value) == ("[station] lockers.1: [hardware.locker_door_1] is a digital_input, not a "
                              "digital_output; [station] lockers.2: no device [hardware.nope]; "
                              "[station] lockers.1: [hardware.locker_1] is a digital_output, not a digital_input")


# ---------------------------------------------------------------- a real node

def test_a_visitor_collects_a_stand_at_a_real_pickup_node_with_no_console(tmp_path, monkeypatch):
    from trailer import EXAMPLES, example_station, pin_history, wait_for

    from edge.config import load_line
    from edge.node import Node
    from edge.sim.line import example_order

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    fifo = tmp_path / "scanner.fifo"
    os.mkfifo(fifo)
    station = example_station("pickup", tmp_path, scanner_fifo=fifo, bench=True)
    node = Node(load_station(station), load_line(EXAMPLES / "line.toml"), tick=0.1)
    node.start()
    door = node.board.factory.pin(22)
    door.drive_low()  # the reed switch of locker 1: shut
    store = node.store
    route = ["intake", "laser", "inspection", "pickup"]
    store.append("VISIT1", "created", "intake", {"product": "keyring", "route": route,
                                                  "order": {"order_id": "VISIT1"}})
    for step in route[:-1]:
        store.append("VISIT1", "step_done", step, {"step": step})
    store.append("VISIT1", "step_arrived", "transfer", {"step": "pickup"})  # the belt's beam at the pickup
    node.post("ledger_changed", {"jobs": ["VISIT1"]})
    runner = threading.Thread(target=node.loop, daemon=True)  # signals are the main thread's: no run()
    runner.start()
    writer = os.open(fifo, os.O_WRONLY)
    try:
        wait_for(lambda: node.get_status()["station"]["lockers"]["1"]["job"] == "VISIT1")
        os.write(writer, (example_order("VISIT1") + "\n").encode())
        wait_for(lambda: node.get_status()["station"]["lockers"]["1"]["state"] == "released")
        door.drive_high()  # the visitor opens the door...
        wait_for(lambda: node.get_status()["station"]["lockers"]["1"]["state"] == "collecting")
        door.drive_low()  # ...takes the stand and shuts it
        wait_for(lambda: (s := store.job("VISIT1")) is not None and s.status == "completed")
        assert store.job("VISIT1").step("pickup").status == "done"
        lock = pin_history(node.board.outputs["locker_1"])
        assert lock[-2:] == [True, False]  # released for the visitor, locked again
        assert not any(pin_history(node.board.outputs["locker_2"]))
    finally:
        os.close(writer)
        node.post("stop", {"reason": "test over"})
        runner.join(10)
        node.shutdown()


