"""What a node publishes for the live views and dashboards, made from job states (pure): a job's
public face names no visitor and no order, a station's numbers are ready to chart."""

from __future__ import annotations

import base64
import dataclasses
import json
import time

import numpy as np
import pytest

from edge.clock import Timestamp
from edge.config import load_line
from edge.ledger import Event, fold
from edge.live import StationMetrics, latest_snapshot, public_job, public_snapshot, queue_length, thumbnail
from edge.orders import verify_order
from edge.public import public_id, unseal
from edge.sim.line import EXAMPLES, example_order
from edge.snapshots import jpeg
from edge.topics import PUBLIC_JOB, PUBLIC_SNAPSHOT

LINE = load_line(EXAMPLES / "line.toml")
T0 = 1_795_305_600_000


def ev(seq: int, job: str, type: str, at_s: float, node: str = "intake-1", **data) -> Event:
    return Event(f"{node}.0000cafe:{seq}", job, type, node.split("-")[0], Timestamp(T0 + int(at_s * 1000), 0, node),
                 data)


def launched(job: str = "PRIV01", text: str = "Camille Roux", product: str = "stand") -> tuple[list[Event], str]:
    """The `created` event of a verified order (its secret kept, as the intake keeps it) and the secret."""
    order = verify_order(example_order(job, text, product=product), LINE, time.time()).order
    route = LINE.products[product].route
    return [ev(1, job, "created", 0, **order.launch_data(route))], order.secret


def test_a_job_in_public_shows_its_progress_under_its_public_id_and_the_initial_only():
    events, secret = launched()
    events += [ev(2, "PRIV01", "step_started", 1, step="intake"), ev(3, "PRIV01", "step_done", 2, step="intake"),
               ev(1, "PRIV01", "step_started", 10, node="laser-1", step="laser"),
               ev(2, "PRIV01", "step_progress", 14, node="laser-1", step="laser", percent=40)]
    pid, body = public_job(fold("PRIV01", events), T0, LINE)
    PUBLIC_JOB.check(body)
    assert pid == body["id"] == public_id(secret)
    assert (body["product"], body["product_title"], body["name"], body["colour"]) == (
        "stand", "Smartphone stand", "C.", "red")
    assert (body["status"], body["station"], body["created_ms"], body["updated_ms"]) == (
        "in_progress", "laser", T0, T0 + 14_000)
    assert body["steps"][:3] == [
        {"step": "intake", "status": "done", "started_ms": T0 + 1000, "ended_ms": T0 + 2000, "progress": 100},
        {"step": "laser", "status": "running", "started_ms": T0 + 10_000, "ended_ms": None, "progress": 40},
        {"step": "printer", "status": "pending", "started_ms": None, "ended_ms": None, "progress": None}]
    text = json.dumps(body)
    for private in ("Camille", "Roux", "PRIV01", "FE1:", secret, "order", "intake-1", "laser-1"):
        assert private not in text, private
    assert unseal(secret, body["sealed"]) == {"text": "Camille Roux", "options": {"colour": "red",
                                                                                  "text": "Camille Roux"}}


@pytest.mark.parametrize("policy, shown", [("initial", "C."), ("first", "Camille"), ("none", "")])
def test_the_line_file_says_how_much_of_the_name_the_public_sees(policy, shown):
    line = dataclasses.replace(LINE, public=dataclasses.replace(LINE.public, name=policy))
    events, _secret = launched()
    assert public_job(fold("PRIV01", events), T0, line)[1]["name"] == shown


def test_a_product_without_a_colour_option_shows_no_colour():
    events, _secret = launched(product="keyring", text="Zoé")
    assert public_job(fold("PRIV01", events), T0, LINE)[1]["colour"] is None


def test_a_job_launched_before_the_live_view_has_no_public_face():
    events, _secret = launched()
    data = dict(events[0].data)
    data["order"] = {k: v for k, v in data["order"].items() if k != "secret"}
    old = dataclasses.replace(events[0], data=data)
    assert public_job(fold("PRIV01", [old]), T0, LINE) is None


def test_the_snapshot_is_a_thumbnail_at_most_480_px_wide_sealed_with_its_verdict():
    frame = np.random.default_rng(1).integers(0, 255, (1232, 1640, 3), dtype=np.uint8)
    small = thumbnail(jpeg(frame))
    assert len(small) <= 120_000
    _events, secret = launched()
    body = public_snapshot(secret, small, "pass", T0)
    PUBLIC_SNAPSHOT.check(body)
    opened = unseal(secret, body["sealed"])
    assert (opened["verdict"], opened["taken_ms"]) == ("pass", T0)
    import cv2

    image = cv2.imdecode(np.frombuffer(base64.b64decode(opened["jpeg"]), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[:2] == (361, 480)
    with pytest.raises(ValueError, match="not a readable JPEG"):
        thumbnail(b"not a picture")


def test_the_latest_snapshot_is_this_nodes_last_picture_of_the_job():
    events = [ev(1, "J1", "step_progress", 1, node="inspection-1", step="inspection", retake=1, reason="dark",
                 snapshot="jobs/J1/inspection-1.jpg"),
              ev(2, "J1", "step_done", 2, node="inspection-1", step="inspection", verdict="pass",
                 snapshot="jobs/J1/inspection-2.jpg"),
              ev(1, "J1", "note", 3, node="laser-1", snapshot="jobs/J1/elsewhere.jpg")]
    assert latest_snapshot(events[:1], "inspection-1").verdict == "retake"
    shot = latest_snapshot(events, "inspection-1")
    assert (shot.path, shot.verdict, shot.taken_ms) == ("jobs/J1/inspection-2.jpg", "pass", T0 + 2000)
    assert latest_snapshot(events, "pickup-1") is None


def route_job(job: str, laser: tuple[float, float] | None, node: str = "laser-1", start_s: float = 0) -> list[Event]:
    events, _ = launched(job)
    events += [ev(2, job, "step_started", start_s, step="intake"), ev(3, job, "step_done", start_s, step="intake")]
    if laser is not None:
        events += [ev(1, job, "step_started", laser[0], node=node, step="laser"),
                   ev(2, job, "step_done", laser[1], node=node, step="laser")]
    return events


def test_jobs_per_hour_counts_this_nodes_finished_steps_of_the_last_hour():
    metrics = StationMetrics("laser-1", "laser")
    for n in range(3):
        metrics.observe_state(fold(f"J{n}", route_job(f"J{n}", (100.0 * n, 100.0 * n + 60))))
    metrics.observe_state(fold("OTHER", route_job("OTHER", (0, 30), node="laser-2")))  # another laser's
    metrics.observe_state(fold("J0", route_job("J0", (0, 60))))  # seen again: counted once
    reading = metrics.reading(T0 + 3_600_000 + 90_000, [])  # J0 ended 60.5 min ago, J1 58.8
    assert reading == {"jobs_per_hour": 2, "step_last_s": 60.0, "step_mean_s": 60.0, "queue": 0}


def test_step_durations_are_the_last_and_the_mean_of_the_last_twenty():
    metrics = StationMetrics("laser-1", "laser")
    for n in range(25):
        metrics.observe_state(fold(f"J{n}", route_job(f"J{n}", (1000.0 * n, 1000.0 * n + n + 1))))
    reading = metrics.reading(T0 + 25_000_000, [])
    assert reading["step_last_s"] == 25.0 and reading["step_mean_s"] == 15.5  # jobs 5..24 took 6..25 s
    assert StationMetrics("laser-1", "laser").reading(T0, [])["step_mean_s"] is None


def test_the_queue_is_the_jobs_waiting_for_this_kind_that_no_station_works_on():
    waiting = fold("W", route_job("W", None))  # intake done: the laser is next
    working = fold("B", route_job("B", None) + [ev(1, "B", "step_started", 5, node="laser-1", step="laser")])
    past = fold("P", route_job("P", (1, 2)))  # the printer is next
    assert queue_length([waiting, working, past], "laser") == 1
    assert queue_length([waiting, working, past], "printer") == 1
