"""Dashboards see who is there: births, wills, stale wills, Home Assistant, archived jobs."""

from __future__ import annotations

import json
import time

from mqttclient import TestClient

from edge.sim.line import SimNode, converged, password_of, wait_until


def watcher(port: int, user: str, password: str,
            topics: tuple[str, ...] = ("fabrique/#",)) -> TestClient:
    return TestClient(port, user, password, topics=topics)


def test_a_node_that_boots_with_no_broker_works_and_syncs_when_one_appears(tmp_path, broker, line):
    laser = line["laser-1"]
    broker.stop()
    intake = SimNode(tmp_path, "intake-1", broker.port, kind="intake").start()
    try:
        assert intake.status()["state"] == "idle" and not intake.status()["mqtt"]["connected"]
        made = intake.notes("BOOT1", 6)
        broker.start()
        wait_until(converged([intake, laser], {intake.origin: 7}), 60, "sync once the broker appears")
        laser.stop()
        assert sorted(laser.ledger_ids()) == sorted(made)
    finally:
        intake.kill()


def test_a_late_will_of_an_old_session_does_not_mark_a_live_node_offline(broker, line):
    intake = line["intake-1"]
    wait_until(lambda: intake.status()["mqtt"]["connected"])
    old = intake.status()["mqtt"]["session"]
    dash = watcher(broker.people_port, "dashboard", "pw-dashboard")
    try:
        topic = "fabrique/demo/node/intake-1/status"
        wait_until(lambda: dash.on(topic), 10, "the birth")
        intake.kill()  # a power cut, and the Pi is back before the broker noticed (keepalive)
        intake.start()
        session = intake.status()["mqtt"]["session"]
        assert session == old + 1
        # the broker fires the old connection's will when the new one takes its client id over
        wait_until(lambda: any(json.loads(p) == {"state": "offline", "session": old,
                                                 "incarnation": intake.status()["ledger"]["incarnation"]}
                               for p in dash.on(topic)), 20, "the old session's will")
        wait_until(lambda: json.loads(dash.on(topic)[-1])["state"] == "online", 10,
                   "the node to answer its old session's will with a fresh birth")
    finally:
        dash.close()
    late = watcher(broker.people_port, "dashboard", "pw-dashboard")
    try:
        status = json.loads(wait_until(lambda: late.on("fabrique/demo/node/intake-1/status"), 10)[-1])
        assert status == {"state": "online", "session": session, "version": status["version"],
                          "kind": "intake", "protocol": 5, "incarnation": status["incarnation"]}
    finally:
        late.close()


def test_killed_node_is_marked_offline_by_its_will(broker, line):
    laser = line["laser-1"]
    wait_until(lambda: laser.status()["mqtt"]["connected"])
    session = laser.status()["mqtt"]["session"]
    laser_incarnation = laser.status()["ledger"]["incarnation"]
    laser.kill()  # power cut: no goodbye, the broker publishes the will after the keepalive
    dash = watcher(broker.people_port, "dashboard", "pw-dashboard")
    try:
        incarnation = laser_incarnation
        wait_until(lambda: any(json.loads(p) == {"state": "offline", "session": session, "incarnation": incarnation}
                               for p in dash.on("fabrique/demo/node/laser-1/status")), 30, "the will")
    finally:
        dash.close()


def test_home_assistant_coming_online_gets_every_node_announced_again(broker, line):
    laser = line["laser-1"]
    wait_until(lambda: laser.status()["mqtt"]["connected"])
    ha = watcher(broker.people_port, "homeassistant", "pw-ha", topics=("homeassistant/#",))
    try:
        config_topic = "homeassistant/sensor/laser-1/state/config"
        wait_until(lambda: ha.on(config_topic), 10, "the retained discovery config")
        before = len(ha.on(config_topic))
        ha.publish("homeassistant/status", b"online")
        wait_until(lambda: len(ha.on(config_topic)) > before, 10, "a fresh announcement")
        config = json.loads(ha.on(config_topic)[-1])
        assert config["availability"][0]["topic"] == "fabrique/demo/node/laser-1/status"
        assert config["device"]["identifiers"] == ["fabrique_demo_laser_1"]
        online = json.loads(wait_until(lambda: ha.on("homeassistant/binary_sensor/laser-1/online/config"), 10)[-1])
        assert online["device_class"] == "connectivity"
    finally:
        ha.close()


def test_an_archived_job_clears_its_retained_topic(broker, line):
    pickup = line["pickup-1"]
    pickup.notes("ARC1", 1)
    pickup.command("complete ARC1 --force")
    dash = watcher(broker.people_port, "dashboard", "pw-dashboard")
    try:
        wait_until(lambda: any(json.loads(p)["status"] == "completed" for p in dash.on("fabrique/demo/job/ARC1")
                               if p), 10, "the completed job state")
        assert pickup.command("archive") == ["ARC1"]
        wait_until(lambda: dash.on("fabrique/demo/job/ARC1")[-1] == b"", 10, "the retained topic cleared")
    finally:
        dash.close()
    late = watcher(broker.people_port, "dashboard", "pw-dashboard")
    try:
        wait_until(lambda: late.on("fabrique/demo/node/pickup-1/status"), 10)
        assert late.on("fabrique/demo/job/ARC1") == []  # nothing retained for a late dashboard
    finally:
        late.close()
    assert pickup.command("job ARC1")["status"] == "completed"  # still readable from the archive


def test_a_job_archived_before_the_broker_answered_leaves_no_retained_state(broker, line):
    """The job was made, completed and archived while the hub did not answer: its events still
    reach the broker, but its state is not published (its topic was cleared for good)."""
    broker.pause()
    pickup = line["pickup-1"]
    pickup.notes("ARC9", 1)
    pickup.command("complete ARC9 --force")
    assert pickup.command("archive") == ["ARC9"]
    broker.resume()
    wait_until(lambda: pickup.status()["mqtt"]["connected"] and pickup.status()["outbox"] == 0, 30, "drained")
    time.sleep(1.5)  # past the moment a reconnected node republishes what changed offline
    late = watcher(broker.people_port, "dashboard", "pw-dashboard")
    try:
        wait_until(lambda: late.on("fabrique/demo/node/pickup-1/status"), 10)
        time.sleep(0.5)
        assert late.on("fabrique/demo/job/ARC9") == []
    finally:
        late.close()


def test_malformed_events_are_dropped_and_counted_and_the_node_lives_on(broker, line):
    laser = line["laser-1"]
    wait_until(lambda: laser.status()["mqtt"]["connected"])
    rogue = watcher(broker.port, "rogue-1", password_of("rogue-1"), topics=())
    try:
        for payload in (b"not json", b'{"v": 1}', b'{"v": 1, "events": [{"id": "x"}]}', b"\xff" * 300_000):
            rogue.publish("fabrique/demo/events/rogue-1", payload)
        wait_until(lambda: laser.status()["mqtt"]["dropped"] >= 4, 20, "four drops counted")
    finally:
        rogue.close()
    assert laser.command("ping") == "pong"
    assert laser.status()["vector"] == {}


def test_a_job_changed_offline_gets_its_retained_state_when_the_broker_returns(tmp_path, broker, line):
    pickup = line["pickup-1"]
    wait_until(lambda: pickup.status()["mqtt"]["connected"])
    broker.stop()
    wait_until(lambda: not pickup.status()["mqtt"]["connected"], 20, "pickup offline")
    pickup.notes("OFF1", 1)
    pickup.command("complete OFF1 --force")
    pickup.stop()  # and a restart while offline: only the outbox remembers the job
    pickup.start()
    broker.start()
    dash = watcher(broker.people_port, "dashboard", "pw-dashboard")
    try:
        state = wait_until(lambda: dash.json("fabrique/demo/job/OFF1"), 20, "the job's retained state")
        assert state["status"] == "completed"
    finally:
        dash.close()


def test_a_stale_retained_online_of_a_stopped_node_does_not_keep_its_events_from_a_newcomer(broker, line):
    """The hub lost power and came back from a save older than the intake's goodbye: its
    retained status says the intake is online, and it is not. The others must not wait for it
    to re-send its own history: only a node heard live since they connected counts as online."""
    intake, laser = line["intake-1"], line["laser-1"]
    made = intake.notes("STALE1", 5)
    origin = intake.origin
    wait_until(converged([intake, laser], {origin: len(made)}), 30, "the laser to hold the intake's events")
    topic = "fabrique/demo/node/intake-1/status"
    seen = watcher(broker.port, "spare-1", password_of("spare-1"), topics=(topic,))
    try:
        online = wait_until(lambda: seen.on(topic), 10, "the intake's birth")[-1]
    finally:
        seen.close()
    laser.stop()
    intake.stop()  # its goodbye: retained "offline"...
    stale = TestClient(broker.port, "intake-1", password_of("intake-1"), topics=())
    try:  # ...overwritten by the old save's "online" (QoS 0: not queued for the laser's session)
        stale.client.publish(topic, online, qos=0, retain=True).wait_for_publish(5)
    finally:
        stale.close()
    laser.start()  # sees the intake "online" in the retained status, and never hears it live
    printer = line["printer-1"]  # a newcomer that lacks the intake's events
    wait_until(converged([printer], {origin: len(made)}), 30, "the laser to re-send the stopped intake's events")
    printer.stop()
    assert sorted(printer.ledger_ids()) == sorted(made)  # all of them, each once
