"""The shipped mosquitto configs: ACLs that keep each node to its own topics, client ids bound to
user names, and the cloud bridge."""

from __future__ import annotations

import json
import re

from mqttclient import TestClient
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.sim.line import SHIPPED, SimBroker, SimNode, password_of, wait_until


def client(port: int, user: str | None, password: str | None, client_id: str = "",
           clean: bool = True) -> TestClient:
    return TestClient(port, user, password, topics=(), client_id=client_id, clean=clean)


def client_ids_of(broker: SimBroker, user: str) -> list[str]:
    """The client ids the broker gave `user`'s connections, oldest first, from its connection log."""
    return re.findall(rf"New client connected from \S+ as (\S+) \(.*u'{re.escape(user)}'\)", broker.read_log())


def ask_ping(op: TestClient, node: str, tag: str) -> dict:
    """Send `ping` to `node` over MQTT 5 as the operator and wait for its reply."""
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = f"fabrique/demo/node/{node}/cmd/response/{tag}"
    props.CorrelationData = tag.encode()
    op.subscribe(props.ResponseTopic)
    op.publish(f"fabrique/demo/node/{node}/cmd", b'{"command": "ping"}', properties=props)
    (_t, payload, _props), = op.wait_for(lambda t, _p: t == props.ResponseTopic)
    return json.loads(payload)


def test_a_node_cannot_publish_another_nodes_topics(broker):
    watcher = client(broker.people_port, "operator", "pw-operator")  # one connection per account
    laser = client(broker.port, "laser-1", password_of("laser-1"))
    dash = client(broker.people_port, "dashboard", "pw-dashboard")
    try:
        watcher.subscribe("fabrique/#")
        forged = {
            "fabrique/demo/node/intake-1/state": b'{"state": "estop"}',
            "fabrique/demo/events/intake-1": b'{"v": 1, "events": []}',
            "fabrique/demo/sync/intake-1": b'{"v": 1, "vector": {}}',
            "fabrique/demo/node/intake-1/status": b'{"state": "offline", "session": 99}',
        }
        for topic, payload in forged.items():
            reason = laser.publish(topic, payload)
            assert reason.is_failure and "not authorized" in str(reason).lower(), (topic, reason)
        for topic in ("fabrique/demo/events/dashboard", "fabrique/demo/job/A1", "fabrique/demo/node/laser-1/cmd",
                      "homeassistant/sensor/dashboard/x/config"):
            assert dash.publish(topic, b"{}").is_failure, topic  # read-only means read-only
        own = laser.publish("fabrique/demo/node/laser-1/state", b'{"state": "idle"}')
        assert not own.is_failure
        watcher.wait_for(lambda t, p: t == "fabrique/demo/node/laser-1/state")
        assert not [t for t, _, _, _ in watcher.seen if "intake-1" in t]
    finally:
        for c in (watcher, laser, dash):
            c.close()


def test_commands_over_mqtt5_answer_with_correlation_data_and_refuse_hardware_moves(broker, line):
    laser = line["laser-1"]
    wait_until(lambda: laser.status()["mqtt"]["connected"])
    op = client(broker.people_port, "operator", "pw-operator")
    try:
        op.subscribe("fabrique/demo/node/laser-1/cmd/response/#")
        requests = [b'{"command": "status"}', b'{"command": "drive", "args": {"device": "x", "value": true}}',
                    b"not json", b'{"command": "nope"}', b"x" * 20000]
        for n, body in enumerate(requests):
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "fabrique/demo/node/laser-1/cmd/response/op-42"
            props.CorrelationData = f"req-{n}".encode()
            op.publish("fabrique/demo/node/laser-1/cmd", body, properties=props)
        wait_until(lambda: len(op.seen) >= len(requests), 10, "a reply to every request")
        by_corr = {bytes(props.CorrelationData).decode(): json.loads(p) for _t, p, props, _r in op.seen}
        assert by_corr["req-0"]["ok"] and by_corr["req-0"]["result"]["node"] == "laser-1"
        assert "only allowed at the station" in by_corr["req-1"]["error"]
        assert "not JSON" in by_corr["req-2"]["error"]
        assert "unknown command 'nope'" in by_corr["req-3"]["error"]
        assert "exceeds" in by_corr["req-4"]["error"]
    finally:
        op.close()
    assert laser.command("ping") == "pong"  # none of it hurt the node


def test_commands_over_mqtt311_answer_with_the_request_id(tmp_path, broker):
    node = SimNode(tmp_path, "printer-1", broker.port, kind="printer", protocol="3.1.1").start()
    try:
        wait_until(lambda: node.status()["mqtt"]["connected"])
        op = client(broker.people_port, "operator", "pw-operator")
        try:
            op.subscribe("fabrique/demo/node/printer-1/cmd/response")
            op.publish("fabrique/demo/node/printer-1/cmd", b'{"command": "ping", "id": "dash-17"}')
            (_, payload, _), = op.wait_for(lambda t, p: b"dash-17" in p)
            assert json.loads(payload) == {"ok": True, "result": "pong", "id": "dash-17"}
        finally:
            op.close()
    finally:
        node.kill()


def test_bridge_forwards_to_the_cloud_once_it_returns(tmp_path):
    cloud = SimBroker(tmp_path / "cloud", people={"trailer-demo": "pw-bridge", "cloudreader": "pw-reader"},
                   people_acl="user trailer-demo\ntopic readwrite fabrique/#\n"
                              "user cloudreader\ntopic read fabrique/#\n").start()
    reader = client(cloud.people_port, "cloudreader", "pw-reader", client_id="cloud-reader", clean=False)
    reader.subscribe("fabrique/#")
    reader.close()
    cloud.stop()  # the truck drives off: no internet

    bridge = (SHIPPED / "bridge-cloud.conf").read_text()
    bridge = bridge.replace("address cloud.example.invalid:8883", f"address 127.0.0.1:{cloud.people_port}")
    bridge = "\n".join(line for line in bridge.splitlines()
                       if not line.startswith(("bridge_cafile", "bridge_insecure", "restart_timeout")))
    bridge += "\nremote_password pw-bridge\nrestart_timeout 1 2\n"
    users = {"intake-1": password_of("intake-1")}
    hub = SimBroker(tmp_path / "hub", users=users, extra=bridge).start()
    node = SimNode(tmp_path, "intake-1", hub.port, kind="intake").start()
    try:
        wait_until(lambda: node.status()["mqtt"]["connected"])
        sent = node.notes("CLOUD1", 25)
        wait_until(lambda: node.status()["outbox"] == 0, 30, "hub to take the events")
        cloud.start()
        reader = client(cloud.people_port, "cloudreader", "pw-reader", client_id="cloud-reader", clean=False)
        try:
            reader.subscribe("fabrique/#")
            wait_until(lambda: {e["id"] for _t, p, _, _ in reader.seen if _t.endswith("/events/intake-1")
                                for e in json.loads(p)["events"]} >= set(sent), 60, "events at the cloud")
        finally:
            reader.close()
    finally:
        node.kill()
        hub.kill()
        cloud.kill()


def test_a_dashboard_using_a_nodes_client_id_cannot_kick_it_off(broker, line):
    intake = line["intake-1"]
    wait_until(lambda: intake.status()["mqtt"]["connected"])
    connects = intake.status()["mqtt"]["connects"]
    op = client(broker.people_port, "operator", "pw-operator")
    try:
        op.subscribe("fabrique/demo/node/intake-1/status")
        intruder = client(broker.people_port, "dashboard", "pw-dashboard", client_id="intake-1")
        try:
            assert wait_until(lambda: client_ids_of(broker, "dashboard"), 10) == ["dashboard"]
            assert ask_ping(op, "intake-1", "after-intruder") == {"ok": True, "result": "pong"}
        finally:
            intruder.close()
        mqtt = intake.status()["mqtt"]
        assert mqtt["connected"] and mqtt["connects"] == connects  # never thrown off
        assert [json.loads(p)["state"] for p in op.on("fabrique/demo/node/intake-1/status")] == ["online"]
        assert "Client intake-1 already connected" not in broker.read_log()
    finally:
        op.close()


def test_a_node_account_cannot_take_another_nodes_client_id(broker, line):
    intake = line["intake-1"]
    wait_until(lambda: intake.status()["mqtt"]["connected"])
    connects = intake.status()["mqtt"]["connects"]
    op = client(broker.people_port, "operator", "pw-operator")
    intruder = client(broker.port, "laser-1", password_of("laser-1"), client_id="intake-1")
    try:
        assert wait_until(lambda: client_ids_of(broker, "laser-1"), 10) == ["laser-1"]
        assert intruder.publish("fabrique/demo/node/intake-1/state", b'{"state": "estop"}').is_failure
        assert ask_ping(op, "intake-1", "after-intruder") == {"ok": True, "result": "pong"}
        mqtt = intake.status()["mqtt"]
        assert mqtt["connected"] and mqtt["connects"] == connects  # never thrown off
        assert "Client intake-1 already connected" not in broker.read_log()
    finally:
        intruder.close()
        op.close()


def test_a_node_away_gets_its_queued_messages_back_even_if_a_dashboard_used_its_id(broker):
    cmd = "fabrique/demo/node/intake-1/cmd"
    node = TestClient(broker.port, "intake-1", password_of("intake-1"), topics=(cmd,), client_id="intake-1",
                      clean=False)  # as edge/sync.py connects: clean_start off, a session expiry
    node.close()  # the node is away; the broker keeps its session and queues for it
    op = client(broker.people_port, "operator", "pw-operator")
    try:
        sent = [op.publish(cmd, json.dumps({"command": "ping", "id": n}).encode()) for n in range(3)]
        assert not any(reason.is_failure for reason in sent)
    finally:
        op.close()
    intruder = client(broker.people_port, "dashboard", "pw-dashboard", client_id="intake-1", clean=False)
    intruder.close()
    back = TestClient(broker.port, "intake-1", password_of("intake-1"), topics=(), client_id="intake-1",
                      clean=False)  # no new subscription: what arrives was queued in its session
    try:
        wait_until(lambda: len(back.on(cmd)) == 3, 10, "the queued commands")
        assert [json.loads(p)["id"] for p in back.on(cmd)] == [0, 1, 2]
        assert intruder.seen == []
    finally:
        back.close()


def test_two_tools_on_one_people_account_replace_each_other(broker):
    first = client(broker.people_port, "dashboard", "pw-dashboard", client_id="grafana")
    other = client(broker.people_port, "homeassistant", "pw-ha")  # its own account: no clash
    try:
        assert "already connected" not in broker.read_log()
        second = client(broker.people_port, "dashboard", "pw-dashboard", client_id="mqtt-explorer")
        second.close()
        assert "Client dashboard already connected, closing old connection." in broker.read_log()
    finally:
        first.close()
        other.close()
