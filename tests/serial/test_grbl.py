"""GRBL 1.1 streaming against the simulated GRBL (128-byte RX buffer, 16-block planner)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
import serial
from grbl_kit import engraving

from firmware_bridge.grbl import (
    Grbl,
    GrblAlarm,
    GrblError,
    GrblFault,
    GrblGone,
    alarm_meaning,
    clean_line,
    error_meaning,
    parse_status,
)
from firmware_bridge.sim.grbl import SimulatedGrbl


@pytest.fixture
def grbl_sim() -> Iterator[SimulatedGrbl]:
    with SimulatedGrbl(time_scale=0.2) as sim:
        yield sim  # type: ignore[misc]


@pytest.fixture
def laser(grbl_sim: SimulatedGrbl) -> Iterator[Grbl]:
    with Grbl(grbl_sim.port) as controller:
        yield controller


def in_background(wait_until: Callable[..., None], condition: Callable[[], object], action: Callable[[], None]) -> None:
    def run() -> None:
        wait_until(condition, what="the job to get going")
        action()

    threading.Thread(target=run, daemon=True).start()


def test_connect_learns_version_and_buffer_size_without_a_reset(laser: Grbl, grbl_sim: SimulatedGrbl) -> None:
    assert laser.version == "1.1h"
    assert laser.rx_buffer == 128
    assert "$I" in grbl_sim.system_commands


def test_status_report_is_parsed() -> None:
    status = parse_status("<Hold:0|MPos:12.500,-3.000,0.000|Bf:15,128|FS:1200,8000|Ov:100,100,100>")
    assert status is not None
    assert status.state == "Hold:0"
    assert status.machine_position == (12.5, -3.0, 0.0)
    assert (status.planner_free, status.rx_free, status.feed, status.spindle) == (15, 128, 1200.0, 8000.0)
    assert parse_status("<Idle|MPos:garbage>") is not None
    assert parse_status("ok") is None


def test_error_and_alarm_codes_carry_their_meaning() -> None:
    assert "unsupported" in error_meaning(20)
    assert "alarm or jog" in error_meaning(9)
    assert "hard limit" in alarm_meaning(1)
    assert "unknown" in error_meaning(99)


def test_comments_and_spaces_are_not_sent() -> None:
    assert clean_line("g1 x10 (move) y2 ; to the edge") == "G1X10Y2"


def test_character_counting_fills_the_buffer_but_never_overflows_it(laser: Grbl, grbl_sim: SimulatedGrbl) -> None:
    job = engraving(400)
    report = laser.stream(job)
    assert report.lines == len(job) and report.errors == 0
    assert grbl_sim.overflowed == 0
    assert grbl_sim.most_buffered > 60  # several lines waited in the RX buffer at once
    assert grbl_sim.executed == [clean_line(line) for line in job]


def test_one_line_at_a_time_never_has_two_lines_buffered(laser: Grbl, grbl_sim: SimulatedGrbl) -> None:
    job = engraving(60)
    laser.stream(job, counting=False)
    assert grbl_sim.most_buffered <= max(len(clean_line(line)) + 1 for line in job)


def test_a_sender_that_ignores_the_buffer_loses_bytes(grbl_sim: SimulatedGrbl, wait_until) -> None:
    with serial.Serial(grbl_sim.port, 115200, timeout=1) as port:
        port.write("".join(f"G1X{i}Y{i}F3000\n" for i in range(200)).encode())
        wait_until(lambda: grbl_sim.overflowed > 0, what="the simulated RX buffer to overflow")


def test_error_is_reported_with_its_meaning_and_stops_the_job(laser: Grbl, grbl_sim: SimulatedGrbl) -> None:
    job = ["G21", "G1 X5 F500", "G5 X1", "G1 X6", "G1 X7"]
    with pytest.raises(GrblError) as refused:
        laser.stream(job)
    assert refused.value.code == 20 and refused.value.line_number == 2
    assert "line 3 'G5X1': error:20 unsupported" in str(refused.value)
    assert refused.value.refused == [2]
    assert 3 <= refused.value.position <= len(job)  # lines already in GRBL's buffer may have been taken
    assert not grbl_sim.planner and grbl_sim.resets == 1  # then held and reset: nothing more runs


def test_alarm_stops_the_job_and_only_an_operator_unlocks(laser: Grbl, grbl_sim: SimulatedGrbl, wait_until) -> None:
    job = engraving(600)
    in_background(wait_until, lambda: len(grbl_sim.executed) >= 50, lambda: grbl_sim.trigger_alarm(1))
    with pytest.raises(GrblAlarm, match="ALARM:1 hard limit") as alarm:
        laser.stream(job)
    position = alarm.value.position
    assert 50 <= position < len(job)
    assert grbl_sim.executed[:position] == [clean_line(line) for line in job[:position]]
    assert laser.status().state == "Alarm"
    with pytest.raises(GrblError, match="error:9"):
        laser.stream(job, start=position)
    assert "$X" not in grbl_sim.system_commands  # the streamer never unlocks by itself
    laser.unlock()
    assert laser.status().state == "Idle"
    assert laser.stream(job, start=position).position == len(job)


def test_status_and_feed_hold_go_around_a_full_buffer(laser: Grbl, grbl_sim: SimulatedGrbl, wait_until) -> None:
    job = engraving(300)
    results: list[object] = []
    streamer = threading.Thread(target=lambda: results.append(laser.stream(job)), daemon=True)
    streamer.start()
    wait_until(lambda: grbl_sim.most_buffered > 60, what="a full RX buffer")
    laser.feed_hold()
    wait_until(lambda: laser.status().state == "Hold:0", what="the hold to complete")
    held_at = laser.status().machine_position
    assert laser.status().machine_position == held_at  # nothing moves while held
    laser.resume()
    streamer.join(timeout=60)
    assert results and grbl_sim.executed[-1] == "M5"


def test_check_mode_finds_bad_lines_before_anything_moves(laser: Grbl, grbl_sim: SimulatedGrbl) -> None:
    job = ["G21", "G1 X5 F500", "G5 X1", "G1 Y900", "G1 X7"]
    errors = laser.check(job)
    assert [(e.line_number, e.code) for e in errors] == [(2, 20), (3, 33)]
    assert grbl_sim.machine_position == (0.0, 0.0, 0.0)
    assert laser.status().state == "Idle"


def test_line_longer_than_grbl_accepts_is_refused_before_sending(laser: Grbl, grbl_sim: SimulatedGrbl) -> None:
    with pytest.raises(GrblFault, match="longer than GRBL accepts"):
        laser.stream(["G1 X1 Y1 " + "F1000" * 20])
    assert grbl_sim.executed == []


def test_unplugged_laser_keeps_the_last_acknowledged_line(laser: Grbl, grbl_sim: SimulatedGrbl, wait_until) -> None:
    job = engraving(600)
    in_background(wait_until, lambda: len(grbl_sim.executed) >= 80, grbl_sim.unplug)
    with pytest.raises(GrblGone, match="unplugged") as gone:
        laser.stream(job)
    position = gone.value.position  # oks still in the cable when it was pulled are lost with it
    assert 0 < position <= len(grbl_sim.executed) < len(job)
    assert grbl_sim.executed[:position] == [clean_line(line) for line in job[:position]]
    assert gone.value.executed <= grbl_sim.completed  # where a resume starts: never past what ran


def test_reset_during_a_job_is_a_fault_not_a_silent_restart(laser: Grbl, grbl_sim: SimulatedGrbl, wait_until) -> None:
    job = engraving(600)
    in_background(wait_until, lambda: len(grbl_sim.executed) >= 40, grbl_sim.soft_reset)
    with pytest.raises(GrblFault) as fault:
        laser.stream(job)
    assert isinstance(fault.value, GrblAlarm | GrblGone)
    assert 40 <= fault.value.position < len(job)
