"""The command line, run as an operator would: a subprocess against simulated devices."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from firmware_bridge.sim.board import SimulatedBoard
from firmware_bridge.sim.grbl import SimulatedGrbl
from firmware_bridge.sim.marlin import SimulatedMarlin


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firmware_bridge", *args], capture_output=True, text=True, timeout=timeout
    )


def gcode_file(tmp_path: Path, lines: int) -> Path:
    path = tmp_path / "stand.nc"
    body = ["G21", "G90", "F3000"] + [f"G1 X{i % 50} Y{i // 50} ; engrave" for i in range(lines)]
    path.write_text("\n".join(body) + "\n", encoding="ascii")
    return path


def test_help_teaches_with_examples() -> None:
    result = cli("--help")
    assert result.returncode == 0
    assert "stream --port /dev/ttyUSB0 --flavor grbl" in result.stdout and "exit status" in result.stdout
    stream_help = cli("stream", "--help").stdout
    assert "--resume-from N" in stream_help and "character-counted" in stream_help


def test_streaming_to_a_laser_reports_and_writes_json(tmp_path: Path) -> None:
    job = gcode_file(tmp_path, 120)
    with SimulatedGrbl(time_scale=0.05) as laser:
        result = cli("stream", "--port", laser.port, "--flavor", "grbl", str(job), "--json", str(tmp_path / "r.json"))
        executed = len(laser.executed)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "done" and report["lines"] == 123 and report["errors"] == 0 and report["bytes"] > 0
    assert executed == 123
    assert "status=done lines=123" in result.stdout
    assert "123/123 lines" in result.stderr  # the progress bar


def test_streaming_to_a_printer_resumes_from_a_line(tmp_path: Path) -> None:
    job = gcode_file(tmp_path, 60)
    with SimulatedMarlin() as printer:
        result = cli("stream", "--port", printer.port, "--flavor", "marlin", str(job), "--resume-from", "40")
        executed = list(printer.executed)
    assert result.returncode == 0, result.stderr
    assert executed[0] == "G1 X37 Y0" and len(executed) == 23


def test_check_mode_refuses_a_bad_file_before_anything_moves(tmp_path: Path) -> None:
    job = tmp_path / "bad.nc"
    job.write_text("G21\nG1 X5 F500\nG5 X1\n", encoding="ascii")
    with SimulatedGrbl() as laser:
        result = cli("stream", "--port", laser.port, "--flavor", "grbl", "--check", str(job))
        moved = laser.machine_position
    assert result.returncode == 2
    assert "error:20" in result.stderr and "nothing was run" in result.stderr
    assert moved == (0.0, 0.0, 0.0)


def test_missing_file_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    result = cli("stream", "--port", "/dev/null", "--flavor", "grbl", str(tmp_path / "nope.nc"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: no such G-code file: {tmp_path / 'nope.nc'}"


def test_bad_port_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    result = cli("stream", "--port", "/dev/ttyNOPE9", "--flavor", "marlin", str(gcode_file(tmp_path, 3)))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "/dev/ttyNOPE9" in result.stderr
    assert "Traceback" not in result.stderr


def test_identify_names_the_board_and_its_firmware() -> None:
    with SimulatedBoard() as board:
        result = cli("identify", "--port", board.port)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "fabrique-io-sim firmware 1.0.0 protocol 1: 4 outputs, 4 inputs, 1 servos"


def test_identify_a_laser_and_a_printer() -> None:
    with SimulatedGrbl() as laser:
        grbl = cli("identify", "--port", laser.port, "--flavor", "grbl")
    with SimulatedMarlin() as printer:
        marlin = cli("identify", "--port", printer.port, "--flavor", "marlin")
    assert grbl.stdout.startswith("GRBL 1.1h: RX buffer 128 bytes")
    assert marlin.stdout.startswith("FIRMWARE_NAME:Marlin")


def test_unplugged_laser_mid_job_exits_1_and_says_where_to_resume(tmp_path: Path, wait_until) -> None:
    job = gcode_file(tmp_path, 3000)
    with SimulatedGrbl(time_scale=0.5) as laser:
        command = [sys.executable, "-m", "firmware_bridge", "stream", "--port", laser.port, "--flavor", "grbl", str(job)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: len(laser.executed) >= 100 or process.poll() is not None, what="100 lines engraved")
        laser.unplug()
        out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "unplugged" in err and "resume with: --resume-from" in err
    assert "status=fault" in out


def test_identify_on_a_laser_port_says_it_is_not_one_of_our_boards() -> None:
    with SimulatedGrbl() as laser:
        result = cli("identify", "--port", laser.port)
    assert result.returncode == 2
    assert "no answer to HELLO" in result.stderr and "is this one of our boards" in result.stderr
