"""GRBL's G-code as its parser and planner see it, pure (no I/O): what the bridge's streamer
(firmware_bridge/grbl.py) folds while it streams.

* `clean_line`: a line as a sender counts it (comments and spaces out);
* `GrblStatus`, `parse_status`: a `?` status report;
* `ModalState`, `modal_prelude`: the parser state a job leaves behind, and the lines that put a
  freshly reset GRBL back into it (a resume);
* `Progress`: which answered lines have really run, from the answers and the status reports.
"""

from __future__ import annotations

import bisect
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

PLANNER_BLOCKS = 15  # BLOCK_BUFFER_SIZE - 1: what ``Bf:`` counts down from
# A block leaves the planner when the stepper has cut its last segment, not when it has run: up to
# SEGMENT_BLOCKS of them (SEGMENT_BUFFER_SIZE 6), about 50 ms of motion, may still be to run.
SEGMENT_BLOCKS = 6
SEGMENT_LEAD = 0.1  # s: by a report this much later, those have run
SETTLED = ("Idle", "Hold:0", "Door:0", "Door:1", "Check")  # nothing in motion: Bf: is exact
MOVING = ("Run", "Jog", "Home", "Hold:1", "Door:2", "Door:3")


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
    """What GRBL's protocol_main_loop keeps of a line, and so what a sender sends and counts.

    As the firmware does, character by character: spaces and control characters, ``/`` (block
    delete) and comments go, ``(`` to ``)`` (or to the end) and ``;`` to the end, a ``;``
    inside parentheses being part of the comment; a to z are upper-cased. Anything else stays,
    non-ASCII included, for the streamer to refuse (GRBL takes bytes 0x80-0xFF as real-time
    commands)."""
    out: list[str] = []
    comment = ""
    for char in line:
        if comment:
            if char == ")" and comment == "(":
                comment = ""
        elif char <= " " or char == "/":
            continue
        elif char in "(;":
            comment = char
        else:
            out.append(char.upper() if "a" <= char <= "z" else char)
    return "".join(out)


# -- the parser state a job leaves behind (pure) -------------------------------------------
WORD = re.compile(r"([A-Z])([-+]?(?:\d+\.?\d*|\.\d+))")
MOTIONS = ("G0", "G1", "G2", "G3", "G38.2", "G38.3", "G38.4", "G38.5", "G80")
AXIS_DATA = {"G10", "G28.1", "G30.1", "G43.1", "G92"}  # axis words that are values, not a move


@dataclass(frozen=True)
class LineEffect:
    """What a line does to GRBL's planner: ``moves`` when it commands motion, ``blocks`` it
    surely adds (a lower bound: 0 when the move cannot be told from none), and ``sync``:
    "before" when GRBL waits for an empty planner before the line (spindle, coolant, G4),
    "after" when it waits once the line's own motion has run (M0, M2, M30, a probe)."""

    blocks: int = 0
    sync: str = ""
    moves: bool = False


@dataclass
class ModalState:
    """GRBL's parser state as a job leaves it; the defaults are those after a reset.

    ``None`` means not known. ``position`` (work coordinates, mm) is only tracked to tell a
    real move from one that plans no block; ``step`` is the shortest move, per axis, that
    surely makes one (a step of the motor, 1/$100..$102; 0.1 mm when not known)."""

    motion: str | None = "G0"
    coordinates: str | None = "G54"
    plane: str | None = "G17"
    units: str | None = "G21"
    distance: str | None = "G90"
    feed_mode: str | None = "G94"
    spindle: str | None = "M5"
    coolant: frozenset[str] | None = frozenset()
    feed: float = 0.0  # mm/min, 0 = not set
    speed: float = 0.0
    offset_line: str | None = None  # a G92 offset set by this line is in force
    position: list[float | None] = field(default_factory=lambda: [None, None, None])
    step: tuple[float, float, float] = (0.1, 0.1, 0.1)

    @classmethod
    def unknown(cls, step: tuple[float, float, float] = (0.1, 0.1, 0.1)) -> ModalState:
        return cls(None, None, None, None, None, None, None, None, step=step)

    @classmethod
    def from_report(cls, report: str, step: tuple[float, float, float] = (0.1, 0.1, 0.1)) -> ModalState:
        """The state ``$G`` reports: ``[GC:G0 G54 G17 G21 G90 G94 M5 M9 T0 F0 S0]``."""
        state = cls.unknown(step)
        words = [w for w in report.strip("[]").removeprefix("GC:").split() if w not in ("M0", "M1", "M2", "M30")]
        state.apply("".join(words))
        return state

    def apply(self, line: str) -> LineEffect:
        """Fold one cleaned line (as ``clean_line`` leaves it) the way GRBL's parser would."""
        words = WORD.findall(line)
        if line.startswith("$J="):
            return LineEffect(moves=True)  # a jog
        if line.startswith("$") or not words or "".join(a + b for a, b in words) != line:
            return LineEffect()  # a system command, or a line GRBL refuses: no change
        g = {f"G{float(v):g}" for letter, v in words if letter == "G"}
        m = {f"M{float(v):g}" for letter, v in words if letter == "M"}
        values = {letter: float(v) for letter, v in words if letter not in "GM"}
        sync = ""
        feed_mode = next((c for c in ("G93", "G94") if c in g), self.feed_mode)
        self.units = next((c for c in ("G20", "G21") if c in g), self.units)
        scale = 25.4 if self.units == "G20" else 1.0
        if feed_mode == "G93" or (self.feed_mode == "G93" and feed_mode == "G94"):
            self.feed = 0.0  # inverse time: F on every move; back to G94, the feed is undefined
        if "F" in values and feed_mode == "G94":
            self.feed = values["F"] * scale
        self.feed_mode = feed_mode
        motion = next((c for c in MOTIONS if c in g), self.motion)
        moving = any(a in values for a in "XYZ") and not g & AXIS_DATA and motion != "G80"
        if "S" in values and values["S"] != self.speed and self.spindle not in (None, "M5") and not moving:
            sync = "before"  # a new S outside a move waits for the planner (with or without $32)
        self.speed = values.get("S", self.speed)
        spindle = next((c for c in ("M3", "M4", "M5") if c in m), self.spindle)
        if spindle != self.spindle and self.spindle is not None:
            sync = "before"
        self.spindle = spindle
        if m & {"M7", "M8", "M9"}:
            coolant = frozenset() if "M9" in m else (self.coolant or frozenset()) | (m & {"M7", "M8"})
            if self.coolant is not None and coolant != self.coolant:
                sync = "before"
            self.coolant = coolant
        if "G4" in g:
            sync = "before"
        self.plane = next((c for c in ("G17", "G18", "G19") if c in g), self.plane)
        self.distance = next((c for c in ("G90", "G91") if c in g), self.distance)
        frame = next((c for c in ("G54", "G55", "G56", "G57", "G58", "G59") if c in g), self.coordinates)
        if frame != self.coordinates or g & {"G10", "G43.1", "G49", "G92.1"}:
            self.position = [None, None, None]
        self.coordinates = frame
        if "G92" in g:
            self.offset_line = line
            self.position = [values[a] * scale if a in values else p for a, p in zip("XYZ", self.position, strict=True)]
        if "G92.1" in g:
            self.offset_line = None
        self.motion = motion
        blocks = self._move(values, scale, g) if moving else 0
        if m & {"M0", "M2", "M30"} or (moving and (motion or "").startswith("G38")):
            sync = sync or "after"  # a probe, too, is answered once it has run
        if m & {"M2", "M30"}:  # program end: a subset of the state goes back to its defaults
            if self.coordinates != "G54":
                self.position = [None, None, None]
            self.motion, self.plane, self.distance, self.feed_mode = "G1", "G17", "G90", "G94"
            self.coordinates, self.spindle, self.coolant = "G54", "M5", frozenset()
        return LineEffect(blocks, sync, moving or bool(g & {"G28", "G30"}))

    def _move(self, values: dict[str, float], scale: float, g: set[str]) -> int:
        if g & {"G28", "G30", "G53"} or (self.motion or "").startswith("G38"):
            self.position = [None, None, None]  # a move to a stored or machine position: 1 block or 2
            return 0
        moved = False
        for axis, letter in enumerate("XYZ"):
            if letter not in values:
                continue
            old, value = self.position[axis], values[letter] * scale
            if self.distance == "G91":
                new = None if old is None else old + value
                moved |= abs(value) >= self.step[axis]
            elif self.distance == "G90":
                new = value
                moved |= old is not None and abs(value - old) >= self.step[axis]
            else:
                new = None
            self.position[axis] = new
        return 1 if moved and self.motion in ("G0", "G1", "G2", "G3") else 0

    def prelude(self) -> list[str]:
        """The lines that put a freshly reset GRBL into this state, without moving it."""
        if self.offset_line is not None:
            raise ValueError(
                f"a G92 offset ('{self.offset_line}') is in force: it is lost on a reset and can only be "
                "set again with the machine where it was set; resume from before that line"
            )
        known = [self.units, self.distance, self.plane, self.coordinates, self.feed_mode]
        lines = [" ".join(c for c in known if c is not None)]
        feed = f"F{_number(self.feed / (25.4 if self.units == 'G20' else 1.0))}" if self.feed > 0 else ""
        if self.motion == "G1" and self.feed_mode == "G93":
            lines.append("G1 F1")  # inverse time: every move brings its own F; this one only sets G1
        elif self.motion == "G1" and feed:
            lines.append(f"G1 {feed}")  # G1 alone needs a feed (error:22 otherwise)
        elif self.motion in ("G0", "G80"):
            lines.append(f"{self.motion} {feed}".strip())
        elif feed:
            lines.append(feed)  # G2/G3/G38 cannot be set without a move: a line relying on it is refused
        lines += sorted(self.coolant or ())
        if self.spindle in ("M3", "M4"):
            lines.append(f"{self.spindle} S{_number(self.speed)}")  # M4 stays dark until a move; M3 lights now
        elif self.speed:
            lines.append(f"S{_number(self.speed)}")
        return [line for line in lines if line]


def _number(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") or "0"


def modal_prelude(lines: Sequence[str], n: int) -> list[str]:
    """The lines that put a freshly reset GRBL into the modal state in force after ``lines[:n]``.

    Units, distance mode, plane, coordinate system, feed-rate mode; then, in absolute mode with
    the position known, a rapid back to where line ``n`` starts, laser still off (a reset or
    re-homed board is elsewhere: the first resumed cut would burn a line from there); then the
    feed, motion mode (G0/G1/G80), coolant, and spindle/laser mode with its power, last.
    Raises ValueError when the state cannot be restored (a G92 offset in force)."""
    state = ModalState()
    for line in lines[:n]:
        state.apply(clean_line(line))
    if n <= 0:
        return []
    prelude = state.prelude()
    scale = 25.4 if state.units == "G20" else 1.0
    known = [f"{axis}{_number(v / scale)}" for axis, v in zip("XYZ", state.position, strict=True) if v is not None]
    if known and state.distance == "G90":
        prelude.insert(1, "G0 " + " ".join(known))  # M5 still: a fresh board's laser is off
    return prelude


# -- what has run (pure) -------------------------------------------------------------------
class Progress:
    """Which lines of one stream are known to have run, from answers and status reports.

    Lines are counted in the order GRBL answers them: ``meta`` lines first (``$G``, the resume
    prelude), then job lines from ``start``. A line without motion has run once it is answered
    and every line before it has; a line with motion, once a status report shows its blocks out
    of the planner, or a line answered only after a buffer sync came after it. While the machine
    moves, the last SEGMENT_BLOCKS blocks out of the planner may still be in the stepper's segment
    buffer: they are taken as run only from a report at least ``SEGMENT_LEAD`` later, or from a
    settled one (Idle, held)."""

    def __init__(self, start: int, meta: int, modal: ModalState, planner_blocks: int = PLANNER_BLOCKS) -> None:
        self.start = start
        self.meta = meta
        self.modal = modal
        self.planner_blocks = planner_blocks
        self.cum: list[int] = []  # blocks planned by answered lines, through each one
        self.moves: list[bool] = []  # per answered line: does it command motion?
        self.lines_done = 0  # answered lines, from the first, known to have run
        self._pending: deque[tuple[float, int]] = deque()  # (when, lines run) seen while moving

    @property
    def answered(self) -> int:
        return len(self.cum)

    @property
    def executed(self) -> int:
        """The first job line not known to have run."""
        return self.start + max(0, self.lines_done - self.meta)

    @property
    def finished(self) -> bool:
        """Every answered line has run."""
        return self.lines_done >= len(self.cum)

    def answer(self, line: str, ok: bool, parser_state: str | None = None) -> None:
        """The next line in order was answered (``ok`` or refused)."""
        k = len(self.cum)
        if line == "$G" and ok and parser_state:
            self.modal = ModalState.from_report(parser_state, self.modal.step)
            effect = LineEffect()
        else:
            effect = self.modal.apply(line) if ok else LineEffect()  # a refused line did nothing
        self.cum.append((self.cum[-1] if self.cum else 0) + effect.blocks)
        self.moves.append(effect.moves)
        # answered only once the planner was empty: what came before has run (and this line too, after)
        self._advance(k + 1 if effect.sync == "after" else k if effect.sync else 0)

    def status(self, report: GrblStatus, answered: int, sent: int, at: float) -> None:
        """A status report that came after ``answered`` of ``sent`` lines were answered."""
        if report.state.startswith(("Alarm", "Sleep")):
            self._pending.clear()  # a reset killed what was in the stepper
            return
        answered = min(answered, len(self.cum))
        planned = self.cum[answered - 1] if answered else 0
        if report.planner_free is not None:
            run = planned - max(0, self.planner_blocks - report.planner_free)
            if report.state in SETTLED:
                self._pending.clear()
                self._advance(self._lines_within(run, answered))
            elif report.state in MOVING:
                self._advance(self._lines_within(run - SEGMENT_BLOCKS, answered))
                self._pending.append((at, self._lines_within(run, answered)))
            while self._pending and at - self._pending[0][0] >= SEGMENT_LEAD:
                self._advance(self._pending.popleft()[1])
        elif report.state == "Check" or (report.state == "Idle" and answered == sent):
            self._advance(answered)  # idle with nothing owed: the planner has run dry

    def _lines_within(self, blocks: int, answered: int) -> int:
        """How many answered lines, from the first, planned no more than ``blocks`` blocks."""
        return bisect.bisect_right(self.cum, blocks, 0, answered) if blocks >= 0 else 0

    def _advance(self, lines: int) -> None:
        self.lines_done = max(self.lines_done, min(lines, len(self.cum)))
        while self.lines_done < len(self.cum) and not self.moves[self.lines_done]:
            self.lines_done += 1
