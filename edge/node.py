"""One node: a single loop thread that owns all state, fed by events from every adapter.

Hardware callbacks, scanner reads, MQTT messages and console lines are posted to one queue
(Klipper's reactor idea); the loop applies them in order. The one exception is the safety
path: an emergency stop drives outputs safe from its own callback, then posts the event.
"""

from __future__ import annotations

import importlib
import logging
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge import __version__
from edge.config import LineConfig, StationConfig
from edge.hw import Board, HardwareError, SafetyInterlock
from edge.notify import SystemdNotifier

log = logging.getLogger(__name__)
IDLE, BUSY, FAULT, MANUAL, ESTOP, STARTING, STOPPED = (
    "idle", "busy", "fault", "manual", "estop", "starting", "stopped")


@dataclass
class Event:
    """Something that happened, posted by an adapter for the loop to apply."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)


Handler = Callable[[Event], None]


class Node:
    """Wires one station: board, station module and (later) store, sync and console."""

    def __init__(self, config: StationConfig, line: LineConfig | None = None,
                 notifier: SystemdNotifier | None = None, tick: float = 1.0):
        self.config = config
        self.line = line
        self.notifier = notifier or SystemdNotifier()
        self.tick = tick
        self.queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.board = Board(config.hardware, self.post, config.node.pin_factory)
        self.handlers: dict[str, list[Handler]] = {}
        self.state = STARTING
        self.reason: str | None = None
        self.counters: dict[str, int] = {"events": 0, "scans": 0, "errors": 0}
        self.station: Any = None
        self.running = False
        self.stop_reason = ""
        self.on("stop", self._on_stop)
        self.on("safety", self._on_safety)
        self.on("scan", self._on_scan)
        self.on("input", self._on_input)
        self.on("drive", self._on_drive)

    # -- adapters' side (any thread, signal handlers included)
    def post(self, kind: str, data: dict[str, Any] | None = None) -> None:
        """Queue an event for the loop; thread-safe and safe from a signal handler."""
        self.queue.put(Event(kind, data or {}))

    # -- loop side
    def on(self, kind: str, handler: Handler) -> None:
        """Register a handler for events of `kind`; handlers run on the loop thread, in order."""
        self.handlers.setdefault(kind, []).append(handler)

    def start(self) -> None:
        """Reserve and start the hardware, load the station module, tell systemd we are ready."""
        log.info("node %s (%s, line %s) starting, fabrique-edge %s", self.config.node.id,
                 self.config.station.kind, self.config.node.line, __version__)
        self.board.start()
        self._load_station()
        self._update_state()
        self.notifier.ready(f"{self.state}")
        log.info("ready: station %s is %s%s", self.config.station.kind, self.state,
                 f" ({self.reason})" if self.reason else "")

    def _load_station(self) -> None:
        kind = self.config.station.kind
        try:
            module = importlib.import_module(f"stations.{kind}")
        except ImportError:
            log.info("no station module for kind %r yet: running the generic station", kind)
            return
        loader = getattr(module, "load", None)
        if loader is None:
            return
        try:
            self.station = loader(self)
        except Exception as exc:  # a station that cannot load is a fault, not a crash of the node
            log.exception("station %r failed to load", kind)
            self.station = None
            self.board.faults["station"] = f"station {kind!r} failed to load: {exc}"

    def _update_state(self) -> None:
        tripped = self.board.tripped()
        if tripped:
            self.state, self.reason = ESTOP, f"safety circuit open: {', '.join(tripped)}"
        elif self.board.faults:
            self.state, self.reason = FAULT, "; ".join(f"{k}: {v}" for k, v in self.board.faults.items())
        elif self.state in (STARTING, ESTOP, FAULT):
            self.state, self.reason = IDLE, None

    def run(self) -> int:
        """Run until SIGTERM/SIGINT or a stop event; outputs end in their safe state. Returns 0."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            self.loop()
        finally:
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.post("stop", {"signal": signal.Signals(signum).name})

    def loop(self) -> None:
        """Apply events in order until stopped; ping the systemd watchdog from the loop itself."""
        self.running = True
        interval = SystemdNotifier.watchdog_interval()
        wait = min(self.tick, interval) if interval else self.tick
        last_ping = time.monotonic()
        while self.running:
            try:
                event = self.queue.get(timeout=wait)
            except queue.Empty:
                event = None
            if event is not None:
                self.apply(event)
            if interval and time.monotonic() - last_ping >= interval:
                self.notifier.watchdog()
                last_ping = time.monotonic()

    def apply(self, event: Event) -> None:
        """Run the handlers of one event; a failing handler is logged and counted, never fatal."""
        self.counters["events"] += 1
        for handler in self.handlers.get(event.kind, ()):
            try:
                handler(event)
            except Exception:
                self.counters["errors"] += 1
                log.exception("handler for %s event failed", event.kind)

    def shutdown(self) -> None:
        """Tell systemd we are stopping, put every output in its safe state, release devices."""
        self.running = False
        self.notifier.stopping(self.stop_reason or "stopping")
        self.board.close()
        self.state = STOPPED
        log.info("stopped (%s); outputs in safe state", self.stop_reason or "shutdown")

    # -- built-in handlers
    def _on_stop(self, event: Event) -> None:
        self.stop_reason = event.data.get("signal") or event.data.get("reason", "stop")
        log.info("stop requested: %s", self.stop_reason)
        self.running = False

    def _on_safety(self, event: Event) -> None:
        name, tripped = event.data["device"], event.data["tripped"]
        if tripped:
            log.warning("safety circuit %s open: outputs forced to safe state", name)
        else:
            log.info("safety circuit %s closed again", name)
        self._update_state()

    def _on_scan(self, event: Event) -> None:
        self.counters["scans"] += 1
        log.info("scan on %s (%d characters)", event.data["device"], len(event.data["text"]))

    def _on_drive(self, event: Event) -> None:
        """Set an output (manual override, station logic); refused while a safety circuit is open."""
        try:
            self.board.drive(event.data["device"], bool(event.data["value"]))
        except (KeyError, SafetyInterlock) as exc:
            log.warning("drive %s refused: %s", event.data.get("device"), exc)
            reply = event.data.get("reply")
            if reply is not None:
                reply(str(exc))

    def _on_input(self, event: Event) -> None:
        log.debug("input %s -> %s", event.data["device"], event.data["value"])

    def get_status(self) -> dict[str, Any]:
        """The station state as dashboards and the console see it."""
        status: dict[str, Any] = {
            "node": self.config.node.id, "kind": self.config.station.kind, "state": self.state,
            "reason": self.reason, "counters": dict(self.counters), "devices": self.board.status(),
        }
        if self.station is not None and hasattr(self.station, "get_status"):
            status["station"] = self.station.get_status()
        return status


def start_error(exc: Exception) -> str:
    """One line for a node that cannot start (pin conflict, unknown factory)."""
    if isinstance(exc, HardwareError):
        return f"hardware: {exc}"
    return f"{type(exc).__name__}: {exc}"
