"""Intake: a visitor's QR code launches the job, binds a carrier, and the lamp answers.

The machine alone (pure: events in, actions out), then a real node with a FIFO scanner and
gpiozero's MockFactory pins, where the only input is the scan."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_kit import NOW, make_line, signed

from edge.engine import Flash, Record, Scan, StationInfo, Tell, View
from edge.ledger import JobState, StepState
from stations.intake import Intake, IntakeOptions

INFO = StationInfo("intake-1", "intake", {"scanner": "scanner"})
LINE = make_line()
POOL = ("T01", "T02")


def view(jobs: dict[str, JobState] | None = None, now: float = NOW) -> View:
    jobs = jobs or {}
    return View(now=now, node="intake-1", kind="intake", mode="auto", jobs=jobs,
                carriers={s.carrier: s.job for s in jobs.values() if s.carrier}, inputs={}, safe=True,
                line=LINE, lookup=lambda job: jobs.get(job))


def intake(**options) -> Intake:
    return Intake(IntakeOptions(**{"carriers": POOL, **options}), INFO)


def open_job(job: str, carrier: str = "", position: str = "") -> JobState:
    return JobState(job, status="in_progress", created_by=f"intake-1.0000cafe:{len(job)}", carrier=carrier,
                    position=position, steps=[StepState("intake", "done")])


def test_a_good_order_launches_its_job_on_the_first_free_carrier_and_flashes_green():
    actions = intake().handle(Scan("scanner", signed(order_id="A7K2-1")), view({"OLD": open_job("OLD", "T01")}))
    records = [a for a in actions if isinstance(a, Record)]
    assert [(r.job, r.type) for r in records] == [("A7K2-1", "created"), ("A7K2-1", "carrier"),
                                                  ("A7K2-1", "step_started"), ("A7K2-1", "step_done")]
    assert records[0].data["route"] == ["intake", "laser", "printer", "pickup"]
    assert records[1].data == {"carrier": "T02"}
    assert Flash("green") in actions


@pytest.mark.parametrize(("payload", "reason"), [
    ("hello", "bad_format"),
    ("FE1:" + "A" * 50, "bad_format"),
    (signed(issued_at=NOW - 90 * 86400, expires_at=0), "expired"),
    (signed(product="teapot"), "unknown_product"),
    (signed(options={"colour": "purple"}), "bad_option"),
], ids=["garbage", "not_base45_body", "expired", "unknown_product", "bad_option"])
def test_a_bad_code_is_refused_red_with_its_reason_and_records_nothing(payload, reason):
    machine = intake()
    actions = machine.handle(Scan("scanner", payload), view())
    assert not [a for a in actions if isinstance(a, Record)]
    assert Flash("red", buzz=True) in actions
    told = [a for a in actions if isinstance(a, Tell)][0]
    assert not told.ok and reason in told.text
    assert machine.get_status()["refused"] == {reason: 1}


def test_a_second_scan_of_a_launched_order_says_where_the_stand_is_and_creates_nothing():
    jobs = {"A7K2-1": open_job("A7K2-1", "T01", position="laser")}
    actions = intake().handle(Scan("scanner", signed(order_id="A7K2-1")), view(jobs))
    assert not [a for a in actions if isinstance(a, Record)]
    assert "already launched (in_progress, at the laser)" in [a for a in actions if isinstance(a, Tell)][0].text


def test_a_full_line_and_a_pool_with_no_free_carrier_are_told_apart():
    busy = {j: open_job(j, c) for j, c in (("J1", "T01"), ("J2", "T02"))}
    no_carrier = intake().handle(Scan("scanner", signed(order_id="NEW1")), view(busy))
    assert "no free carrier" in [a for a in no_carrier if isinstance(a, Tell)][0].text
    full = intake(max_open_jobs=2).handle(Scan("scanner", signed(order_id="NEW1")), view(busy))
    assert "the line is full" in [a for a in full if isinstance(a, Tell)][0].text


def test_a_scanned_carrier_is_bound_only_within_its_window():
    machine = intake(carrier_scanner="trays", carriers=())
    assert "scan a free carrier first" in machine.handle(Scan("scanner", signed(order_id="X1")), view())[1].text
    machine.handle(Scan("trays", "T42"), view(now=NOW))
    late = machine.handle(Scan("scanner", signed(order_id="X1")), view(now=NOW + 31))
    assert not [a for a in late if isinstance(a, Record)]
    machine.handle(Scan("trays", "T42"), view(now=NOW + 40))
    ok = machine.handle(Scan("scanner", signed(order_id="X1")), view(now=NOW + 45))
    assert Record("X1", "carrier", {"carrier": "T42"}) in ok


def test_a_carrier_still_on_an_open_job_is_refused():
    machine = intake(carrier_scanner="trays", carriers=())
    actions = machine.handle(Scan("trays", "T01"), view({"J1": open_job("J1", "T01")}))
    assert "still carries job J1" in [a for a in actions if isinstance(a, Tell)][0].text


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_any_scanned_text_is_answered_and_only_a_valid_order_records(text):
    actions = intake().handle(Scan("scanner", text), view())
    assert [a for a in actions if isinstance(a, Tell)]  # every scan gets an answer
    assert not [a for a in actions if isinstance(a, Record)]  # random text is never a signed order


# ---------------------------------------------------------------- a real node

def test_a_visitor_scan_at_a_real_intake_node_launches_the_job_with_no_console(tmp_path, monkeypatch):
    from trailer import EXAMPLES, example_station, pin_history, running, wait_for

    from edge.config import load_line, load_station
    from edge.node import Node
    from edge.sim.line import example_order

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    fifo = tmp_path / "scanner.fifo"
    os.mkfifo(fifo)
    station = example_station("intake", tmp_path, scanner_fifo=fifo, bench=True)
    node = Node(load_station(station), load_line(EXAMPLES / "line.toml"), tick=0.1)
    with running(node):
        writer = os.open(fifo, os.O_WRONLY)
        try:
            wait_for(lambda: node.state == "idle")
            os.write(writer, (example_order("VISIT1", text="Zoé") + "\n").encode())
            os.write(writer, b"not an order at all\n")
            wait_for(lambda: node.store.job("VISIT1") is not None and node.get_status()["station"]["refused"])
            state = node.store.job("VISIT1")
            assert state.carrier == "T01" and state.step("intake").status == "done"
            assert node.get_status()["station"]["refused"] == {"bad_format": 1}
            assert any(pin_history(node.board.outputs["light_green"]))
            assert any(pin_history(node.board.outputs["light_red"]))
        finally:
            os.close(writer)


