"""Dashboards see who is there: births, wills, stale wills, Home Assistant, archived jobs."""

from __future__ import annotations

import json
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.simline import SimNode, converged, password_of, wait_until


class Watcher:
    """An MQTT client on either listener that keeps every message it sees, in order."""

    def __init__(self, port: int, user: str, password: str, topics: tuple[str, ...] = ("fabrique/#",)):
        self.seen: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, password)
        self.client.on_connect = lambda c, u, f, rc, p: (topics and c.subscribe([(t, 1) for t in topics]),
                                                         ready.set())
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10)

    def _message(self, _c, _u, msg) -> None:
        with self.lock:
            self.seen.append((msg.topic, msg.payload, msg.retain))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.seen if t == topic]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_a_node_that_boots_with_no_broker_works_and_syncs_when_one_appears(tmp_path, broker, line):
    laser = line["laser-1"]
    broker.stop()
    intake = SimNode(tmp_path, "intake-1", broker.port, kind="intake").start()
    try:
        assert intake.status()["state"] == "idle" and not intake.status()["mqtt"]["connected"]
        made = intake.notes("BOOT1", 7)
        broker.start()
        wait_until(converged([intake, laser], {"intake-1": 7}), 60, "sync once the broker appears")
        laser.stop()
        assert sorted(laser.ledger_ids()) == sorted(made)
    finally:
        intake.kill()


def test_a_late_will_of_an_old_session_does_not_mark_a_live_node_offline(broker, line):
    intake = line["intake-1"]
    wait_until(lambda: intake.status()["mqtt"]["connected"])
    session = intake.status()["mqtt"]["session"]
    dash = Watcher(broker.people_port, "dashboard", "pw-dashboard")
    ghost = Watcher(broker.port, "intake-1", password_of("intake-1"), topics=())
    try:
        topic = "fabrique/demo/node/intake-1/status"
        wait_until(lambda: dash.on(topic), 10, "the birth")
        ghost.publish(topic, json.dumps({"state": "offline", "session": session - 1}).encode(), retain=True)
        wait_until(lambda: [json.loads(p)["state"] for p in dash.on(topic)][-2:] == ["offline", "online"], 10,
                   "the node to answer its old session's will with a fresh birth")
    finally:
        ghost.close()
        dash.close()
    late = Watcher(broker.people_port, "dashboard", "pw-dashboard")
    try:
        status = json.loads(wait_until(lambda: late.on("fabrique/demo/node/intake-1/status"), 10)[-1])
        assert status == {"state": "online", "session": session, "version": status["version"],
                          "kind": "intake", "protocol": 5}
    finally:
        late.close()


def test_killed_node_is_marked_offline_by_its_will(broker, line):
    laser = line["laser-1"]
    wait_until(lambda: laser.status()["mqtt"]["connected"])
    session = laser.status()["mqtt"]["session"]
    laser.kill()  # power cut: no goodbye, the broker publishes the will after the keepalive
    dash = Watcher(broker.people_port, "dashboard", "pw-dashboard")
    try:
        wait_until(lambda: any(json.loads(p) == {"state": "offline", "session": session}
                               for p in dash.on("fabrique/demo/node/laser-1/status")), 30, "the will")
    finally:
        dash.close()


def test_home_assistant_coming_online_gets_every_node_announced_again(broker, line):
    laser = line["laser-1"]
    wait_until(lambda: laser.status()["mqtt"]["connected"])
    ha = Watcher(broker.people_port, "homeassistant", "pw-ha", topics=("homeassistant/#",))
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
    pickup.command("complete ARC1")
    dash = Watcher(broker.people_port, "dashboard", "pw-dashboard")
    try:
        wait_until(lambda: any(json.loads(p)["status"] == "completed" for p in dash.on("fabrique/demo/job/ARC1")
                               if p), 10, "the completed job state")
        assert pickup.command("archive") == ["ARC1"]
        wait_until(lambda: dash.on("fabrique/demo/job/ARC1")[-1] == b"", 10, "the retained topic cleared")
    finally:
        dash.close()
    late = Watcher(broker.people_port, "dashboard", "pw-dashboard")
    try:
        wait_until(lambda: late.on("fabrique/demo/node/pickup-1/status"), 10)
        assert late.on("fabrique/demo/job/ARC1") == []  # nothing retained for a late dashboard
    finally:
        late.close()
    assert pickup.command("job ARC1")["status"] == "completed"  # still readable from the archive


def test_malformed_events_are_dropped_and_counted_and_the_node_lives_on(broker, line):
    laser = line["laser-1"]
    wait_until(lambda: laser.status()["mqtt"]["connected"])
    rogue = Watcher(broker.port, "rogue-1", password_of("rogue-1"), topics=())
    try:
        for payload in (b"not json", b'{"v": 1}', b'{"v": 1, "events": [{"id": "x"}]}', b"\xff" * 300_000):
            rogue.publish("fabrique/demo/events/rogue-1", payload)
        wait_until(lambda: laser.status()["mqtt"]["dropped"] >= 4, 20, "four drops counted")
    finally:
        rogue.close()
    assert laser.command("ping") == "pong"
    assert laser.status()["vector"] == {}
