"""The ``stream`` command on a GRBL laser, run as an operator would: resuming and faults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from firmware_bridge.sim.grbl import SimulatedGrbl


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firmware_bridge", *args], capture_output=True, text=True, timeout=timeout
    )


def laser_file(tmp_path: Path, moves: int) -> Path:
    path = tmp_path / "sign.nc"
    body = ["G21", "G90", "F3000", "M4 S300"] + [f"G1 X{i % 50} Y{i // 50} ; engrave" for i in range(moves)]
    path.write_text("\n".join([*body, "M5"]) + "\n", encoding="ascii")
    return path


def test_resume_from_restores_feed_and_laser_on_a_fresh_board(tmp_path: Path) -> None:
    job = laser_file(tmp_path, 40)
    with SimulatedGrbl(time_scale=0.05) as laser:
        result = cli("stream", "--port", laser.port, "--flavor", "grbl", str(job), "--resume-from", "20")
        back, first = laser.motions[0], laser.motions[1]
    assert result.returncode == 0, result.stderr
    assert (back.line, back.spindle) == ("G0X15Y0", 5)  # to where line 21 starts, laser off
    assert "resuming at line 21 after: G21 G90 G17 G54 G94 | G0 X15 Y0 | G1 F3000 | M4 S300" in result.stderr
    assert (first.line, first.feed, first.spindle, first.power) == ("G1X16Y0", 3000.0, 4, 300.0)
    assert "position=45 executed=45" in result.stdout


def test_a_resume_that_cannot_be_restored_is_bad_input(tmp_path: Path) -> None:
    job = tmp_path / "offset.nc"
    job.write_text("G21\nG92 X0 Y0\nG1 X5 F300\n", encoding="ascii")
    result = cli("stream", "--port", "/dev/null", "--flavor", "grbl", str(job), "--resume-from", "2")
    assert result.returncode == 2 and "G92" in result.stderr and "Traceback" not in result.stderr


def test_a_fault_says_what_was_acknowledged_and_where_to_resume(tmp_path: Path, wait_until) -> None:
    job = laser_file(tmp_path, 3000)
    with SimulatedGrbl(time_scale=0.5, settings={10: "3"}) as laser:
        command = [sys.executable, "-m", "firmware_bridge", "stream", "--port", laser.port, "--flavor", "grbl", str(job)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: len(laser.executed) >= 100 or process.poll() is not None, what="100 lines engraved")
        laser.unplug()
        completed = laser.completed
        out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    acknowledged = int(out.split("position=")[1].split()[0])
    executed = int(out.split("executed=")[1].split()[0])
    assert executed <= completed < acknowledged
    assert f"acknowledged {acknowledged} lines, executed {executed}" in err
    assert f"resume with: --resume-from {executed}" in err
