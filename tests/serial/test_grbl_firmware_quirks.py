"""What the real GRBL 1.1h firmware does that a kinder simulator would not (found in its source):
a cycle start during the deceleration into a hold is ignored, a board with an erased EEPROM
says error:7 and prints its settings before the banner, M7 is refused without ENABLE_M7."""

from __future__ import annotations

import threading
from collections.abc import Callable

from firmware_bridge.grbl import Grbl
from firmware_bridge.sim.grbl import SimulatedGrbl


def test_resume_right_after_a_hold_waits_for_hold_complete(wait_until: Callable[..., None]) -> None:
    with SimulatedGrbl(settings={10: "3"}, hold_seconds=0.4) as board, Grbl(board.port) as laser:
        done: list[object] = []
        worker = threading.Thread(target=lambda: done.append(laser.stream(["G21 G90 F600", "G1 X20"], timeout=2.0)))
        worker.start()
        wait_until(lambda: board.state == "Run", what="the move")
        laser.feed_hold()
        wait_until(lambda: board.state == "Hold:1", what="the deceleration")
        laser.resume()  # the firmware would drop a bare ~ now: Hold:1 lasts 0.4 s
        wait_until(lambda: board.state == "Run", what="the move resumed")
        worker.join(10)
        assert done and board.machine_position == (20.0, 0.0, 0.0)


def test_open_on_an_erased_eeprom_board() -> None:
    """settings_init(): ``error:7``, every ``$N=`` restored, a blank line, then the banner."""
    with SimulatedGrbl(settings={10: "3"}, fresh_eeprom=True) as board, Grbl(board.port) as laser:
        assert laser.version == "1.1h"
        assert laser.buffer_reports is True and laser.planner_blocks == 15 and laser.rx_buffer == 128
        report = laser.stream(["G21 G90 F600", "G1 X1"], timeout=2.0)
        assert report.executed == 2 and board.machine_position == (1.0, 0.0, 0.0)


def test_m7_is_refused_like_a_default_build() -> None:
    with SimulatedGrbl(settings={10: "3"}) as board, Grbl(board.port) as laser:
        report = laser.stream(["G21", "M7", "G0 X1"], stop_on_error=False, timeout=2.0)
        assert report.refused == [1] and report.executed == 3
