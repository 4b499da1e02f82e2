"""The simulator answers lines as gnea/grbl 1.1h's gcode.c does (word by word, then the block's
checks), and the streamer sends what protocol.c would keep of a line."""

from __future__ import annotations

import pytest

from firmware_bridge.gcode import clean_line
from firmware_bridge.grbl import Grbl, GrblError, GrblFault
from firmware_bridge.sim.grbl import SimulatedGrbl

REFUSED = [
    ("G90 G91", 21), ("M3 M5", 21), ("G20 G21", 21), ("M8 M9", 21),  # same modal group
    ("M3.5", 23), ("G1.5 X1", 23), ("G59.1", 23),  # a decimal where an integer is due
    ("S-1", 4), ("G4 P-1", 4),  # negative S, P
    ("P1", 36), ("G1 I1 X1 F100", 36),  # words no command uses
    ("G28 G0 X1", 24),  # two commands that want the axis words
    ("G1 X1 X2 Q1", 25),  # the repeat comes before the unsupported Q
    ("G2 X1 Y1 F100", 35),  # an arc with no offsets
    ("G80 G92 X0", 31),  # axis words under G80, even for G92
    ("G43.1 X1", 37),
]


def test_the_simulator_refuses_as_gcode_c_does() -> None:
    with SimulatedGrbl() as board, Grbl(board.port) as laser:
        refused: list[GrblError] = []
        laser.stream([line for line, _ in REFUSED], stop_on_error=False, on_error=refused.append, timeout=2.0)
        assert [(e.line_number, e.code) for e in refused] == [(i, code) for i, (_, code) in enumerate(REFUSED)]
        assert board.executed == []


def test_the_simulator_accepts_what_gcode_c_accepts() -> None:
    lines = ["G40", "G61", "G91.1", "G92.1", "G43.1 Z0", "G49", "G0 S0 F100 T1 N5", "G4 P0.5"]
    with SimulatedGrbl(time_scale=0.01) as board, Grbl(board.port) as laser:
        laser.stream(lines, timeout=2.0)
        assert board.executed == [clean_line(line) for line in lines]


def test_lines_are_cleaned_as_protocol_c_does() -> None:
    assert clean_line("(set; speed) G1 x1") == "G1X1"  # the ';' is inside the comment
    assert clean_line("/G1 X1\x01") == "G1X1"  # block delete and control characters dropped
    assert clean_line("G1 X1 (open comment") == "G1X1"


def test_a_non_ascii_line_is_refused_before_anything_is_sent() -> None:
    with SimulatedGrbl() as board, Grbl(board.port) as laser:
        commands = len(board.system_commands)
        with pytest.raises(GrblFault, match="non-ASCII"):
            laser.stream(["G21", "G1 X1 F100 é"], timeout=2.0)
        assert board.executed == [] and len(board.system_commands) == commands  # not even the $G
