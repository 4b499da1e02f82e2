"""GRBL 1.1 streaming (lasers, CNC): character counting, what has really run, and a safe stop.

GRBL answers every line with ``ok`` or ``error:N`` once it has taken the line out of its
128-byte receive buffer and parsed it into its 15-block planner: an ``ok`` says a line is
planned, not that it has run. Counting the bytes of the lines not yet answered, the host
keeps that buffer as full as it can without ever overflowing it.

What has run is learned while waiting for answers: the streamer polls ``?`` (every
``poll_interval``) and folds each status report into a ``Progress``: with ``Bf:`` in the
report ($10=3) the planner's free blocks say how many of the answered moves still wait;
lines GRBL answers only once its planner is empty (M3/M4/M5 changes, G4, M0/M2/M30) and an
Idle machine with nothing owed say that everything before them has run. ``executed`` is the
first line not known to have run: where a resume must start. A machine that keeps answering
``?`` is busy, never faulty; only silence for ``timeout`` seconds is ``GrblGone``.

On any fault during a job the streamer calls ``on_fault`` first (the node drops its laser
relay), then feed-holds (``!``), waits for the hold to complete and soft-resets (0x18): the
reset turns the spindle/laser off and flushes the planner and the RX buffer, and from a
completed hold it keeps the position (no ALARM:3). A ``M5`` line would not do: GRBL parses
no line while held, and it would queue behind the job's own lines.

A resumed job (``start > 0``) is preceded by ``modal_prelude``: the units, distance mode,
coordinate system, plane, feed, coolant and laser mode and power in force at that line,
which a reset (or a power cut) has lost, and a laser-off rapid back to where the job stopped.
The parser state and what-has-run bookkeeping are pure: firmware_bridge/gcode.py.

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

from firmware_bridge.gcode import (  # noqa: F401  (re-exported: the bridge's GRBL API)
    MOVING,
    PLANNER_BLOCKS,
    SEGMENT_BLOCKS,
    SEGMENT_LEAD,
    SETTLED,
    WORD,
    GrblStatus,
    LineEffect,
    ModalState,
    Progress,
    clean_line,
    modal_prelude,
    parse_status,
)
from firmware_bridge.textport import TextDevice

log = logging.getLogger(__name__)

RX_BUFFER = 128
MAX_LINE = 80  # GRBL's LINE_BUFFER_SIZE
STATUS_QUERY, FEED_HOLD, CYCLE_START, SOFT_RESET = b"?", b"!", b"~", b"\x18"
BANNER = re.compile(r"^Grbl (\d+\.\d+)(\w*)")
SETTING = re.compile(r"^\$(\d+)=(.*)$")
# Ends whatever partial line another program left in GRBL's line buffer, and makes GRBL refuse
# it: ")" closes a "(" comment, "$" is no G-code word nor a complete $ command after anything.
SYNC_LINE = b")$\n"

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
    """A job could not go on.

    ``position``: job lines answered (acknowledged) before it stopped; ``executed``: the first
    line not known to have run, where a resume must start; ``refused``: every line answered
    ``error:N``."""

    def __init__(self, message: str, position: int = 0, executed: int | None = None) -> None:
        super().__init__(message)
        self.position = position
        self.executed = position if executed is None else executed
        self.refused: list[int] = []


class GrblError(GrblFault):
    """GRBL refused a line with ``error:N`` (``line_number`` -1: a line of the resume prelude)."""

    def __init__(self, code: int, line_number: int, line: str, position: int) -> None:
        where = f"line {line_number + 1}" if line_number >= 0 else "resume prelude line"
        super().__init__(f"{where} '{line}': error:{code} {error_meaning(code)}", position)
        self.code = code
        self.line_number = line_number


class GrblAlarm(GrblFault):
    """GRBL went into alarm; it stays locked until an operator unlocks ($X) or homes ($H)."""

    def __init__(self, code: int, position: int) -> None:
        super().__init__(f"ALARM:{code} {alarm_meaning(code)}; unlock ($X) only after checking the machine", position)
        self.code = code


class GrblGone(GrblFault):
    """The port went away, GRBL went silent, or GRBL reset itself during a job."""


class GrblReset(GrblGone):
    """GRBL reset itself during a job (its banner came): the reset stopped the laser already."""


@dataclass
class StreamReport:
    """What a job did: for the CLI's report and for resuming.

    ``position``: lines acknowledged; ``executed``: lines known to have run (all of them when
    ``stream`` returns); ``refused``: lines answered ``error:N`` (with ``stop_on_error=False``)."""

    lines: int = 0
    bytes: int = 0
    errors: int = 0
    resends: int = 0
    seconds: float = 0.0
    position: int = 0
    executed: int = 0
    refused: list[int] = field(default_factory=list)


# -- the controller ---------------------------------------------------------------------------
@dataclass
class _Stream:
    """One ``stream`` call in flight: its lines in sending order and where each one is."""

    lines: list[tuple[int | None, str]]  # (job index or None for a meta line, text)
    report: StreamReport
    progress: Progress
    stop_on_error: bool
    on_error: Callable[[GrblError], None] | None
    on_progress: Callable[[int], None] | None
    in_flight: deque[int] = field(default_factory=deque)  # positions in ``lines``, not yet answered
    sent: int = 0
    used: int = 0  # bytes of unanswered lines: what sits in GRBL's RX buffer
    answers_base: int = 0
    sent_base: int = 0
    epoch: int = 0  # resets and alarms seen before it began: reports after another one are void

    def dwell_owed(self) -> float:
        """Seconds of G4 among the lines not yet answered (GRBL is Idle while it dwells)."""
        total = 0.0
        for position in self.in_flight:
            words = WORD.findall(self.lines[position][1])
            if ("G", 4.0) in [(letter, float(v)) for letter, v in words]:
                total += sum(float(v) for letter, v in words if letter == "P")
        return total


class Grbl(TextDevice):
    """A GRBL 1.1 controller on a serial port."""

    gone = GrblGone
    poll_interval = 0.25  # s between "?" while waiting; GRBL's guide asks for at most 5 Hz
    hold_limit = 60.0  # s a feed hold may take to bring the machine to a stop before the reset goes anyway

    def __init__(self, port: str, baudrate: int = 115200, rx_buffer: int = RX_BUFFER) -> None:
        super().__init__(port, baudrate)
        self.rx_buffer = rx_buffer
        self.planner_blocks = PLANNER_BLOCKS
        self.version: str | None = None
        self.messages: list[str] = []  # [MSG:...] and other feedback, for the operator
        self.alarm: int | None = None
        self.parser_state: str | None = None  # the last $G report, [GC:...]
        self.buffer_reports: bool | None = None  # do status reports carry Bf: ($10 bit 2)?
        self.step_mm = (0.1, 0.1, 0.1)  # one motor step per axis, from $100..$102 when known
        self._answers: deque[str] = deque()  # ok, error:N, ALARM:N and markers, in arrival order
        self._reports: deque[tuple[GrblStatus, int, int, int, float]] = deque(maxlen=256)
        self._settings: dict[int, str] = {}
        self._status: GrblStatus | None = None
        self._status_seen = 0
        self._banners = 0
        self._alarms = 0
        self._answered_total = 0  # every ok/error:N ever received
        self._sent_total = 0  # every line ever sent
        self._heard_at = 0.0
        self._idle_since: float | None = None
        self._next_poll = 0.0
        self._owed = False  # a job stopped with lines unanswered: resync before the next

    def open(self, timeout: float = 5.0) -> str:
        """Open the port, make sure GRBL answers, learn its version, buffers and settings.

        A board that resets on open (Arduino DTR) sends its banner; one that does not (a
        reconnect mid-job) answers ``?``. Neither is reset by this: a soft reset would stop
        a running job with ALARM:3. A partial line another program left in GRBL's line buffer
        is ended and refused first (``SYNC_LINE``), so it can neither run nor spoil ``$I``.
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
        if self._sync(timeout) != "ok":
            state = self._status.state if self._status else "?"
            log.warning("%s: GRBL refused $I (state %s, busy); version from its banner only", self.port_name, state)
        for message in self.messages:
            if (version := re.match(r"\[VER:(\d+\.\d+\w*)", message)) is not None:
                self.version = version.group(1)
            if message.startswith("[OPT:"):
                options = message[5:-1].split(",")
                if len(options) >= 3 and options[1].isdigit() and options[2].isdigit():
                    self.planner_blocks, self.rx_buffer = int(options[1]), int(options[2])
        if self.version and not self.version.startswith("1."):
            raise GrblGone(f"{self.port_name}: GRBL {self.version} found; this streamer speaks GRBL 1.1")
        self._learn_settings(timeout)
        return self.version or ""

    def _learn_settings(self, timeout: float) -> None:
        """Motor steps (to tell a move from none) and whether reports carry ``Bf:`` ($10)."""
        try:
            settings = self.settings(timeout)
        except GrblFault as fault:  # busy (a cycle or a hold): keep the cautious defaults
            log.info("%s: settings not read (%s)", self.port_name, fault)
            return
        try:
            self.step_mm = tuple(1.0 / float(settings[n]) for n in (100, 101, 102))  # type: ignore[assignment]
            self.buffer_reports = bool(int(float(settings[10])) & 2)
        except (KeyError, ValueError, ZeroDivisionError):
            return
        if not self.buffer_reports:
            log.warning(
                "%s: $10=%s: status reports carry no Bf:, so a line is known to have run only at a sync "
                "(M3/M4/M5, G4, M2) or when GRBL is idle; $10=3 adds Bf: and resume points a few lines "
                "behind the machine", self.port_name, settings[10],
            )

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

    def resume(self, timeout: float | None = None) -> None:
        """``~``, once a feed hold has completed.

        GRBL 1.1 ignores a cycle start while it still decelerates into a hold (``Hold:1``:
        protocol.c resumes only IDLE or a hold with SUSPEND_HOLD_COMPLETE), so a ``~`` sent then
        is lost and the job stays held. Wait (at most ``hold_limit`` s) for the hold to complete."""
        limit = self.hold_limit if timeout is None else timeout
        began = time.monotonic()
        try:
            while self.status(min(5.0, limit)).state == "Hold:1" and time.monotonic() - began < limit:
                time.sleep(0.05)
        except GrblGone:
            pass  # no report: send it anyway, it is all that can be done
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
        """Send one line, wait until it has run; a refusal raises GrblError (GRBL is not stopped)."""
        refused: list[GrblError] = []
        self.stream([line], timeout=timeout, counting=False, stop_on_error=False, on_error=refused.append)
        if refused:
            raise refused[0]

    def settings(self, timeout: float = 5.0) -> dict[int, str]:
        """``$$``: every setting, number -> value as GRBL prints it (refused during a cycle or a hold)."""
        with self._lock:
            self._settings.clear()
        self.command("$$", timeout)
        with self._lock:
            return dict(self._settings)

    def check(self, lines: Sequence[str], timeout: float = 60.0) -> list[GrblError]:
        """Run the job through GRBL's check mode ($C): every line parsed, nothing moves."""
        errors: list[GrblError] = []
        self.command("$C")
        try:
            self.stream(lines, stop_on_error=False, on_error=errors.append, timeout=timeout)
        except BaseException:
            try:
                self._leave_check_mode()  # unless the fault's reset has left it already
            except GrblFault as fault:
                log.warning("%s: could not leave check mode: %s", self.port_name, fault)
            raise
        self._leave_check_mode()
        return errors

    def _leave_check_mode(self) -> None:
        if self.status().state != "Check":
            return
        with self._lock:
            banners = self._banners
        self.command("$C")  # leaving check mode soft-resets GRBL
        with self._lock:
            self._lock.wait_for(lambda: self._banners > banners or self._gone, 5)

    def stream(
        self,
        lines: Iterable[str],
        start: int = 0,
        counting: bool = True,
        stop_on_error: bool = True,
        on_error: Callable[[GrblError], None] | None = None,
        on_progress: Callable[[int], None] | None = None,
        timeout: float = 10.0,
        replay_modal: bool = True,
        on_fault: Callable[[], None] | None = None,
    ) -> StreamReport:
        """Stream a job from line ``start`` and return once every line has run.

        ``counting=False`` waits for each answer (ping-pong). From ``start > 0`` the job's modal
        state at that line is sent first (``modal_prelude``) unless ``replay_modal=False``.
        ``timeout``: seconds GRBL may stay silent (it is asked ``?`` several times a second), not
        how long a line may take. On a fault, ``on_fault`` is called first, then GRBL is
        feed-held and soft-reset (laser off, planner flushed); the GrblFault says how many lines
        were acknowledged (``position``), which had run (``executed``) and which were ``refused``.
        """
        job = [clean_line(line) for line in lines]
        report = StreamReport(position=start, executed=start)
        begun = time.monotonic()
        run: _Stream | None = None
        try:
            meta = ["$G", *self._prelude(job, start, replay_modal)]
            for number, line in [(-1, line) for line in meta] + list(enumerate(job))[start:]:
                where = f"line {number + 1}" if number >= 0 else f"resume prelude line '{line}'"
                if not line.isascii():  # GRBL would take bytes 0x80-0xFF as real-time overrides
                    raise GrblFault(f"{where} has a non-ASCII character outside a comment", start)
                if len(line) + 1 > min(MAX_LINE, self.rx_buffer):
                    raise GrblFault(f"{where} is {len(line) + 1} bytes, longer than GRBL accepts ({MAX_LINE})", start)
            progress = Progress(start, len(meta), ModalState.unknown(self.step_mm), self.planner_blocks)
            run = _Stream([(None, line) for line in meta] + [(i, job[i]) for i in range(start, len(job))],
                          report, progress, stop_on_error, on_error, on_progress)
            self._begin(run, timeout)
            self._send_all(run, counting, timeout)
            while not progress.finished:  # every line answered: wait until the planner has run dry
                self._pump(run, timeout)
            report.executed = progress.executed
        except BaseException as exc:  # a fault, or anything else: the laser must not stay on
            self._after_fault(exc, run, on_fault, timeout)
            if isinstance(exc, GrblFault):
                exc.position = report.position
                exc.executed = run.progress.executed if run is not None else start
                exc.refused = list(report.refused)
                report.executed = exc.executed
            raise
        report.seconds = time.monotonic() - begun
        return report

    @staticmethod
    def _prelude(job: list[str], start: int, replay_modal: bool) -> list[str]:
        if start <= 0 or not replay_modal:
            return []
        try:
            return [clean_line(line) for line in modal_prelude(job, start)]
        except ValueError as exc:
            raise GrblFault(f"cannot resume at line {start + 1}: {exc}", start) from exc

    def _begin(self, run: _Stream, timeout: float) -> None:
        if self._owed:
            self._sync(timeout)
        with self._lock:
            self._answers.clear()
            self._reports.clear()
            run.answers_base, run.sent_base = self._answered_total, self._sent_total
            run.epoch = self._banners + self._alarms
            self._heard_at = self._next_poll = time.monotonic()
            self._idle_since = None

    def _send_all(self, run: _Stream, counting: bool, timeout: float) -> None:
        while run.sent < len(run.lines) or run.in_flight:
            if run.sent < len(run.lines):
                text = run.lines[run.sent][1]
                size = len(text) + 1
                if (run.used + size <= self.rx_buffer) if counting else not run.in_flight:
                    with self._lock:
                        self._sent_total += 1  # before the write: a report meanwhile sees it owed
                    self._write(text.encode("ascii") + b"\n")
                    run.in_flight.append(run.sent)
                    run.used += size
                    run.report.bytes += size
                    run.sent += 1
                    continue
            answer = self._pump(run, timeout)
            if answer is not None:
                self._take_answer(run, answer)

    def _take_answer(self, run: _Stream, answer: str, late: bool = False) -> None:
        """Account for the next answer; ``late``: one taken while stopping, callbacks not called."""
        position = run.in_flight.popleft()
        index, text = run.lines[position]
        run.used -= len(text) + 1
        ok = not answer.startswith("error:")
        with self._lock:
            parser_state = self.parser_state
        run.progress.answer(text, ok, parser_state)
        run.report.executed = run.progress.executed
        code = int(answer[6:]) if answer[6:].isdigit() else -1
        if index is None:
            if not ok and not late:  # the state a resumed job needs could not be set: never run the job
                raise GrblError(code, -1, text, run.report.position)
            return
        report = run.report
        report.lines += 1
        report.position = index + 1
        if not ok:
            report.errors += 1
            report.refused.append(index)
            error = GrblError(code, index, text, report.position)
            log.warning("%s: %s", self.port_name, error)
            if late:
                return
            if run.on_error is not None:
                run.on_error(error)
            if run.stop_on_error:
                raise error
        if run.on_progress is not None and not late:
            run.on_progress(report.position)

    def _pump(self, run: _Stream, timeout: float) -> str | None:
        """Fold in what GRBL reported, poll ``?`` when due, wait a little; the next answer, if any.

        Raises GrblAlarm on ALARM:N, GrblGone on a reset (banner), a lost port, or no word from
        GRBL for ``timeout`` seconds, and GrblFault when GRBL sits Idle with lines unanswered
        longer than ``timeout`` plus their dwells (bytes lost on the line)."""
        with self._lock:
            self._take_reports(run)
            while self._answers:
                answer = self._answers.popleft()
                if answer in ("VER", "GC"):  # markers of $I and $G, not answers to a line
                    continue
                if answer.startswith("ALARM:"):
                    raise GrblAlarm(self.alarm if self.alarm is not None else -1, run.report.position)
                if answer == "RESET":
                    raise GrblReset(f"{self.port_name}: GRBL reset during the job (banner seen); position may be lost")
                self._idle_since = None
                return answer
            if self._gone:
                raise GrblGone(self._gone)
            now = time.monotonic()
            if now - self._heard_at > timeout:
                raise GrblGone(f"{self.port_name}: no status report for {timeout:g} s; GRBL hung or the cable is broken")
            if self._idle_since is not None and now - self._idle_since > timeout + run.dwell_owed():
                owed = len(run.in_flight)
                raise GrblFault(f"{self.port_name}: GRBL idle for {timeout:g} s with {owed} line(s) unanswered; bytes lost?")
            if now >= self._next_poll:
                self._next_poll = now + self.poll_interval
                self._write(STATUS_QUERY)
            self._lock.wait(max(0.001, self._next_poll - now))
        return None

    def _take_reports(self, run: _Stream) -> None:
        """Status reports, in order, once the answers that came before each have been taken."""
        while self._reports:
            status, answered, sent, epoch, at = self._reports[0]
            if answered - run.answers_base > run.progress.answered:
                return  # an answer before this report is still to be taken
            self._reports.popleft()
            if epoch != run.epoch:
                continue  # after a reset or an alarm: the planner was flushed, not run
            owed = sent - answered
            run.progress.status(status, answered - run.answers_base, sent - run.sent_base, at)
            run.report.executed = run.progress.executed
            if status.state == "Idle" and owed > 0:
                self._idle_since = self._idle_since or at
            else:
                self._idle_since = None

    # -- after a fault: laser off, planner flushed, nothing left owed ------------------------
    def _after_fault(self, exc: BaseException, run: _Stream | None, on_fault: Callable[[], None] | None,
                     timeout: float) -> None:
        if on_fault is not None:
            try:
                on_fault()
            except Exception:
                log.exception("%s: on_fault failed; stopping GRBL anyway", self.port_name)
        if run is None or run.sent == 0:
            return  # nothing was sent: nothing of this job can be running
        reset_seen = isinstance(exc, GrblReset)
        if self._gone or reset_seen:
            self._owed = bool(run.in_flight) and not reset_seen
            return  # a dead port cannot be told anything; a reset already stopped the laser
        try:
            if not isinstance(exc, GrblAlarm):  # an alarm has stopped everything already
                self.realtime(FEED_HOLD)
                self._await_stop(run, timeout)
            with self._lock:
                banners = self._banners
            self.realtime(SOFT_RESET)
            with self._lock:
                self._lock.wait_for(lambda: self._banners > banners or self._gone, min(timeout, 5.0))
                reset = self._banners > banners
                self._answers.clear()
            self._owed = not reset
            log.warning("%s: job stopped: feed hold, then soft reset (laser off, planner flushed)", self.port_name)
        except GrblFault as fault:
            self._owed = True
            log.error("%s: could not stop GRBL after the fault: %s", self.port_name, fault)

    def _await_stop(self, run: _Stream, timeout: float) -> None:
        """Wait for the feed hold to complete (or the machine to be idle), taking late answers."""
        began = last_report = time.monotonic()
        silence = min(timeout, 2.0)
        with self._lock:
            seen = self._status_seen
        while time.monotonic() - began < self.hold_limit and time.monotonic() - last_report < silence:
            self._write(STATUS_QUERY)
            with self._lock:
                if self._status_seen == seen and not self._gone:
                    self._lock.wait(0.1)
                if self._gone:
                    return
                while self._answers and run.in_flight:  # lines GRBL answered before it held
                    answer = self._answers.popleft()
                    if answer.startswith(("ok", "error:")):
                        self._take_answer(run, answer, late=True)
                self._take_reports(run)
                if self._status_seen > seen:
                    seen, last_report = self._status_seen, time.monotonic()
                    assert self._status is not None
                    if self._status.state in SETTLED or self._status.state.startswith("Alarm"):
                        return
        log.error("%s: the feed hold did not complete; resetting anyway (ALARM:3 likely)", self.port_name)

    def _sync(self, timeout: float) -> str | None:
        """End any stale partial line, skip every answer still owed, and ask ``$I`` and ``$G``.

        ``$G`` is answered in every state, so its ``[GC:...]`` marks the end of what is owed;
        the answer before it is that of ``$I`` (``error:8`` while GRBL is busy), returned."""
        with self._lock:
            self._answers.clear()
        self._write(SYNC_LINE + b"$I\n$G\n")
        last: str | None = None
        with self._lock:
            while True:
                if not self._lock.wait_for(lambda: self._answers or self._gone, timeout):
                    raise GrblGone(f"{self.port_name}: no answer to $I/$G within {timeout} s")
                if self._gone:
                    raise GrblGone(self._gone)
                answer = self._answers.popleft()
                if answer == "GC":
                    break
                if answer.startswith(("ok", "error:")):
                    last = answer
            self._lock.wait_for(lambda: self._answers or self._gone, timeout)
            if self._answers:
                self._answers.popleft()  # the ok of $G
        self._owed = False
        return last

    # -- the reader thread --------------------------------------------------------------
    def _on_line(self, line: str) -> None:
        with self._lock:
            self._heard_at = time.monotonic()
            if line == "ok" or line.startswith("error:"):
                self._answered_total += 1
                self._answers.append(line)
            elif line.startswith("<"):
                status = parse_status(line)
                if status is not None:
                    self._status = status
                    self._status_seen += 1
                    epoch = self._banners + self._alarms
                    self._reports.append((status, self._answered_total, self._sent_total, epoch, self._heard_at))
            elif line.startswith("ALARM:"):
                code = line[6:]
                self.alarm = int(code) if code.isdigit() else -1
                self._alarms += 1
                self._answers.append(line)
                log.error("%s: %s", self.port_name, GrblAlarm(self.alarm, 0))
            elif line.startswith("[VER:"):
                self.messages.append(line)
                self._answers.append("VER")
            elif line.startswith("[GC:"):
                self.parser_state = line
                self._answers.append("GC")
            elif (setting := SETTING.match(line)) is not None:
                self._settings[int(setting.group(1))] = setting.group(2)
            elif (banner := BANNER.match(line)) is not None:
                self.version = banner.group(1) + banner.group(2)
                self._banners += 1
                self._answers.append("RESET")
            else:
                self.messages.append(line)
                log.info("%s: %s", self.port_name, line)
            self._lock.notify_all()
