"""The reference firmware running in simavr, its UART on a pty (see firmware/simboard.c)."""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

FIRMWARE_DIR = Path(__file__).resolve().parent.parent / "firmware"
BUILD_DIR = FIRMWARE_DIR / "build"

# Arduino names of the reference board's pins, as simboard reports them
OUTPUT_PINS = ("D4", "D5", "D6", "D7")
INPUT_PINS = ("C0", "C1", "C2", "C3")


class FirmwareUnavailable(RuntimeError):
    """The firmware or the simavr runner could not be built or started."""


def build_firmware() -> Path:
    """Run the firmware Makefile (quiet, incremental); return the build directory."""
    result = subprocess.run(["make", "-s", "-C", str(FIRMWARE_DIR)], capture_output=True, text=True)
    if result.returncode != 0:
        raise FirmwareUnavailable(f"firmware build failed:\n{result.stdout}{result.stderr}")
    return BUILD_DIR


@dataclass
class PinEdge:
    """One level change seen on an output pin, stamped with simulated time."""

    pin: str
    level: int
    sim_ms: float


@dataclass
class SimulatedFirmware:
    """simboard running build/fabrique-io.elf; ``port`` is its UART."""

    elf: Path = BUILD_DIR / "fabrique-io.elf"
    runner: Path = BUILD_DIR / "simboard"
    port: str = ""
    levels: dict[str, int] = field(default_factory=dict)
    edges: list[PinEdge] = field(default_factory=list)
    servo_us: int = 0
    _process: subprocess.Popen[str] | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> SimulatedFirmware:
        if not (self.elf.exists() and self.runner.exists()):
            build_firmware()
        self._process = subprocess.Popen(
            [str(self.runner), str(self.elf)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self._process.stdout is not None
        for line in self._process.stdout:
            if line.startswith("PTY "):
                self.port = line.split()[1]
                break
        else:
            raise FirmwareUnavailable(f"simboard exited: {self._process.stderr.read() if self._process.stderr else ''}")
        threading.Thread(target=self._watch, name="simboard-pins", daemon=True).start()
        log.info("firmware %s running in simavr on %s", self.elf.name, self.port)
        return self

    def __enter__(self) -> SimulatedFirmware:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _watch(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        try:
            for line in self._process.stdout:
                self._on_line(line.split())
        except (ValueError, OSError):
            return  # closed under us

    def _on_line(self, parts: list[str]) -> None:
        with self._changed:
            if parts[:1] == ["PIN"] and len(parts) == 4:
                edge = PinEdge(parts[1], int(parts[2]), float(parts[3]))
                self.levels[edge.pin] = edge.level
                self.edges.append(edge)
            elif parts[:1] == ["SERVO"] and len(parts) == 3:
                self.servo_us = int(parts[1])
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[SimulatedFirmware], object], timeout: float = 20.0) -> bool:
        """Wait until ``predicate(self)`` holds after a pin or servo change."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def set_input(self, pin: str, level: int) -> None:
        """Drive an input pin from outside (a sensor, a button), e.g. ``set_input("C2", 0)``."""
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(f"SET {pin} {int(bool(level))}\n")
        self._process.stdin.flush()

    def unplug(self) -> None:
        """Kill the simulation: the pty disappears like a pulled USB cable."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=5)

    def close(self) -> None:
        self.unplug()
        if self._process is not None:
            for stream in (self._process.stdin, self._process.stdout, self._process.stderr):
                if stream is not None:
                    stream.close()
