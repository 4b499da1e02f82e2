"""The ledger never forks and never loses: one regression test per defect found by running
the line as its users (and an attacker) would. Real mosquitto, real `edge run` processes."""

from __future__ import annotations

import base64
import errno
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from mqttclient import TestClient
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from trailer import run_edge

from edge.clock import Timestamp
from edge.ledger import Event
from edge.sim.line import SimNode, converged, example_order, password_of, sim_signer, wait_until

LINE = "fabrique/demo"


def connected(*nodes: SimNode) -> None:
    wait_until(lambda: all(n.status()["mqtt"]["connected"] for n in nodes), 30, "nodes connected")


def dashboard(port: int, topics: tuple[str, ...] = (f"{LINE}/#",)) -> TestClient:
    return TestClient(port, "dashboard", "pw-dashboard", topics=topics)


def publish_events(port: int, events: list[dict], as_node: str = "rogue-1") -> None:
    """Publish events on `events/<as_node>` with that node's account (relays look just like this)."""
    client = TestClient(port, as_node, password_of(as_node), topics=())
    try:
        reason = client.publish(f"{LINE}/events/{as_node}", json.dumps({"v": 1, "events": events}))
        assert not reason.is_failure, reason
    finally:
        client.close()


# ---------------------------------------------------------------- 1a: a fresh SD card

def test_a_node_on_a_fresh_sd_card_gets_its_history_back_and_never_reuses_an_id(broker, line):
    intake, laser = line["intake-1"], line["laser-1"]
    connected(intake, laser)
    old = intake.notes("CARD1", 4)
    old_origin, old_session = intake.origin, intake.status()["mqtt"]["session"]
    wait_until(converged([intake, laser], {old_origin: 5}), 30, "the first history to reach laser")
    intake.kill()
    shutil.rmtree(intake.data_dir)  # the SD card died: same station file and key, empty data dir
    intake.start()
    new_origin = intake.origin
    assert new_origin != old_origin and new_origin.startswith("intake-1.")
    wait_until(lambda: intake.status()["vector"].get(old_origin) == 5, 30, "its own history back from laser")
    new = intake.notes("CARD1", 2)  # the job is known again: no second launch
    assert len(new) == 2 and not set(new) & set(old)
    wait_until(converged([intake, laser], {old_origin: 5, new_origin: 2}), 30, "both histories everywhere")
    # dashboards keep trusting its will: the session goes past the one its predecessor reached
    wait_until(lambda: intake.status()["mqtt"]["session"] > old_session, 20, "the session to go past the old one")
    dash = dashboard(broker.people_port, (f"{LINE}/node/intake-1/status",))
    try:
        status = wait_until(lambda: dash.json(f"{LINE}/node/intake-1/status"), 10, "retained status")
        assert status["state"] == "online" and status["session"] > old_session
        assert status["incarnation"] == new_origin.partition(".")[2]
    finally:
        dash.close()
    intake.stop()
    laser.stop()
    assert sorted(intake.ledger_ids()) == sorted(laser.ledger_ids()) == sorted(old + new)


# ---------------------------------------------------------------- 1c: a full disk

@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 2 MiB filesystem (tmpfs) to fill up; needs root, as CI and this machine have."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_disk_fails_the_event_publishes_nothing_and_recovers_when_space_returns(tmp_path, small_disk, broker,
                                                                                         line):
    laser = line["laser-1"]
    intake = SimNode(tmp_path, "intake-1", broker.port, kind="intake")
    intake.data_dir = small_disk / "data"
    intake.config.write_text(intake.config.read_text().replace(str(tmp_path / "intake-1" / "data"),
                                                               str(intake.data_dir)))
    intake.start()
    try:
        connected(intake, laser)
        before = intake.notes("FULL1", 2)
        origin = intake.origin
        wait_until(converged([intake, laser], {origin: 3}), 30, "laser to hold the first events")
        filler = fill(small_disk)
        with pytest.raises(RuntimeError, match="could not be written.*nothing was recorded"):
            intake.command("note FULL1 written on a full disk")
        status = intake.status()
        assert status["state"] == "fault" and "disk full" in status["reason"]
        assert status["vector"] == {origin: 3}
        time.sleep(1.5)
        assert laser.status()["vector"] == {origin: 3}  # nothing unwritten was published
        filler.unlink()
        wait_until(lambda: intake.status()["state"] == "idle", 20, "the fault to clear once space returns")
        after = intake.notes("FULL1", 1)
        assert after == [f"{origin}:4"]  # the refused event never existed: its seq is free
        intake.kill()
        intake.start()
        again = intake.notes("FULL1", 1)
        assert not set(again) & set(before + after)
        wait_until(converged([intake, laser], {origin: 5}), 30, "laser to hold everything")
    finally:
        intake.kill()
    laser.stop()
    ids = laser.ledger_ids()
    assert len(ids) == len(set(ids)) == 5


# ---------------------------------------------------------------- 2: refused publishes

def test_publishes_the_broker_refuses_stay_in_the_outbox_until_it_takes_them(tmp_path, broker, line):
    intake = line["intake-1"]
    laser = SimNode(tmp_path, "laser-1", broker.port, kind="laser", username="spare-1",
                    password=password_of("spare-1")).start()  # a user name that is not the node id
    try:
        warned = run_edge("check-config", str(laser.config))
        assert warned.returncode == 0 and "username 'spare-1' is not the node id 'laser-1'" in warned.stderr
        connected(laser)
        made = laser.notes("REF1", 3)
        wait_until(lambda: "publish" in laser.status()["mqtt"]["refusals"], 20, "the refusal to show")
        status = laser.status()
        assert "not authorized" in status["mqtt"]["refusals"]["publish"].lower()
        assert status["outbox"] == 4 and status["mqtt"]["refused"] >= 1  # kept, not counted as sent
        assert laser.origin not in intake.status()["vector"]
        laser.stop()
        fixed = SimNode(tmp_path, "laser-1", broker.port, kind="laser").start()  # the technician's fix
        laser = fixed
        wait_until(lambda: fixed.status()["outbox"] == 0, 30, "the outbox to drain")
        wait_until(lambda: intake.status()["vector"].get(fixed.origin) == 4, 30, "intake to get every event")
    finally:
        laser.kill()
    intake.stop()
    assert set(made) <= set(intake.ledger_ids())


def test_a_refused_subscription_is_logged_once_and_shown(tmp_path, caplog):
    """Mosquitto 2.0 grants every subscription and filters on delivery, so no broker here can
    refuse one: paho's own SUBACK callback is fed the refusal another broker would send."""
    from paho.mqtt.packettypes import PacketTypes as P
    from paho.mqtt.reasoncodes import ReasonCode

    from edge.store import Store
    from edge.sync import MqttLink, Sync

    posted = []
    with Store.open(tmp_path / "data", "laser-1") as store:
        sync = Sync("laser-1", "demo", "laser", MqttLink("127.0.0.1", 1), store, lambda k, d: posted.append((k, d)),
                    session=1)
        client = sync.make_client(sync.network.generation)
        refused = [ReasonCode(P.SUBACK, "Granted QoS 1"), ReasonCode(P.SUBACK, "Not authorized")]
        for _ in range(3):
            client.on_subscribe(client, None, 7, refused, None)
        for kind, data in posted:
            sync.handle(kind, data)
    assert sync.status()["refusals"] == {"subscribe": "Not authorized"}
    assert sum("refused a subscribe" in r.message for r in caplog.records) == 1  # once per cause


# ---------------------------------------------------------------- 3 and 1d: forgeries

def test_a_node_account_cannot_rewrite_another_nodes_job_nor_push_its_numbering(broker, line):
    intake, laser = line["intake-1"], line["laser-1"]
    connected(intake, laser)
    intake.launch("FORGE1")
    origin = intake.origin
    wait_until(converged([intake, laser], {origin: 1}), 30)
    real = next(e for e in intake.ledger() if e.job == "FORGE1")
    now = int(time.time() * 1000)
    rogue = sim_signer("rogue-1")
    forged_cancel = rogue.sign(Event(f"{origin}:9999", "FORGE1", "cancelled", "intake",
                                     Timestamp(now, 0, "intake-1"), {"reason": "forged"}))
    tampered = Event(f"{origin}:2", "FORGE1", "cancelled", "intake", real.hlc, {}, real.sig)  # stolen signature
    unsigned = Event("rogue-1.0badc0de:1", "FORGE1", "cancelled", "intake", Timestamp(now, 0, "rogue-1"), {})
    bad_sig = Event("rogue-1.0badc0de:2", "FORGE1", "cancelled", "intake", Timestamp(now, 1, "rogue-1"), {},
                    base64.b64encode(b"\1" * 64).decode())
    honest = rogue.sign(Event("rogue-1.0badc0de:3", "FORGE1", "note", "intake", Timestamp(now, 2, "rogue-1"),
                              {"text": "a real note from a real node"}))
    publish_events(broker.port, [e.to_json() for e in (forged_cancel, tampered, unsigned, bad_sig, honest)])
    for node in (intake, laser):
        wait_until(lambda node=node: node.status()["vector"].get("rogue-1.0badc0de") == 3
                   or node.status()["mqtt"]["forged"] >= 3, 20, "the batch to be judged")
        wait_until(lambda node=node: node.status()["vector"].get("rogue-1.0badc0de", 0) == 0
                   and node.status()["mqtt"]["forged"] >= 3, 20, "the forgeries refused")
        state = node.command("job FORGE1")
        assert state["status"] == "waiting"  # not cancelled
        assert state["notes"] == ["rogue-1: a real note from a real node"]  # a listed node's signed event counts
        assert node.status()["vector"].get(origin) == 1  # no jump to 10,000
    nxt = intake.notes("FORGE1", 1)
    assert nxt == [f"{origin}:2"]
    honest_first = rogue.sign(Event("rogue-1.0badc0de:1", "FORGE1", "note", "intake", Timestamp(now, 3, "rogue-1"),
                                    {"text": "first"}))
    honest_second = rogue.sign(Event("rogue-1.0badc0de:2", "FORGE1", "note", "intake",
                                     Timestamp(now, 4, "rogue-1"), {"text": "second"}))
    publish_events(broker.port, [honest_first.to_json(), honest_second.to_json()])
    wait_until(lambda: laser.status()["vector"].get("rogue-1.0badc0de") == 3, 20, "signed events of a listed node")


# ---------------------------------------------------------------- 6: replies

def test_replies_go_only_under_cmd_response_whatever_the_request_asks(broker, line):
    laser = line["laser-1"]
    connected(laser)
    watch = dashboard(broker.people_port)
    op = TestClient(broker.people_port, "operator", "pw-operator", topics=(f"{LINE}/node/laser-1/cmd/response/#",
                                                                            f"{LINE}/node/laser-1/cmd/response"))
    try:
        hijacks = [f"{LINE}/job/HIJACK", f"{LINE}/events/laser-1", f"{LINE}/node/laser-1/state",
                   f"{LINE}/node/laser-1/cmd/responsefoo", f"{LINE}/node/laser-1/cmd/response/#"]
        for n, topic in enumerate(hijacks):
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = topic
            props.CorrelationData = f"h{n}".encode()
            op.publish(f"{LINE}/node/laser-1/cmd", b'{"command": "status"}', properties=props)
        wait_until(lambda: len(op.on(f"{LINE}/node/laser-1/cmd/response")) >= len(hijacks), 10, "the refusals")
        for payload in op.on(f"{LINE}/node/laser-1/cmd/response"):
            assert "response topic must be under" in json.loads(payload)["error"]
        ok = Properties(PacketTypes.PUBLISH)
        ok.ResponseTopic = f"{LINE}/node/laser-1/cmd/response/op-1"
        op.publish(f"{LINE}/node/laser-1/cmd", b'{"command": "ping"}', properties=ok)
        wait_until(lambda: op.on(f"{LINE}/node/laser-1/cmd/response/op-1"), 10, "the proper reply")
        replies = [t for t, p, *_ in watch.seen if (t in hijacks[:3] or t.endswith("responsefoo"))
                   and p.startswith(b"{") and "ok" in json.loads(p)]
        assert not replies
    finally:
        op.close()
        watch.close()


# ---------------------------------------------------------------- 7: retained job state

def test_retained_job_state_never_goes_backwards(broker, line):
    intake, laser = line["intake-1"], line["laser-1"]
    connected(intake, laser)
    intake.launch("MONO1")
    wait_until(lambda: laser.status()["vector"].get(intake.origin) == 1, 30, "laser to know the job")
    watch = dashboard(broker.people_port, (f"{LINE}/job/MONO1",))
    try:
        laser.command("step MONO1 started")
        laser.command("step MONO1 done")
        wait_until(lambda: (watch.json(f"{LINE}/job/MONO1") or {}).get("steps", [{}, {}])[1].get("status") == "done",
                   10, "the dashboard to see the laser done")
        intake.stop()
        laser.stop()
        # the visitor scans again at a second intake that knows nothing of the job, and nobody
        # online can tell it: its view of MONO1 is one launch, the laser still pending
        spare = line["spare-1"]
        connected(spare)
        time.sleep(1.5)  # the retained job state reaches it with its subscriptions
        spare.command(f"launch {example_order('MONO1')}")
        assert spare.command("job MONO1")["steps"][1]["status"] == "pending"
        time.sleep(1.5)
        intake.start()
        laser.start()
        wait_until(lambda: any(c["kind"] == "duplicate_launch"
                               for c in (watch.json(f"{LINE}/job/MONO1") or {}).get("conflicts", [])), 30,
                   "the union of the views, with its conflict, to be published")
    finally:
        watch.close()
    states = [json.loads(p) for p in watch.on(f"{LINE}/job/MONO1") if p]
    first_done = next(i for i, s in enumerate(states) if s["steps"][1]["status"] == "done")
    assert all(s["steps"][1]["status"] == "done" for s in states[first_done:]), \
        [s["steps"][1]["status"] for s in states]
    assert all(a["events"] <= b["events"] for a, b in zip(states[first_done:], states[first_done + 1:], strict=False))


def test_a_broker_that_lost_power_and_restored_an_old_retained_job_state_gets_the_newer_one_again(broker, line):
    """The hub saved MONO2's state with the laser's step running, then lost power after the step
    was done (acknowledged: nobody's outbox holds it): it comes back with the old state retained.
    The node of the job's latest event publishes the newer one again; a dashboard never stays on
    the old one."""
    intake, laser = line["intake-1"], line["laser-1"]
    connected(intake, laser)
    intake.launch("MONO2")
    wait_until(lambda: laser.status()["vector"].get(intake.origin) == 1, 30, "laser to know the job")
    laser.command("step MONO2 started")
    wait_until(lambda: intake.command("job MONO2")["steps"][1]["status"] == "running", 10, "intake to see it")
    time.sleep(1.0)  # the retained state with the step running is in
    broker.stop()  # a clean stop: the broker saves it
    broker.start()
    connected(intake, laser)
    laser.command("step MONO2 done")
    wait_until(lambda: laser.status()["outbox"] == 0 and intake.command("job MONO2")["steps"][1]["status"] == "done",
               20, "the step done, acknowledged and known everywhere")
    time.sleep(1.0)
    broker.kill()  # power lost: the newer retained state was never saved
    broker.start()
    watch = dashboard(broker.people_port, (f"{LINE}/job/MONO2",))
    try:
        wait_until(lambda: (watch.json(f"{LINE}/job/MONO2") or {}).get("steps", [{}, {}])[1].get("status") == "done",
                   30, "the newer state to be published again")
    finally:
        watch.close()


# ---------------------------------------------------------------- 8: archive damage

def test_records_lost_to_a_damaged_archive_come_back_from_peers(broker, line):
    intake, laser = line["intake-1"], line["laser-1"]
    connected(intake, laser)
    for job in ("ARC1", "ARC2", "ARC3"):
        intake.launch(job)
        intake.command(f"complete {job} --force")
    wait_until(converged([intake, laser], {intake.origin: 6}), 30)
    assert sorted(laser.command("archive")) == ["ARC1", "ARC2", "ARC3"]
    laser.stop()
    segment = sorted((laser.data_dir / "archive").glob("seg-*.jsonl"))[-1]
    blob = bytearray(segment.read_bytes())
    first_line_end = blob.index(b"\n")
    blob[first_line_end // 2] ^= 0x20  # one flipped bit in the first record, valid ones after it
    segment.write_bytes(bytes(blob))
    laser.start()
    wait_until(lambda: laser.status()["vector"].get(intake.origin) == 6, 30, "the lost records back from intake")
    assert laser.command("job ARC1")["status"] == "completed"
    laser.stop()
    intake.stop()
    assert sorted(set(laser.ledger_ids())) == sorted(intake.ledger_ids())


# ---------------------------------------------------------------- 9: idle noise

def test_an_idle_node_is_quiet(broker, line):
    laser = line["laser-1"]
    connected(laser)
    time.sleep(1.5)  # the burst of a fresh connection is over
    watch = dashboard(broker.people_port, (f"{LINE}/node/laser-1/state",))
    try:
        wait_until(lambda: watch.on(f"{LINE}/node/laser-1/state"), 10, "the retained state")
        events = laser.status()["counters"]["events"]
        time.sleep(5)
        assert len(watch.on(f"{LINE}/node/laser-1/state")) == 1  # no republish without a change
        assert laser.status()["counters"]["events"] == events == 0  # no ledger event was recorded
        laser.notes("IDLE1", 1)  # a launch and a note: two ledger events, each a change to publish
        wait_until(lambda: watch.json(f"{LINE}/node/laser-1/state")["counters"]["events"] == 2, 10,
                   "the change to be published")
    finally:
        watch.close()


# ---------------------------------------------------------------- 10: ghost jobs

def test_a_note_never_makes_a_job_and_a_wildcard_job_id_is_refused_clearly(broker, line):
    laser = line["laser-1"]
    connected(laser)
    with pytest.raises(RuntimeError, match="no job 'GHOST1'"):
        laser.command("note GHOST1 hello")
    op = TestClient(broker.people_port, "operator", "pw-operator", topics=(f"{LINE}/node/laser-1/cmd/response",))
    try:
        for n, job in enumerate(("a#b", "a+b", "GHOST2")):
            op.publish(f"{LINE}/node/laser-1/cmd", json.dumps({"command": "note", "args": {"job": job, "text": "x"},
                                                               "id": n}))
        wait_until(lambda: len(op.on(f"{LINE}/node/laser-1/cmd/response")) == 3, 10, "three answers")
        answers = {a["id"]: a for a in map(json.loads, op.on(f"{LINE}/node/laser-1/cmd/response"))}
    finally:
        op.close()
    assert "is not a job id" in answers[0]["error"] and "is not a job id" in answers[1]["error"]
    assert "no job 'GHOST2'" in answers[2]["error"]
    assert laser.status()["vector"] == {}  # nothing recorded, nothing replicated
