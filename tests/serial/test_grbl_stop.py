"""A busy GRBL is waited for; a faulted job leaves the laser off, and says so first."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from firmware_bridge.grbl import Grbl, GrblAlarm, GrblError, GrblGone
from firmware_bridge.sim.grbl import SimulatedGrbl

# Each busy test waits on GRBL for about three times the stream's `timeout` (a ratio, not a clock):
# the old streamer gave up after `timeout` with no answer; now only silence that long is a fault.
TIMEOUT = 0.4


@pytest.fixture
def board() -> Iterator[SimulatedGrbl]:
    with SimulatedGrbl(time_scale=1.0, settings={10: "3"}) as sim:
        yield sim  # type: ignore[misc]


@pytest.fixture
def laser(board: SimulatedGrbl) -> Iterator[Grbl]:
    with Grbl(board.port) as controller:
        yield controller


# -- busy is not a fault -------------------------------------------------------------------
def test_a_dwell_longer_than_the_timeout_is_waited_for(laser: Grbl, board: SimulatedGrbl) -> None:
    report = laser.stream(["G21", "G4 P1.2", "G0 X1"], timeout=TIMEOUT)
    assert report.executed == 3 and board.machine_position == (1.0, 0.0, 0.0)


def test_m5_waiting_for_a_long_cut_is_waited_for(laser: Grbl, board: SimulatedGrbl) -> None:
    job = ["G21 G90 F600", "M4 S300", "G1 X12", "M5"]  # the cut takes 1.2 s; M5 is answered after it
    report = laser.stream(job, timeout=TIMEOUT)
    assert report.executed == len(job) and board.spindle == "M5"


def test_a_full_planner_of_slow_moves_is_waited_for() -> None:
    job = ["G21 G90 F600"] + [f"G1 X{8 * (i + 1)}" for i in range(4)]  # 0.8 s each, 2 planner blocks
    with SimulatedGrbl(time_scale=1.0, planner_blocks=3) as board, Grbl(board.port) as laser:
        assert laser.planner_blocks == 2
        report = laser.stream(job, timeout=TIMEOUT)
    assert report.executed == len(job) and board.machine_position == (32.0, 0.0, 0.0)


def test_a_held_job_waits_for_the_operator(laser: Grbl, board: SimulatedGrbl, wait_until) -> None:
    job = ["G21 G90 F600", "M4 S300", "G1 X10", "G1 X20", "M5"]
    results: list[object] = []
    streamer = threading.Thread(target=lambda: results.append(laser.stream(job, timeout=TIMEOUT)), daemon=True)
    streamer.start()
    wait_until(lambda: board.state == "Run", what="the cut to start")
    laser.feed_hold()
    wait_until(lambda: board.state == "Hold:0", what="the hold")
    streamer.join(timeout=3 * TIMEOUT)
    assert streamer.is_alive()  # held for longer than the timeout: still waiting, no fault
    laser.resume()
    streamer.join(timeout=30)
    assert results and board.spindle == "M5"


def test_only_silence_is_a_fault(laser: Grbl, board: SimulatedGrbl, wait_until) -> None:
    job = ["G21 G90 F600", "M4 S300"] + [f"G1 X{i + 1}" for i in range(40)]
    threading.Thread(target=lambda: (wait_until(lambda: len(board.executed) > 5), board.hang()), daemon=True).start()
    with pytest.raises(GrblGone, match="no status report"):
        laser.stream(job, timeout=TIMEOUT)


# -- after a fault the laser is off ---------------------------------------------------------------
def burning_job() -> list[str]:
    return ["G21 G90 F600", "M4 S300", "G1 X10", "G1 X20", "G5 X1", "G1 X30", "G1 X40", "M5"]


def test_a_refused_line_stops_the_machine_and_turns_the_laser_off(laser: Grbl, board: SimulatedGrbl) -> None:
    with pytest.raises(GrblError) as refused:
        laser.stream(burning_job())
    assert refused.value.refused == [4]
    assert not board.laser_on and board.spindle == "M5"  # the reset stopped the laser...
    assert not board.planner and board.state == "Idle"  # ...flushed the planner, from a completed hold
    assert board.machine_position[0] < 30  # nothing after the refused line ran
    assert refused.value.executed <= board.completed  # the hold's report says exactly what ran


def test_on_fault_is_called_first_while_grbl_still_burns(laser: Grbl, board: SimulatedGrbl) -> None:
    seen: list[tuple[bool, int, bool]] = []
    with pytest.raises(GrblError):
        laser.stream(burning_job(), on_fault=lambda: seen.append((board.state.startswith("Hold"), board.resets,
                                                                  board.laser_on)))
    assert seen == [(False, 0, True)]  # before the hold and the reset, the laser still on
    assert not board.laser_on


def test_an_interrupted_stream_leaves_the_laser_off(laser: Grbl, board: SimulatedGrbl) -> None:
    def operator_presses_ctrl_c(done: int) -> None:
        if done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        laser.stream(burning_job()[:4], on_progress=operator_presses_ctrl_c)
    assert not board.laser_on and not board.planner


def test_an_alarm_is_reset_and_stays_locked_for_the_operator(laser: Grbl, board: SimulatedGrbl, wait_until) -> None:
    calls: list[str] = []
    threading.Thread(target=lambda: (wait_until(lambda: board.state == "Run"), board.trigger_alarm(1)),
                     daemon=True).start()
    with pytest.raises(GrblAlarm):
        laser.stream([line for line in burning_job() if line != "G5 X1"], on_fault=lambda: calls.append("fault"))
    assert calls == ["fault"] and not board.laser_on
    assert board.resets == 1 and not board.critical  # the reset GRBL asks for after a limit...
    assert laser.status().state == "Alarm"  # ...and the lock stays for an operator's $X
