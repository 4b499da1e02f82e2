"""`edge web` against the shipped hub broker: the JSON API, the Server-Sent Events streams, the
visitor's page behind its QR code, the broker's loss, and what the public never sees. The nodes
are plain MQTT clients publishing the public subtree as docs/mqtt.md says."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from live_kit import (
    LINE_FILE,
    STAND,
    TOPICS,
    Nodes,
    Visitor,
    WebServer,
    jpeg,
    node_body,
    now_ms,
    start_broker,
)
from mqttclient import TestClient

from edge.sim.line import CHECKOUT, password_of


def test_the_line_api_shows_every_station_its_job_and_the_trades(web, nodes):
    nodes.all_idle()
    v = Visitor.make("A1", "Camille Dupont", "blue")
    nodes.job(v, {"intake": "done", "laser": "running"}, progress={"laser": 40})
    nodes.node("laser-1", "busy", job=v.pid, progress=40)
    view = web.wait("/api/line", lambda d: d["stations"][1]["state"] == "busy")
    assert view["link"]["up"] and view["line"] == {"id": "demo", "title": "Fabrique demo trailer"}
    assert [s["kind"] for s in view["stations"]] == STAND
    (laser,) = view["stations"][1]["nodes"]
    assert laser["job"] == {"id": v.pid, "name": "C.", "colour": "blue", "colour_rgb": "#1e50b4"}
    assert laser["progress"] == 40
    assert sum(len(s["trades"]) for s in view["stations"]) == 40
    assert [j["id"] for j in view["jobs"]] == [v.pid]
    screen = web.json("/api/screen")
    assert [j["id"] for j in screen["jobs"]] == [v.pid] and "trades" not in screen["stations"][0]
    assert web.json(f"/api/job/{v.pid}")["job"]["station"] == "laser"


def test_a_step_change_is_pushed_on_the_stream_as_the_whole_view(web, nodes):
    v = Visitor.make("S1")
    nodes.job(v, {"intake": "done", "laser": "running"})
    stream = web.stream("/api/events")
    assert stream.headers["content-type"].startswith("text/event-stream")
    first = stream.wait(lambda d: d["jobs"], what="the job")
    assert first["jobs"][0]["steps"][1]["status"] == "running" and first["link"]["up"]
    job_stream = web.stream(f"/api/events/job/{v.pid}")
    job_stream.wait(lambda d: d["job"] and d["job"]["steps"][1]["status"] == "running")
    began = time.monotonic()
    nodes.job(v, {"intake": "done", "laser": "done", "printer": "running"}, by="laser-1")
    done = stream.wait(lambda d: d["jobs"] and d["jobs"][0]["steps"][1]["status"] == "done", what="the step done")
    assert time.monotonic() - began < 2
    assert done["jobs"][0]["station"] == "printer" and "stations" in done  # the whole view, not a diff
    job_stream.wait(lambda d: d["job"]["steps"][2]["status"] == "running")
    count = len(stream.views)
    nodes.node("laser-1", "idle")  # a station's heartbeat that changes something else: one more view
    stream.wait(lambda d: any(n["node"] == "laser-1" for s in d["stations"] for n in s["nodes"]))
    assert len(stream.views) == count + 1
    stream.close()
    job_stream.close()


def test_a_quiet_stream_ticks_so_the_page_knows_it_is_alive(web):
    stream = web.stream("/api/events/job/abcdefgh")
    view = stream.wait(lambda d: True)
    assert view["job"] is None and view["view"] == "job"
    deadline = time.monotonic() + 8
    while stream.ticks == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stream.ticks >= 1 and len(stream.views) == 1
    stream.close()


def test_an_archived_job_leaves_the_views(web, nodes):
    v = Visitor.make("G1")
    nodes.job(v, dict.fromkeys(STAND, "done"), status="completed")
    web.wait("/api/line", lambda d: [j["id"] for j in d["finished"]] == [v.pid])
    nodes.archive(v)
    web.wait("/api/line", lambda d: d["finished"] == [])
    assert web.json(f"/api/job/{v.pid}")["job"] is None


def test_the_broker_killed_shows_the_link_down_since_then_up_again_with_the_line(web, nodes, hub):
    v = Visitor.make("K1")
    nodes.job(v, {"intake": "done"})
    web.wait("/api/line", lambda d: d["jobs"])
    stream = web.stream("/api/events")
    killed = now_ms()
    nodes.close()
    hub.kill()
    down = stream.wait(lambda d: not d["link"]["up"], what="the link down")
    assert down["link"]["state"] == "down" and killed - 1000 <= down["link"]["since_ms"] <= now_ms()
    assert web.json("/healthz")["broker"]["up"] is False
    hub.start()  # retained topics come back from its persistence file (or from the nodes)
    Nodes(hub).job(v, {"intake": "done", "laser": "running"})
    back = stream.wait(lambda d: d["link"]["up"] and d["jobs"] and d["jobs"][0]["steps"][1]["status"] == "running",
                       timeout=20, what="the link back with the line")
    assert back["link"]["since_ms"] > down["link"]["since_ms"]
    stream.close()


def test_a_frozen_broker_is_noticed_by_keepalive(web, hub):
    frozen = now_ms()
    hub.pause()
    try:
        link = web.wait_link(False, timeout=15)
        assert "keepalive" in link["problem"]
        assert frozen - 1000 <= link["since_ms"] <= now_ms()
    finally:
        hub.resume()
    web.wait_link(True, timeout=20)


def test_an_unreachable_broker_is_not_fatal(tmp_path):
    broker = start_broker(tmp_path / "hub")
    broker.kill()  # its port is known and nobody listens
    server = WebServer(tmp_path / "web", broker).start(wait_link=False)
    try:
        link = server.wait_link(False)
        assert link["state"] == "down" and "cannot connect" in link["problem"]
        assert server.get("/").status == 200 and server.json("/api/line")["link"]["up"] is False
        broker.start()
        server.wait_link(True, timeout=20)
    finally:
        server.kill()
        broker.kill()


def test_a_wrong_password_is_said_in_the_link_and_the_log(tmp_path, hub):
    server = WebServer(tmp_path / "web", hub, password="wrong").start(wait_link=False)
    try:
        link = server.wait_link(False)
        assert "refused the account" in link["problem"]
        assert "check --user and --password-file" in server.log.read_text()
    finally:
        server.kill()


def test_in_the_cloud_the_trailers_uplink_down_says_the_trailer_is_offline(tmp_path):
    broker = start_broker(tmp_path / "cloud", bridge=True)
    server = WebServer(tmp_path / "web", broker, extra=("--cloud",)).start()
    bridge = TestClient(broker.people_port, "bridge", password_of("bridge"), topics=())
    try:
        stream = server.stream("/api/events")
        stream.wait(lambda d: d["link"]["up"])
        assert bridge.publish("fabrique/demo/public/uplink", b"0", retain=True) in (0, 16)
        down = stream.wait(lambda d: d["link"]["trailer"] == "down", what="the trailer offline")
        assert down["link"]["up"] is False and "the trailer is offline" in down["link"]["problem"]
        assert server.json("/healthz")["broker"]["up"] is True  # the cloud's own broker is fine
        bridge.publish("fabrique/demo/public/uplink", b"1", retain=True)
        stream.wait(lambda d: d["link"]["trailer"] == "up" and d["link"]["up"], what="the trailer back")
        stream.close()
    finally:
        bridge.close()
        server.kill()
        broker.kill()


def test_a_broker_speaking_only_mqtt_311_is_read_in_311(tmp_path):
    """The cloud's NATS speaks MQTT 3.1.1 only: `edge web` falls back to it by itself."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge.sim.cloud import SimCloud, cloud_password

    cloud = SimCloud(tmp_path / "cloud", size=1).start()
    trailer = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="trailer-test", protocol=mqtt.MQTTv311)
    trailer.username_pw_set("trailer-demo", cloud_password("trailer-demo"))
    trailer.connect("127.0.0.1", cloud.mqtt_ports[0])
    trailer.loop_start()
    server = WebServer(tmp_path / "web", hub_stub(cloud.mqtt_ports[0]), password=cloud_password("web"),
                       extra=("--cloud",))
    try:
        trailer.publish(TOPICS.public_node("laser-1"), json.dumps(node_body("laser-1", "busy")), qos=1,
                        retain=True).wait_for_publish(10)
        trailer.publish("fabrique/demo/public/uplink", b"1", qos=1, retain=True).wait_for_publish(10)
        server.start()
        view = server.wait("/api/line", lambda d: d["stations"][1]["state"] == "busy" and d["link"]["trailer"])
        assert view["link"] == {**view["link"], "up": True, "trailer": "up"}
        assert "speaks MQTT 3.1.1 only" in server.log.read_text()
        trailer.publish("fabrique/demo/public/uplink", b"0", qos=1, retain=True).wait_for_publish(10)
        server.wait("/api/line", lambda d: d["link"]["trailer"] == "down" and not d["link"]["up"])
    finally:
        server.kill()
        trailer.loop_stop()
        trailer.disconnect()
        cloud.stop()


def hub_stub(port: int) -> Any:
    """What WebServer needs of a broker: the port `edge web` reads from."""
    return type("Broker", (), {"people_port": port})()


def test_the_visitors_page_opens_their_details_and_snapshot_with_the_qr(web, nodes):
    v = Visitor.make("V1", "Zoé Dupont", "green")
    page = web.get(v.url_path)  # before the intake launched it: the page says so, and shows the engraving
    assert page.status == 200 and "Zoé Dupont" in page.text and "engraving-svg" in page.text
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
    assert f"/api/events/job/{v.pid}?s={v.secret}" in page.text
    nodes.job(v, {"intake": "done", "laser": "done", "printer": "done", "transfer": "done", "inspection": "running"})
    picture = jpeg()
    taken = nodes.snapshot(v, picture, "pass")
    mine = web.wait(f"/api/job/{v.pid}?s={v.secret}", lambda d: d["mine"]["snapshot"])
    assert mine["mine"]["text"] == "Zoé Dupont" and mine["mine"]["options"] == {"colour": "green", "text": "Zoé Dupont"}
    shot = mine["mine"]["snapshot"]
    assert shot["verdict"] == "pass" and shot["taken_ms"] == taken
    image = web.get(shot["url"])
    assert image.status == 200 and image.headers["content-type"] == "image/jpeg" and image.body == picture
    stream = web.stream(f"/api/events/job/{v.pid}?s={v.secret}")
    assert stream.wait(lambda d: d["view"] == "visitor")["mine"]["snapshot"]["verdict"] == "pass"
    stream.close()
    public = web.json(f"/api/job/{v.pid}")
    assert "mine" not in public and public["job"]["snapshot"] is True
    assert web.get(f"/api/job/{v.pid}/snapshot.jpg").status == 404


def test_a_secret_that_does_not_open_the_job_is_refused(web, nodes):
    v, other = Visitor.make("W1"), Visitor.make("W2")
    nodes.job(v, {"intake": "done"})
    for path in (f"/api/job/{v.pid}?s={other.secret}", f"/api/job/{v.pid}/snapshot.jpg?s={other.secret}",
                 f"/api/events/job/{v.pid}?s={other.secret}", f"/api/job/{v.pid}?s=short"):
        answer = web.get(path)
        assert answer.status == 403 and "does not open" in answer.json()["error"], path


@pytest.mark.parametrize("change, reason", [
    (lambda p: p[:-3] + ("A" if p[-3] != "A" else "B") + p[-2:], "bad_signature"),
    (lambda p: "FE1:" + p[4:40], "bad_format"),
    (lambda p: "HELLO", "bad_format"),
])
def test_a_tampered_qr_is_refused_with_its_reason(web, change, reason):
    from edge.public import order_url

    v = Visitor.make("T1", "Camille Dupont")
    answer = web.get(order_url("", change(v.payload)))
    assert answer.status == 400
    assert f'data-reason="{reason}"' in answer.text and "cannot open a stand" in answer.text
    assert "Camille" not in answer.text


def test_a_qr_of_another_line_is_refused(web):
    from edge.orders import Order, new_private_key, sign_order
    from edge.public import order_url

    payload = sign_order(Order("X1", "stand", {"text": "Ann"}, issued_at=int(time.time()), key_id="other"),
                         new_private_key())
    answer = web.get(order_url("", payload))
    assert answer.status == 400 and 'data-reason="unknown_key"' in answer.text


def test_an_expired_order_still_shows_its_stand(web, nodes):
    from edge.orders import Order, private_key_from_pem, sign_order
    from edge.public import order_url
    from edge.sim.line import EXAMPLE_ORDER_KEY

    key = private_key_from_pem(EXAMPLE_ORDER_KEY.read_bytes())
    payload = sign_order(Order("E1", "stand", {"colour": "red", "text": "Ann"}, issued_at=int(time.time()) - 90 * 86400,
                               key_id="example-1"), key)
    answer = web.get(order_url("", payload))
    assert answer.status == 200 and ">Ann<" in answer.text


def test_nothing_public_holds_a_name_an_order_or_a_secret(web, nodes):
    """Privacy: every public answer (pages, API, streams) with jobs on the line whose nodes even
    leak a full name and an order into their payloads."""
    nodes.all_idle()
    visitors = [Visitor.make("ORD-PRIV-1", "Camille Dupont"), Visitor.make("ORD-PRIV-2", "Zoé Lefebvre", "blue")]
    leaky = nodes.job(visitors[0], {"intake": "done", "laser": "running"}, name="Camille Dupont")
    nodes.client("intake-1").publish(TOPICS.public_job(visitors[0].pid), json.dumps(
        {**leaky, "order": {"order_id": "ORD-PRIV-1", "options": {"text": "Camille Dupont"}}}), retain=True)
    nodes.job(visitors[1], {"intake": "done"})
    nodes.snapshot(visitors[1], jpeg())
    nodes.node("laser-1", "busy", job=visitors[0].pid, progress=10)
    web.wait("/api/line", lambda d: len(d["jobs"]) == 2 and d["stations"][1]["state"] == "busy")
    streams = [web.stream(p) for p in ("/api/events", "/api/events?view=screen",
                                       *(f"/api/events/job/{v.pid}" for v in visitors))]
    for s in streams:
        s.wait(lambda d: d["link"]["up"])
        s.close()
    answers = [web.get(p).text for p in ("/", "/screen", "/api/line", "/api/screen", "/healthz",
                                         *(f"/job/{v.pid}" for v in visitors),
                                         *(f"/api/job/{v.pid}" for v in visitors))]
    answers += [json.dumps(view) for s in streams for view in s.views]
    for text in answers:
        for v in visitors:
            for secret_bit in (*v.text.split(), v.order_id, v.secret, v.payload[:30], "sealed"):
                assert secret_bit not in text, (secret_bit, text[:300])
    assert any("C." in t for t in answers) and any("Z." in t for t in answers)


def test_the_web_account_reads_only_the_public_subtree_and_writes_nothing(hub, nodes):
    nodes.node("laser-1", "busy")
    nodes.client("laser-1").publish("fabrique/demo/node/laser-1/state", json.dumps({"state": "busy"}), retain=True)
    nodes.client("intake-1").publish("fabrique/demo/job/A7K2M9", json.dumps({"job": "A7K2M9"}), retain=True)
    web = TestClient(hub.people_port, "web", password_of("web"), topics=("fabrique/#", "homeassistant/#"))
    try:
        web.wait_for(lambda t, p: t == TOPICS.public_node("laser-1"))
        time.sleep(0.3)
        assert {t for t, *_ in web.seen} == {TOPICS.public_node("laser-1")}
        for topic in (TOPICS.public_node("laser-1"), "fabrique/demo/job/A7K2M9", "fabrique/demo/node/laser-1/cmd"):
            assert web.publish(topic, b"{}", retain=True) == 135  # MQTT 5: Not authorized
    finally:
        web.close()


def test_healthz_and_the_assets_are_local(web):
    health = web.json("/healthz")
    assert health["ok"] and health["line"] == "demo" and health["broker"]["up"]
    page = web.get("/")
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    for asset in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert asset.startswith("/"), asset
        assert web.get(asset).status == 200, asset
    for name in ("live.js", "live.css"):
        text = (CHECKOUT / "edge" / "web" / "static" / name).read_text()
        assert "http://" not in text and "https://" not in text and "@import" not in text
    assert web.get("/job/NOT-AN-ID").status == 404 and web.get("/nothing/here").status == 404
    order_id = web.get("/job/A7K2M9")  # an order's id is not a stand's public number: says where to look
    assert order_id.status == 404 and "scan your QR code" in order_id.text and "A7K2M9" in order_id.text


def test_sigterm_stops_the_service_with_streams_open(web):
    streams = [web.stream("/api/events") for _ in range(3)]
    for s in streams:
        s.wait(lambda d: True)
    began = time.monotonic()
    assert web.stop() == 0
    assert time.monotonic() - began < 5
    log = web.log.read_text()
    assert "Traceback" not in log and "Finished server process" in log


def run_web(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge", "web", *args], cwd=CHECKOUT, capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("args, said", [
    ((), "--line FILE is required"),
    (("--line", str(LINE_FILE), "--broker", "hub.local"), "--broker hub.local: not HOST:PORT"),
    (("--line", str(LINE_FILE), "--listen", "0.0.0.0:99999"), "--listen 0.0.0.0:99999: not HOST:PORT"),
    (("--line", str(LINE_FILE), "--line-id", "Demo Line"), "--line-id Demo Line"),
    (("--line", "/nonexistent/line.toml"), "/nonexistent/line.toml: file not found"),
    (("--line", str(LINE_FILE), "--password-file", "/nonexistent/pw"), "--password-file /nonexistent/pw"),
    (("--config", "/nonexistent/web.toml"), "/nonexistent/web.toml: file not found"),
])
def test_bad_flags_are_named_and_exit_2(args, said):
    done = run_web(*args)
    assert done.returncode == 2 and said in done.stderr, done.stderr


def test_a_config_file_is_checked_like_every_config(tmp_path):
    config = tmp_path / "web.toml"
    config.write_text(f'[web]\nline = "{LINE_FILE}"\nbrokr = "127.0.0.1:1884"\nlisten = "everywhere"\nkeepalive = 0\n')
    done = run_web("--config", str(config))
    assert done.returncode == 1
    assert f"{config}:3: [web] brokr: unknown key (did you mean 'broker'?)" in done.stderr
    assert f"{config}:4: [web] listen: 'everywhere' is not HOST:PORT" in done.stderr
    assert f"{config}:5: [web] keepalive: 0 is out of range 1..300" in done.stderr


def test_a_config_file_runs_the_service_and_flags_win(tmp_path, hub):
    (tmp_path / "web.password").write_text(password_of("web") + "\n")
    shutil.copy(LINE_FILE, tmp_path / "line.toml")
    (tmp_path / "web.toml").write_text(f'[web]\nline = "line.toml"\nbroker = "127.0.0.1:{hub.people_port}"\n'
                                       'password_file = "web.password"\nlisten = "127.0.0.1:1"\nkeepalive = 2\n')
    server = WebServer(tmp_path, hub)
    server.args = ["--config", str(tmp_path / "web.toml"), "--log-format", "text"]
    server.start("127.0.0.1:0")  # --listen wins over the file's port 1
    try:
        assert server.json("/healthz")["broker"]["up"]
    finally:
        server.kill()


def test_a_port_taken_is_one_clear_error(tmp_path, web):
    port = web.url.rsplit(":", 1)[1]
    done = run_web("--line", str(LINE_FILE), "--listen", f"127.0.0.1:{port}")
    assert done.returncode == 1 and f"--listen 127.0.0.1:{port}: cannot listen there" in done.stderr


def test_the_unit_passes_systemd_analyze_verify_and_security(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (make test installs it)")
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(CHECKOUT / "systemd" / "fabrique-web.service", root / "etc/systemd/system/fabrique-web.service")
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    edge = root / "usr/local/bin/edge"
    edge.parent.mkdir(parents=True)
    edge.write_text("#!/bin/sh\n")
    edge.chmod(0o755)
    verify = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "fabrique-web.service"],
                            capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}", "--no-pager",
                               "--threshold=29", "/etc/systemd/system/fabrique-web.service"],
                              capture_output=True, text=True)
    assert security.returncode == 0, security.stdout[-2500:] + security.stderr
    unit = Path(root / "etc/systemd/system/fabrique-web.service").read_text()
    assert "mosquitto.service" in next(line for line in unit.splitlines() if line.startswith("After="))
    for setting in ("DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict",
                    "LoadCredential=", "--listen 0.0.0.0:80", "Type=notify"):
        assert setting in unit, setting
