"""Connecting to GRBL: a stale partial line, settings, and the simulator's firmware manners."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import serial

from firmware_bridge.grbl import Grbl, parse_status
from firmware_bridge.sim.grbl import SimulatedGrbl


@pytest.fixture
def board() -> Iterator[SimulatedGrbl]:
    with SimulatedGrbl(time_scale=0.2) as sim:
        yield sim  # type: ignore[misc]


def leave_a_partial_line(board: SimulatedGrbl, text: bytes, wait_until: Callable[..., None]) -> None:
    """Another program writes part of a line and goes away (a killed sender, a terminal)."""
    with serial.Serial(board.port, 115200, timeout=1) as other:
        other.write(text)
        other.flush()
    wait_until(lambda: bytes(board.rx) == text, what="the partial line in GRBL's buffer")


def test_a_partial_line_left_by_another_program_is_refused_not_run(board: SimulatedGrbl, wait_until) -> None:
    leave_a_partial_line(board, b"G0X5", wait_until)
    with Grbl(board.port) as laser:
        assert laser.version == "1.1h"
        laser.stream(["G21", "G0 X1"])
    assert board.executed == ["G21", "G0X1"]  # "G0X5" never ran
    assert board.machine_position == (1.0, 0.0, 0.0)


def test_a_partial_system_command_is_refused_too(board: SimulatedGrbl, wait_until) -> None:
    leave_a_partial_line(board, b"$10=", wait_until)
    with Grbl(board.port) as laser:
        assert laser.settings()[10] == "1"


def test_settings_are_read_and_teach_the_streamer_its_motor_steps() -> None:
    with SimulatedGrbl(settings={10: "3", 100: "80.000"}) as board, Grbl(board.port) as laser:
        settings = laser.settings()
        assert settings[32] == "1" and settings[10] == "3" and len(settings) == len(board.settings)
        assert laser.buffer_reports is True and laser.step_mm[0] == pytest.approx(1 / 80)
        laser.command("$10=1")
        assert laser.settings()[10] == "1"


def test_settings_and_build_info_are_refused_during_a_cycle(board: SimulatedGrbl, wait_until) -> None:
    with serial.Serial(board.port, 115200, timeout=5) as port:
        port.write(b"G21G90F60\nG1X5\n")
        assert [port.readline().strip() for _ in range(2)] == [b"ok", b"ok"]
        wait_until(lambda: board.state == "Run", what="the cycle to start")
        port.write(b"$$\n$I\n$G\n")
        answers = [port.readline().strip() for _ in range(4)]
    assert answers[:2] == [b"error:8", b"error:8"]  # $G is answered in every state
    assert answers[2].startswith(b"[GC:G1 ") and answers[3] == b"ok"


def test_status_reports_carry_bf_only_when_10_asks_for_it(board: SimulatedGrbl) -> None:
    assert parse_status(board.status_report()).planner_free is None  # type: ignore[union-attr]
    board.settings[10] = "3"
    report = parse_status(board.status_report())
    assert report is not None and (report.planner_free, report.rx_free) == (15, 128)


def test_a_reset_forgets_the_parser_state(board: SimulatedGrbl) -> None:
    with Grbl(board.port) as laser:
        laser.stream(["G20 G91 G55 F100 M4 S300"])
        laser.command("$G")
        assert laser.parser_state == "[GC:G0 G55 G17 G20 G91 G94 M4 M9 T0 F100 S300]"
        laser.soft_reset()
        laser.command("$G")
        assert laser.parser_state == "[GC:G0 G54 G17 G21 G90 G94 M5 M9 T0 F0 S0]"
