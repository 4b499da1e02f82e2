"""The live views' model (edge/web/model.py): the public subtree folded into what each page
shows, with `now` passed in: staleness, reconnection, privacy, bad input."""

from __future__ import annotations

import json
from typing import Any

from live_kit import LINE, STAND, TOPICS, Visitor, job_body, node_body

from edge.public import seal
from edge.web.model import FINISHED_SHOWN, SETTLE_MS, STALE_AFTER_MS, LineModel, station_kinds

T0 = 1_795_305_600_000


def up(now: int = T0) -> LineModel:
    """A model whose broker link is up at `now`."""
    model = LineModel(LINE, started_ms=now - 10_000)
    model.connected(now)
    model.subscribed(now)
    model.tick(now + SETTLE_MS)
    return model


def send(model: LineModel, topic: str, body: Any, now: int, retained: bool = False) -> bool:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return model.receive(topic, raw, retained, now)


def node_state(model: LineModel, node: str) -> str:
    for station in model.line_view()["stations"]:
        for n in station["nodes"]:
            if n["node"] == node:
                return n["state"]
    raise AssertionError(f"{node} not shown")


def test_stations_follow_the_route_with_their_stories_and_forty_trades():
    assert station_kinds(LINE) == STAND
    view = up().line_view()
    assert [s["kind"] for s in view["stations"]] == STAND
    laser = view["stations"][1]
    assert laser["title"] == "Laser engraving" and "laser" in laser["about"]
    assert "typographer" in laser["trades"]
    assert sum(len(s["trades"]) for s in view["stations"]) == 40
    assert all(s["state"] == "offline" and s["nodes"] == [] for s in view["stations"])


def test_a_station_not_heard_for_45_s_is_shown_offline():
    model = up()
    send(model, TOPICS.public_node("laser-1"), node_body("laser-1", "busy", updated_ms=T0), T0 + 1000)
    assert node_state(model, "laser-1") == "busy"
    assert not model.tick(T0 + 1000 + STALE_AFTER_MS)
    assert model.tick(T0 + 1001 + STALE_AFTER_MS)
    assert node_state(model, "laser-1") == "offline"
    assert model.line_view()["stations"][1]["state"] == "offline"
    send(model, TOPICS.public_node("laser-1"), node_body("laser-1", "idle"), T0 + 60_000)
    assert node_state(model, "laser-1") == "idle"


def test_a_retained_copy_is_as_old_as_its_updated_ms_and_a_live_one_is_fresh_whatever_the_pi_clock():
    model = up()
    old = node_body("printer-1", "busy", updated_ms=T0 - 60_000)
    send(model, TOPICS.public_node("printer-1"), old, T0, retained=True)
    assert node_state(model, "printer-1") == "offline"
    send(model, TOPICS.public_node("printer-1"), old, T0, retained=False)  # live: the Pi's clock is an hour off
    assert node_state(model, "printer-1") == "busy"


def test_a_heartbeat_that_changes_nothing_moves_no_view():
    model = up()
    body = node_body("intake-1", "idle", updated_ms=T0)
    assert send(model, TOPICS.public_node("intake-1"), body, T0)
    assert not send(model, TOPICS.public_node("intake-1"), {**body, "updated_ms": T0 + 15_000}, T0 + 15_000)


def test_a_node_that_stopped_cleanly_is_offline_and_shows_no_job():
    model = up()
    send(model, TOPICS.public_node("laser-1"), node_body("laser-1", "offline", job="abcdefgh", progress=3), T0)
    (node,) = model.line_view()["stations"][1]["nodes"]
    assert node["state"] == "offline" and node["job"] is None and node["progress"] is None


def test_a_node_shows_its_jobs_name_initial_and_colour():
    model = up()
    v = Visitor.make("J1", "Camille Dupont", "blue")
    send(model, TOPICS.public_job(v.pid), job_body(v, {"intake": "done", "laser": "running"}), T0)
    send(model, TOPICS.public_node("laser-1"), node_body("laser-1", "busy", job=v.pid, progress=40), T0)
    (node,) = model.line_view()["stations"][1]["nodes"]
    assert node["job"] == {"id": v.pid, "name": "C.", "colour": "blue", "colour_rgb": "#1e50b4"}
    assert node["progress"] == 40


def test_jobs_on_the_line_and_the_last_finished_ones():
    model = up()
    live, finished = [], []
    for i in range(3):
        v = Visitor.make(f"L{i}", "Léa")
        send(model, TOPICS.public_job(v.pid), job_body(v, {"intake": "done"}, created_ms=T0 + i), T0)
        live.append(v.pid)
    for i in range(FINISHED_SHOWN + 2):
        v = Visitor.make(f"F{i}", "Noël")
        send(model, TOPICS.public_job(v.pid), job_body(v, dict.fromkeys(STAND, "done"), status="completed",
                                                      updated_ms=T0 + i), T0)
        finished.append(v.pid)
    view = model.line_view()
    assert [j["id"] for j in view["jobs"]] == live
    assert [j["id"] for j in view["finished"]] == finished[::-1][:FINISHED_SHOWN]
    assert [j["id"] for j in model.screen_view()["jobs"]] == live
    job = view["jobs"][0]
    assert job["station"] == "laser" and job["station_title"] == "Laser engraving"
    assert job["progress"] == round(100 / len(STAND))
    assert [s["title"] for s in job["steps"]][:2] == ["Order intake", "Laser engraving"]


def test_an_empty_retained_job_is_gone_with_its_snapshot():
    model = up()
    v = Visitor.make("G1")
    send(model, TOPICS.public_job(v.pid), job_body(v, {"intake": "done"}), T0)
    send(model, TOPICS.public_snapshot(v.pid), {"v": 1, "sealed": seal(v.secret, {"taken_ms": 1})}, T0)
    assert model.sealed_snapshot(v.pid)
    assert send(model, TOPICS.public_job(v.pid), b"", T0)
    assert model.job_view(v.pid)["job"] is None and model.sealed_snapshot(v.pid) is None


def test_an_older_job_state_never_replaces_a_newer_one():
    model = up()
    v = Visitor.make("O1")
    send(model, TOPICS.public_job(v.pid), job_body(v, {"intake": "done", "laser": "done"}, updated_ms=T0 + 2), T0)
    assert not send(model, TOPICS.public_job(v.pid), job_body(v, {"intake": "done"}, updated_ms=T0 + 1), T0)
    assert model.job_view(v.pid)["job"]["steps"][1]["status"] == "done"


def test_a_snapshot_that_comes_before_its_job_is_kept_for_it():
    model = up()
    v = Visitor.make("S1")
    send(model, TOPICS.public_snapshot(v.pid), {"v": 1, "sealed": "abc"}, T0)
    send(model, TOPICS.public_job(v.pid), job_body(v, {"intake": "done"}), T0)
    assert model.sealed_snapshot(v.pid) == "abc"
    assert model.job_view(v.pid)["job"]["snapshot"] is True


def test_reconnecting_forgets_the_line_and_is_down_until_the_replay_settled():
    model = up()
    v = Visitor.make("R1")
    send(model, TOPICS.public_job(v.pid), job_body(v, {"intake": "done"}), T0)
    model.disconnected(T0 + 5_000, "connection lost")
    assert model.link_view() == {"up": False, "state": "down", "since_ms": T0 + 5_000, "problem": "connection lost",
                                 "trailer": None}
    model.disconnected(T0 + 6_000, "connection lost")  # each failed try: still down since the first
    assert model.link.since_ms == T0 + 5_000
    model.connected(T0 + 9_000)
    model.subscribed(T0 + 9_000)
    assert model.line_view()["jobs"] == [] and not model.link_view()["up"]
    model.tick(T0 + 9_000 + SETTLE_MS)
    assert model.link_view() == {"up": True, "state": "up", "since_ms": T0 + 9_000 + SETTLE_MS, "problem": "",
                                 "trailer": None}


def test_a_subscription_refused_then_taken_on_the_same_connection_leaves_no_problem_behind():
    model = LineModel(LINE, started_ms=T0)
    model.connected(T0)
    refused = "the broker refused the subscription to fabrique/demo/public/# (Unspecified error)"
    model.disconnected(T0 + 100, refused)  # what edge.web.mqtt says of a refused SUBACK
    assert model.link_view()["problem"] == refused
    model.subscribed(T0 + 4_000)  # asked again and taken
    model.tick(T0 + 4_000 + SETTLE_MS)
    assert model.link_view()["up"] and model.link_view()["problem"] == ""


def test_a_broker_never_reached_is_connecting_then_down_since_the_start():
    model = LineModel(LINE, started_ms=T0)
    assert model.link_view()["state"] == "connecting"
    model.disconnected(T0 + 3000, "cannot connect to 127.0.0.1:1884")
    assert model.link_view() == {"up": False, "state": "down", "since_ms": T0,
                                 "problem": "cannot connect to 127.0.0.1:1884", "trailer": None}


def test_in_the_cloud_a_trailer_whose_uplink_is_down_is_offline_since_then():
    model = up()
    model.cloud = True
    uplink = "fabrique/demo/public/uplink"
    assert send(model, uplink, b"1", T0)  # the trailer is up: pages may say so
    assert model.link_view()["trailer"] == "up" and model.link_view()["up"]
    assert send(model, uplink, b"0", T0 + 1000)
    link = model.link_view()
    assert link["up"] is False and link["trailer"] == "down" and link["since_ms"] == T0 + 1000
    assert "the trailer is offline" in link["problem"]
    assert not send(model, uplink, b"0", T0 + 2000)  # its will again: still down since the first
    assert model.link_view()["since_ms"] == T0 + 1000
    assert send(model, uplink, b"1", T0 + 3000)
    assert model.link_view()["up"] and model.line_view()["link"]["trailer"] == "up"


def test_on_the_hub_the_uplink_to_the_cloud_changes_nothing():
    model = up()
    before = model.line_view()
    assert not send(model, "fabrique/demo/public/uplink", b"0", T0)
    assert model.line_view() == before and model.link_view()["up"] and model.dropped == 0


def test_a_full_name_a_node_let_through_is_reduced_by_the_line_policy():
    model = up()
    v = Visitor.make("P1", "Camille Dupont")
    send(model, TOPICS.public_job(v.pid), job_body(v, {"intake": "done"}, name="Camille Dupont"), T0)
    assert model.job_view(v.pid)["job"]["name"] == "C."


def test_no_view_carries_the_sealed_details_or_a_field_it_does_not_know():
    model = up()
    v = Visitor.make("P2", "Camille Dupont")
    body = {**job_body(v, {"intake": "done"}), "order": {"order_id": "P2", "text": "Camille Dupont"}}
    send(model, TOPICS.public_job(v.pid), body, T0)
    send(model, TOPICS.public_node("laser-1"), {**node_body("laser-1"), "reason": "job P2 stuck"}, T0)
    for view in (model.line_view(), model.screen_view(), model.job_view(v.pid)):
        text = json.dumps(view)
        assert "sealed" not in text and body["sealed"] not in text
        assert "Camille" not in text and "Dupont" not in text and "P2" not in text and "order" not in text


def test_malformed_messages_are_dropped_and_counted_and_change_nothing():
    model = up()
    before = model.line_view()
    bad = [
        (TOPICS.public_node("laser-1"), b"not json"),
        (TOPICS.public_node("laser-1"), json.dumps(node_body("printer-1")).encode()),  # another node's
        (TOPICS.public_node("laser-1"), json.dumps({"v": 1, "node": "laser-1"}).encode()),
        (TOPICS.public_job("abcdefgh"), json.dumps({"v": 1, "id": "bbbbbbbb"}).encode()),
        (TOPICS.public_job("abcdefgh"), b"{" * 9000),
        ("fabrique/demo/public/job/NOT-AN-ID", b"{}"),
        ("fabrique/demo/job/A7K2M9", b"{}"),
        ("fabrique/other/public/node/laser-1", json.dumps(node_body("laser-1")).encode()),
    ]
    for topic, payload in bad:
        assert not model.receive(topic, payload, False, T0)
    assert model.dropped == len(bad)
    assert model.line_view() == before


def test_odd_values_are_clamped_not_trusted():
    model = up()
    body = {**node_body("laser-1", "melting", progress=250), "mode": "turbo", "job": "../../etc",
            "safety": {"estop": "tripped", "lid": "ok"}, "title": "x" * 500}
    send(model, TOPICS.public_node("laser-1"), body, T0)
    (node,) = model.line_view()["stations"][1]["nodes"]
    assert node["state"] == "fault" and node["mode"] == "auto" and node["job"] is None
    assert node["progress"] == 100 and node["tripped"] == ["estop"] and len(node["title"]) == 80
