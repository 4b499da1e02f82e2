"""Marlin streaming against the simulated printer: numbered lines, resends, busy, heating."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from firmware_bridge.marlin import (
    Marlin,
    MarlinGone,
    ResendLoop,
    checksum,
    numbered,
    parse_temperatures,
)
from firmware_bridge.sim.marlin import MarlinFaults, SimulatedMarlin


def print_job(moves: int) -> list[str]:
    return ["G28", "G90", "M82"] + [f"G1 X{i % 100} Y{i // 100} E{i * 0.02:.2f} F1800" for i in range(moves)] + ["M84"]


@pytest.fixture
def printer_sim() -> Iterator[SimulatedMarlin]:
    with SimulatedMarlin(home_seconds=0.05) as sim:
        yield sim  # type: ignore[misc]


def connect(sim: SimulatedMarlin, **options: float) -> Marlin:
    printer = Marlin(sim.port, **options)  # type: ignore[arg-type]
    printer.open()
    return printer


def test_lines_go_out_numbered_with_their_checksum() -> None:
    assert checksum("N1 G28") == ord("N") ^ ord("1") ^ ord(" ") ^ ord("G") ^ ord("2") ^ ord("8")
    assert numbered(7, "G1 X10") == f"N7 G1 X10*{checksum('N7 G1 X10')}"


def test_temperature_reports_are_parsed() -> None:
    report = parse_temperatures("ok T:201.3 /210.0 B:59.8 /60.0 @:127 B@:0")
    assert report is not None and report.hotend == (201.3, 210.0) and report.bed == (59.8, 60.0)
    waiting = parse_temperatures(" T:180.20 /200.00 B:60.00 /60.00 @:0 B@:0 W:?")
    assert waiting is not None and waiting.hotend == (180.2, 200.0)
    assert parse_temperatures("echo:busy: processing") is None


def test_clean_job_runs_every_line_once_in_order(printer_sim: SimulatedMarlin) -> None:
    job = print_job(200)
    printer = connect(printer_sim)
    report = printer.stream(job)
    printer.close()
    assert report.lines == len(job) and report.resends == 0
    assert printer_sim.executed == job


def test_damaged_lines_are_resent_and_run_once() -> None:
    job = print_job(200)
    with SimulatedMarlin(MarlinFaults(corrupt_once={4, 50, 51, 150}), home_seconds=0.05) as sim:
        printer = connect(sim)
        report = printer.stream(job)
        printer.close()
    assert report.resends == 4
    assert sim.executed == job


def test_lost_ok_is_recovered_without_running_the_line_twice() -> None:
    job = print_job(100)
    with SimulatedMarlin(MarlinFaults(lose_ok_for={10, 11, 60}), home_seconds=0.05, wait_interval=0.2) as sim:
        printer = connect(sim, answer_timeout=5.0)
        printer.stream(job)
        printer.close()
    assert sim.executed == job  # the resent lines were refused as duplicates, not run again


def test_line_damaged_every_time_aborts_with_a_clear_fault() -> None:
    job = print_job(50)
    with SimulatedMarlin(MarlinFaults(corrupt_always={20}), home_seconds=0.05) as sim:
        printer = connect(sim)
        with pytest.raises(ResendLoop, match="N20 asked for again 8 times; aborting") as loop:
            printer.stream(job)
        printer.close()
    assert loop.value.position == 19
    assert sim.executed == job[:19]


def test_homing_longer_than_the_answer_timeout_is_kept_alive_by_busy(printer_sim: SimulatedMarlin) -> None:
    printer_sim.home_seconds = 3.0
    printer = connect(printer_sim, answer_timeout=1.0)
    report = printer.stream(["G28", "G1 X10 F3000"])
    printer.close()
    assert report.resends == 0 and printer_sim.executed == ["G28", "G1 X10 F3000"]


def test_heating_waits_and_reports_temperatures(printer_sim: SimulatedMarlin) -> None:
    printer = connect(printer_sim)
    printer.stream(["M140 S60", "M109 S210"])
    assert printer.temperatures is not None and printer.temperatures.hotend is not None
    assert printer.temperatures.hotend[1] == 210.0
    reading = printer.report_temperatures()
    printer.close()
    assert reading.hotend is not None and abs(reading.hotend[0] - 210.0) < 0.5
    assert reading.bed == (pytest.approx(60.0, abs=0.5), 60.0)


def test_printer_restart_mid_job_is_a_fault_with_position(printer_sim: SimulatedMarlin, wait_until) -> None:
    job = print_job(400)
    printer = connect(printer_sim)

    def reset_button() -> None:
        wait_until(lambda: len(printer_sim.executed) >= 100, what="100 lines printed")
        printer_sim.restart()

    threading.Thread(target=reset_button, daemon=True).start()
    with pytest.raises(MarlinGone, match="restarted") as gone:
        printer.stream(job)
    printer.close()
    assert 100 <= gone.value.position <= len(printer_sim.executed)


def test_unplugged_printer_keeps_the_last_accepted_line(printer_sim: SimulatedMarlin, wait_until) -> None:
    job = print_job(400)
    printer = connect(printer_sim)

    def yank() -> None:
        wait_until(lambda: len(printer_sim.executed) >= 100, what="100 lines printed")
        printer_sim.unplug()

    threading.Thread(target=yank, daemon=True).start()
    with pytest.raises(MarlinGone, match="unplugged") as gone:
        printer.stream(job)
    printer.close()
    position = gone.value.position
    assert 99 <= position <= len(printer_sim.executed)
    assert printer_sim.executed[:position] == job[:position]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_crackling_cable_loses_no_line_and_runs_none_twice(seed: int) -> None:
    """Noise on both directions of the cable (flipped bits, lost and stray bytes), as in the demo's
    serial chaos: garbled lines, oks and resend requests (even one naming a line never sent) are
    all recovered, and the printer runs exactly the job."""
    from firmware_bridge.sim.noise import LineNoise, NoiseProxy

    job = print_job(300)
    noise = LineNoise(bit_error_rate=2e-4, drop_rate=5e-4, inject_rate=5e-4)
    with SimulatedMarlin(home_seconds=0.05, wait_interval=0.2) as sim, \
            NoiseProxy(sim.port, to_device=noise, to_host=noise, seed=seed) as line:
        printer = Marlin(line.port, answer_timeout=2.0)  # type: ignore[arg-type]
        printer.open()
        line.crackle(noise)
        report = printer.stream(job)
        printer.close()
    damaged = line.downstream.counters, line.upstream.counters
    assert sum(c.flipped_bits + c.dropped + c.injected for c in damaged) > 10  # the cable did crackle
    assert report.resends > 0
    assert sim.executed == job


def test_a_lost_line_count_reset_is_set_right_and_nothing_runs_twice() -> None:
    """The job's `M110 N0` is damaged on the way: Marlin still counts from the last job (N172) and
    keeps asking for N173. The host sets Marlin's count to its own and the job runs once, whole."""
    job = print_job(50)
    with SimulatedMarlin(MarlinFaults(corrupt_once={0}), home_seconds=0.05) as sim:
        sim.last_line = 172
        printer = connect(sim)
        report = printer.stream(job)
        printer.close()
    assert sim.executed[-len(job):] == job and sim.executed.count(job[0]) == 1
    assert report.lines == len(job)
