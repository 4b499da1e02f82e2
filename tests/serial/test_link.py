"""The reliable link to our boards, against the Python twin of the firmware on real ptys."""

from __future__ import annotations

import threading

import pytest

from firmware_bridge import protocol as p
from firmware_bridge.link import (
    BoardLink,
    BoardRestarted,
    CommandRefused,
    DeviceUnplugged,
    IncompatibleFirmware,
)
from firmware_bridge.sim.board import BoardLogic, SimulatedBoard
from firmware_bridge.sim.noise import LineNoise, NoiseProxy


def numbered_echoes(count: int, size: int = 24) -> list[bytes]:
    return [p.command(p.Opcode.ECHO, i.to_bytes(4, "big") + bytes((i % 251,)) * (size - 4)) for i in range(count)]


def test_handshake_reads_the_board_identity(link: BoardLink) -> None:
    assert link.identity is not None
    assert link.identity.name == "fabrique-io-sim"
    assert link.identity.protocol == p.PROTOCOL_VERSION
    assert link.identify() == link.identity


def test_board_speaking_another_protocol_is_refused_with_a_clear_message() -> None:
    future = BoardLogic(identity=p.Identity(p.PROTOCOL_VERSION + 1, (3, 0, 0), 4, 4, 1, "gripper-v3"))
    with SimulatedBoard(future) as board, pytest.raises(IncompatibleFirmware) as refused:
        BoardLink(board.port).open()
    message = str(refused.value)
    assert "gripper-v3" in message and "3.0.0" in message and f"protocol {p.PROTOCOL_VERSION + 1}" in message


def test_wrong_board_on_the_port_is_refused(board: SimulatedBoard) -> None:
    with pytest.raises(IncompatibleFirmware, match="expected board 'laser-io'"):
        BoardLink(board.port, expect_name="laser-io").open()


def test_outputs_follow_commands(link: BoardLink, board: SimulatedBoard) -> None:
    link.set_output(0, True)
    link.set_output(3, False)
    assert board.logic.outputs == 0b0001
    assert link.status().outputs == 0b0001


def test_refused_command_says_why(link: BoardLink) -> None:
    with pytest.raises(CommandRefused, match="out of range"):
        link.set_output(9, True)


@pytest.mark.parametrize("seed", [11, 12])
def test_noisy_line_runs_every_command_exactly_once(board: SimulatedBoard, seed: int) -> None:
    noise = LineNoise(bit_error_rate=1e-3)
    commands = numbered_echoes(400)
    replies: dict[int, bytes] = {}
    with NoiseProxy(board.port, noise, noise, seed=seed) as proxy, BoardLink(proxy.port, silence_limit=30) as link:
        done = link.run(commands, on_reply=lambda i, data: replies.__setitem__(i, data))
        assert proxy.downstream.counters.flipped_bits > 20 and proxy.upstream.counters.flipped_bits > 20
        assert link.stats.retransmits > 0
    assert done == len(commands)
    executed = [c for c in board.logic.log if c[0] == p.Opcode.ECHO]
    assert executed == commands  # each once, in order, none corrupted
    assert all(replies[i] == commands[i][1:] for i in range(len(commands)))


def test_dropped_and_injected_bytes_never_run_a_damaged_command(board: SimulatedBoard) -> None:
    noise = LineNoise(bit_error_rate=2e-4, drop_rate=5e-4, inject_rate=5e-4)
    commands = numbered_echoes(300)
    with NoiseProxy(board.port, noise, noise, seed=5) as proxy, BoardLink(proxy.port, silence_limit=30) as link:
        assert link.run(commands) == len(commands)
        assert proxy.downstream.counters.dropped > 0 and proxy.downstream.counters.injected > 0
    assert [c for c in board.logic.log if c[0] == p.Opcode.ECHO] == commands


def test_unplugged_board_faults_and_the_job_resumes_from_the_last_acknowledged(wait_until) -> None:
    commands = numbered_echoes(200)
    first = SimulatedBoard().start()

    def yank() -> None:
        wait_until(lambda: len(first.logic.log) >= 80, what="80 commands on the board")
        first.unplug()

    threading.Thread(target=yank, daemon=True).start()
    link = BoardLink(first.port)
    link.open()
    with pytest.raises(DeviceUnplugged, match="unplugged") as fault:
        link.run(commands)
    link.close()
    first.close()
    position = fault.value.position
    ran_on_first = [c for c in first.logic.log if c[0] == p.Opcode.ECHO]
    assert 0 < position <= len(ran_on_first) < len(commands)  # replies in the cable are lost with it
    assert ran_on_first[:position] == commands[:position]

    with SimulatedBoard() as second, BoardLink(second.port) as resumed:
        assert resumed.run(commands, start=position) == len(commands)
    assert [c for c in second.logic.log if c[0] == p.Opcode.ECHO] == commands[position:]


def test_idle_link_sends_heartbeats_that_keep_the_watchdog_fed(board: SimulatedBoard, wait_until) -> None:
    with BoardLink(board.port, heartbeat=0.1) as link:
        link.set_watchdog(1000)
        link.set_output(0, True)
        wait_until(lambda: link.stats.heartbeats >= 35, what="35 heartbeats, over three watchdog periods")
        assert not board.watchdog_trips.is_set()
        assert board.logic.outputs & 1


def test_silent_host_lets_the_board_drive_outputs_safe(board: SimulatedBoard) -> None:
    with BoardLink(board.port, heartbeat=0) as link:
        link.set_watchdog(100)
        link.set_output(0, True)
        link.set_output(3, False)
        assert board.watchdog_trips.wait(20)
        assert board.logic.outputs == board.logic.safe_outputs
        with pytest.raises(CommandRefused, match="ARM"):
            link.set_output(0, True)
        link.arm()
        link.set_output(0, True)


def test_board_that_restarted_mid_job_is_reported(link: BoardLink, board: SimulatedBoard) -> None:
    link.ping()
    with board.lock:
        board.logic.session = False  # what a brown-out reset leaves behind
    with pytest.raises(BoardRestarted, match="restarted"):
        link.ping()
