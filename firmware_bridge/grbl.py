"""GRBL 1.1 streaming (lasers, CNC): character counting against the 128-byte RX buffer.

GRBL answers every line with ``ok`` or ``error:N`` once it has taken the line out of its
receive buffer. Counting the bytes of the lines not yet answered, the host keeps that
buffer as full as it can without ever overflowing it: the planner never starves on short
segments (engraving), where one-line-at-a-time waits a full round trip per line.

Real-time commands (``?`` status, ``!`` feed hold, ``~`` resume, 0x18 soft reset) bypass
the buffer and are never counted. ``$X`` (unlock after an alarm) is sent only when asked
for: clearing an alarm is an operator's decision, never the streamer's.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from firmware_bridge.textport import TextDevice

log = logging.getLogger(__name__)

RX_BUFFER = 128
MAX_LINE = 80  # GRBL's LINE_BUFFER_SIZE
STATUS_QUERY, FEED_HOLD, CYCLE_START, SOFT_RESET = b"?", b"!", b"~", b"\x18"
BANNER = re.compile(r"^Grbl (\d+\.\d+)(\w*)")

ERRORS = {
    1: "G-code words consist of a letter and a value; letter was not found",
    2: "numeric value format is not valid or missing an expected value",
    3: "'$' system command was not recognized or supported",
    4: "negative value received for an expected positive value",
    5: "homing cycle is not enabled via settings",
    6: "minimum step pulse time must be greater than 3 us",
    7: "EEPROM read failed; reset and restored to default values",
    8: "'$' command cannot be used unless Grbl is IDLE",
    9: "G-code locked out during alarm or jog state",
    10: "soft limits cannot be enabled without homing also enabled",
    11: "max characters per line exceeded; line was not processed",
    12: "'$' setting value exceeds the maximum step rate supported",
    13: "safety door detected as opened and door state initiated",
    14: "build info or startup line exceeded EEPROM line length limit",
    15: "jog target exceeds machine travel; command ignored",
    16: "jog command with no '=' or contains prohibited g-code",
    17: "laser mode requires PWM output",
    20: "unsupported or invalid g-code command found in block",
    21: "more than one g-code command from same modal group found in block",
    22: "feed rate has not yet been set or is undefined",
    23: "g-code command in block requires an integer value",
    24: "two g-code commands that both require the use of the XYZ axis words were detected in the block",
    25: "a g-code word was repeated in the block",
    26: "a g-code command implicitly or explicitly requires XYZ axis words in the block, but none were detected",
    27: "N line number value is not within the valid range of 1 - 9,999,999",
    28: "a g-code command was sent, but is missing some required P or L value words in the line",
    29: "Grbl supports six work coordinate systems G54-G59; G59.1, G59.2, and G59.3 are not supported",
    30: "the G53 g-code command requires either a G0 seek or G1 feed motion mode to be active",
    31: "there are unused axis words in the block and G80 motion mode cancel is active",
    32: "a G2 or G3 arc was commanded but there are no XYZ axis words in the selected plane",
    33: "the motion command has an invalid target (G2, G3, and G38.2 generate this)",
    34: "a G2 or G3 arc, traced with the radius definition, had a mathematical error",
    35: "a G2 or G3 arc, traced with the offset definition, is missing the IJK offset word",
    36: "there are unused, leftover g-code words that aren't used by any command in the block",
    37: "the G43.1 dynamic tool length offset command cannot apply an offset to an axis other than its configured axis",
    38: "tool number greater than max supported value",
}

ALARMS = {
    1: "hard limit triggered; machine position is likely lost, re-homing is highly recommended",
    2: "soft limit alarm: the motion target exceeds machine travel; machine position retained",
    3: "reset while in motion; machine position is likely lost, re-homing is highly recommended",
    4: "probe fail: the probe is not in the expected initial state before starting the probe cycle",
    5: "probe fail: the probe did not contact the workpiece within the programmed travel",
    6: "homing fail: reset during active homing cycle",
    7: "homing fail: safety door was opened during active homing cycle",
    8: "homing fail: cycle failed to clear limit switch when pulling off",
    9: "homing fail: could not find limit switch within search distance",
}


def error_meaning(code: int) -> str:
    return ERRORS.get(code, f"unknown error {code}")


def alarm_meaning(code: int) -> str:
    return ALARMS.get(code, f"unknown alarm {code}")


class GrblFault(Exception):
    """A job could not go on; ``position`` lines were answered before it stopped."""

    def __init__(self, message: str, position: int = 0) -> None:
        super().__init__(message)
        self.position = position


class GrblError(GrblFault):
    """GRBL refused a line with ``error:N``."""

    def __init__(self, code: int, line_number: int, line: str, position: int) -> None:
        super().__init__(f"line {line_number + 1} '{line}': error:{code} {error_meaning(code)}", position)
        self.code = code
        self.line_number = line_number


class GrblAlarm(GrblFault):
    """GRBL went into alarm; it stays locked until an operator unlocks ($X) or homes ($H)."""

    def __init__(self, code: int, position: int) -> None:
        super().__init__(f"ALARM:{code} {alarm_meaning(code)}; unlock ($X) only after checking the machine", position)
        self.code = code


class GrblGone(GrblFault):
    """The port went away or GRBL reset itself during a job."""


@dataclass(frozen=True)
class GrblStatus:
    """One parsed status report, e.g. ``<Run|MPos:1.000,2.000,0.000|Bf:15,128|FS:500,0>``."""

    state: str
    machine_position: tuple[float, ...] | None = None
    work_position: tuple[float, ...] | None = None
    planner_free: int | None = None
    rx_free: int | None = None
    feed: float | None = None
    spindle: float | None = None
    fields: dict[str, str] = field(default_factory=dict)


def parse_status(line: str) -> GrblStatus | None:
    """Parse a ``<...>`` status report; None for anything else (never raises)."""
    if not (line.startswith("<") and line.endswith(">")):
        return None
    parts = line[1:-1].split("|")
    fields: dict[str, str] = {}
    for part in parts[1:]:
        key, _, value = part.partition(":")
        fields[key] = value

    def numbers(key: str) -> tuple[float, ...] | None:
        try:
            return tuple(float(v) for v in fields[key].split(",")) if key in fields else None
        except ValueError:
            return None

    buffer = numbers("Bf")
    feed_speed = numbers("FS") or numbers("F")
    return GrblStatus(
        state=parts[0],
        machine_position=numbers("MPos"),
        work_position=numbers("WPos"),
        planner_free=int(buffer[0]) if buffer and len(buffer) == 2 else None,
        rx_free=int(buffer[1]) if buffer and len(buffer) == 2 else None,
        feed=feed_speed[0] if feed_speed else None,
        spindle=feed_speed[1] if feed_speed and len(feed_speed) > 1 else None,
        fields=fields,
    )


def clean_line(line: str) -> str:
    """Strip comments and whitespace the way a sender should before counting bytes."""
    line = re.sub(r"\(.*?\)", "", line.split(";", 1)[0])
    return "".join(line.split()).upper()


@dataclass
class StreamReport:
    """What a job did: for the CLI's report and for resuming."""

    lines: int = 0
    bytes: int = 0
    errors: int = 0
    resends: int = 0
    seconds: float = 0.0
    position: int = 0


class Grbl(TextDevice):
    """A GRBL 1.1 controller on a serial port."""

    gone = GrblGone

    def __init__(self, port: str, baudrate: int = 115200, rx_buffer: int = RX_BUFFER) -> None:
        super().__init__(port, baudrate)
        self.rx_buffer = rx_buffer
        self.version: str | None = None
        self.messages: list[str] = []  # [MSG:...] and other feedback, for the operator
        self.alarm: int | None = None
        self._answers: deque[str] = deque()  # ok, error:N, ALARM:N, RESET: in arrival order
        self._status: GrblStatus | None = None
        self._status_seen = 0
        self._banners = 0
        self._owed = False  # a job stopped with lines unanswered: resync before the next

    def open(self, timeout: float = 5.0) -> str:
        """Open the port, make sure GRBL answers, and learn its version and buffer size ($I).

        A board that resets on open (Arduino DTR) sends its banner; one that does not (a
        reconnect mid-job) answers ``?``. Neither is reset by this: a soft reset would stop
        a running job with ALARM:3.
        """
        self._open_port(self._on_line)
        deadline = time.monotonic() + timeout
        with self._lock:
            while not (self._banners or self._status_seen or self._gone) and time.monotonic() < deadline:
                self._write(STATUS_QUERY)
                self._lock.wait(0.25)
            if self._gone:
                raise GrblGone(self._gone)
            if not (self._banners or self._status_seen):
                raise GrblGone(f"{self.port_name}: no answer from GRBL; is this a GRBL 1.1 controller at {self.baudrate} baud?")
        self.stream(["$I"], timeout=timeout)  # build info; allowed in Idle and Alarm
        for message in self.messages:
            if (version := re.match(r"\[VER:(\d+\.\d+\w*)", message)) is not None:
                self.version = version.group(1)
            if message.startswith("[OPT:"):
                options = message[5:-1].split(",")
                if len(options) >= 3 and options[2].isdigit():
                    self.rx_buffer = int(options[2])
        if self.version and not self.version.startswith("1."):
            raise GrblGone(f"{self.port_name}: GRBL {self.version} found; this streamer speaks GRBL 1.1")
        return self.version or ""

    # -- real-time commands: straight to the wire, never counted --------------------
    def realtime(self, command: bytes) -> None:
        if command not in (STATUS_QUERY, FEED_HOLD, CYCLE_START, SOFT_RESET):
            raise ValueError(f"{command!r} is not a GRBL real-time command")
        self._write(command)

    def status(self, timeout: float = 5.0) -> GrblStatus:
        with self._lock:
            seen = self._status_seen
        self._write(STATUS_QUERY)
        with self._lock:
            if not self._lock.wait_for(lambda: self._status_seen > seen or self._gone, timeout):
                raise GrblGone(f"{self.port_name}: no status report within {timeout} s")
            if self._gone:
                raise GrblGone(self._gone)
            assert self._status is not None
            return self._status

    def feed_hold(self) -> None:
        self.realtime(FEED_HOLD)

    def resume(self) -> None:
        self.realtime(CYCLE_START)

    def soft_reset(self, timeout: float = 5.0) -> None:
        with self._lock:
            banners = self._banners
            self._answers.clear()
        self._write(SOFT_RESET)
        with self._lock:
            self._lock.wait_for(lambda: self._banners > banners or self._gone, timeout)

    def unlock(self) -> None:
        """``$X``: clear an alarm lock. Only on an operator's request."""
        with self._lock:
            self.alarm = None
        self.command("$X")

    def command(self, line: str, timeout: float = 30.0) -> None:
        """Send one line and wait for its answer (raises GrblError on error:N)."""
        report = self.stream([line], timeout=timeout, counting=False)
        if report.errors:
            raise GrblFault(f"{line}: refused")

    def check(self, lines: Sequence[str], timeout: float = 60.0) -> list[GrblError]:
        """Run the job through GRBL's check mode ($C): every line parsed, nothing moves."""
        errors: list[GrblError] = []
        self.command("$C")
        try:
            self.stream(lines, stop_on_error=False, on_error=errors.append, timeout=timeout)
        finally:
            with self._lock:
                banners = self._banners
            self.command("$C")  # leaving check mode soft-resets GRBL
            with self._lock:
                self._lock.wait_for(lambda: self._banners > banners or self._gone, 5)
        return errors

    def stream(
        self,
        lines: Iterable[str],
        start: int = 0,
        counting: bool = True,
        stop_on_error: bool = True,
        on_error: Callable[[GrblError], None] | None = None,
        on_progress: Callable[[int], None] | None = None,
        timeout: float = 60.0,
    ) -> StreamReport:
        """Stream a job from line ``start``; ``counting=False`` waits for each answer (ping-pong)."""
        job = [clean_line(line) for line in lines]
        report = StreamReport(position=start)
        begun = time.monotonic()
        in_flight: deque[tuple[int, int]] = deque()  # (index, bytes) not yet answered
        index = start
        if self._owed:
            self._resync(timeout)
        with self._lock:
            self._answers.clear()
        try:
            self._run_job(job, report, index, in_flight, counting, stop_on_error, on_error, on_progress, timeout)
        except GrblFault as fault:
            fault.position = report.position  # lines answered before the fault, wherever it came from
            self._owed = bool(in_flight)
            raise
        report.seconds = time.monotonic() - begun
        return report

    def _run_job(
        self,
        job: list[str],
        report: StreamReport,
        index: int,
        in_flight: deque[tuple[int, int]],
        counting: bool,
        stop_on_error: bool,
        on_error: Callable[[GrblError], None] | None,
        on_progress: Callable[[int], None] | None,
        timeout: float,
    ) -> None:
        used = 0
        stopping: GrblError | None = None
        while in_flight or (index < len(job) and stopping is None):
            can_send = index < len(job) and stopping is None
            if can_send:
                size = len(job[index]) + 1
                if size > min(MAX_LINE, self.rx_buffer):
                    raise GrblFault(f"line {index + 1} is {size} bytes, longer than GRBL accepts ({MAX_LINE})", report.position)
                room = used + size <= self.rx_buffer if counting else not in_flight
                if room:
                    self._write(job[index].encode("ascii") + b"\n")
                    in_flight.append((index, size))
                    used += size
                    report.bytes += size
                    index += 1
                    continue
            answer = self._next_answer(timeout, report.position)
            done_index, size = in_flight.popleft()
            used -= size
            report.lines += 1
            report.position = done_index + 1
            if answer.startswith("error:"):
                report.errors += 1
                code = int(answer[6:]) if answer[6:].isdigit() else -1
                error = GrblError(code, done_index, job[done_index], report.position)
                log.warning("%s: %s", self.port_name, error)
                if on_error is not None:
                    on_error(error)
                if stop_on_error and stopping is None:
                    stopping = error
            if on_progress is not None:
                on_progress(report.position)
        if stopping is not None:
            stopping.position = report.position
            raise stopping

    def _resync(self, timeout: float) -> None:
        """Skip answers still owed to a stopped job: ask $I and read up to its answer.

        A critical alarm flushes GRBL's RX buffer, possibly mid-line, and lines sent before the
        host saw the alarm are still answered error:9: neither may be taken for this job's answers.
        """
        with self._lock:
            self._answers.clear()
        self._write(b"\n$I\n")  # the newline ends any fragment a flushed buffer left behind
        with self._lock:
            while True:
                if not self._lock.wait_for(lambda: self._answers or self._gone, timeout):
                    raise GrblGone(f"{self.port_name}: no answer to $I within {timeout} s")
                if self._gone:
                    raise GrblGone(self._gone)
                if self._answers.popleft() == "VER":
                    break
            self._lock.wait_for(lambda: self._answers or self._gone, timeout)
            if self._answers:
                self._answers.popleft()  # the ok of $I
        self._owed = False

    # -- internals --------------------------------------------------------------
    def _next_answer(self, timeout: float, position: int) -> str:
        """The next ok/error:N, in arrival order; an ALARM or a reset on the way raises."""
        with self._lock:
            while True:
                if not self._lock.wait_for(lambda: self._answers or self._gone, timeout):
                    raise GrblGone(f"{self.port_name}: no answer within {timeout} s", position)
                if not self._answers:
                    raise GrblGone(self._gone or "gone", position)
                answer = self._answers.popleft()
                if answer != "VER":  # a resync marker, not an answer to a line
                    break
        if answer.startswith("ALARM:"):
            raise GrblAlarm(self.alarm if self.alarm is not None else -1, position)
        if answer == "RESET":
            raise GrblGone(f"{self.port_name}: GRBL reset during the job (banner seen); position may be lost", position)
        return answer

    def _on_line(self, line: str) -> None:
        with self._lock:
            if line == "ok" or line.startswith("error:"):
                self._answers.append(line)
            elif line.startswith("<"):
                status = parse_status(line)
                if status is not None:
                    self._status = status
                    self._status_seen += 1
            elif line.startswith("ALARM:"):
                code = line[6:]
                self.alarm = int(code) if code.isdigit() else -1
                self._answers.append(line)
                log.error("%s: %s", self.port_name, GrblAlarm(self.alarm, 0))
            elif line.startswith("[VER:"):
                self.messages.append(line)
                self._answers.append("VER")
            elif (banner := BANNER.match(line)) is not None:
                self.version = banner.group(1) + banner.group(2)
                self._banners += 1
                self._answers.append("RESET")
            else:
                self.messages.append(line)
                log.info("%s: %s", self.port_name, line)
            self._lock.notify_all()
