"""Resuming a GRBL job: the modal state a reset forgets, and the line that really ran last."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from grbl_kit import engraving

from firmware_bridge.grbl import (
    SEGMENT_BLOCKS,
    Grbl,
    GrblError,
    GrblGone,
    GrblStatus,
    ModalState,
    Progress,
    clean_line,
    modal_prelude,
    parse_status,
)
from firmware_bridge.sim.grbl import SimulatedGrbl

WITH_BF = {10: "3"}  # status reports with Bf: (planner blocks free, RX bytes free)



@pytest.fixture
def board() -> Iterator[SimulatedGrbl]:
    with SimulatedGrbl(time_scale=1.0, settings=WITH_BF) as sim:
        yield sim  # type: ignore[misc]


@pytest.fixture
def laser(board: SimulatedGrbl) -> Iterator[Grbl]:
    with Grbl(board.port) as controller:
        yield controller


def unplug_when(wait_until: Callable[..., None], sim: SimulatedGrbl, accepted: int) -> None:
    def run() -> None:
        wait_until(lambda: len(sim.executed) >= accepted, what="the engraving to get going")
        sim.unplug()

    threading.Thread(target=run, daemon=True).start()


# -- the modal state a reset forgets (pure) ------------------------------------------------
def test_the_prelude_restores_units_distance_coordinates_feed_and_laser_power() -> None:
    job = ["G20 G91", "G55", "G1 F40", "M4 S300", "M8", "G1 X1 Y1", "S500", "G1 X1"]
    assert modal_prelude(job, 7) == ["G20 G91 G17 G55 G94", "G1 F40", "M8", "M4 S500"]


def test_the_prelude_moves_only_laser_off_rapidly_back_to_where_the_job_stopped() -> None:
    job = ["G21 G90", "M3 S1000", "G0 X10 Y10", "G1 X20 F300", "G1 Y40", "G1 X5 Y5"]
    ends = {3: "G0 X10 Y10", 4: "G0 X20 Y10", 5: "G0 X20 Y40", 6: "G0 X5 Y5"}
    for n in range(len(job) + 1):
        prelude = modal_prelude(job, n)
        moves = [line for line in prelude if any(axis in line for axis in "XYZ")]
        assert moves == ([ends[n]] if n in ends else [])  # one rapid, to where line n starts
        if moves:  # before the laser is on again
            assert prelude.index(moves[0]) < next(i for i, line in enumerate(prelude) if line.startswith("M3"))


def test_in_relative_mode_the_prelude_does_not_move() -> None:
    assert not any("X" in line for line in modal_prelude(["G21 G91", "G0 X10", "M4 S100", "G1 X5 F300"], 4))


def test_a_feed_set_in_inches_is_restored_in_the_units_in_force() -> None:
    assert modal_prelude(["G20", "F10", "G21"], 3)[1] == "G0 F254"
    assert modal_prelude(["G21", "F254", "G20"], 3)[1] == "G0 F10"


def test_a_reset_board_needs_no_prelude_for_line_one() -> None:
    assert modal_prelude(["G21", "F600"], 0) == []


def test_a_g92_offset_cannot_be_replayed_and_says_so() -> None:
    with pytest.raises(ValueError, match="G92"):
        modal_prelude(["G21", "G92 X0 Y0", "G1 X5 F100"], 3)
    assert modal_prelude(["G92 X0", "G92.1", "G1 X5 F100"], 3)[1:3] == ["G0 X5", "G1 F100"]


def test_program_end_puts_the_state_back_as_grbl_does() -> None:
    assert modal_prelude(["G91 G55 M3 S200 F100", "M2"], 2) == ["G21 G90 G17 G54 G94", "G1 F100", "S200"]


# -- the modal state a reset forgets (on the simulated board) ------------------------------
def test_a_reset_board_refuses_a_move_before_any_feed(laser: Grbl, board: SimulatedGrbl) -> None:
    laser.command("F600")
    laser.soft_reset()
    laser.command("$G")
    assert laser.parser_state == "[GC:G0 G54 G17 G21 G90 G94 M5 M9 T0 F0 S0]"  # the feed went with the reset
    with pytest.raises(GrblError) as refused:
        laser.command("G1 X5")
    assert refused.value.code == 22
    assert board.machine_position == (0.0, 0.0, 0.0)


def test_resuming_on_a_fresh_board_restores_feed_and_laser_power(laser: Grbl, board: SimulatedGrbl) -> None:
    job = engraving(40)
    report = laser.stream(job, start=20)
    assert report.position == report.executed == len(job)
    back, first = board.motions[0], board.motions[1]  # a rapid, laser off, to where line 21 starts
    assert back.line.startswith("G0") and back.spindle == 5
    assert first.line == clean_line(job[20]) and (first.feed, first.spindle, first.power) == (6000.0, 4, 800.0)
    assert board.executed[0] == "G21G90G17G54G94" and board.executed[2:4] == ["G1F6000", "M4S800"]


def test_resuming_without_the_replay_sends_only_the_job(laser: Grbl, board: SimulatedGrbl) -> None:
    with pytest.raises(GrblError, match="error:22"):
        laser.stream(engraving(40), start=20, replay_modal=False)


# -- what has run, not what was acknowledged -------------------------------------------------
def answered(progress: Progress, lines: list[str]) -> None:
    for line in lines:
        progress.answer(clean_line(line), ok=True)


def status(state: str, planner_free: int | None) -> GrblStatus:
    fields = f"|Bf:{planner_free},128" if planner_free is not None else ""
    report = parse_status(f"<{state}|MPos:0.000,0.000,0.000{fields}|FS:0,0>")
    assert report is not None
    return report


def moves(count: int) -> list[str]:
    return ["G21 G90 G0 X0 Y0 F600"] + [f"G1 X{i + 1}" for i in range(count)]


def test_lines_whose_blocks_are_still_in_the_planner_have_not_run() -> None:
    progress = Progress(start=0, meta=0, modal=ModalState(position=[0.0, 0.0, 0.0]))
    answered(progress, moves(20))
    progress.status(status("Hold:0", planner_free=12), answered=21, sent=21, at=0.0)  # 3 blocks wait
    assert progress.executed == 18


def test_while_moving_the_last_blocks_out_of_the_planner_count_only_a_report_later() -> None:
    progress = Progress(start=0, meta=0, modal=ModalState(position=[0.0, 0.0, 0.0]))
    answered(progress, moves(30))
    progress.status(status("Run", planner_free=10), answered=31, sent=31, at=0.0)  # 5 blocks wait
    assert progress.executed == 26 - SEGMENT_BLOCKS  # some may still be in the stepper's segments
    progress.status(status("Run", planner_free=0), answered=31, sent=31, at=0.3)
    assert progress.executed == 26


def test_without_bf_only_a_sync_or_an_idle_machine_says_what_ran() -> None:
    progress = Progress(start=0, meta=0, modal=ModalState(position=[0.0, 0.0, 0.0]))
    answered(progress, ["M4 S300", *moves(10)])
    progress.status(status("Run", planner_free=None), answered=12, sent=12, at=0.0)
    assert progress.executed == 1  # M4 was answered on an empty planner; nothing since is known
    answered(progress, ["M5"])  # a spindle change waits for the planner: the moves have run
    assert progress.executed == 13
    answered(progress, ["G1 X50"])
    progress.status(status("Idle", planner_free=None), answered=14, sent=15, at=0.5)  # a line still owed
    assert progress.executed == 13
    progress.status(status("Idle", planner_free=None), answered=14, sent=14, at=0.8)
    assert progress.executed == 14 and progress.finished


def test_a_move_from_an_unknown_position_is_not_taken_as_run_at_a_sync() -> None:
    progress = Progress(start=0, meta=0, modal=ModalState())  # where the tool is: not known
    answered(progress, ["G21 G90", "M4 S300", "G1 X10 F600", "G1 X10"])  # a block it cannot count
    assert progress.executed == 2 and not progress.finished


def test_an_unplugged_laser_resumes_from_the_last_line_that_ran(
    laser: Grbl, board: SimulatedGrbl, wait_until: Callable[..., None]
) -> None:
    job = engraving(600)
    unplug_when(wait_until, board, accepted=200)
    with pytest.raises(GrblGone) as gone:
        laser.stream(job)
    executed, acknowledged = gone.value.executed, gone.value.position
    assert 4 < executed <= board.completed  # never past a line that has not run...
    assert board.completed < acknowledged  # ...while acknowledged lines were still in the planner
    with SimulatedGrbl(time_scale=0.2, settings=WITH_BF) as fresh, Grbl(fresh.port) as again:
        report = again.stream(job, start=executed)
    assert report.executed == len(job)
    resumed = [block.line for block in fresh.motions]
    assert resumed[0].startswith("G0") and fresh.motions[0].spindle == 5  # back to the stop point, dark
    assert resumed[1:] == [clean_line(line) for line in job[executed:-1]]  # every line from there, in order


def test_without_bf_the_resume_point_is_the_last_sync(wait_until: Callable[..., None]) -> None:
    job = engraving(600)
    with SimulatedGrbl(time_scale=1.0) as board, Grbl(board.port) as laser:
        assert laser.buffer_reports is False  # GRBL's default $10=1
        unplug_when(wait_until, board, accepted=200)
        with pytest.raises(GrblGone) as gone:
            laser.stream(job)
        assert gone.value.executed == 4 <= board.completed  # after "M4 S300": a buffer sync


def test_a_stream_returns_once_every_line_has_run(laser: Grbl, board: SimulatedGrbl) -> None:
    job = ["G21 G90 F1200", "M4 S300", "G1 X10", "G1 X20 Y5"]  # the last move takes a while
    report = laser.stream(job)
    assert report.executed == len(job) and not board.planner and board.state == "Idle"
    assert board.completed == len(board.executed)


def test_every_refused_line_is_listed(laser: Grbl) -> None:
    job = ["G21", "G1 X5 F500", "G5 X1", "G1 X6", "M99", "G1 X7"]
    report = laser.stream(job, stop_on_error=False)
    assert report.refused == [2, 4] and report.errors == 2 and report.executed == len(job)
