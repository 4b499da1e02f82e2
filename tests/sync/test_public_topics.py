"""The public subtree on a real broker: the `web` account of the live views reads it and nothing
else, and a visitor's job crosses the whole line without their name, their order id or their
order reaching it; the QR's secret opens the sealed details. Dashboards get the station's mode,
safety circuits, inputs and outputs and its numbers on the state topic."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from mqttclient import TestClient
from PIL import Image

from edge.config import load_line
from edge.orders import verify_order
from edge.public import public_id, unseal
from edge.sim.line import EXAMPLES, SimBroker, SimNode, example_order, password_of, wait_until
from edge.sim.parts import render
from stations.inspection import expected_strokes, product_layout

LINE = load_line(EXAMPLES / "line.toml")
PUBLIC = "fabrique/demo/public/"
USERS = ("intake-1", "laser-1", "inspection-1", "pickup-1")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[SimBroker]:
    """The shipped hub config with the live views' `web` account beside the dashboard's."""
    people = {"dashboard": "pw-dashboard", "operator": "pw-operator", "web": "pw-web"}
    b = SimBroker(tmp_path / "broker", users={u: password_of(u) for u in USERS}, people=people).start()
    yield b
    b.kill()


def web(broker: SimBroker) -> TestClient:
    """The live views' account, asking for the whole tree and for the private topics by name."""
    return TestClient(broker.people_port, "web", "pw-web", topics=(
        "#", "fabrique/#", "fabrique/demo/job/#", "fabrique/demo/node/+/state", "fabrique/demo/node/+/status",
        "fabrique/demo/events/#", "homeassistant/#"))


def latest(client: TestClient, topic: str, holds=lambda _body: True) -> dict | None:
    """The latest payload on `topic` (JSON) for which `holds` is true, or None."""
    bodies = [json.loads(p) for p in client.on(topic) if p]
    return next((b for b in reversed(bodies) if holds(b)), None)


def secret_of(payload: str) -> str:
    return verify_order(payload, LINE, time.time()).order.secret


def test_the_web_account_reads_the_public_subtree_and_nothing_else_and_writes_nothing(broker, line):
    dash = TestClient(broker.people_port, "dashboard", "pw-dashboard")
    viewer = web(broker)
    try:
        intake = line["intake-1"]
        payload = example_order("ACL001", "Ada")
        intake.command(f"launch {payload}")
        pid = public_id(secret_of(payload))
        for topic in ("fabrique/demo/job/ACL001", "fabrique/demo/node/intake-1/state",
                      "fabrique/demo/events/intake-1", f"{PUBLIC}job/{pid}"):
            dash.wait_for(lambda t, _p, topic=topic: t == topic, 20)  # published: the dashboard sees it
        viewer.wait_for(lambda t, _p: t == f"{PUBLIC}job/{pid}", 10)
        viewer.wait_for(lambda t, _p: t == f"{PUBLIC}node/intake-1", 10)
        assert {t for t, _p, _props, _r in viewer.seen if not t.startswith(PUBLIC)} == set()
        for topic in (f"{PUBLIC}node/intake-1", f"{PUBLIC}job/{pid}", f"{PUBLIC}job/{pid}/snapshot",
                      "fabrique/demo/node/intake-1/cmd", "fabrique/demo/job/ACL001", "homeassistant/status"):
            reason = viewer.publish(topic, b"{}")
            assert reason.is_failure and "not authorized" in str(reason).lower(), (topic, reason)
    finally:
        viewer.close()
        dash.close()
    late = web(broker)  # connects later: the retained public picture, still nothing else
    try:
        late.wait_for(lambda t, _p: t == f"{PUBLIC}job/{pid}", 10)
        late.wait_for(lambda t, _p: t == f"{PUBLIC}node/intake-1", 10)
        assert all(t.startswith(PUBLIC) for t in late.retained())
        assert json.loads(late.on(f"{PUBLIC}node/intake-1")[-1])["state"] == "idle"
    finally:
        late.close()


def camera_folder(path: Path, job: str, text: str) -> Path:
    """A camera that sees a well-made keyring, its label saying `job` (a job launched at the
    console has no carrier: its id is the label the camera looks for)."""
    keyring = LINE.products["keyring"]
    frame = render(layout=product_layout(keyring), label=job, colour=LINE.colours["blue"].srgb,
                   strokes=expected_strokes(keyring, {"text": text}, LINE), size=(1024, 768))
    path.mkdir(parents=True)
    Image.fromarray(frame).save(path / "frame.png")
    return path


def inspection_node(tmp_path: Path, broker: SimBroker, frames: Path) -> SimNode:
    """An inspection in auto mode with a camera, its ring light and an emergency stop on mock pins."""
    hardware = (f'\n[hardware.camera]\ntype = "camera"\nsource = "file"\npath = "{frames}"\n'
                '\n[hardware.ring_light]\ntype = "digital_output"\npin = 18\nsafe_state = "off"\n'
                '\n[hardware.estop]\ntype = "emergency_stop"\npin = 4\n')
    node = SimNode(tmp_path, "inspection-1", broker.port, kind="inspection", hardware=hardware)
    node.config.write_text(node.config.read_text().replace('mode = "manual"', 'mode = "auto"'))
    return node.start()


def test_a_visitors_job_crosses_the_line_and_no_name_order_or_order_id_reaches_the_web(tmp_path, broker, line):
    text, job = "Camille Roux", "PRIV01"
    viewer = web(broker)
    dash = TestClient(broker.people_port, "dashboard", "pw-dashboard")
    inspection = inspection_node(tmp_path, broker, camera_folder(tmp_path / "frames", job, text))
    try:
        intake, laser, pickup = line["intake-1"], line["laser-1"], line["pickup-1"]
        payload = example_order(job, text)  # a keyring: intake, laser, inspection, pickup
        secret = secret_of(payload)
        pid = public_id(secret)
        intake.command(f"launch {payload}")
        intake.command(f"step {job} started")
        intake.command(f"step {job} done")
        wait_until(lambda: laser.command(f"job {job}")["steps"][0]["status"] == "done", 30, "the laser to see it")
        laser.command(f"step {job} started")
        busy = viewer.wait_for(lambda t, p: t == f"{PUBLIC}node/laser-1" and json.loads(p)["state"] == "busy", 10)
        node_view = json.loads(busy[-1][1])
        assert (node_view["job"], node_view["title"], node_view["mode"]) == (pid, "Laser engraving", "auto")
        laser.command(f"step {job} done")
        wait_until(lambda: inspection.command(f"job {job}")["steps"][1]["status"] == "done", 30, "the laser's done")
        inspection.command(f"step {job} started")  # the part is at the camera ...
        inspection.command(f"retry {job}")  # ... and the station looks at it by itself
        wait_until(lambda: inspection.command(f"job {job}")["steps"][2]["status"] == "done", 60, "the inspection")
        shot = viewer.wait_for(lambda t, p: t == f"{PUBLIC}job/{pid}/snapshot" and bool(p), 30)
        wait_until(lambda: pickup.command(f"job {job}")["steps"][2]["status"] == "done", 30, "the pickup to see it")
        pickup.command(f"step {job} started")
        pickup.command(f"step {job} done")
        pickup.command(f"complete {job}")
        viewer.wait_for(lambda t, p: t == f"{PUBLIC}job/{pid}" and bool(p) and json.loads(p)["status"] == "completed",
                        10)
        for node in (intake, laser, inspection, pickup):
            node.command("archive")
        viewer.wait_for(lambda t, p: t == f"{PUBLIC}job/{pid}/snapshot" and not p, 10)  # cleared with the job
        viewer.wait_for(lambda t, p: t == f"{PUBLIC}job/{pid}" and not p, 10)
        laser.stop()  # a clean stop says goodbye in public too
        viewer.wait_for(lambda t, p: t == f"{PUBLIC}node/laser-1" and json.loads(p)["state"] == "offline", 10)
        state = wait_until(lambda: latest(dash, "fabrique/demo/node/inspection-1/state",
                                          lambda s: s["metrics"]["jobs_per_hour"] == 1), 10, "the inspection's numbers")
    finally:
        viewer.close()
        dash.close()
        inspection.kill()

    seen = [(t, json.loads(p)) for t, p, _props, _r in viewer.seen if p]
    stations = {f"{PUBLIC}node/{n}" for n in USERS}
    assert {t for t, _p in seen} <= {f"{PUBLIC}job/{pid}", f"{PUBLIC}job/{pid}/snapshot", *stations}
    for topic, body in seen:  # the sealed parts are ciphertext, opened below with the secret alone
        clear = json.dumps({k: v for k, v in body.items() if k != "sealed"}, ensure_ascii=False)
        for private in ("Camille", "Roux", job, "FE1:", secret, "order", "reason"):
            assert private not in clear and private not in topic, (private, topic, clear)
    public = [body for t, body in seen if t == f"{PUBLIC}job/{pid}"]
    assert {b["name"] for b in public} == {"C."} and public[-1]["product_title"] == "Engraved keyring"
    assert [s["status"] for s in public[-1]["steps"]] == ["done"] * 4
    assert unseal(secret, public[-1]["sealed"])["text"] == text  # the QR's holder sees it all
    picture = unseal(secret, json.loads(shot[-1][1])["sealed"])
    assert picture["verdict"] == "pass" and isinstance(picture["taken_ms"], int)
    image = cv2.imdecode(np.frombuffer(base64.b64decode(picture["jpeg"]), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[1] == 480
    assert unseal(public_id(secret), json.loads(shot[-1][1])["sealed"]) is None  # the public id opens nothing
    assert state["mode"] == "auto" and state["safety"] == {"estop": "ok"} and state["io"] == {"ring_light": False}
    assert state["metrics"]["queue"] == 0 and state["metrics"]["step_last_s"] is not None


def test_the_state_topic_carries_the_mode_and_numbers_to_chart(broker, line):
    dash = TestClient(broker.people_port, "dashboard", "pw-dashboard")
    try:
        laser = line["laser-1"]
        laser.command(f"launch {example_order('CHART1', 'Bo')}")  # any station may launch from the QR
        laser.command("step CHART1 started")
        time.sleep(1.1)  # a step that lasts: its duration is measured by the ledger's clock
        laser.command("step CHART1 done")
        state = wait_until(lambda: latest(dash, "fabrique/demo/node/laser-1/state",
                                          lambda s: s["metrics"]["jobs_per_hour"] == 1), 10, "the step counted")
        metrics = state["metrics"]
        assert metrics["step_last_s"] >= 1.0 and metrics["step_mean_s"] == metrics["step_last_s"]
        assert (state["mode"], state["safety"], state["io"]) == ("auto", {}, {})  # a laser with no devices
        laser.command("mode manual")
        wait_until(lambda: latest(dash, "fabrique/demo/node/laser-1/state", lambda s: s["mode"] == "manual"), 10)
        public = wait_until(lambda: latest(dash, f"{PUBLIC}node/laser-1", lambda s: s["mode"] == "manual"), 10)
        assert public["state"] == "manual" and public["since_ms"] <= public["updated_ms"]
    finally:
        dash.close()
