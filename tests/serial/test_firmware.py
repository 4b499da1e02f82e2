"""The reference firmware (firmware_bridge/firmware) built with avr-gcc, running in simavr."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from firmware_bridge import protocol as p
from firmware_bridge.link import BoardLink, CommandRefused, DeviceUnplugged
from firmware_bridge.sim.avr import OUTPUT_PINS, SimulatedFirmware, build_firmware
from firmware_bridge.sim.noise import LineNoise, NoiseProxy


@pytest.fixture(scope="session")
def built() -> None:
    build_firmware()


@pytest.fixture
def firmware(built: None) -> Iterator[SimulatedFirmware]:
    with SimulatedFirmware() as running:
        yield running


@pytest.fixture
def io_board(firmware: SimulatedFirmware) -> Iterator[BoardLink]:
    with BoardLink(firmware.port) as link:
        yield link


def levels(firmware: SimulatedFirmware) -> tuple[int, ...]:
    return tuple(firmware.levels.get(pin, -1) for pin in OUTPUT_PINS)


def test_firmware_answers_the_handshake_with_its_identity(io_board: BoardLink) -> None:
    assert io_board.identity == p.Identity(p.PROTOCOL_VERSION, (1, 0, 0), 4, 4, 1, "fabrique-io")


def test_firmware_boots_with_outputs_in_their_safe_state(firmware: SimulatedFirmware) -> None:
    assert firmware.wait_for(lambda f: levels(f) == (0, 0, 0, 1))


def test_output_command_drives_the_pin(io_board: BoardLink, firmware: SimulatedFirmware) -> None:
    io_board.set_output(1, True)
    assert firmware.wait_for(lambda f: f.levels.get("D5") == 1)
    io_board.set_output(1, False)
    assert firmware.wait_for(lambda f: f.levels.get("D5") == 0)
    assert io_board.status().outputs == 0b1000


def test_inputs_report_the_pin_levels(io_board: BoardLink, firmware: SimulatedFirmware, wait_until) -> None:
    assert io_board.read_inputs() == 0b1111  # pulled up
    firmware.set_input("C2", 0)
    wait_until(lambda: io_board.read_inputs() == 0b1011, what="input 2 low")


def test_pulse_lasts_its_length_in_simulated_time(io_board: BoardLink, firmware: SimulatedFirmware) -> None:
    io_board.pulse(0, 40)
    assert firmware.wait_for(lambda f: [e.level for e in f.edges if e.pin == "D4"][-2:] == [1, 0])
    rise, fall = [e for e in firmware.edges if e.pin == "D4"][-2:]
    assert 39 <= fall.sim_ms - rise.sim_ms <= 43


def test_servo_takes_the_commanded_pulse_width(io_board: BoardLink, firmware: SimulatedFirmware) -> None:
    io_board.servo(0, 1800)
    assert firmware.wait_for(lambda f: f.servo_us == 1800)
    with pytest.raises(CommandRefused, match="out of range"):
        io_board.servo(0, 3000)
    io_board.servo(0, 0)
    assert firmware.wait_for(lambda f: f.servo_us == 0)


def test_silent_host_trips_the_firmware_watchdog_to_the_safe_state(firmware: SimulatedFirmware) -> None:
    with BoardLink(firmware.port) as link:
        for index in range(4):
            link.set_output(index, index != 3)  # run: outputs on, brake released
        link.servo(0, 1200)
        assert firmware.wait_for(lambda f: levels(f) == (1, 1, 1, 0) and f.servo_us == 1200)
        link.set_watchdog(200)
    # the host is gone: no frame for 200 ms
    assert firmware.wait_for(lambda f: levels(f) == (0, 0, 0, 1) and f.servo_us == 0)
    with BoardLink(firmware.port) as link:
        assert link.status().locked_safe
        with pytest.raises(CommandRefused, match="ARM"):
            link.set_output(0, True)
        link.arm()
        link.set_output(0, True)
        assert firmware.wait_for(lambda f: f.levels.get("D4") == 1)


def test_heartbeat_keeps_the_firmware_watchdog_fed(firmware: SimulatedFirmware, wait_until) -> None:
    with BoardLink(firmware.port, heartbeat=0.1) as link:
        link.set_watchdog(1000)
        link.set_output(2, True)
        start = link.status().executed
        wait_until(lambda: link.stats.heartbeats >= 35, what="35 heartbeats, over three watchdog periods")
        status = link.status()
        assert status.executed - start >= 35 and not status.locked_safe
        assert firmware.levels.get("D6") == 1


def test_firmware_behind_a_noisy_line_runs_every_command_exactly_once(firmware: SimulatedFirmware) -> None:
    noise = LineNoise(bit_error_rate=1e-3)
    count = 150
    commands = [p.command(p.Opcode.ECHO, i.to_bytes(2, "big") * 8) for i in range(count)]
    replies: dict[int, bytes] = {}
    with NoiseProxy(firmware.port, noise, noise, seed=3) as proxy, BoardLink(proxy.port, heartbeat=0, silence_limit=30) as link:
        before = link.status().executed
        assert link.run(commands, on_reply=lambda i, d: replies.__setitem__(i, d)) == count
        after = link.status().executed
        assert proxy.downstream.counters.flipped_bits > 5
    assert after - before - 1 == count  # the firmware's own count: no command ran twice
    assert [replies[i] for i in range(count)] == [c[1:] for c in commands]


def test_unplugged_firmware_is_a_fault_that_names_the_port(io_board: BoardLink, firmware: SimulatedFirmware) -> None:
    io_board.ping()
    firmware.unplug()
    with pytest.raises(DeviceUnplugged, match=firmware.port):
        for _ in range(1000):
            io_board.ping()
