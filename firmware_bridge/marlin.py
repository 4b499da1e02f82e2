"""Marlin (3D printers): numbered, checksummed lines, ``Resend: N``, busy/wait, temperatures.

Every line goes out as ``N<n> <gcode>*<checksum>``. Marlin refuses a line whose checksum
or number is wrong and asks for it again (``Resend: N``); because lines are numbered, a
line sent twice is refused the second time, so the host may always resend when unsure
(a lost ``ok``) without running anything twice. A line that keeps being asked for again
is a broken link, not something to retry forever: after ``max_resends`` the job stops with
a fault that says so. ``echo:busy: processing`` and temperature reports during heating keep
a long command (G28, M109, M190) alive; ``wait`` is Marlin saying it is idle, so the host
resends the line whose ``ok`` went missing.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from firmware_bridge.grbl import StreamReport
from firmware_bridge.textport import TextDevice

log = logging.getLogger(__name__)

RESEND = re.compile(r"^(?:Resend|rs)[: ]\s*N?(\d+)", re.IGNORECASE)
TEMPERATURE = re.compile(r"\b([TBC]\d?|P|W):\s*(-?[\d.]+)\s*(?:/\s*(-?[\d.]+))?")
FATAL = ("kill() called", "Printer halted", "MINTEMP", "MAXTEMP", "Thermal Runaway", "Heating failed")


def checksum(text: str) -> int:
    """Marlin's line checksum: XOR of every byte before the ``*``."""
    value = 0
    for byte in text.encode("ascii"):
        value ^= byte
    return value


def numbered(number: int, gcode: str) -> str:
    body = f"N{number} {gcode}"
    return f"{body}*{checksum(body)}"


def clean_gcode(line: str) -> str:
    return line.split(";", 1)[0].strip()


@dataclass(frozen=True)
class Temperatures:
    """A temperature report: heater name (T, T0, B, C...) -> (actual, target)."""

    heaters: dict[str, tuple[float, float | None]] = field(default_factory=dict)

    @property
    def hotend(self) -> tuple[float, float | None] | None:
        return self.heaters.get("T") or self.heaters.get("T0")

    @property
    def bed(self) -> tuple[float, float | None] | None:
        return self.heaters.get("B")


def parse_temperatures(line: str) -> Temperatures | None:
    """``ok T:200.1 /200.0 B:60.0 /60.0 @:127 B@:0`` -> Temperatures; None if no heater in it."""
    heaters: dict[str, tuple[float, float | None]] = {}
    for name, actual, target in TEMPERATURE.findall(line):
        try:
            heaters.setdefault(name, (float(actual), float(target) if target else None))
        except ValueError:
            continue
    return Temperatures(heaters) if ("T" in heaters or "T0" in heaters or "B" in heaters) else None


class MarlinFault(Exception):
    """A job could not go on; ``position`` job lines were accepted before it stopped."""

    def __init__(self, message: str, position: int = 0) -> None:
        super().__init__(message)
        self.position = position


class ResendLoop(MarlinFault):
    """The same line was asked for again too many times: the line is too noisy or broken."""


class MarlinGone(MarlinFault):
    """The port went away, Marlin restarted, or it stopped answering."""


class MarlinHalted(MarlinFault):
    """Marlin reported a fatal error (thermal runaway, kill()): the printer needs a person."""


class Marlin(TextDevice):
    """A Marlin printer on a serial port."""

    gone = MarlinGone

    def __init__(self, port: str, baudrate: int = 115200, max_resends: int = 8, answer_timeout: float = 10.0) -> None:
        super().__init__(port, baudrate)
        self.max_resends = max_resends
        self.answer_timeout = answer_timeout
        self.temperatures: Temperatures | None = None
        self.messages: list[str] = []
        self._events: deque[tuple[str, int]] = deque()  # ("ok"|"resend"|"wait"|"start"|"fatal", n)
        self._fatal: str | None = None
        self._last_heard = time.monotonic()
        self._held = False

    def open(self, timeout: float = 5.0) -> None:
        """Open the port and reset line numbers (M110), retrying while the board boots.

        Most boards reset when the port opens (DTR) and say ``start`` a second or two later;
        commands sent while the bootloader runs are lost, so M110 is repeated until answered.
        """
        self._open_port(self._on_line)
        deadline = time.monotonic() + timeout
        while True:
            self._send_numbered(0, "M110 N0")
            try:
                self._wait_ok_simple(min(1.0, max(0.0, deadline - time.monotonic())))
                return
            except MarlinGone:
                if self._gone or time.monotonic() >= deadline:
                    raise

    def identify(self, timeout: float = 5.0) -> str:
        """M115: the firmware's own description (FIRMWARE_NAME:... line)."""
        with self._lock:
            self._events.clear()
            seen = len(self.messages)
        self._write_text("M115\n")
        self._wait_ok_simple(timeout)
        for line in self.messages[seen:]:
            if line.startswith("FIRMWARE_NAME:"):
                return line
        raise MarlinFault(f"{self.port_name}: M115 gave no FIRMWARE_NAME")

    def report_temperatures(self, timeout: float = 5.0) -> Temperatures:
        """M105, outside any job."""
        with self._lock:
            self._events.clear()
        self._write_text("M105\n")
        self._wait_ok_simple(timeout)
        if self.temperatures is None:
            raise MarlinFault(f"{self.port_name}: M105 gave no temperatures")
        return self.temperatures

    def feed_hold(self) -> None:
        """Hold the job between lines (any thread): nothing more is sent until `resume()`.

        Marlin has no realtime hold like GRBL's ``!``: the host stops sending, and the printer
        finishes the moves it has already queued (a few lines' worth) and waits.
        """
        with self._lock:
            self._held = True
            self._lock.notify_all()

    def resume(self) -> None:
        """Go on sending the held job's lines (any thread)."""
        with self._lock:
            self._held = False
            self._lock.notify_all()

    @property
    def held(self) -> bool:
        return self._held

    def stream(
        self,
        lines: Iterable[str],
        start: int = 0,
        on_progress: Callable[[int], None] | None = None,
    ) -> StreamReport:
        """Send job lines from ``start``, one at a time, each numbered and checksummed."""
        job = [g for g in (clean_gcode(line) for line in lines)]
        report = StreamReport(position=start)
        self._held = False  # a hold belongs to the job it was given in
        begun = time.monotonic()
        try:
            self._run_job(job, report, start, on_progress)
        except MarlinFault as fault:
            fault.position = report.position  # lines accepted before the fault, wherever it came from
            raise
        report.seconds = time.monotonic() - begun
        return report

    def _run_job(
        self, job: list[str], report: StreamReport, start: int, on_progress: Callable[[int], None] | None
    ) -> None:
        self._send_numbered(0, "M110 N0")
        self._wait_ok_simple(self.answer_timeout)
        sent_at_number: dict[int, int] = {}  # line number -> job index
        index, number = start, 1
        resends_of: dict[int, int] = {}
        never_sent = -1  # the last request for a line never sent
        while index < len(job):
            if not job[index]:
                index += 1
                report.position = index
                continue
            sent_at_number[number] = index
            with self._lock:  # an idle "wait" from before this line says nothing about it
                while self._held and not self._gone:
                    self._lock.wait(1.0)
                if self._gone:
                    raise MarlinGone(self._gone, report.position)
                self._events = deque(e for e in self._events if e[0] != "wait")
            self._send_numbered(number, job[index])
            report.bytes += len(job[index])
            outcome, asked = self._await_answer(report.position)
            if outcome == "ok":
                report.lines += 1
                index += 1
                number += 1
                report.position = index
                if on_progress is not None:
                    on_progress(index)
                continue
            # a resend: go back to the line Marlin asks for (-1: the ok went missing, send it again)
            if asked == -1:
                asked = number
            elif asked not in sent_at_number and asked != number + 1:
                if asked == never_sent:
                    # asked twice: Marlin counts from elsewhere (the job's M110 was lost on the way,
                    # its count is the last job's). It ran none of ours: set its count to ours.
                    log.warning("%s: Marlin counts lines from N%d, not ours: M110 N%d", self.port_name,
                                asked, number - 1)
                    self._send_numbered(number - 1, f"M110 N{number - 1}")
                    self._wait_ok_simple(self.answer_timeout)
                else:
                    # once: the request itself was garbled on the way (noise hits both directions).
                    # Send this line again: numbered, Marlin runs it at most once.
                    log.warning("%s: Marlin asked for line N%d, never sent: sending N%d again", self.port_name,
                                asked, number)
                never_sent = asked
                asked = number
            report.resends += 1
            resends_of[asked] = resends_of.get(asked, 0) + 1
            if resends_of[asked] > self.max_resends:
                raise ResendLoop(
                    f"{self.port_name}: line N{asked} asked for again {resends_of[asked] - 1} times; "
                    "aborting: the serial line is too noisy or the printer's buffer is broken",
                    report.position,
                )
            if asked in sent_at_number:
                number, index = asked, sent_at_number[asked]
                report.position = index
            else:  # N+1: it already has this one, a duplicate after a lost ok
                report.lines += 1
                index += 1
                number += 1
                report.position = index

    # -- internals ----------------------------------------------------------------
    def _await_answer(self, position: int) -> tuple[str, int]:
        """Wait for ok (line taken) or a resend request; a lost ok is recovered by resending."""
        resend: int | None = None
        silent_tries = 0
        while True:
            with self._lock:
                self._last_heard = time.monotonic()
                while not (self._events or self._gone):
                    # any line (busy, temperatures) proves Marlin alive: the clock restarts
                    quiet_for = time.monotonic() - self._last_heard
                    if quiet_for >= self.answer_timeout:
                        break
                    self._lock.wait(self.answer_timeout - quiet_for)
                if self._gone:
                    raise MarlinGone(self._gone, position)
                event = self._events.popleft() if self._events else ("silence", 0)
            kind, value = event
            if kind == "fatal":
                raise MarlinHalted(f"{self.port_name}: {self._fatal}", position)
            if kind == "start":
                raise MarlinGone(f"{self.port_name}: Marlin restarted during the job", position)
            if kind == "resend":
                resend = value
            elif kind == "ok":
                return ("resend", resend) if resend is not None else ("ok", 0)
            elif kind in ("wait", "silence"):
                silent_tries += 1
                if silent_tries > self.max_resends:
                    raise MarlinGone(f"{self.port_name}: no answer from Marlin", position)
                return ("resend", -1) if resend is None else ("resend", resend)

    def _wait_ok_simple(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if self._gone:
                    raise MarlinGone(self._gone)
                while self._events:
                    kind, _ = self._events.popleft()
                    if kind == "ok":
                        return
                    if kind == "fatal":
                        raise MarlinHalted(f"{self.port_name}: {self._fatal}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise MarlinGone(f"{self.port_name}: no ok within {timeout} s; is this Marlin at {self.baudrate} baud?")
                self._lock.wait(remaining)

    def _send_numbered(self, number: int, gcode: str) -> None:
        self._write_text(numbered(number, gcode) + "\n")

    def _write_text(self, text: str) -> None:
        self._write(text.encode("ascii"))

    def _on_line(self, line: str) -> None:
        with self._lock:
            self._last_heard = time.monotonic()
            temperatures = parse_temperatures(line)
            if temperatures is not None:
                self.temperatures = temperatures
            if line == "ok" or line.startswith("ok "):
                self._events.append(("ok", 0))
            elif (resend := RESEND.match(line)) is not None:
                self._events.append(("resend", int(resend.group(1))))
            elif line == "wait":
                self._events.append(("wait", 0))
            elif line == "start":
                self._events.append(("start", 0))
            elif any(word in line for word in FATAL):
                self._fatal = line
                self._events.append(("fatal", 0))
            elif line.startswith("Error:"):
                log.warning("%s: %s", self.port_name, line)  # the Resend: that follows says what to do
            elif line.startswith("echo:busy"):
                pass  # a long command is still running: keep waiting
            elif temperatures is None:
                self.messages.append(line)
            self._lock.notify_all()
