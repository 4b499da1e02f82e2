"""The live view of `edge demo`: the whole line at a glance while a simulated day runs, faults and all.

On a terminal it is a rich Live, redrawn four times a second, the narrative scrolling above it:

    stations  each node in line order: its state (green ok, yellow busy, red fault or down, dim while
              its MQTT link is down), the link and the events waiting in its outbox, the job it holds,
              the last thing its screen said (or why it is in fault);
    jobs      the most recent open jobs, newest first: who ordered it (first name, colour), a bar of
              the route (steps done or skipped of the route's steps, plus the running step's percent),
              the current step, the status (a failed job in red, with its reason); then how many closed;
    events    the last faults injected ("chaos", bold red; a recovery green) and what the operator did,
              timed from the start; then the totals so far.

Anywhere else (CI, a pipe, the tests) the same news comes as plain log lines, one per change, each
written whole: a job's steps, a station's screen, DOWN and up again, chaos and operator lines.
Whatever it is fed, from whichever thread, the view never raises: a view never stops the demo.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import wraps
from typing import Any, TextIO, TypeVar

from rich import box
from rich.color import Color, ColorParseError
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from edge.ledger import CLOSED

log = logging.getLogger(__name__)
MARKS = {"done": "done", "running": "working", "pending": "-", "failed": "FAILED", "skipped": "skipped"}
STATE_STYLES = {"idle": "green", "ready": "green", "busy": "yellow", "working": "yellow", "starting": "yellow",
                "manual": "yellow", "fault": "bold red", "estop": "bold red", "down": "bold red",
                "stopped": "red"}
JOB_STYLES = {"waiting": "dim", "in_progress": "yellow", "done": "green", "completed": "green",
              "failed": "bold red"}
MAX_JOBS = 14  # open jobs in the table, newest first
MAX_EVENTS = 8  # chaos and operator lines kept
BAR = 12  # characters of a job's progress bar
F = TypeVar("F", bound=Callable[..., Any])


def _never_raises(method: F) -> F:
    @wraps(method)
    def safe(*args: Any, **kwargs: Any) -> None:
        try:
            method(*args, **kwargs)
        except Exception as exc:  # the last net: a bug in the view must not stop the demo
            log.warning("the demo's view could not show %s: %r", method.__name__, exc)
    return safe  # type: ignore[return-value]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _num(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _steps(state: dict[str, Any]) -> list[dict[str, Any]]:
    steps = state.get("steps")
    return [_dict(s) for s in steps] if isinstance(steps, list) else []


def _failed(steps: list[dict[str, Any]]) -> dict[str, Any]:
    return next((s for s in steps if s.get("status") == "failed"), {})


def summary(state: dict[str, Any]) -> str:
    """A job's plain log line: its status and a mark per step, a failure's reason in parentheses."""
    steps = _steps(state)
    marks = "  ".join(f"{_text(s.get('step')) or '?'}:{MARKS.get(_text(s.get('status')), _text(s.get('status')))}"
                      for s in steps)
    line = f"  [dashboard] job {_text(state.get('job'))} {_text(state.get('status')):<11} {marks}".rstrip()
    reason = _text(_failed(steps).get("reason"))
    return f"{line} ({reason})" if reason else line


def _swatch(colour: str) -> Text:
    try:
        Color.parse(colour)
    except ColorParseError:
        return Text(colour)
    return Text.assemble(("●", colour), " ", colour)


class LineView:
    """The demo's screen: fed job states, station statuses, chaos and operator news, by any thread."""

    def __init__(self, stations: list[str], out: TextIO | None = None, live: bool | None = None):
        self.out: TextIO = out if out is not None else sys.stdout
        if live is None:
            try:
                live = bool(self.out.isatty())
            except (AttributeError, OSError, ValueError):
                live = False
        self.plain, self.lock, self.began = not live, threading.RLock(), time.monotonic()
        self.names = [_text(n) for n in stations or []]
        self.jobs: dict[str, dict[str, Any]] = {}  # job -> its latest state, in the order first seen
        self.events: dict[str, float] = {}  # job -> the most events a state of it shown had
        self.lines: dict[str, str] = {}  # job -> its plain line last printed
        self.visitors: dict[str, tuple[str, str, str]] = {}  # job -> (name, colour, text)
        self.statuses: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, tuple[str, bool]] = {}  # station -> its screen's last (text, ok)
        self.down: set[str] = set()
        self.recent: deque[tuple[float, str, str, str]] = deque(maxlen=MAX_EVENTS)
        self.faults = 0
        self.console = Console(file=self.out)
        self._live: Live | None = None if self.plain else Live(
            console=self.console, refresh_per_second=4, get_renderable=self.render)

    def start(self) -> LineView:
        if self._live is not None and not self._live.is_started:
            self._live.start()
        return self

    def close(self) -> None:
        with self.lock:
            live, self._live = self._live, None
        if live is not None:  # not under self.lock: the Live's thread holds its own lock to render
            live.stop()

    @_never_raises
    def say(self, text: str) -> None:
        if self.plain:
            with self.lock:
                self._write(_text(text))
        else:
            self.console.print(_text(text), markup=False, highlight=False, soft_wrap=True)

    @_never_raises
    def visitor(self, job: str, name: str, colour: str, text: str) -> None:
        with self.lock:
            self.visitors[_text(job)] = (_text(name), _text(colour), _text(text))

    @_never_raises
    def job(self, state: dict[str, Any]) -> None:
        state = _dict(state)
        name, events = _text(state.get("job")), _num(state.get("events")) or 0
        if not name:
            return
        with self.lock:
            if events < self.events.get(name, 0):
                return  # a broker that lost power restored an older retained state: not news
            self.events[name], self.jobs[name], line = events, state, summary(state)
            if self.plain and self.lines.get(name) != line:
                self.lines[name] = line
                self._write(line)

    @_never_raises
    def station(self, name: str, status: dict[str, Any]) -> None:
        name, status = _text(name), _dict(status)
        message = _dict(_dict(status.get("station")).get("message"))
        text, news = _text(message.get("text")), []
        with self.lock:
            if name not in self.names:
                self.names.append(name)
            self.statuses[name] = status
            if status.get("state") == "down":
                if name not in self.down:
                    self.down.add(name)
                    news.append("DOWN")
            else:
                if name in self.down:
                    self.down.discard(name)
                    news.append("up again")
                if text and text != self.messages.get(name, ("", True))[0]:
                    self.messages[name] = (text, message.get("ok") is not False)
                    news.append(text)
            for line in news if self.plain else ():
                self._write(f"   [{name}] {line}")

    @_never_raises
    def chaos(self, kind: str, text: str, recovered: bool = False) -> None:
        """A fault injected (`recovered`: the line back to normal after it, not one more fault)."""
        kind, text = _text(kind) or "?", _text(text)
        with self.lock:
            self.faults += not recovered
            self._note(f"chaos[{kind}]", text, "bold green" if recovered else "bold red",
                       f"  !! chaos[{kind}] {text}")

    @_never_raises
    def operator(self, text: str) -> None:
        with self.lock:
            self._note("operator", _text(text), "cyan", f"  >> operator: {_text(text)}")

    def _note(self, label: str, text: str, style: str, line: str) -> None:
        self.recent.append((time.monotonic() - self.began, label, text, style))
        if self.plain:
            self._write(line)

    def _write(self, line: str) -> None:
        """One whole line and a flush; the caller holds self.lock."""
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except (OSError, ValueError):  # a closed pipe or file: the line runs on without its view
            pass

    def render(self) -> RenderableType:
        """The view as it stands: a snapshot of Text cells, safe to draw outside the lock."""
        with self.lock:
            try:
                return Group(self._stations(), self._jobs(), self._recent(), self._totals())
            except Exception as exc:  # the Live's thread draws this: it must not die of it
                log.warning("the demo's view could not draw: %r", exc)
                return Text(f"(the view could not draw: {exc!r})", "red")

    def _stations(self) -> Table:
        table = Table("station", "state", "mqtt", "job", "screen", title="stations", title_justify="left",
                      box=box.SIMPLE_HEAD)
        for name in self.names:
            st = self.statuses.get(name, {})
            state, online = _text(st.get("state")) or "-", _dict(st.get("mqtt")).get("connected") is True
            link = Text("online" if online else "offline", "green" if online else "dim")
            if outbox := int(_num(st.get("outbox")) or 0):
                link.append(f" {outbox} queued", "yellow")
            style = STATE_STYLES.get(state, "")
            if state in ("down", "-") or "mqtt" not in st:
                link = Text("-", "dim")
            elif not online:
                style = f"dim {style}".strip()
            said, ok = self.messages.get(name, ("", True))
            if state in ("fault", "estop") and st.get("reason"):
                said, ok = _text(st.get("reason")), False
            table.add_row(Text(name), Text(state, style), link, Text(_text(st.get("job")) or "-"),
                          Text(said, "" if ok else "red"))
        return table

    def _jobs(self) -> Table:
        table = Table("job", "visitor", "colour", "route", "step", "status", title="jobs",
                      title_justify="left", caption_justify="left", box=box.SIMPLE_HEAD)
        shown = [j for j in reversed(self.jobs) if self.jobs[j].get("status") not in CLOSED]
        for name in shown[:MAX_JOBS]:
            state = self.jobs[name]
            steps, status = _steps(state), _text(state.get("status"))
            route = [s for s in steps if s.get("on_route") is not False]
            done = sum(s.get("status") in ("done", "skipped") for s in route)
            running = next((s for s in route if s.get("status") == "running"), {})
            percent, failed = _num(running.get("progress")), _failed(steps)
            filled = round(min(1.0, (done + (percent or 0) / 100) / max(1, len(route))) * BAR)
            bar = Text.assemble(("█" * filled, "green"), ("░" * (BAR - filled), "dim"), f" {done}/{len(route)}")
            current = running or failed or next((s for s in route if s.get("status") == "pending"), {})
            step = Text(_text(current.get("step")) or "-", "red" if current is failed else "")
            if percent is not None:
                step.append(f" {percent:.0f}%")
            said = Text(status, JOB_STYLES.get(status, ""))
            if failed.get("reason"):
                said.append(f": {_text(failed.get('reason'))}")
            who, colour, _ = self.visitors.get(name, ("", "", ""))
            table.add_row(Text(name), Text(who), _swatch(colour), bar, step, said,
                          style="red" if status == "failed" else None)
        closed = {c: sum(s.get("status") == c for s in self.jobs.values()) for c in CLOSED}
        more = len(shown) - MAX_JOBS
        table.caption = ", ".join([f"{n} {c}" for c, n in closed.items() if n or c == "completed"]
                                  + ([f"{more} older open jobs not shown"] if more > 0 else []))
        return table

    def _recent(self) -> Table:
        table = Table.grid(padding=(0, 1))
        for at, label, text, style in self.recent:
            table.add_row(Text(f"+{at:.1f}s", "dim"), Text(label, style),
                          Text(text, "" if label == "operator" else style))
        return table

    def _totals(self) -> Text:
        statuses = [s.get("status") for s in self.jobs.values()]
        still = sum(s not in CLOSED and s != "failed" for s in statuses)
        visitors = len(self.visitors.keys() | self.jobs.keys())
        return Text(f"+{time.monotonic() - self.began:.1f}s  visitors {visitors}  completed "
                    f"{statuses.count('completed')}  failed {statuses.count('failed')}  open {still}  "
                    f"faults {self.faults}", "bold")
