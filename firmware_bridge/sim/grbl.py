"""A GRBL 1.1 on a pty: 128-byte RX buffer, 16-block planner, real-time commands, alarms.

Lines are taken out of the RX buffer (and answered ``ok``) only when the planner has room,
exactly like GRBL, so a host that sends more than 128 unanswered bytes overflows it: the
overflow is counted (real GRBL silently loses the bytes and runs a mangled line).
Motion blocks take ``distance / feed`` of simulated time times ``time_scale``.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass

from firmware_bridge.sim.terminal import PtyDevice

BANNER = "Grbl 1.1h ['$' for help]"
UNLOCK_HINT = "[MSG:'$H'|'$X' to unlock]"
WORD = re.compile(r"([A-Z])([-+]?(?:\d+\.?\d*|\.\d+))")
SUPPORTED_G = {0, 1, 2, 3, 4, 10, 17, 18, 19, 20, 21, 28, 30, 53, 54, 55, 56, 57, 58, 59, 80, 90, 91, 92, 93, 94}
SUPPORTED_M = {0, 1, 2, 3, 4, 5, 7, 8, 9, 30}
LETTERS = set("GMXYZFSTNPIJKRL")


@dataclass
class Block:
    """One planned motion."""

    target: tuple[float, float, float]
    seconds: float
    line: str


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
    ) -> None:
        super().__init__()
        self.rx_size = rx_buffer
        self.planner_size = planner_blocks
        self.time_scale = time_scale
        self.latency = latency  # USB-serial adapter latency before a reply reaches the host
        self.travel = travel
        self.lock = threading.RLock()
        self.rx = bytearray()
        self.planner: deque[Block] = deque()
        self.position = (0.0, 0.0, 0.0)  # where the parser is (end of the last planned block)
        self.machine_position = (0.0, 0.0, 0.0)  # where the tool is
        self._remaining_hold = 0.0
        self.feed = 0.0
        self.absolute = True
        self.state = "Alarm" if locked_at_start else "Idle"
        self.check_mode = False
        self.overflowed = 0  # bytes lost because the host overran the RX buffer
        self.most_buffered = 0  # the fullest the RX buffer has been
        self.system_commands: list[str] = []  # every $ command received
        self.executed: list[str] = []  # every line run (or checked), in order
        self._block_done_at = 0.0
        self._outbox: deque[tuple[float, bytes]] = deque()
        self._boot_lines = [BANNER] + ([UNLOCK_HINT] if locked_at_start else [])

    def start(self) -> SimulatedGrbl:
        super().start()
        for line in self._boot_lines:
            self.reply(line)
        return self

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
            for byte in data:
                if byte == ord("?"):
                    self.reply(self.status_report())
                elif byte == ord("!"):
                    if self.state in ("Run", "Idle") and self.planner:
                        self.state = "Hold:0"
                elif byte == ord("~"):
                    if self.state.startswith("Hold"):
                        self.state = "Run"
                        self._block_done_at = time.monotonic() + self._remaining_hold
                elif byte == 0x18:
                    self.soft_reset()
                elif len(self.rx) < self.rx_size:
                    self.rx.append(byte)
                    self.most_buffered = max(self.most_buffered, len(self.rx))
                else:
                    self.overflowed += 1
            self._take_lines()

    def tick(self) -> None:
        with self.lock:
            self._run_planner(time.monotonic())
            self._take_lines()
        self._flush()

    # -- operator-visible events a test can cause ----------------------------------------
    def trigger_alarm(self, code: int) -> None:
        """A hard limit switch (1) or a probe failure: stop everything, lock until $X."""
        with self.lock:
            self.planner.clear()
            self.rx.clear()  # GRBL's reset on a critical alarm flushes the serial buffer
            self.position = self.machine_position
            self.state = "Alarm"
            self.reply(f"ALARM:{code}")

    def soft_reset(self) -> None:
        with self.lock:
            moving = bool(self.planner) and self.state in ("Run", "Hold:0", "Hold:1")
            self.planner.clear()
            self.rx.clear()
            self.position = self.machine_position
            self.check_mode = False
            if moving:
                self.reply("ALARM:3")
                self.state = "Alarm"
            elif self.state != "Alarm":
                self.state = "Idle"
            self.reply(BANNER)
            if self.state == "Alarm":
                self.reply(UNLOCK_HINT)

    def status_report(self) -> str:
        x, y, z = self.machine_position
        return (
            f"<{self.state}|MPos:{x:.3f},{y:.3f},{z:.3f}|Bf:{self.planner_size - len(self.planner) - 1},"
            f"{self.rx_size - len(self.rx)}|FS:{self.feed:.0f},0>"
        )

    # -- the main loop: lines out of the RX buffer into the planner ------------------------
    def _take_lines(self) -> None:
        while b"\n" in self.rx:
            if len(self.planner) >= self.planner_size - 1:
                return  # planner full: the line waits in the RX buffer, no ok yet
            raw, _, rest = bytes(self.rx).partition(b"\n")
            self.rx = bytearray(rest)
            answer = self._execute(raw.decode("ascii", "replace").strip().upper())
            if answer:
                self.reply(answer)

    def _execute(self, line: str) -> str:
        if not line:
            return "ok"
        if line.startswith("$"):
            return self._system(line)
        if self.state == "Alarm":
            return "error:9"
        if len(line) > 80:
            return "error:11"
        words = WORD.findall(line)
        if "".join(a + b for a, b in words) != line.replace(" ", ""):
            return "error:1" if not line[:1].isalpha() else "error:2"
        target = list(self.position)
        moved = False
        motion = None
        for letter, value in words:
            number = float(value)
            if letter not in LETTERS:
                return "error:20"
            if letter == "G":
                if number not in SUPPORTED_G and int(number) != number:
                    return "error:20"
                if int(number) not in SUPPORTED_G:
                    return "error:20"
                motion = int(number) if int(number) in (0, 1, 2, 3) else motion
                self.absolute = {90: True, 91: False}.get(int(number), self.absolute)
            elif letter == "M" and int(number) not in SUPPORTED_M:
                return "error:20"
            elif letter == "F":
                self.feed = number
            elif letter in "XYZ":
                axis = "XYZ".index(letter)
                target[axis] = number if self.absolute else target[axis] + number
                moved = True
        if motion in (1, 2, 3) and moved and self.feed <= 0:
            return "error:22"
        if moved and any(not 0 <= t <= limit for t, limit in zip(target, self.travel, strict=True)):
            if not self.check_mode:
                self.trigger_alarm(2)
            return "error:9" if not self.check_mode else "error:33"
        self.executed.append(line)
        if moved and not self.check_mode:
            distance = math.dist(self.position, target)
            feed = self.feed if motion != 0 and self.feed > 0 else 5000.0
            self.planner.append(Block(tuple(target), distance / feed * 60.0 * self.time_scale, line))
            self.position = tuple(target)  # type: ignore[assignment]
            if self.state == "Idle":
                self.state = "Run"
                self._block_done_at = time.monotonic() + self.planner[0].seconds
        return "ok"

    def _system(self, line: str) -> str:
        self.system_commands.append(line)
        if line == "$X":
            if self.state == "Alarm":
                self.state = "Idle"
                self.reply("[MSG:Caution: Unlocked]")
            return "ok"
        if line == "$C":
            if self.check_mode:
                self.reply("[MSG:Disabled]")
                self.reply("ok")
                self.soft_reset()
                return ""
            if self.state == "Alarm":
                return "error:9"
            self.check_mode = True
            self.state = "Check"
            self.reply("[MSG:Enabled]")
            return "ok"
        if line == "$I":
            self.reply("[VER:1.1h.20190830:]")
            self.reply(f"[OPT:V,{self.planner_size - 1},{self.rx_size}]")
            return "ok"
        if line in ("$H", "$$", "$#", "$G", "$N"):
            if line == "$H":
                self.state = "Idle"
                self.position = self.machine_position = (0.0, 0.0, 0.0)
            return "ok"
        return "error:3"

    def _run_planner(self, now: float) -> None:
        if self.state.startswith("Hold"):
            if self.state == "Hold:0":
                self._remaining_hold = max(0.0, self._block_done_at - now)
                self.state = "Hold:1"
            return
        while self.planner and self.state == "Run" and now >= self._block_done_at:
            self.machine_position = self.planner.popleft().target
            if self.planner:
                self._block_done_at += self.planner[0].seconds
        if not self.planner and self.state == "Run":
            self.state = "Idle"
