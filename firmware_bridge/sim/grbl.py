"""A GRBL 1.1h on a pty: RX buffer, line buffer, 15-block planner, parser state, real-time commands.

What a host sees, modelled on the firmware (gnea/grbl 1.1h, protocol.c, gcode.c, system.c):

* Lines wait in the 128-byte RX buffer and are answered ``ok`` when they have been parsed into
  the planner, not when they have run: the planner holds 15 blocks, and a line that finds it
  full stays in the RX buffer unanswered. A host that overruns the buffer loses bytes
  (counted in ``overflowed``; real GRBL runs a mangled line).
* Bytes without a newline stay in the line buffer, across host connections, until a newline
  ends them (a partial line another program left behind joins the next line sent).
* Motion blocks run one after the other, ``distance / feed`` of simulated time times
  ``time_scale``; a cycle starts when no complete line is waiting or the planner is full.
* Spindle/laser and coolant changes, a changed ``S`` outside a laser move, ``G4`` dwells and
  ``M0/M2/M30`` wait for the planner to empty before they are answered (GRBL's buffer sync);
  a dwell then really waits, in state Idle.
* The parser state (units, distance mode, G54..G59, plane, feed, spindle, S, coolant, motion
  mode) is lost on every reset: a ``G1`` before any ``F`` is refused with ``error:22``.
* Status reports carry ``Bf:`` (planner blocks free, RX bytes free) only when ``$10`` has
  bit 2 set, as on the firmware; ``$10=1`` is GRBL's default. ``A:`` shows the spindle/laser
  (S = M3, C = M4) and coolant whenever one is on.
* Feed hold (``!``) decelerates (``Hold:1``) and then holds (``Hold:0``); while held the main
  loop parses nothing. A soft reset (0x18) stops the spindle/laser, flushes the planner and
  the RX buffer, and raises ALARM:3 only if the machine was moving (Run, or still decelerating
  into a hold): a reset from ``Hold:0`` keeps the position.
* A hard or soft limit (ALARM:1/2) blocks everything, status reports included, until a reset;
  the alarm lock then stays until ``$X``.
* ``$`` commands other than ``$G``, ``$C``, ``$X`` and ``$$`` need Idle or Alarm (``error:8``);
  ``$$`` is refused during a cycle or a hold.

Simplifications: a block leaves the planner when it has run (the firmware's stepper takes it
out up to a few segments, about 50 ms, earlier); no acceleration; arcs are straight moves; work
coordinates equal machine coordinates; soft limits are the ``travel`` box whatever ``$20`` says.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from firmware_bridge.sim.terminal import PtyDevice

BANNER = "Grbl 1.1h ['$' for help]"
UNLOCK_HINT = "[MSG:'$H'|'$X' to unlock]"
HELP = "[HLP:$$ $# $G $I $N $x=val $Nx=line $J=line $SLP $C $X $H ~ ! ? ctrl-x]"
LINE_BUFFER = 80
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
LETTERS = set("FGIJKLMNPRSTXYZ")
RAPID = 5000.0  # mm/min, the simulated G0 rate
MOVING = ("Run", "Jog", "Home", "Hold:1")

# GRBL 1.1h defaults.h, but a laser: $32=1 (laser mode) and homing enabled ($22=1)
DEFAULT_SETTINGS = {
    0: "10", 1: "25", 2: "0", 3: "0", 4: "0", 5: "0", 6: "0", 10: "1", 11: "0.010", 12: "0.002",
    13: "0", 20: "0", 21: "0", 22: "1", 23: "0", 24: "25.000", 25: "500.000", 26: "250", 27: "1.000",
    30: "1000", 31: "0", 32: "1", 100: "250.000", 101: "250.000", 102: "250.000", 110: "500.000",
    111: "500.000", 112: "500.000", 120: "10.000", 121: "10.000", 122: "10.000", 130: "200.000",
    131: "200.000", 132: "200.000",
}


@dataclass
class Modal:
    """GRBL's parser state (gc_state); a reset brings back these defaults (gc_init)."""

    motion: int = 0
    coordinates: int = 54
    plane: int = 17
    inches: bool = False
    absolute: bool = True
    inverse_time: bool = False
    spindle: int = 5
    speed: float = 0.0
    coolant: set[int] = field(default_factory=set)  # 7 mist, 8 flood
    feed: float = 0.0  # mm/min; 0 = not set

    def report(self) -> str:
        """``$G``: ``[GC:G0 G54 G17 G21 G90 G94 M5 M9 T0 F0 S0]``."""
        coolant = "M8" if self.coolant else "M9"
        feed = self.feed / 25.4 if self.inches else self.feed
        return (
            f"[GC:G{self.motion} G{self.coordinates} G{self.plane} G{20 if self.inches else 21} "
            f"G{90 if self.absolute else 91} G{93 if self.inverse_time else 94} M{self.spindle} {coolant} "
            f"T0 F{feed:g} S{self.speed:g}]"
        )


@dataclass
class Block:
    """One planned motion, with the laser state it runs with."""

    target: tuple[float, float, float]
    seconds: float
    line: str
    number: int  # the accepted line it came from (index into ``executed``)
    feed: float = 0.0
    spindle: int = 5
    power: float = 0.0


@dataclass
class Waiting:
    """A line the main loop is stuck on: it runs once the planner is empty (GRBL's buffer sync)."""

    line: str
    run: Callable[[], str]  # what the line does once the planner is empty; returns its answer
    dwell: float = 0.0  # seconds to wait after the sync (G4), already scaled
    until: float | None = None  # when a started dwell ends
    pause: bool = False  # M0: feed hold after the sync, answered when resumed
    held: bool = False


class SimulatedGrbl(PtyDevice):
    """GRBL 1.1h as a host sees it through the USB serial chip."""

    name = "grbl"

    def __init__(
        self,
        rx_buffer: int = 128,
        planner_blocks: int = 16,
        time_scale: float = 1.0,
        latency: float = 0.0,
        travel: tuple[float, float, float] = (400.0, 300.0, 100.0),
        locked_at_start: bool = False,
        settings: dict[int, str] | None = None,
        hold_seconds: float = 0.0,
        fresh_eeprom: bool = False,
    ) -> None:
        super().__init__()
        self.rx_size = rx_buffer
        self.planner_size = planner_blocks  # BLOCK_BUFFER_SIZE; one slot is never used
        self.time_scale = time_scale
        self.latency = latency  # USB-serial adapter latency before a reply reaches the host
        self.travel = travel
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}  # EEPROM: survives resets
        self.lock = threading.RLock()
        self.rx = bytearray()
        self.planner: deque[Block] = deque()
        self.modal = Modal()
        self.position = (0.0, 0.0, 0.0)  # where the parser is (end of the last planned block)
        self.machine_position = (0.0, 0.0, 0.0)  # where the tool is
        self.state = "Alarm" if locked_at_start else "Idle"
        self.critical = False  # a limit alarm: nothing but a reset is heard
        self.check_mode = False
        self.waiting: Waiting | None = None
        self.overflowed = 0  # bytes lost because the host overran the RX buffer
        self.most_buffered = 0  # the fullest the RX buffer has been
        self.system_commands: list[str] = []  # every $ command received
        self.executed: list[str] = []  # every g-code line accepted (answered ok), in order
        self.motions: list[Block] = []  # every block planned, in order
        self.resets = 0
        self.hung = False
        self._remaining_hold = 0.0
        self._block_done_at = 0.0
        self._outbox: deque[tuple[float, bytes]] = deque()
        self.hold_seconds = hold_seconds  # deceleration into a feed hold: Hold:1 lasts this long
        self._hold_done_at = 0.0
        # settings_init() on an erased EEPROM (a new board, simavr without a saved EEPROM): error:7
        # and the restored settings come before the banner; the banner itself follows a blank line
        restored = ["error:7"] + [f"${n}={v}" for n, v in sorted(self.settings.items())] if fresh_eeprom else []
        self._boot_lines = restored + ["", BANNER] + ([UNLOCK_HINT] if locked_at_start else [])

    def start(self) -> SimulatedGrbl:
        super().start()
        for line in self._boot_lines:
            self.reply(line)
        return self

    # -- what a test reads -----------------------------------------------------------------
    @property
    def completed(self) -> int:
        """How many accepted lines have run to the end (motions done, not just planned)."""
        with self.lock:
            return self.planner[0].number if self.planner else len(self.executed)

    @property
    def laser_on(self) -> bool:
        """The spindle/laser output is enabled (M3/M4 with a power above zero)."""
        with self.lock:
            return self.modal.spindle in (3, 4) and self.modal.speed > 0

    @property
    def spindle(self) -> str:
        return f"M{self.modal.spindle}"

    # -- what the host sees ------------------------------------------------------------
    def reply(self, line: str) -> None:
        with self.lock:
            self._outbox.append((time.monotonic() + self.latency, (line + "\r\n").encode()))
        if not self.latency:
            self._flush()

    def _flush(self) -> None:
        now = time.monotonic()
        out = bytearray()
        with self.lock:
            while self._outbox and self._outbox[0][0] <= now:
                out += self._outbox.popleft()[1]
        if out:
            self.send(bytes(out))

    # -- the serial ISR: real-time bytes never enter the buffer -------------------------
    def received(self, data: bytes) -> None:
        with self.lock:
            if self.hung:
                return
            for byte in data:
                if byte == 0x18:
                    self.soft_reset()
                elif self.critical:
                    continue  # only a reset is heard
                elif byte == ord("?"):
                    self.reply(self.status_report())
                elif byte == ord("!"):
                    self._feed_hold()
                elif byte == ord("~"):
                    self._cycle_start()
                elif byte > 0x7F:
                    continue  # an extended real-time command (overrides, not modelled): never buffered
                elif len(self.rx) < self.rx_size:
                    self.rx.append(byte)
                    self.most_buffered = max(self.most_buffered, len(self.rx))
                else:
                    self.overflowed += 1
            self._take_lines()

    def tick(self) -> None:
        with self.lock:
            if self.hung:
                return
            now = time.monotonic()
            self._run_planner(now)
            self._finish_waiting(now)
            self._take_lines()
        self._flush()

    # -- operator-visible events a test can cause ----------------------------------------
    def trigger_alarm(self, code: int) -> None:
        """A hard limit switch (1) or a probe failure: stop everything, lock until $X."""
        with self.lock:
            self._kill()
            self.rx.clear()
            self.state = "Alarm"
            self.reply(f"ALARM:{code}")
            if code in (1, 2):  # critical: GRBL hears nothing but a reset from here on
                self.critical = True
                self.reply("[MSG:Reset to continue]")

    def hang(self) -> None:
        """The firmware locks up (a brown-out, a crashed AVR): nothing is answered, nothing moves."""
        with self.lock:
            self.hung = True

    def soft_reset(self) -> None:
        with self.lock:
            if self.state in MOVING:
                self.reply("ALARM:3")
                self.state = "Alarm"
            self._kill()
            self.rx.clear()
            self.modal = Modal()
            self.critical = False
            self.check_mode = False
            self.resets += 1
            if self.state != "Alarm":
                self.state = "Idle"
            self.reply("")  # report_init_message(): "\r\nGrbl 1.1h ['$' for help]\r\n"
            self.reply(BANNER)
            if self.state == "Alarm":
                self.reply(UNLOCK_HINT)

    def _kill(self) -> None:
        """What mc_reset does: spindle and coolant off, motion and the parser's wait dropped."""
        self.planner.clear()
        self.waiting = None
        self.modal.spindle, self.modal.coolant = 5, set()
        self.position = self.machine_position

    def status_report(self) -> str:
        x, y, z = self.machine_position
        mask = int(float(self.settings.get(10, "1")))
        fields = [self.state, f"{'MPos' if mask & 1 else 'WPos'}:{x:.3f},{y:.3f},{z:.3f}"]
        if mask & 2:
            fields.append(f"Bf:{self.planner_size - 1 - len(self.planner)},{self.rx_size - len(self.rx)}")
        running = self.planner[0] if self.planner and self.state == "Run" else None
        fields.append(f"FS:{running.feed if running else 0:.0f},{self.modal.speed:.0f}")
        accessories = {3: "S", 4: "C"}.get(self.modal.spindle, "") + ("F" if 8 in self.modal.coolant else "")
        accessories += "M" if 7 in self.modal.coolant else ""
        if accessories:
            fields += ["Ov:100,100,100", f"A:{accessories}"]
        return "<" + "|".join(fields) + ">"

    # -- real-time commands ---------------------------------------------------------------
    def _feed_hold(self) -> None:
        if self.state in ("Run", "Jog"):
            self.state = "Hold:1"  # decelerating
            self._hold_done_at = time.monotonic() + self.hold_seconds
        elif self.state == "Idle":
            self.state = "Hold:0"

    def _cycle_start(self) -> None:
        if self.state != "Hold:0":
            return
        if self.planner:
            self.state = "Run"
            self._block_done_at = time.monotonic() + self._remaining_hold
        else:
            self.state = "Idle"

    # -- the main loop: lines out of the RX buffer into the planner ------------------------
    def _take_lines(self) -> None:
        while b"\n" in self.rx or b"\r" in self.rx:
            if self.critical or self.waiting is not None or self.state.startswith(("Hold", "Door")):
                break  # the main loop is stuck in a sync, a suspend or a critical alarm
            if len(self.planner) >= self.planner_size - 1:
                self._auto_cycle_start()
                return  # planner full: the line waits in the RX buffer, no ok yet
            end = min(i for i in (self.rx.find(b"\n"), self.rx.find(b"\r")) if i >= 0)
            raw, self.rx = bytes(self.rx[:end]), bytearray(self.rx[end + 1 :])
            line = self._filter(raw)
            answer = "error:11" if line is None else self._execute(line)
            if answer:
                self.reply(answer)
        self._auto_cycle_start()

    @staticmethod
    def _filter(raw: bytes) -> str | None:
        """What protocol_main_loop keeps of a line: no spaces, controls or comments, upper case.

        None when the line is longer than the line buffer (``error:11``)."""
        out: list[str] = []
        comment = ""
        for char in raw.decode("ascii", "replace"):
            if comment:
                if char == ")" and comment == "(":
                    comment = ""
                continue
            if char <= " " or char == "/":
                continue
            if char in "(;":
                comment = char
            elif len(out) >= LINE_BUFFER - 1:
                return None
            else:
                out.append(char.upper())
        return "".join(out)

    def _auto_cycle_start(self) -> None:
        if self.planner and self.state == "Idle":
            self.state = "Run"
            self._block_done_at = time.monotonic() + self.planner[0].seconds

    def _execute(self, line: str) -> str:
        if not line:
            return "ok"
        if line.startswith("$"):
            return self._system(line)
        if self.state in ("Alarm", "Jog"):
            return "error:9"
        return self._gcode(line)

    def _gcode(self, line: str) -> str:
        """gc_execute_line's steps 2 and 3 (parse, then error-check), in the firmware's order."""
        parsed = self._parse(line)
        if isinstance(parsed, int):
            return f"error:{parsed}"
        g, m, values = parsed
        return self._sync_or_run(line, g, m, values)

    def _parse(self, line: str) -> int | tuple[set[int], set[int], dict[str, float]]:
        """The error code gcode.c answers for ``line``, or its G codes, M codes and value words.

        G codes with a decimal are kept x10 above 1000 (G38.2 -> 1382, G43.1 -> 1431, G91.1 ->
        1911, G28.1 -> 1281, G30.1 -> 1301, G92.1 -> 1921) so they never pass for their integer."""
        g: set[int] = set()
        m: set[int] = set()
        values: dict[str, float] = {}
        groups: set[str] = set()
        axis_command = ""  # "", "non-modal" (G10/28/30/92), "motion", "tlo" (G43.1/G49)
        at = 0
        while at < len(line):  # STEP 2: one word at a time, failing at the first bad one
            letter = line[at]
            if not "A" <= letter <= "Z":
                return 1
            number = NUMBER.match(line, at + 1)
            if number is None:
                return 2
            at = number.end()
            value = float(number.group())
            whole = math.trunc(value)
            mantissa = round(100 * (value - whole))
            if letter == "G":
                code = whole
                if whole in (10, 28, 30, 92):
                    if mantissa == 0:
                        if axis_command:
                            return 24
                        axis_command = "non-modal"
                    group = "G0"
                    if whole != 10:
                        if mantissa not in (0, 10):
                            return 20
                        code, mantissa = (whole * 10 + 1 + 1000 if mantissa else whole), 0
                elif whole in (4, 53):
                    group = "G0"
                elif whole in (0, 1, 2, 3, 38, 80):
                    if whole != 80:
                        if axis_command:
                            return 24
                        axis_command = "motion"
                    group = "G1"
                    if whole == 38:
                        if mantissa not in (20, 30, 40, 50):
                            return 20
                        code, mantissa = 1380 + mantissa // 10, 0
                elif whole in (17, 18, 19):
                    group = "G2"
                elif whole in (90, 91):
                    group = "G3"
                    if mantissa:
                        if mantissa != 10 or whole == 90:
                            return 20
                        group, code, mantissa = "G4", 1911, 0
                elif whole in (93, 94):
                    group = "G5"
                elif whole in (20, 21):
                    group = "G6"
                elif whole == 40:
                    group = "G7"
                elif whole in (43, 49):
                    group = "G8"
                    if axis_command:
                        return 24
                    axis_command = "tlo"
                    if whole == 43:
                        if mantissa != 10:
                            return 20
                        code = 1431
                    mantissa = 0
                elif 54 <= whole <= 59:
                    group = "G12"
                elif whole == 61:
                    group = "G13"
                    if mantissa:
                        return 20
                else:
                    return 20
                if mantissa > 0:
                    return 23
                if group in groups:
                    return 21
                groups.add(group)
                g.add(code)
            elif letter == "M":
                if mantissa > 0:
                    return 23
                group = {0: "M4", 1: "M4", 2: "M4", 30: "M4", 3: "M7", 4: "M7", 5: "M7", 8: "M8", 9: "M8"}.get(whole)
                if group is None:
                    return 20  # M7 too: ENABLE_M7 is off in a default build
                if group in groups:
                    return 21
                groups.add(group)
                m.add(whole)
            else:
                if letter not in LETTERS:
                    return 20
                if letter == "T" and value > 255:
                    return 38
                if letter in values:
                    return 25
                if letter in "FNPTS" and value < 0:
                    return 4
                values[letter] = value
        return self._check(g, m, values, axis_command) or (g, m, values)

    def _check(self, g: set[int], m: set[int], values: dict[str, float], axis_command: str) -> int:
        """gc_execute_line's STEP 3: the block's words against each other and the parser state."""
        modal = self.modal
        axes = {a for a in "XYZ" if a in values}
        if axes and not axis_command:
            axis_command = "motion"  # axis words alone: the current motion mode
        if values.get("N", 0) > 10_000_000:
            return 27
        inverse_time = True if 93 in g else False if 94 in g else modal.inverse_time
        motion = next((c for c in g if c in (0, 1, 2, 3, 80) or 1382 <= c <= 1385), modal.motion)
        scale = 25.4 if (True if 20 in g else False if 21 in g else modal.inches) else 1.0
        if inverse_time:
            if axis_command == "motion" and motion not in (0, 80) and "F" not in values:
                return 22
            feed = values.get("F", 0.0)
        elif not modal.inverse_time:
            feed = values["F"] * scale if "F" in values else modal.feed
        else:
            feed = values.get("F", 0.0) * scale  # back to G94: only this block's F
        used = set("NFST")
        if 4 in g:
            if "P" not in values:
                return 28
            used.add("P")
        if 1431 in g and axes != {"Z"}:
            return 37
        if 10 in g:
            if not axes:
                return 26
            if "P" not in values and "L" not in values:
                return 28
            if math.trunc(values.get("P", 0.0)) > 6:
                return 29
            if values.get("L", 0.0) != 20 and (values.get("L", 0.0) != 2 or "R" in values):
                return 20
            used |= {"L", "P"}
        elif 92 in g and not axes:
            return 26
        elif g & {28, 30} and not axes:
            axis_command = ""
        elif 53 in g and motion not in (0, 1):
            return 30
        if motion == 80:
            if axes:
                return 31
        elif axis_command == "motion" and motion != 0:
            if feed == 0:
                return 22
            if motion in (2, 3) or motion >= 1382:
                error = self._target_errors(motion, values, scale, g, used)
                if error:
                    return error
        if axis_command:
            used |= set("XYZ")
        return 36 if set(values) - used else 0

    def _target_errors(self, motion: int, values: dict[str, float], scale: float, g: set[int], used: set[str]) -> int:
        """Arcs (G2/G3) and probes (G38.x): axis words, the target, the radius or the offsets."""
        axes = [a for a in "XYZ" if a in values]
        if not axes:
            return 26
        target = [values[a] * scale if a in values else p for a, p in zip("XYZ", self.position, strict=True)]
        if not self.modal.absolute and 53 not in g:
            target = [t + p if a in values else t for a, t, p in zip("XYZ", target, self.position, strict=True)]
        if motion >= 1382:
            return 33 if tuple(target) == tuple(self.position) else 0
        plane = {17: (0, 1), 18: (2, 0), 19: (1, 2)}[self.modal.plane if not g & {17, 18, 19} else
                                                     next(c for c in g if c in (17, 18, 19))]
        if not any("XYZ"[i] in values for i in plane):
            return 32
        x = target[plane[0]] - self.position[plane[0]]
        y = target[plane[1]] - self.position[plane[1]]
        if "R" in values:
            used.add("R")
            if tuple(target) == tuple(self.position):
                return 33
            return 34 if 4 * (values["R"] * scale) ** 2 - x * x - y * y < 0 else 0
        offsets = "IJK"
        if not any(offsets[i] in values for i in plane):
            return 35
        used |= set(offsets)
        i, j = (values.get(offsets[k], 0.0) * scale for k in plane)
        radius = math.hypot(i, j)
        delta = abs(math.hypot(x - i, y - j) - radius)
        return 33 if delta > 0.005 and (delta > 0.5 or delta > 0.001 * radius) else 0

    def _sync_or_run(self, line: str, g: set[int], m: set[int], values: dict[str, float]) -> str:
        modal = self.modal
        motion = next((code for code in g if code in (0, 1, 2, 3, 80)), modal.motion)
        axes = any(axis in values for axis in "XYZ") and not g & {10, 28, 30, 92}
        laser_move = self.settings.get(32) == "1" and axes and motion != 80  # any move: no S sync
        spindle = next((code for code in m if code in (3, 4, 5)), modal.spindle)
        coolant = set() if 9 in m else modal.coolant | (m & {7, 8})
        speed_sync = "S" in values and values["S"] != modal.speed and modal.spindle != 5 and not laser_move
        before = spindle != modal.spindle or coolant != modal.coolant or speed_sync or 4 in g
        if self.check_mode or not (before or m & {0, 1, 2, 30}):
            return self._run(line, g, m, values)
        if not before:  # program flow: the line plans its motion, then waits for the planner
            answer = self._run(line, g, m, values)
            if answer != "ok":
                return answer
            self.waiting = Waiting(line, lambda: "ok", pause=0 in m)
            return ""
        dwell = values.get("P", 0.0) * self.time_scale if 4 in g else 0.0
        self.waiting = Waiting(line, lambda: self._run(line, g, m, values), dwell=dwell, pause=0 in m)
        self._auto_cycle_start()
        return ""

    def _run(self, line: str, g: set[int], m: set[int], values: dict[str, float]) -> str:
        modal = self.modal
        before = Modal(**{**vars(modal), "coolant": set(modal.coolant)})
        inches = True if 20 in g else False if 21 in g else modal.inches
        scale = 25.4 if inches else 1.0
        inverse_time = True if 93 in g else False if 94 in g else modal.inverse_time
        motion = next((code for code in g if code in (0, 1, 2, 3, 80)), modal.motion)
        axes = any(axis in values for axis in "XYZ") and not g & {10, 28, 30, 92}
        feed = values["F"] * scale if "F" in values and not inverse_time else modal.feed
        explicit = bool(g & {1, 2, 3})
        if motion in (1, 2, 3) and (axes or explicit) and (feed <= 0 if not inverse_time else "F" not in values):
            return "error:22"
        if motion == 80 and axes:
            return "error:31"
        modal.inches, modal.inverse_time, modal.feed, modal.motion = inches, inverse_time, feed, motion
        modal.absolute = True if 90 in g else False if 91 in g else modal.absolute
        modal.plane = next((code for code in g if code in (17, 18, 19)), modal.plane)
        modal.coordinates = next((code for code in g if 54 <= code <= 59), modal.coordinates)
        modal.speed = values.get("S", modal.speed)
        modal.spindle = next((code for code in m if code in (3, 4, 5)), modal.spindle)
        modal.coolant = set() if 9 in m else modal.coolant | (m & {7, 8})
        if axes and motion != 80:
            answer = self._move(line, motion, values, scale, g)
            if answer != "ok":
                self.modal = before
                if self.state == "Alarm":  # the alarm's reset turned the spindle off
                    self.modal.spindle, self.modal.coolant = 5, set()
                return answer
        if m & {2, 30}:  # program end: a subset of the parser state goes back to its defaults
            self.reply("[MSG:Pgm End]")  # gcode.c prints it in check mode too
            modal.motion, modal.plane, modal.absolute, modal.inverse_time = 1, 17, True, False
            modal.coordinates, modal.spindle, modal.coolant = 54, 5, set()
        self.executed.append(line)
        return "ok"

    def _move(self, line: str, motion: int, values: dict[str, float], scale: float, g: set[int]) -> str:
        target = list(self.position)
        for axis, letter in enumerate("XYZ"):
            if letter in values:
                value = values[letter] * scale
                target[axis] = value if self.modal.absolute or 53 in g else target[axis] + value
        if any(not 0 <= t <= limit for t, limit in zip(target, self.travel, strict=True)):
            if not self.check_mode:
                self.trigger_alarm(2)
            return "error:9" if not self.check_mode else "error:33"
        if self.check_mode or tuple(target) == self.position:
            return "ok"  # check mode plans nothing; a move to where it is plans no block (PLAN_EMPTY_BLOCK)
        rate = self.modal.feed if motion != 0 else RAPID
        if motion != 0 and self.modal.inverse_time:
            rate = math.dist(self.position, target) * values["F"]
        seconds = math.dist(self.position, target) / rate * 60.0 * self.time_scale
        power = self.modal.speed if self.modal.spindle != 5 and motion != 0 else 0.0
        block = Block(tuple(target), seconds, line, len(self.executed), rate, self.modal.spindle, power)  # type: ignore[arg-type]
        self.planner.append(block)
        self.motions.append(block)
        self.position = tuple(target)  # type: ignore[assignment]
        return "ok"

    def _system(self, line: str) -> str:
        self.system_commands.append(line)
        if line == "$":
            self.reply(HELP)
            return "ok"
        if line[1] in "$GCX":
            if len(line) != 2:
                return "error:3"
            return self._state_command(line[1])
        if self.state not in ("Idle", "Alarm"):
            return "error:8"
        if line == "$I":
            self.reply("[VER:1.1h.20190830:]")
            self.reply(f"[OPT:V,{self.planner_size - 1},{self.rx_size}]")
            return "ok"
        if line == "$H":
            self.state = "Idle"
            self.position = self.machine_position = (0.0, 0.0, 0.0)
            return "ok"
        if line in ("$#", "$N"):
            return "ok"
        setting = re.match(r"\$(\d+)", line)
        if setting is None:
            return "error:2"
        if line[setting.end() : setting.end() + 1] != "=" or int(setting.group(1)) not in self.settings:
            return "error:3"
        value = line[setting.end() + 1 :]
        if NUMBER.fullmatch(value) is None:
            return "error:2"
        self.settings[int(setting.group(1))] = value
        return "ok"

    def _state_command(self, letter: str) -> str:
        if letter == "$":
            if self.state in ("Run", "Hold:0", "Hold:1"):
                return "error:8"
            for number, value in sorted(self.settings.items()):
                self.reply(f"${number}={value}")
            return "ok"
        if letter == "G":
            self.reply(self.modal.report())
            return "ok"
        if letter == "X":
            if self.state == "Alarm":
                self.state = "Idle"
                self.reply("[MSG:Caution: Unlocked]")
            return "ok"
        if self.check_mode:  # $C again: leave check mode with a reset
            self.reply("[MSG:Disabled]")
            self.reply("ok")
            self.soft_reset()
            return ""
        if self.state != "Idle":
            return "error:8"
        self.check_mode = True
        self.state = "Check"
        self.reply("[MSG:Enabled]")
        return "ok"

    # -- time ---------------------------------------------------------------------------
    def _run_planner(self, now: float) -> None:
        if self.state == "Hold:1":
            if now < self._hold_done_at:
                return  # still decelerating: a cycle start (~) now is ignored, as on the firmware
            self._remaining_hold = max(0.0, self._block_done_at - now)
            self.state = "Hold:0"  # held (the deceleration itself is not modelled in the motion)
            return
        while self.planner and self.state == "Run" and now >= self._block_done_at:
            self.machine_position = self.planner.popleft().target
            if self.planner:
                self._block_done_at += self.planner[0].seconds
        if not self.planner and self.state == "Run":
            self.state = "Idle"

    def _finish_waiting(self, now: float) -> None:
        waiting = self.waiting
        if waiting is None or self.planner or self.state != "Idle":
            return
        if waiting.dwell and waiting.until is None:
            waiting.until = now + waiting.dwell
        if waiting.until is not None and now < waiting.until:
            return
        if waiting.pause and not waiting.held:
            waiting.held = True  # M0: hold once, answer after the resume
            self.state = "Hold:0"
            return
        self.waiting = None
        answer = waiting.run()
        if answer:
            self.reply(answer)
