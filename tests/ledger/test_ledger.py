"""The ledger: merge is a set union, fold is the same truth on every node, conflicts are visible."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_kit import ROUTE, event

from edge.clock import Timestamp
from edge.ledger import EVENT_TYPES, Event, fold, fold_all, merge

NODES = ("intake-1", "intake-2", "laser-1", "laser-2")


@st.composite
def events(draw) -> Event:
    node = draw(st.sampled_from(NODES))
    type_ = draw(st.sampled_from(EVENT_TYPES))
    data: dict = {}
    if type_ == "created":
        data = {"product": "stand", "route": list(ROUTE), "order": {"order_id": "J1"}}
    elif type_ == "override":
        data = {"step": draw(st.sampled_from(ROUTE)), "to": draw(st.sampled_from(["done", "pending", "skipped"]))}
    elif type_ != "note":
        data = {"step": draw(st.sampled_from(ROUTE))}
    else:
        data = {"text": draw(st.sampled_from(["jam", "ok"]))}
    return Event(f"{node}:{draw(st.integers(1, 8))}", draw(st.sampled_from(["J1", "J2"])), type_,
                 draw(st.sampled_from(ROUTE)), Timestamp(draw(st.integers(0, 6)), draw(st.integers(0, 2)), node), data)


LEDGER = st.lists(events(), max_size=25)


def _state(ledger) -> dict:
    return {job: s.to_json() for job, s in fold_all(ledger).items()}


@settings(max_examples=200, deadline=None)
@given(LEDGER, LEDGER)
def test_merge_is_commutative(a, b):
    assert merge(a, b) == merge(b, a)


@settings(max_examples=200, deadline=None)
@given(LEDGER, LEDGER, LEDGER)
def test_merge_is_associative(a, b, c):
    assert merge(merge(a, b).values(), c) == merge(a, merge(b, c).values())


@settings(max_examples=200, deadline=None)
@given(LEDGER)
def test_merge_is_idempotent(a):
    assert merge(a, a) == merge(a)


@settings(max_examples=200, deadline=None)
@given(LEDGER, st.randoms(use_true_random=False), st.lists(st.integers(0, 24), max_size=10))
def test_fold_is_the_same_for_any_delivery_order_and_duplicates(ledger, rnd, dupes):
    delivered = list(ledger) + [ledger[i] for i in dupes if i < len(ledger)]
    rnd.shuffle(delivered)
    assert _state(delivered) == _state(merge(ledger).values())


@settings(max_examples=100, deadline=None)
@given(LEDGER, LEDGER)
def test_two_nodes_that_exchange_everything_agree(a, b):
    at_intake = merge(a, b).values()
    at_laser = merge(b, a, b).values()
    assert _state(at_intake) == _state(at_laser)


def test_job_walks_its_route_to_done():
    steps = [event("intake-1", 1, "J1", "created", 1, product="stand", route=list(ROUTE))]
    for seq, kind in enumerate(ROUTE, start=2):
        steps += [event(f"{kind}-1", seq, "J1", "step_started", seq * 10, station=kind),
                  event(f"{kind}-1", seq + 10, "J1", "step_done", seq * 10 + 5, station=kind)]
    state = fold("J1", steps[:-2])
    assert (state.status, state.next_step) == ("in_progress", "pickup")
    assert fold("J1", steps).status == "done"


def test_same_order_launched_at_two_intakes_offline_keeps_the_first_and_reports_it():
    first = event("intake-2", 7, "J1", "created", 100, product="stand", route=list(ROUTE))
    second = event("intake-1", 3, "J1", "created", 100, 1, product="stand", route=["intake", "pickup"])
    state = fold("J1", [second, first])
    assert state.created_by == "intake-2:7"
    assert [s.step for s in state.steps] == list(ROUTE)
    assert [(c.kind, c.winner, c.loser) for c in state.conflicts] == [("duplicate_launch", "intake-2:7", "intake-1:3")]


def test_step_started_at_two_lasers_goes_to_the_earliest_and_is_reported():
    created = event("intake-1", 1, "J1", "created", 1, product="stand", route=list(ROUTE))
    a = event("laser-1", 1, "J1", "step_started", 50, station="laser")
    b = event("laser-2", 1, "J1", "step_started", 50, station="laser")  # same hlc: id breaks the tie
    state = fold("J1", [b, created, a])
    assert state.step("laser").node == "laser-1"
    assert [(c.kind, c.winner, c.loser) for c in state.conflicts] == [("step_contention", "laser-1:1", "laser-2:1")]


def test_step_reported_after_cancel_is_kept_but_flagged():
    evs = [event("intake-1", 1, "J1", "created", 1, product="stand", route=list(ROUTE)),
           event("intake-1", 2, "J1", "cancelled", 2),
           event("laser-1", 1, "J1", "step_done", 3, station="laser")]
    state = fold("J1", evs)
    assert state.status == "cancelled"
    assert state.step("laser").status == "pending"
    assert state.conflicts[0].kind == "event_after_close"


def test_operator_override_marks_a_jammed_step_done():
    evs = [event("intake-1", 1, "J1", "created", 1, product="stand", route=["intake", "laser"]),
           event("intake-1", 2, "J1", "step_done", 2, step="intake"),
           event("laser-1", 1, "J1", "step_failed", 3, station="laser", reason="GRBL ALARM:1"),
           event("laser-1", 2, "J1", "override", 4, station="laser", step="laser", to="done", reason="by hand")]
    assert fold("J1", evs[:3]).status == "failed"
    state = fold("J1", evs)
    assert state.status == "done"
    assert state.step("laser").reason == "override: by hand"


def test_events_before_the_launch_arrives_are_not_lost():
    early = event("laser-1", 1, "J1", "step_started", 5, station="laser")
    assert fold("J1", [early]).status == "unknown"
    state = fold("J1", [early, event("intake-1", 1, "J1", "created", 9, product="stand", route=list(ROUTE))])
    assert state.step("laser").status == "running"
    assert state.step("laser").on_route


def test_malformed_remote_event_is_refused_with_a_reason():
    import pytest

    with pytest.raises(ValueError, match="not '<node>.<incarnation>:<seq>'"):
        Event.from_json({"id": "laser-1", "job": "J1", "type": "note", "station": "laser", "hlc": [1, 0, "x"]})
    with pytest.raises(ValueError, match="event type"):
        Event.from_json({"id": "laser-1:1", "job": "J1", "type": "explode", "station": "laser", "hlc": [1, 0, "x"]})


def test_job_cancelled_at_intake_and_handed_over_at_pickup_is_reported():
    evs = [event("intake-1", 1, "J1", "created", 1, product="stand", route=list(ROUTE)),
           event("intake-1", 2, "J1", "cancelled", 5),
           event("pickup-1", 1, "J1", "completed", 6, station="pickup")]
    state = fold("J1", evs)
    assert (state.status, state.next_step) == ("cancelled", None)
    assert [(c.kind, c.loser) for c in state.conflicts] == [("event_after_close", "pickup-1:1")]
