"""An order's job travels the line: launched from its QR payload, stepped at every station."""

from __future__ import annotations

import time

import pytest
from trailer import ROOT

from edge.orders import Order, private_key_from_pem, sign_order
from edge.sim.line import converged, wait_until

EXAMPLE_KEY = ROOT / "examples" / "keys" / "EXAMPLE-ONLY-order-signing.pem"


def signed(order_id: str, text: str = "ANNA") -> str:
    key = private_key_from_pem(EXAMPLE_KEY.read_bytes())
    order = Order(order_id, "keyring", {"text": text}, issued_at=int(time.time()), key_id="example-1")
    return sign_order(order, key)


def test_an_order_travels_its_route_and_every_node_agrees(broker, line):
    nodes = {kind: line[f"{kind}-1"] for kind in ("intake", "laser", "inspection", "pickup")}
    launched = nodes["intake"].command(f"launch {signed('R2D2X1')}")
    assert launched["route"] == ["intake", "laser", "inspection", "pickup"]
    for kind in launched["route"]:
        node = nodes[kind]
        wait_until(lambda node=node: node.command("job R2D2X1")["status"] != "unknown", 30, f"{kind} sees the job")
        node.command("step R2D2X1 started")
        busy = node.status()
        assert (busy["state"], busy["job"]) == ("busy", "R2D2X1")
        state = node.command("step R2D2X1 done")
        idle = node.status()
        at_rest = "manual" if kind in ("pickup", "inspection") else "idle"  # lockers, camera: by hand
        assert (idle["state"], idle["job"]) == (at_rest, None)
        assert state["steps"][launched["route"].index(kind)]["status"] == "done"
    final = nodes["pickup"].command("complete R2D2X1")
    assert final["status"] == "completed" and final["next_step"] is None
    expected = {nodes[k].origin: n for k, n in {"intake": 3, "laser": 2, "inspection": 2, "pickup": 3}.items()}
    wait_until(converged(list(nodes.values()), expected), 30, "every node to hold the whole job")
    states = [n.command("job R2D2X1") for n in nodes.values()]
    assert all(s == states[0] for s in states)


@pytest.mark.parametrize("mangle, reason", [
    (lambda p: p[:-3] + ("A" if p[-3] != "A" else "B") + p[-2:], "bad_signature"),
    (lambda p: "HELLO", "bad_format"),
])
def test_a_tampered_order_is_refused_at_the_console_with_its_reason(broker, line, mangle, reason):
    intake = line["intake-1"]
    with pytest.raises(RuntimeError, match=f"order refused: {reason}"):
        intake.command(f"launch {mangle(signed('T4MP3R'))}")
    with pytest.raises(RuntimeError, match="no job 'T4MP3R'"):
        intake.command("job T4MP3R")


def test_one_order_launched_at_two_intakes_offline_is_a_reported_conflict(broker, line):
    first, second = line["intake-1"], line["spare-1"]
    payload = signed("TW1N55")
    broker.stop()
    wait_until(lambda: not first.status()["mqtt"]["connected"] and not second.status()["mqtt"]["connected"])
    first.command(f"launch {payload}")
    second.command(f"launch {payload}")
    broker.start()
    wait_until(converged([first, second], {first.origin: 1, second.origin: 1}), 30)
    a, b = first.command("job TW1N55"), second.command("job TW1N55")
    assert a == b
    (conflict,) = a["conflicts"]
    assert conflict["kind"] == "duplicate_launch"
    with pytest.raises(RuntimeError, match="already launched"):
        first.command(f"launch {payload}")


def test_a_station_restarted_mid_step_is_still_busy_with_its_job(broker, line):
    laser = line["laser-1"]
    laser.command(f"launch {signed('B0OT42')}")  # a laser may launch too: any station can start from the QR
    laser.command("step B0OT42 started")
    laser.kill()  # power cut in the middle of engraving
    laser.start()
    status = laser.status()
    assert (status["state"], status["job"]) == ("busy", "B0OT42")
