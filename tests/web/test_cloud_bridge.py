"""The hub bridges the line's public subtree, and nothing else, to the cloud (docs/live-view.md).

A real mosquitto on the shipped hub config with the shipped public bridge
(systemd/cloud/bridge-public.conf) and a real nats-server on the shipped cluster config
(systemd/cloud/fabrique-cluster.conf, one node: the bridge and the accounts are the same on three).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from live_kit import WebServer, node_body
from mqttclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from edge.sim.cloud import ADMIN, SimCloud, cloud_password, public_bridge_conf
from edge.sim.line import SimBroker, password_of

LINE = "fabrique/demo"


class CloudClient:
    """An MQTT 3.1.1 client of the cloud (NATS speaks no MQTT 5): keeps what it receives, in order."""

    def __init__(self, port: int, user: str, topic: str | None = None):
        self.seen: list[tuple[str, bytes, bool]] = []
        self.cond = threading.Condition()
        self.acked: set[int] = set()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(user, cloud_password(user))
        self.client.on_message = self._message
        self.client.on_publish = self._puback
        self.client.on_subscribe = self._suback
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if topic:
            _rc, mid = self.client.subscribe(topic, qos=1)
            self._wait(lambda: mid in self.acked, f"SUBACK for {topic}")

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.seen.append((msg.topic, msg.payload, bool(msg.retain)))
            self.cond.notify_all()

    def _puback(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        with self.cond:
            self.acked.add(mid)
            self.cond.notify_all()

    def _suback(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        self._puback(_c, _u, mid, _rc, _p)

    def _wait(self, check: Any, what: str, timeout: float = 20) -> None:
        with self.cond:
            assert self.cond.wait_for(check, timeout), f"timed out waiting for {what}: saw {self.seen}"

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        self._wait(lambda: info.mid in self.acked, f"PUBACK of {topic}")

    def wait_for(self, topic: str, payload: bytes) -> tuple[str, bytes, bool]:
        self._wait(lambda: any(t == topic and p == payload for t, p, _r in self.seen), f"{topic} {payload!r}")
        return next(m for m in self.seen if m[0] == topic and m[1] == payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Trailer:
    """The hub's broker, bridged to a one-node cloud; `node` publishes on the hub as laser-1."""

    def __init__(self, tmp: Path):
        self.cloud = SimCloud(tmp / "cloud", size=1, admin=True).start()
        self.hub = SimBroker(tmp / "hub", users={"laser-1": password_of("laser-1")},
                             extra=public_bridge_conf(self.cloud.mqtt_ports)).start()
        self.port = self.cloud.mqtt_ports[0]
        self.node = TestClient(self.hub.port, "laser-1", password_of("laser-1"), topics=())
        self.viewers: list[CloudClient] = []
        self.viewer(f"{LINE}/public/uplink", ADMIN).wait_for(f"{LINE}/public/uplink", b"1")  # bridged

    def publish(self, topic: str, payload: bytes, retain: bool = True) -> None:
        """Publish on the hub as the node; the hub took it (PUBACK, a success code)."""
        reason = self.node.publish(topic, payload, retain=retain)
        assert not reason.is_failure, f"the hub refused {topic}: {reason}"

    def viewer(self, topic: str = "fabrique/+/public/#", user: str = "web") -> CloudClient:
        """A client of the cloud subscribed to `topic` (closed with the trailer)."""
        self.viewers.append(CloudClient(self.port, user, topic))
        return self.viewers[-1]

    def synced(self, viewer: CloudClient) -> None:
        """Return once `viewer` has every retained message its subscription gets: the cloud sends
        them before a message published after the SUBACK."""
        mark = uuid.uuid4().hex.encode()
        admin = CloudClient(self.port, ADMIN)
        admin.publish(f"{LINE}/public/sync-mark", mark)
        admin.close()
        viewer.wait_for(f"{LINE}/public/sync-mark", mark)

    def stop(self) -> None:
        for viewer in self.viewers:
            viewer.close()
        self.node.close()
        self.hub.stop()
        self.cloud.stop()


@pytest.fixture(scope="module")
def trailer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trailer]:
    t = Trailer(tmp_path_factory.mktemp("cloud-bridge"))
    yield t
    t.stop()


def test_a_public_topic_reaches_the_cloud_retained(trailer: Trailer) -> None:
    trailer.publish(f"{LINE}/public/node/laser-1", b'{"v":1,"state":"busy"}')
    trailer.viewer().wait_for(f"{LINE}/public/node/laser-1", b'{"v":1,"state":"busy"}')
    late = trailer.viewer()  # connects after the cloud had it: gets it as retained
    assert late.wait_for(f"{LINE}/public/node/laser-1", b'{"v":1,"state":"busy"}')[2] is True


def test_private_topics_never_leave_the_trailer(trailer: Trailer) -> None:
    watcher = trailer.viewer("fabrique/#", ADMIN)  # sees whatever reaches the cloud
    private = [f"{LINE}/node/laser-1/status", f"{LINE}/node/laser-1/state", f"{LINE}/job/A7K2M9",
               f"{LINE}/events/laser-1", f"{LINE}/sync/laser-1"]
    for topic in private:
        trailer.publish(topic, b'{"job":"A7K2M9","text":"ANNA"}', retain=topic.split("/")[2] not in ("events", "sync"))
    trailer.publish(f"{LINE}/public/node/laser-1", b'{"v":1,"state":"idle"}')  # after them, on one bridge
    watcher.wait_for(f"{LINE}/public/node/laser-1", b'{"v":1,"state":"idle"}')
    fresh = trailer.viewer("fabrique/#", ADMIN)
    trailer.synced(fresh)
    for client in (watcher, fresh):
        assert {t for t, _p, _r in client.seen if not t.startswith(f"{LINE}/public/")} == set()
    assert "Publish Violation" not in trailer.cloud.nodes[0].read_log()  # the hub never even tried


def test_a_cleared_job_is_cleared_in_the_cloud(trailer: Trailer) -> None:
    topic = f"{LINE}/public/job/k3q7xw2m"
    trailer.publish(topic, b'{"v":1,"id":"k3q7xw2m","status":"done"}')
    watcher = trailer.viewer(topic)
    watcher.wait_for(topic, b'{"v":1,"id":"k3q7xw2m","status":"done"}')
    trailer.publish(topic, b"")  # archived: the node clears the retained job
    watcher.wait_for(topic, b"")
    late = trailer.viewer()
    trailer.synced(late)
    assert topic not in {t for t, _p, _r in late.seen}


def test_the_web_account_cannot_write_in_the_cloud(trailer: Trailer) -> None:
    topic = f"{LINE}/public/job/m4x2q7aa"
    trailer.publish(topic, b'{"v":1,"status":"in_progress"}')
    web = trailer.viewer()
    web.wait_for(topic, b'{"v":1,"status":"in_progress"}')
    web.publish(topic, b'{"v":1,"status":"failed"}', retain=True)  # NATS drops it (3.1.1 still PUBACKs)
    late = trailer.viewer()
    trailer.synced(late)
    assert [p for t, p, _r in late.seen if t == topic] == [b'{"v":1,"status":"in_progress"}']
    assert 'Publish Violation - User "web"' in trailer.cloud.nodes[0].read_log()


def test_a_trailer_cannot_write_another_lines_view(trailer: Trailer) -> None:
    # the hub's node ACL lets laser-1 write fabrique/+/public/node/laser-1, and the bridge carries
    # fabrique/+/public/#: the cloud's account for this trailer is what keeps it to its own line
    trailer.publish("fabrique/other/public/node/laser-1", b'{"v":1,"state":"busy"}')
    trailer.publish(f"{LINE}/public/node/laser-1", b'{"v":1,"state":"manual"}')  # after it, on one bridge
    watcher = trailer.viewer()
    watcher.wait_for(f"{LINE}/public/node/laser-1", b'{"v":1,"state":"manual"}')
    trailer.synced(watcher)
    assert "fabrique/other/public/node/laser-1" not in {t for t, _p, _r in watcher.seen}
    assert 'Publish Violation - User "trailer-demo", Subject "fabrique.other.' in trailer.cloud.nodes[0].read_log()


def test_the_cloud_learns_when_the_uplink_goes_down(trailer: Trailer) -> None:
    watcher = trailer.viewer(f"{LINE}/public/uplink")
    watcher.wait_for(f"{LINE}/public/uplink", b"1")
    trailer.hub.kill()  # the hub gone, as far as the cloud can tell
    watcher.wait_for(f"{LINE}/public/uplink", b"0")
    trailer.hub.start()
    assert trailer.viewer(f"{LINE}/public/uplink").wait_for(f"{LINE}/public/uplink", b"1")


def test_edge_web_asks_again_while_the_cloud_refuses_its_subscription(tmp_path: Path) -> None:
    """A cluster that refuses a subscription for a while (NATS while it re-elects after losing a
    node; here the `web` account's read permission taken away): edge web says so on its pages,
    asks again on the same connection, says it once in its log, and shows the line once the
    cluster accepts (here: the permission given back, the node restarted; Debian's nats-server
    2.9 crashes when its users are reloaded with SIGHUP while MQTT is on)."""
    cloud = SimCloud(tmp_path / "cloud", size=1, admin=True)
    users = cloud.nodes[0].dir / "nats" / "fabrique-users.conf"
    shipped = users.read_text()
    granted = 'subscribe: ["fabrique.*.public", "fabrique.*.public.>", "$MQTT.sub.>"]'
    assert granted in shipped
    users.write_text(shipped.replace(granted, 'subscribe: ["$MQTT.sub.>"]'))
    cloud.start()
    port = cloud.mqtt_ports[0]
    admin = CloudClient(port, ADMIN)
    web = WebServer(tmp_path / "web", SimpleNamespace(people_port=port), password=cloud_password("web"),
                    extra=("--cloud",))
    try:
        admin.publish(f"{LINE}/public/node/laser-1", json.dumps(node_body("laser-1", "busy")).encode(), retain=True)
        admin.close()
        web.start(wait_link=False)
        deadline = time.monotonic() + 30
        while cloud.nodes[0].read_log().count('Subscription Violation - User "web"') < 3:
            assert time.monotonic() < deadline, cloud.nodes[0].read_log()[-2000:]
            time.sleep(0.1)
        link = web.json("/healthz")["broker"]
        assert not link["up"] and "refused the subscription to fabrique/demo/public/#" in link["problem"]
        clients = {line.split(" - ")[2] for line in cloud.nodes[0].read_log().splitlines() if "Subscription Violation" in line}
        assert len(clients) == 1, clients  # asked again on the same connection
        refused = [line for line in web.log.read_text().splitlines() if "refused the subscription" in line]
        assert len(refused) == 1, refused  # said once, however many times it was refused
        users.write_text(shipped)
        cloud.stop()
        cloud.start()
        view = web.wait("/api/line", lambda d: d["link"]["up"] and d["stations"][1]["nodes"]
                        and d["stations"][1]["nodes"][0]["state"] == "busy", timeout=30)
        assert view["link"]["up"]
    finally:
        web.kill()
        admin.close()
        cloud.stop()
