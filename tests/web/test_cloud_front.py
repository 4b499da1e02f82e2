"""The live view in the cloud as shipped (docs/live-view.md#in-the-cloud), on this machine:

    hub mosquitto --bridge-public.conf, TLS--> 3 nats-server (fabrique-cluster.conf, route mTLS)
    nats <--TLS, nginx-fabrique-mqtt.conf (one nginx per web host)-- 2 `edge web --cloud`
    viewer --HTTPS--> nginx-fabrique-web.conf (least_conn) --> the `edge web` instances

Real processes throughout (edge/sim/cloud.py: SimCloud(tls=True), SimFront), with certificates
from a throwaway CA. What a class watching sees when a web instance or a cluster node is lost.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from live_kit import NODES, Answer, EventStream, Nodes, Visitor, WebServer, fetch

from edge.sim.cloud import SimCloud, SimFront, cloud_password, public_bridge_conf
from edge.sim.line import SimBroker, password_of

pytestmark = pytest.mark.timeout(240)


@dataclass
class Cloud:
    cloud: SimCloud
    hub: SimBroker
    nodes: Nodes
    front: SimFront
    webs: list[WebServer]
    ports: list[int]  # each instance's HTTP port, kept across a restart
    tls: ssl.SSLContext

    def get(self, path: str) -> Answer:
        """GET `path` at the front, over HTTPS trusting the sim CA."""
        return fetch(self.front.url + path, self.tls)

    def stream(self) -> EventStream:
        return EventStream(self.front.url + "/api/events", self.tls)

    def restart_web(self, i: int) -> None:
        self.webs[i].start(listen=f"127.0.0.1:{self.ports[i]}", wait_link=False)
        self.webs[i].wait_link(True, timeout=30)


def laser_at(progress: int) -> Any:
    """A check for a line view showing laser-1 busy at `progress` %."""
    return lambda d: any(n["node"] == "laser-1" and n["progress"] == progress for s in d["stations"] for n in s["nodes"])


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    tmp: Path = tmp_path_factory.mktemp("cloud-front")
    started: list[Any] = []
    try:
        sim = SimCloud(tmp / "cloud", size=3, tls=True).start()
        started.append(sim)
        hub = SimBroker(tmp / "hub", users={n: password_of(n) for n in NODES},
                        extra=public_bridge_conf(sim.mqtt_ports, cafile=sim.ca, keepalive=5, restart="1 2")).start()
        started.append(hub)
        front = SimFront(tmp / "front", sim, hosts=2).start()
        started.append(front)
        webs = [WebServer(tmp / f"web-{i}", SimpleNamespace(people_port=port), password=cloud_password("web"),
                          extra=("--cloud",)) for i, port in enumerate(front.mqtt_ports)]
        for web in webs:
            started.append(web)
            web.start(wait_link=False)
        for web in webs:
            web.wait_link(True, timeout=30)
        ports = [int(web.url.rsplit(":", 1)[1]) for web in webs]
        front.set_web(ports)
        nodes = Nodes(hub)
        nodes.all_idle()
        yield Cloud(sim, hub, nodes, front, webs, ports, ssl.create_default_context(cafile=str(sim.ca)))
        nodes.close()
    finally:
        for part in reversed(started):
            part.kill() if isinstance(part, WebServer) else part.stop()


def test_the_generated_front_is_the_shipped_one_and_nginx_takes_it(cloud: Cloud) -> None:
    checked = cloud.front.check()
    assert checked.returncode == 0 and "test is successful" in checked.stderr, checked.stderr
    web = (cloud.front.dir / "fabrique-web.conf").read_text()
    for kept in ("least_conn;", "proxy_buffering off;", "proxy_read_timeout 2h;", "location /O/", "ssl http2;"):
        assert kept in web
    stream = (cloud.front.dir / "fabrique-mqtt.conf").read_text()
    assert stream.count("proxy_ssl_verify on;") == 2 and "proxy_ssl_name mqtt.cloud.example.invalid;" in stream


def test_every_link_to_the_cluster_is_tls(cloud: Cloud) -> None:
    """The hub's bridge and each web host's stream reach the cluster over verified TLS (a wrong
    name or CA and nothing would connect)."""
    links = {c["client"]: c for node in cloud.cloud.nodes for c in node.mqtt_connections()}
    assert links["fabrique-public-demo"]["tls"].startswith("1."), links
    webs = [c for c in links.values() if c["client"].startswith("web-")]
    assert sorted(c["ip"] for c in webs) == [SimFront.host_address(0), SimFront.host_address(1)]
    assert all(c["tls"].startswith("1.") for c in webs), webs


def test_a_viewer_sees_the_line_live_through_the_front(cloud: Cloud) -> None:
    page = cloud.get("/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html") and b"Fabrique demo trailer" in page.body
    stream = cloud.stream()
    try:
        assert stream.status == 200 and stream.headers["content-type"].startswith("text/event-stream")
        stream.wait(lambda d: d["link"]["up"] and d["link"]["trailer"] == "up", what="the line up")
        began = time.monotonic()
        cloud.nodes.node("laser-1", "busy", job="J1", progress=31)
        stream.wait(laser_at(31), what="laser-1 at 31 %")  # hub -> bridge -> NATS -> stream -> edge web -> nginx
        assert time.monotonic() - began < 5  # nothing held back on the way (nginx buffers nothing)
    finally:
        stream.close()


def test_a_visitors_own_page_is_not_served_by_the_cloud(cloud: Cloud) -> None:
    v = Visitor.make("F1")
    assert cloud.webs[0].get(v.url_path).status == 200  # an instance would serve it...
    answer = cloud.get(v.url_path)
    assert answer.status == 404 and answer.headers.get("server", "").startswith("nginx")  # ...the front does not


def test_a_lost_web_instance_moves_its_viewers_to_the_other(cloud: Cloud) -> None:
    streams = [cloud.stream(), cloud.stream()]  # least_conn: one on each instance
    try:
        for s in streams:
            s.wait(lambda d: d["link"]["up"])
        cloud.webs[0].kill()
        deadline = time.monotonic() + 10
        while not any(s.closed for s in streams):
            assert time.monotonic() < deadline, "no stream ended with its instance"
            time.sleep(0.05)
        time.sleep(0.5)
        assert sum(s.closed for s in streams) == 1, "a stream of the other instance ended too"
        statuses = [cloud.get("/api/line").status for _ in range(6)]
        assert statuses == [200] * 6, statuses  # proxy_next_upstream: the dead one is skipped
        again = cloud.stream()  # what the page's EventSource does by itself
        streams.append(again)
        cloud.nodes.node("laser-1", "busy", job="J2", progress=52)
        again.wait(laser_at(52), what="the update on the other instance")
        next(s for s in streams[:2] if not s.closed).wait(laser_at(52))
    finally:
        for s in streams:
            s.close()
        cloud.restart_web(0)
    deadline = time.monotonic() + 15
    while cloud.get("/api/line").status != 200:  # back behind the front (fail_timeout 5 s)
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_lost_cluster_node_costs_the_viewers_nothing(cloud: Cloud) -> None:
    """kill -9 the node under the first web host's stream: its instance says the link is down,
    nginx takes it to another node, and the same open streams show what happens next."""
    victim = cloud.front.node_of(0)
    assert victim is not None, "web host 1's stream is on no node"
    streams = [cloud.stream(), cloud.stream()]
    try:
        for s in streams:
            s.wait(lambda d: d["link"]["up"] and d["link"]["trailer"] == "up")
        cloud.cloud.kill_node(victim)
        cloud.webs[0].wait_link(False, timeout=20)
        for web in cloud.webs:
            web.wait_link(True, timeout=60)
        moved = cloud.front.node_of(0)
        assert moved is not None and moved != victim
        cloud.nodes.node("laser-1", "busy", job="J3", progress=73)
        for s in streams:
            s.wait(laser_at(73), timeout=60, what="the update after the node's loss")
            assert not s.closed
        assert any(not d["link"]["up"] for d in streams[0].views + streams[1].views)  # said while it lasted
    finally:
        for s in streams:
            s.close()
        cloud.cloud.restart_node(victim)
