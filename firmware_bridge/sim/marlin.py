"""A Marlin 2 on a pty: line numbers and checksums, Resend, busy, wait, heating, temperatures.

Noise is simulated where it hurts: ``corrupt_once`` line numbers arrive damaged the first
time (checksum mismatch -> Resend), ``corrupt_always`` ones every time (the host must give
up), ``lose_ok_for`` ones have their ``ok`` lost on the way back (the host must recover
without running the line twice).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

from firmware_bridge.sim.terminal import PtyDevice

NUMBERED = re.compile(r"^N(-?\d+)\s*(.*?)(?:\*(\d+))?$")


@dataclass
class Heater:
    actual: float = 21.0
    target: float = 0.0


@dataclass
class MarlinFaults:
    corrupt_once: set[int] = field(default_factory=set)
    corrupt_always: set[int] = field(default_factory=set)
    lose_ok_for: set[int] = field(default_factory=set)


class SimulatedMarlin(PtyDevice):
    """Marlin bugfix-2.1.x as seen over USB serial."""

    name = "marlin"

    def __init__(
        self,
        faults: MarlinFaults | None = None,
        home_seconds: float = 0.3,
        busy_interval: float = 0.1,
        heat_rate: float = 400.0,
        wait_interval: float = 0.5,
    ) -> None:
        super().__init__()
        self.faults = faults or MarlinFaults()
        self.home_seconds = home_seconds
        self.busy_interval = busy_interval
        self.heat_rate = heat_rate  # degrees per second, fast so tests stay short
        self.wait_interval = wait_interval
        self.lock = threading.RLock()
        self.last_line = 0
        self.executed: list[str] = []  # every command run, in order
        self.hotend = Heater()
        self.bed = Heater()
        self._pending = b""
        self._long: tuple[str, float] | None = None  # (command, started) for G28 / M109 / M190
        self._last_report = 0.0
        self._last_tick = time.monotonic()
        self._last_output = time.monotonic()

    def start(self) -> SimulatedMarlin:
        super().start()
        self.say("start", "echo:Marlin bugfix-2.1.x", "echo: Last Updated: 2024-01-01 | Author: (fabrique sim)")
        return self

    def say(self, *lines: str) -> None:
        self._last_output = time.monotonic()
        self.send("".join(line + "\n" for line in lines).encode())

    def temperature_text(self) -> str:
        h, b = self.hotend, self.bed
        return f"T:{h.actual:.2f} /{h.target:.2f} B:{b.actual:.2f} /{b.target:.2f} @:0 B@:0"

    def received(self, data: bytes) -> None:
        with self.lock:
            self._pending += data
            while b"\n" in self._pending and self._long is None:
                raw, _, self._pending = self._pending.partition(b"\n")
                self._line(raw.decode("latin-1").strip())  # byte for byte: noise is checksummed as sent

    def _line(self, line: str) -> None:
        if not line:
            return
        match = NUMBERED.match(line)
        if match is None:
            if "*" in line:  # a checksum without a line number: the front of the line was lost
                self._refuse("No Line Number with checksum")
            else:
                self._run(line, None)
            return
        number, command, given = int(match.group(1)), match.group(2).strip(), match.group(3)
        body = line[: line.rindex("*")] if given is not None else line
        if given is None:
            self._refuse("No Checksum with line number")
            return
        damaged = number in self.faults.corrupt_always or number in self.faults.corrupt_once
        self.faults.corrupt_once.discard(number)
        if damaged or _xor(body) != int(given):
            self._refuse("checksum mismatch")
            return
        if command.startswith("M110"):
            self.last_line = number
            self.say("ok")
            return
        if number != self.last_line + 1:
            self._refuse("Line Number is not Last Line Number+1")
            return
        self.last_line = number
        self._run(command, number)

    def _refuse(self, why: str) -> None:  # as Marlin's gcode_line_error: the error, Resend, ok
        self.say(f"Error:{why}, Last Line: {self.last_line}", f"Resend: {self.last_line + 1}", "ok")

    def _run(self, command: str, number: int | None) -> None:
        self.executed.append(command)
        word = command.split()[0].upper() if command.split() else ""
        ok = "ok"
        if word == "M105":
            ok = "ok " + self.temperature_text()
        elif word == "M115":
            self.say("FIRMWARE_NAME:Marlin bugfix-2.1.x (fabrique sim) SOURCE_CODE_URL:github.com/MarlinFirmware/Marlin "
                     "PROTOCOL_VERSION:1.0 MACHINE_TYPE:Trailer Printer EXTRUDER_COUNT:1")
        elif word in ("M104", "M109", "M140", "M190"):
            target = re.search(r"S(-?[\d.]+)", command)
            heater = self.bed if word in ("M140", "M190") else self.hotend
            heater.target = float(target.group(1)) if target else 0.0
        if word in ("G28", "M109", "M190"):
            self._long = (word, time.monotonic())
            self._long_ok = ok if number not in self.faults.lose_ok_for else ""
            return
        if number in self.faults.lose_ok_for:
            self.faults.lose_ok_for.discard(number)
            return  # the ok is lost on the way back
        self.say(ok)

    def tick(self) -> None:
        now = time.monotonic()
        with self.lock:
            dt, self._last_tick = now - self._last_tick, now
            for heater in (self.hotend, self.bed):
                step = self.heat_rate * dt
                heater.actual += max(-step, min(step, heater.target - heater.actual)) if heater.target else 0.0
            if self._long is not None:
                word, started = self._long
                if now - self._last_report >= self.busy_interval:
                    self.say(self.temperature_text() if word != "G28" else "echo:busy: processing")
                    self._last_report = now
                done = (
                    now - started >= self.home_seconds
                    if word == "G28"
                    else abs((self.hotend if word == "M109" else self.bed).actual - (self.hotend if word == "M109" else self.bed).target) < 0.5
                )
                if done:
                    self._long = None
                    if self._long_ok:
                        self.say(self._long_ok)
                    self.received(b"")
            else:
                self._last_report = now
                if self.wait_interval and now - self._last_output > self.wait_interval:
                    self.say("wait")

    def restart(self, power_cut: bool = False) -> None:
        """A brown-out or someone pressing reset: line numbers forgotten, banner again. After a
        `power_cut` the heaters are off too (the bed cools from where it was)."""
        with self.lock:
            self.last_line = 0
            self._long = None
            if power_cut:
                self.hotend.target = self.bed.target = 0.0
            self.say("start")


def _xor(text: str) -> int:
    """The checksum of a received line, whatever bytes noise made of it (latin-1 is 1:1)."""
    value = 0
    for byte in text.encode("latin-1"):
        value ^= byte
    return value
