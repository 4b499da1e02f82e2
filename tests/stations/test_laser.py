"""Laser: the visitor's text engraved through GRBL.

The machine alone (pure: events in, actions out), then a real node streaming to the bridge's
GRBL simulator on a pty, with gpiozero's MockFactory for the relays, the lid and the e-stop."""

from __future__ import annotations

import pytest
from trailer import EXAMPLES

from edge.config import load_line
from edge.engine import (
    Boot,
    Drive,
    Hold,
    LedgerChanged,
    Realtime,
    Record,
    Resumed,
    SafetyChanged,
    StationInfo,
    Stream,
    StreamEnded,
    StreamProgress,
    Tick,
    View,
    WriteFile,
)
from edge.ledger import JobState, StepState
from stations.laser import Laser, LaserOptions, machine

LINE = load_line(EXAMPLES / "line.toml")
HARDWARE = {"grbl": "serial", "laser_enable": "digital_output", "fume_extractor": "digital_output",
            "lid": "door_interlock", "estop": "emergency_stop"}
INFO = StationInfo("laser-1", "laser", HARDWARE)
RELAYS = [Drive("laser_enable", True), Drive("fume_extractor", True)]


def job(text: str = "Hélène", laser: str = "pending", node: str = "", position: str = "laser", line: int = 0,
        resume_at: int = 0) -> JobState:
    steps = [StepState("intake", "done"), StepState("laser", laser, node=node, line=line, resume_at=resume_at),
             StepState("printer"), StepState("transfer"), StepState("inspection"), StepState("pickup")]
    return JobState("J1", status="in_progress", product="stand", created_by="intake-1.0000cafe:1", carrier="T01",
                    position=position, steps=steps,
                    order={"order_id": "J1", "product": "stand", "options": {"colour": "red", "text": text}})


def view(*jobs: JobState, stopped: bool = False) -> View:
    return View(now=100.0, node="laser-1", kind="laser", mode="auto", jobs={s.job: s for s in jobs}, carriers={},
                inputs={}, safe=not stopped, line=LINE, lookup=lambda _j: None, stopped=stopped)


def laser(**options) -> Laser:
    return machine(LaserOptions(**options), INFO)


def records(actions) -> list[tuple[str, str, dict]]:
    return [(a.job, a.type, dict(a.data)) for a in actions if isinstance(a, Record)]


def started(machine_: Laser, state: JobState | None = None) -> list:
    return machine_.handle(LedgerChanged(frozenset({"J1"})), view(state or job()))


def test_a_part_at_the_laser_gets_its_text_engraved_with_the_relays_on_and_a_preview():
    actions = started(laser())
    (rec,) = records(actions)
    assert rec[1] == "step_started" and rec[2]["text"] == "Hélène" and rec[2]["auto"] is True
    assert rec[2]["preview"] == "jobs/J1/laser-preview.png"
    stream = next(a for a in actions if isinstance(a, Stream))
    assert stream.device == "grbl" and stream.start == 0 and len(stream.lines) == rec[2]["lines"] > 10
    assert stream.safe == ("laser_enable", "fume_extractor")
    assert actions.index(RELAYS[0]) < actions.index(stream)  # relays on before the first line
    assert any(isinstance(a, WriteFile) and a.path == rec[2]["preview"] for a in actions)
    again = started(laser())  # the same text gives the same job, line for line
    assert [a for a in again if not isinstance(a, WriteFile)] == [a for a in actions if not isinstance(a, WriteFile)]


@pytest.mark.parametrize(("text", "why"), [
    ("", "cannot engrave"),
    ("W" * 20 + " " + "W" * 20, "too long"),
])
def test_a_text_it_cannot_engrave_fails_the_step_and_burns_nothing(text, why):
    actions = started(laser(), job(text=text))
    assert [r[1] for r in records(actions)] == ["step_failed"]
    assert why in records(actions)[0][2]["reason"]
    assert not [a for a in actions if isinstance(a, (Stream, Drive))]


def test_nothing_starts_while_the_station_is_stopped_or_the_part_is_elsewhere():
    assert laser().handle(Tick(), view(job(), stopped=True)) == []
    assert laser().handle(Tick(), view(job(position="transfer"))) == []


def test_progress_goes_in_the_ledger_every_ten_percent_and_the_end_turns_the_relays_off():
    machine_ = laser()
    started(machine_)
    total = machine_.burning.total
    seen = [records(machine_.handle(StreamProgress("grbl", "J1", n, total), view())) for n in range(total + 1)]
    percents = [r[0][2]["percent"] for r in seen if r]
    assert percents == sorted(percents) and len(percents) == 9 and all(p % 10 == 0 or p > 0 for p in percents)
    done = machine_.handle(StreamEnded("grbl", "J1", True, executed=total), view())
    assert done[:2] == [Drive("laser_enable", False), Drive("fume_extractor", False)]
    assert records(done) == [("J1", "step_done", {"step": "laser", "lines": total})]


def test_a_stream_that_fails_fails_the_step_with_where_to_resume():
    machine_ = laser()
    started(machine_)
    ended = machine_.handle(StreamEnded("grbl", "J1", False, "ALARM:1 hard limit", executed=42, refused=(40,)), view())
    assert ended[:2] == [Drive("laser_enable", False), Drive("fume_extractor", False)]
    ((_, kind, data),) = records(ended)
    assert kind == "step_failed" and data["resume_at"] == 42 and data["refused"] == [41]
    assert "ALARM:1" in data["reason"]


def test_a_retried_step_goes_on_from_its_resume_point_never_from_the_start():
    actions = started(laser(), job(resume_at=42))
    stream = next(a for a in actions if isinstance(a, Stream))
    assert stream.start == 42 and records(actions)[0][2]["resume_from"] == 42


def test_a_lid_opened_mid_engraving_holds_it_until_an_operator_resumes():
    machine_ = laser()
    started(machine_)
    held = machine_.handle(SafetyChanged(True), view())
    assert records(held) == [("J1", "step_progress", {"step": "laser", "held": True})]
    assert machine_.handle(Tick(), view(job(laser="running", node="laser-1"), stopped=True)) == []
    resumed = machine_.handle(Resumed(), view(job(laser="running", node="laser-1")))
    assert resumed[:3] == [*RELAYS, Realtime("grbl", "resume")]
    assert machine_.get_status()["engraving"]["held"] is False


def test_an_operators_hold_drops_the_relays_and_waits_for_resume():
    machine_ = laser()
    started(machine_)
    held = machine_.handle(Hold("grbl"), view())
    assert held[:2] == [Drive("laser_enable", False), Drive("fume_extractor", False)]
    assert machine_.get_status()["engraving"]["held"] is True


def test_a_step_cut_by_a_restart_is_failed_with_a_resume_point_before_what_grbl_may_not_have_burned():
    actions = laser().handle(Boot(), view(job(laser="running", node="laser-1", line=100)))
    assert ("J1", "step_failed", {"step": "laser", "reason": "interrupted: node restarted", "resume_at": 84}) \
        in records(actions)
    assert not [a for a in actions if isinstance(a, Stream)]
    other = laser().handle(Boot(), view(job(laser="running", node="laser-2", line=100)))
    assert records(other) == []


def test_the_laser_needs_its_grbl_declared_as_a_serial_device():
    with pytest.raises(ValueError, match=r"\[station\] grbl: no device \[hardware.grbl\]"):
        machine(LaserOptions(grbl="grbl"), StationInfo("laser-1", "laser", {"laser_enable": "digital_output"}))
    by_hand = machine(LaserOptions(), StationInfo("laser-1", "laser", {}))  # no GRBL at all
    assert by_hand.get_status()["generic"] is True


def test_the_example_laser_station_file_loads_with_this_module():
    from edge.config import load_station

    station = load_station(EXAMPLES / "laser.toml").station
    assert isinstance(station.options, LaserOptions) and station.options.grbl == "grbl"
    assert (station.options.enable, station.options.extractor) == ("laser_enable", "fume_extractor")


# ---------------------------------------------------------------- a real node on the GRBL simulator

ROUTE = ["intake", "laser", "printer", "transfer", "inspection", "pickup"]


def laser_node(tmp_path, monkeypatch, time_scale: float = 0.3):
    from trailer import example_station

    from edge.config import load_station
    from edge.node import Node
    from firmware_bridge.sim.grbl import SimulatedGrbl

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    grbl = SimulatedGrbl(time_scale=time_scale).start()
    config = load_station(example_station("laser", tmp_path, bench=True, ports={"grbl": grbl.port}))
    node = Node(config, LINE, tick=0.1)

    def arrive(event) -> None:  # on the loop thread: the job launched at intake, on the belt to here
        text = event.data["text"]
        node.record_many([("J1", "created", {"product": "stand", "route": ROUTE, "order": {
            "order_id": "J1", "product": "stand", "options": {"colour": "red", "text": text}}}),
            ("J1", "carrier", {"carrier": "T01"}), ("J1", "step_done", {"step": "intake"}),
            ("J1", "step_arrived", {"step": "laser", "carrier": "T01"})])

    replies: list = []
    node.on("test_arrive", arrive)
    node.on("test_command", lambda e: replies.append(node.commands.run_line(e.data["line"])))
    return node, grbl, config, replies


def step(node) -> StepState:
    return node.store.job("J1").step("laser")


def test_a_real_laser_node_engraves_the_visitors_text_on_grbl_and_holds_when_the_lid_opens(tmp_path, monkeypatch):
    from trailer import Ticks, pin_history, running, wait_for

    node, grbl, config, replies = laser_node(tmp_path, monkeypatch)
    try:
        with running(node):
            enable = node.board.outputs["laser_enable"]
            lid = node.board.factory.pin(config.hardware["lid"].pin)
            assert node.get_status()["devices"]["grbl"]["version"].startswith("GRBL 1.1")
            node.post("test_arrive", {"text": "Françoise"})
            wait_for(lambda: len(grbl.executed) > 8, 30)  # burning
            lid.drive_high()  # the lid opens mid-engraving
            assert not enable.value  # the relay dropped from the input's callback
            wait_for(lambda: grbl.state.startswith("Hold"), 5)
            lid.drive_low()  # shut again: nothing goes on by itself
            ticks = Ticks(node)
            ticks.wait(5)
            assert grbl.state.startswith("Hold") and not enable.value
            assert step(node).status == "running"
            node.post("test_command", {"line": "resume"})
            wait_for(lambda: replies, 5)
            assert replies[0].ok, replies[0].error
            wait_for(lambda: step(node).status == "done", 60)
            levels = pin_history(enable)
        assert levels[-4:] == [True, False, True, False]  # on, lid, resumed, done
        state = node.store.job("J1")
        started = state.step("laser")
        assert started.attempts == 1 and (tmp_path / "laser" / "files" / "jobs" / "J1" / "laser-preview.png").exists()
        notes = [n for n in state.notes if "operator: resume" in n]
        assert notes  # the operator's resume is in the job's history
    finally:
        grbl.close()


def test_an_unplugged_grbl_fails_the_step_with_its_resume_point_and_the_relays_off(tmp_path, monkeypatch):
    from trailer import running, wait_for

    node, grbl, _config, _replies = laser_node(tmp_path, monkeypatch, time_scale=1.0)
    try:
        with running(node):
            enable = node.board.outputs["laser_enable"]
            node.post("test_arrive", {"text": "Zoë"})
            wait_for(lambda: len(grbl.executed) > 5, 30)
            grbl.unplug()
            wait_for(lambda: step(node).status == "failed", 90)
            assert not enable.value
            failed = step(node)
            assert "engraving stopped" in failed.reason and 0 < failed.resume_at < 200
            assert node.state != "starting"
    finally:
        grbl.close()


def test_a_grbl_not_in_laser_mode_is_a_fault_naming_the_setting_and_nothing_burns(tmp_path, monkeypatch):
    from trailer import Ticks, example_station, running

    from edge.config import load_station
    from edge.node import Node
    from firmware_bridge.sim.grbl import SimulatedGrbl

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    grbl = SimulatedGrbl(settings={32: "0"}).start()  # a CNC's setting: rapids would burn lines
    try:
        config = load_station(example_station("laser", tmp_path, bench=True, ports={"grbl": grbl.port}))
        node = Node(config, LINE, tick=0.05)
        node.on("test_arrive", lambda _e: node.record_many([
            ("J1", "created", {"product": "stand", "route": ROUTE, "order": {
                "order_id": "J1", "product": "stand", "options": {"colour": "red", "text": "Anna"}}}),
            ("J1", "step_arrived", {"step": "laser"})]))
        with running(node):
            assert node.state == "fault" and "$32=0" in node.reason and "set $32=1" in node.reason
            node.post("test_arrive")
            Ticks(node).wait(5)
            assert step(node).status == "pending" and grbl.executed == []
    finally:
        grbl.close()


def test_an_alarm_mid_engraving_fails_the_step_and_unlock_then_retry_goes_on_from_where_it_stopped(
        tmp_path, monkeypatch):
    from trailer import running, wait_for

    node, grbl, _config, replies = laser_node(tmp_path, monkeypatch, time_scale=0.5)
    try:
        with running(node):
            enable = node.board.outputs["laser_enable"]
            node.post("test_arrive", {"text": "Cœur"})
            wait_for(lambda: len(grbl.executed) > 8, 30)
            grbl.trigger_alarm(1)  # a hard limit switch
            wait_for(lambda: step(node).status == "failed", 60)
            assert not enable.value and not grbl.laser_on
            failed = step(node)
            assert "ALARM" in failed.reason or "alarm" in failed.reason
            resume_at = failed.resume_at
            assert resume_at > 0
            for line in ("unlock", "retry J1"):
                node.post("test_command", {"line": line})
            wait_for(lambda: len(replies) == 2, 30)
            assert all(r.ok for r in replies), [r.error for r in replies]
            wait_for(lambda: step(node).status == "done", 60)
        events = [e for e in node.store.job_events("J1") if e.type == "step_started"]
        assert [e.data.get("resume_from", 0) for e in events] == [0, resume_at]  # never from the start again
    finally:
        grbl.close()


def test_the_operators_machine_commands_are_refused_while_a_safety_circuit_is_open_and_gcode_needs_manual(
        tmp_path, monkeypatch):
    from trailer import running, wait_for

    node, grbl, config, replies = laser_node(tmp_path, monkeypatch)
    try:
        with running(node):
            node.post("test_command", {"line": "gcode G0 X5"})
            wait_for(lambda: len(replies) == 1)
            assert not replies[0].ok and "manual mode" in replies[0].error
            estop = node.board.factory.pin(config.hardware["estop"].pin)
            estop.drive_high()
            wait_for(lambda: node.state == "estop")
            for line in ("hold", "resume", "home", "unlock"):
                node.post("test_command", {"line": line})
            wait_for(lambda: len(replies) == 5)
            assert [r.ok for r in replies[1:]] == [False] * 4
            assert all("safety circuit open: estop" in r.error for r in replies[1:])
            estop.drive_low()
            wait_for(lambda: "released" in (node.reason or ""))
            for line in ("mode manual", "reset", "gcode G0 X5 Y5"):
                node.post("test_command", {"line": line})
            wait_for(lambda: len(replies) == 8)
            assert all(r.ok for r in replies[5:]), [r.error for r in replies[5:]]
            wait_for(lambda: grbl.machine_position[:2] == (5.0, 5.0), 10)
    finally:
        grbl.close()
