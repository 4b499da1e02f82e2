"""Simulated serial devices on real pseudo-terminals, and a noise proxy between two of them.

Each simulator owns the master side of a pty; the host opens ``device.port`` (the slave
path) with pyserial exactly as it would open ``/dev/ttyUSB0``. ``unplug()`` closes the
master: the host then sees what a yanked USB cable gives it (EIO on read).
``SimulatedFirmware`` (in ``sim.avr``) runs the real firmware binary in simavr instead.
"""

from firmware_bridge.sim.board import BoardLogic, SimulatedBoard
from firmware_bridge.sim.grbl import SimulatedGrbl
from firmware_bridge.sim.marlin import MarlinFaults, SimulatedMarlin
from firmware_bridge.sim.noise import LineNoise, NoiseProxy
from firmware_bridge.sim.terminal import PtyDevice

__all__ = [
    "BoardLogic",
    "LineNoise",
    "MarlinFaults",
    "NoiseProxy",
    "PtyDevice",
    "SimulatedBoard",
    "SimulatedGrbl",
    "SimulatedMarlin",
]
