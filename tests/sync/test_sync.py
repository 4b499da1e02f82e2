"""Stations replicate their ledgers over a real mosquitto, and lose nothing when it fails."""

from __future__ import annotations

import json

from mqttclient import TestClient

from edge.sim.line import SimNode, converged, password_of, wait_until


def dashboard(port: int, user: str = "dashboard", password: str = "pw-dashboard") -> TestClient:
    return TestClient(port, user, password, topics=("fabrique/#", "homeassistant/#"))


def test_two_nodes_exchange_events_and_a_dashboard_sees_retained_topics(broker, line):
    intake, laser = line["intake-1"], line["laser-1"]
    wait_until(lambda: intake.status()["mqtt"]["connected"] and laser.status()["mqtt"]["connected"],
               what="both nodes connected")
    sent = intake.notes("A7K2M9", 3) + laser.notes("B1", 2)  # each launches its job first
    wait_until(converged([intake, laser], {intake.origin: 4, laser.origin: 3}), 30, "vectors to converge")
    assert sorted(e.id for e in laser.ledger()) == sorted(sent)

    dash = dashboard(broker.people_port)  # joins late: sees only retained state
    try:
        status = wait_until(lambda: dash.json("fabrique/demo/node/intake-1/status"), 10, "retained status")
        assert status["state"] == "online" and status["kind"] == "intake" and status["session"] == 1
        state = wait_until(lambda: dash.json("fabrique/demo/node/laser-1/state"), 10, "retained state")
        assert state["state"] == "idle"
        job = wait_until(lambda: dash.json("fabrique/demo/job/A7K2M9"), 10, "retained job")
        assert job["job"] == "A7K2M9"
        ha = wait_until(lambda: dash.json("homeassistant/sensor/laser-1/state/config"), 10, "HA discovery")
        assert ha["state_topic"] == "fabrique/demo/node/laser-1/state"
        assert {"fabrique/demo/node/intake-1/status", "fabrique/demo/job/A7K2M9"} <= dash.retained()
    finally:
        dash.close()
    assert intake.stop() == 0
    dash = dashboard(broker.people_port)
    try:
        gone = wait_until(lambda: (dash.json("fabrique/demo/node/intake-1/status") or {}).get("state") == "offline",
                          10, "offline status after a clean stop")
        assert gone
    finally:
        dash.close()


def test_broker_down_for_a_while_loses_nothing_and_duplicates_nothing(broker, line):
    intake, laser = line["intake-1"], line["laser-1"]
    wait_until(lambda: intake.status()["mqtt"]["connected"] and laser.status()["mqtt"]["connected"])
    before = intake.notes("J1", 5)
    broker.stop()
    wait_until(lambda: not intake.status()["mqtt"]["connected"], 20, "intake to notice the broker is gone")
    offline = intake.notes("J1", 60, "off") + laser.notes("J2", 39, "off")
    assert intake.status()["outbox"] >= 60  # waiting on disk, not lost
    broker.start()
    wait_until(converged([intake, laser], {intake.origin: 66, laser.origin: 40}), 60, "convergence after restart")
    wait_until(lambda: intake.status()["outbox"] == 0 and laser.status()["outbox"] == 0, 30, "outboxes drained")
    intake.stop()
    laser.stop()
    for node in (intake, laser):
        ids = node.ledger_ids()
        assert len(ids) == len(set(ids)) == 106
        assert set(before + offline) <= set(ids)


def test_broker_and_node_killed_mid_drain_lose_nothing(tmp_path, broker, line):
    laser = line["laser-1"]
    # a slow drain (one 5-event message in flight at a time), so the kill lands in its middle
    intake = SimNode(tmp_path, "intake-1", broker.port, kind="intake", mqtt_extra="inflight = 1\nbatch = 5").start()
    try:
        wait_until(lambda: intake.status()["mqtt"]["connected"] and laser.status()["mqtt"]["connected"])
        broker.stop()
        wait_until(lambda: not intake.status()["mqtt"]["connected"], 20, "intake offline")
        acknowledged = intake.notes("BIG", 799, "x")
        origin = intake.origin
        broker.start()
        wait_until(lambda: intake.status()["outbox"] < 700, 30, "the drain to be under way")
        broker.kill()
        left = intake.status()["outbox"]
        intake.kill()
        assert 0 < left < 800, "the kill did not land mid-drain"
        broker.start()
        intake.start()
        wait_until(converged([intake, laser], {origin: 800}), 90, "convergence after kill -9")
        intake.stop()
        laser.stop()
        for node in (intake, laser):
            ids = node.ledger_ids()
            assert len(ids) == len(set(ids)) == 800
            assert set(ids) == set(acknowledged)
    finally:
        intake.kill()


def test_frozen_broker_is_noticed_by_keepalive_and_work_goes_on(broker, line):
    intake, laser = line["intake-1"], line["laser-1"]
    wait_until(lambda: intake.status()["mqtt"]["connected"] and laser.status()["mqtt"]["connected"])
    broker.pause()
    try:
        wait_until(lambda: not intake.status()["mqtt"]["connected"], 30, "keepalive to notice SIGSTOP")
        frozen = intake.notes("F1", 19, "frozen")  # the station keeps working
        assert intake.status()["outbox"] == 20
    finally:
        broker.resume()
    wait_until(converged([intake, laser], {intake.origin: 20}), 60, "recovery after SIGCONT")
    laser.stop()
    assert sorted(laser.ledger_ids()) == sorted(frozen)


def test_late_joiner_with_an_empty_store_gets_the_full_history(broker, line):
    intake, laser = line["intake-1"], line["laser-1"]
    history = intake.notes("H1", 29) + laser.notes("H2", 19)
    both = {intake.origin: 30, laser.origin: 20}
    wait_until(converged([intake, laser], both), 30, "first two nodes")
    assert intake.stop() == 0  # intake is gone: its history must come from laser
    spare = line["spare-1"]
    wait_until(converged([spare], both), 60, "the new node to converge")
    spare.stop()
    ids = spare.ledger_ids()
    assert len(ids) == len(set(ids)) and set(ids) == set(history)


def test_duplicate_and_reordered_deliveries_change_nothing(broker, line):
    intake, laser = line["intake-1"], line["laser-1"]
    intake.notes("D1", 9)
    wait_until(lambda: laser.status()["vector"] == {intake.origin: 10}, 30, "laser to know job D1")
    laser.notes("D1", 5)
    wait_until(converged([intake, laser], {intake.origin: 10, laser.origin: 5}), 30)
    before = laser.command("job D1")
    events = [e.to_json() for e in intake.ledger()]
    rogue = dashboard(broker.port, "rogue-1", password_of("rogue-1"))
    try:
        for batch in (events[::-1], events[3:7] * 3, events):
            assert not rogue.publish("fabrique/demo/events/rogue-1", json.dumps({"v": 1, "events": batch})).is_failure
        marker = laser.notes("D2", 1)  # events are applied in order: once this is stored, so are the replays
        wait_until(converged([intake], {intake.origin: 10, laser.origin: 7}), 30)
    finally:
        rogue.close()
    assert laser.command("job D1") == before
    status = laser.status()
    assert status["mqtt"]["duplicates"] >= len(events) * 2
    laser.stop()
    ids = laser.ledger_ids()
    assert len(ids) == len(set(ids)) == 17 and set(marker) <= set(ids)
