"""Two nodes of one kind share a step: one of them takes it, the other yields, on every node alike.

The fold alone (pure): two lasers that start one job's laser step cut off from each other; the
first start keeps it unless the other laser's carrier reader says it has the part; whatever
the loser reports afterwards is listed and ignored; an operator's override still decides."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_kit import ROUTE, event

from edge.ledger import Event, fold


def launched(carrier: str = "T01") -> list[Event]:
    return [event("intake-1", 1, "J1", "created", 1, product="stand", route=list(ROUTE)),
            event("intake-1", 2, "J1", "carrier", 2, carrier=carrier),
            event("intake-1", 3, "J1", "step_done", 3, step="intake"),
            event("transfer-1", 1, "J1", "step_arrived", 5, station="transfer", step="laser", carrier=carrier)]


def laser(node: str, seq: int, type_: str, wall: int, **data) -> Event:
    return event(node, seq, "J1", type_, wall, station="laser", **data)


def conflicts(state) -> list[tuple[str, str, str]]:
    return [(c.kind, c.winner, c.loser) for c in state.conflicts]


def test_the_loser_of_a_step_reports_done_and_it_is_ignored_and_listed():
    evs = launched() + [laser("laser-1", 1, "step_started", 10, auto=True),
                        laser("laser-2", 1, "step_started", 11, auto=True),
                        laser("laser-2", 2, "step_done", 13),  # the loser finished first, offline
                        laser("laser-1", 2, "step_done", 14)]
    state = fold("J1", evs)
    step = state.step("laser")
    assert (step.status, step.node, step.started_by, step.attempts) == ("done", "laser-1", "laser-1:1", 1)
    assert conflicts(state) == [("step_contention", "laser-1:1", "laser-2:1"),
                                ("step_contention", "laser-1:1", "laser-2:2")]
    assert "laser-2 reported laser done after laser-1 won it: ignored" in state.conflicts[1].detail


def test_a_node_that_does_not_hold_a_running_step_cannot_report_on_it():
    evs = launched() + [laser("laser-1", 1, "step_started", 10, auto=True),
                        laser("laser-2", 1, "step_progress", 11, percent=80),
                        laser("laser-2", 2, "step_failed", 12, reason="no part here")]
    state = fold("J1", evs)
    step = state.step("laser")
    assert (step.status, step.node, step.progress) == ("running", "laser-1", 0)
    assert [c.loser for c in state.conflicts] == ["laser-2:1", "laser-2:2"]
    assert state.conflicts[0].detail == "laser-2 reported laser progress while laser-1 held it: ignored"


def test_the_laser_whose_carrier_reader_saw_the_tray_wins_though_it_started_later():
    evs = launched() + [laser("laser-1", 1, "step_started", 10, auto=True),
                        laser("laser-2", 1, "step_arrived", 11, step="laser", carrier="T01"),
                        laser("laser-2", 2, "step_started", 12, auto=True),
                        laser("laser-1", 2, "step_done", 13),
                        laser("laser-2", 3, "step_done", 14)]
    state = fold("J1", evs)
    step = state.step("laser")
    assert (step.status, step.node, step.started_by, step.attempts) == ("done", "laser-2", "laser-2:2", 1)
    assert conflicts(state) == [("step_contention", "laser-2:2", "laser-1:1"),
                                ("step_contention", "laser-2:2", "laser-1:2")]
    assert "laser-2 read carrier T01 at the laser: it has the part" in state.conflicts[0].detail


def test_the_carrier_reader_wins_even_after_the_other_laser_reported_the_step_done():
    evs = launched() + [laser("laser-1", 1, "step_started", 10, auto=True),
                        laser("laser-1", 2, "step_done", 12),
                        laser("laser-2", 1, "step_arrived", 20, step="laser", carrier="T01"),
                        laser("laser-2", 2, "step_started", 21, auto=True)]
    running = fold("J1", evs)
    assert (running.step("laser").status, running.step("laser").node, running.status) == (
        "running", "laser-2", "in_progress")
    state = fold("J1", evs + [laser("laser-2", 3, "step_done", 23)])
    assert (state.step("laser").status, state.step("laser").node, state.step("laser").attempts) == (
        "done", "laser-2", 1)
    assert conflicts(state) == [("step_contention", "laser-2:2", "laser-1:1")]


def test_a_read_of_another_carrier_or_by_another_kind_makes_no_holder():
    for arrival in (laser("laser-2", 1, "step_arrived", 11, step="laser", carrier="T09"),
                    event("transfer-1", 2, "J1", "step_arrived", 11, station="transfer", step="laser", carrier="T01")):
        evs = launched() + [laser("laser-1", 1, "step_started", 10), arrival,
                            laser("laser-2", 2, "step_started", 12), laser("laser-2", 3, "step_done", 13)]
        state = fold("J1", evs)
        assert (state.step("laser").status, state.step("laser").node) == ("running", "laser-1")


def test_an_operators_override_still_decides_a_contended_step():
    contended = launched() + [laser("laser-1", 1, "step_started", 10), laser("laser-2", 1, "step_started", 11)]
    done = fold("J1", contended + [event("laser-2", 2, "J1", "override", 20, station="laser", step="laser",
                                         to="done", reason="engraved here")])
    assert (done.step("laser").status, done.step("laser").node, done.step("laser").reason) == (
        "done", "laser-2", "override: engraved here")
    retry = contended + [event("laser-2", 2, "J1", "override", 20, station="laser", step="laser", to="pending",
                               reason="retry by operator"),
                         laser("laser-2", 3, "step_started", 21), laser("laser-2", 4, "step_done", 22)]
    state = fold("J1", retry)  # the loser of the last attempt may take the next one
    assert (state.step("laser").status, state.step("laser").node, state.step("laser").attempts) == (
        "done", "laser-2", 2)


def test_a_step_resumed_after_a_reboot_stays_running_with_its_one_start():
    evs = launched() + [laser("laser-1", 1, "step_started", 10, auto=True),
                        laser("laser-1", 2, "step_progress", 11, percent=40),
                        laser("laser-1", 3, "step_progress", 30, step="laser", resumed=True)]
    step = fold("J1", evs).step("laser")
    assert (step.status, step.node, step.progress, step.attempts, step.auto) == ("running", "laser-1", 40, 1, True)


# ---------------------------------------------------------------- any order, one winner

@st.composite
def contended(draw) -> tuple[list[Event], str, str]:
    """Two lasers each start and finish the step, cut off from each other, at any times; maybe one
    of them read the tray's carrier just before it started. Returns (events, winner's start id,
    loser's start id) as the rule names them."""
    reader = draw(st.sampled_from([None, "laser-1", "laser-2"]))
    evs = launched()
    starts = {}
    for node in ("laser-1", "laser-2"):
        start = draw(st.integers(10, 40))
        counter = draw(st.integers(0, 1))
        seq = 1
        if node == reader:
            evs.append(event(node, seq, "J1", "step_arrived", start, counter, station="laser", step="laser",
                             carrier="T01"))
            counter += 1
            seq += 1
        starts[node] = event(node, seq, "J1", "step_started", start, counter, station="laser", auto=True)
        progress = event(node, seq + 1, "J1", "step_progress", start + 1, station="laser", percent=50)
        done = event(node, seq + 2, "J1", "step_done", start + draw(st.integers(1, 15)), station="laser")
        evs += [starts[node], progress, done]
    first, second = sorted(starts.values(), key=lambda e: e.key)
    winner = starts[reader] if reader else first
    return evs, winner.id, (second if winner is first else first).id


@settings(max_examples=300, deadline=None)
@given(contended(), st.randoms(use_true_random=False), st.lists(st.integers(0, 12), max_size=6))
def test_two_lasers_contending_for_a_step_end_with_one_winner_for_any_delivery_order(case, rnd, dupes):
    evs, winner, loser = case
    delivered = evs + [evs[i] for i in dupes if i < len(evs)]
    rnd.shuffle(delivered)
    state = fold("J1", delivered)
    assert state.to_json() == fold("J1", sorted(evs, key=lambda e: e.key)).to_json()
    step = state.step("laser")
    assert (step.status, step.started_by, step.attempts) == ("done", winner, 1)
    assert step.node == winner.partition(":")[0]
    loser_node = loser.partition(":")[0]
    assert loser in {c.loser for c in state.conflicts}
    assert all(c.loser.startswith(loser_node) for c in state.conflicts)  # nothing of the winner's is refused


def test_reversed_delivery_of_a_contended_step_gives_the_same_state():
    evs = launched() + [laser("laser-1", 1, "step_started", 10), laser("laser-2", 1, "step_arrived", 11,
                                                                       step="laser", carrier="T01"),
                        laser("laser-2", 2, "step_started", 12), laser("laser-1", 2, "step_done", 13)]
    shuffled = list(evs)
    random.Random(7).shuffle(shuffled)
    assert fold("J1", evs[::-1]).to_json() == fold("J1", shuffled).to_json() == fold("J1", evs).to_json()
