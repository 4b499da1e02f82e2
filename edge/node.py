"""One node: a single loop thread that owns all state, fed by events from every adapter.

Hardware callbacks, scanner reads, MQTT messages and console lines are posted to one queue
(Klipper's reactor idea); the loop applies them in order. The one exception is the safety
path: an emergency stop drives outputs safe from its own callback, then posts the event.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge import __version__
from edge.config import LineConfig, StationConfig, advice
from edge.console import SerialConsole, SocketConsole, StreamConsole
from edge.control import CommandError, CommandSet, OperatorGuard
from edge.hw import Board, HardwareError, SafetyInterlock
from edge.hw.serialport import port_identity
from edge.ledger import Event as LedgerEvent
from edge.ledger import EventVerifier
from edge.node_commands import NodeCommands
from edge.node_mqtt import NodeMqtt
from edge.nodekey import NodeKeyError, line_entry, load_or_create
from edge.notify import SystemdNotifier
from edge.store import Store, StoreBusy, wall_ms

log = logging.getLogger(__name__)
HEALTHY_TICK_S = 30.0  # a tick failing for this long stops the watchdog pings: systemd restarts the node
IDLE, BUSY, FAULT, MANUAL, ESTOP, STARTING, STOPPED = (
    "idle", "busy", "fault", "manual", "estop", "starting", "stopped")


class LedgerWriteError(CommandError):
    """The disk refused a ledger write: nothing of the event was kept (the node is in fault)."""


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
                 notifier: SystemdNotifier | None = None, tick: float = 1.0,
                 archive_every_s: float = 60.0):
        self.config = config
        self.line = line
        self.notifier = notifier or SystemdNotifier()
        self.tick = tick
        self.queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.board = Board(config.hardware, self.post, config.node.pin_factory)
        self.handlers: dict[str, list[Handler]] = {}
        self.state = STARTING
        self.reason: str | None = None
        self.state_since_ms = 0  # when `state` last changed (the node's best wall clock, ms)
        # events: ledger events recorded here; events_in: from peers; loop_events: everything
        # the loop applied (MQTT acks, ticks, console lines...); only the first ones are news
        self.counters: dict[str, int] = {"events": 0, "events_in": 0, "scans": 0, "errors": 0}
        self.loop_events = 0
        self.station: Any = None
        self.running = False
        self.stop_reason = ""
        self.store: Store | None = None
        # the wall clock (ms) the ledger stamps events with; the simulated world may set it back
        self.wall: Callable[[], int] = wall_ms
        self.current_job: str | None = None
        self.sync: Any = None
        self.session = 0
        self.archive_every_s = archive_every_s
        self.last_archive = time.monotonic()
        self.last_retry = time.monotonic()
        self.tick_ok_at = time.monotonic()  # the last tick that completed (health, watchdog)
        self.mqtt = NodeMqtt(self)  # sets self.sync once MQTT starts
        self.commands = CommandSet()
        self.consoles: list[Any] = []
        self._console_words: dict[str, list[str]] = {"commands": [], "devices": [], "jobs": []}
        # run once the pins exist, before the station boots (the simulated world wires its sensors)
        self.board_ready: list[Callable[[], None]] = []
        self.node_commands = NodeCommands(self)
        self.on("stop", self._on_stop)
        self.on("console_line", self._on_console_line)
        for kind in ("mqtt_connected", "mqtt_disconnected", "mqtt_unreachable", "mqtt_puback", "mqtt_suback",
                     "mqtt_message"):
            self.on(kind, self._on_mqtt)
        self.on("safety", self._on_safety)
        self.on("scan", self._on_scan)
        self.on("input", self._on_input)
        self.on("drive", self._on_drive)
        self.on("device_fault", self._on_device_fault)

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
        for hook in self.board_ready:
            hook()
        self._open_store()
        self._load_station()
        self._refresh_current_job()
        self.mqtt.start()
        self._start_consoles()
        self.notifier.ready(f"{self.state}")
        log.info("ready: station %s is %s%s", self.config.station.kind, self.state,
                 f" ({self.reason})" if self.reason else "")

    def _open_store(self) -> None:
        node = self.config.node
        for warning in advice(self.config, self.line):
            log.warning("config: %s", warning)
        signer = None
        try:
            signer, made = load_or_create(node.key_file)
            if made:
                log.warning("made this node's signing key %s; add under [nodes.keys] in %s on every node: %s",
                            node.key_file, node.line_file, line_entry(node.id, signer))
        except (NodeKeyError, OSError) as exc:
            self.board.faults["ledger"] = f"no signing key: {exc}"
            log.error("node key %s: %s", node.key_file, exc)
        keys = self.line.node_keys if self.line is not None else {}
        if signer is not None and self.config.mqtt.enabled and signer.public_key not in keys.get(node.id, ()):
            self.board.faults["ledger"] = (f"this node's key is not listed for {node.id} in the line file "
                                           f"[nodes.keys]: peers refuse its events")
            log.error("%s; add: %s", self.board.faults["ledger"], line_entry(node.id, signer))
        self.store = Store.open(node.data_dir, node.id, wall=self.wall, signer=signer,
                                verifier=EventVerifier(keys))
        for note in self.store.recovery:
            log.warning("store recovery: %s", note)
        log.info("ledger: origin %s (events %s:<seq>)", self.store.origin, self.store.origin)
        self.session = next_session(node.data_dir)

    def _start_consoles(self) -> None:
        console = self.config.console
        if console.pin_hash:
            self.commands.guard = OperatorGuard(console.pin_hash, console.pin_timeout_s, console.lockout_after,
                                                console.lockout_s)
        self._refresh_console_words()
        if not console.enabled:
            return
        banner = (f"fabrique-edge {__version__} console of {self.config.node.id} "
                  f"({self.config.station.kind}): type help, Tab completes, Up recalls")
        if console.stdin:
            self.consoles.append(StreamConsole(self.post))
        if console.serial_port:
            self.board.claim(f"port {port_identity(console.serial_port)}", "[console] serial_port")
            self.consoles.append(SerialConsole(self.post, console.serial_port, console.baudrate, banner,
                                               face=console.serial_face, prompt=self.console_prompt,
                                               words=self.console_words, commands=self.commands))
        if console.socket:
            self.consoles.append(SocketConsole(self.post, str(console.socket), banner=banner, prompt=self.console_prompt,
                                               words=self.console_words, commands=self.commands))
        for c in self.consoles:
            c.start()

    def _load_station(self) -> None:
        kind = self.config.station.kind
        from edge.engine import Boot, Engine, PassThrough, StationInfo

        info = StationInfo(self.config.node.id, kind, {n: d.type for n, d in self.config.hardware.items()})
        try:
            module = importlib.import_module(f"stations.{kind}")
        except ImportError:
            log.info("no station module for kind %r yet: running the generic station", kind)
            module = None
        try:
            machine = module.machine(self.config.station.options, info) if module else PassThrough.of(info)
            self.station = Engine(self, machine)
        except Exception as exc:  # a station that cannot load is a fault, not a crash of the node
            log.exception("station %r failed to load", kind)
            self.station = None
            self.board.faults["station"] = f"station {kind!r} failed to load: {exc}"
            return
        for device, (settings, why) in getattr(machine, "required_settings", dict)().items():
            gcode = self.board.gcode.get(device)
            fault = gcode.require(settings, why) if gcode is not None else None
            if fault:
                log.error("[hardware.%s] %s", device, fault)
                self.board.faults[device] = fault
        self.station.feed(Boot({name: device.reading() for name, device in self.board.gcode.items()}))

    def _update_state(self) -> None:
        was = self.state
        self._decide_state()
        if self.state != was:
            self.state_since_ms = self.now_ms()

    def _decide_state(self) -> None:
        tripped = self.board.tripped()
        engine = self.station
        if tripped:
            self.state, self.reason = ESTOP, f"safety circuit open: {', '.join(tripped)}"
        elif engine is not None and engine.latched:
            self.state, self.reason = ESTOP, "emergency stop released: `reset` at the console to go on"
        elif self.board.faults or (engine is not None and engine.fault):
            faults = {**self.board.faults, **({"station": engine.fault} if engine is not None and engine.fault else {})}
            self.state, self.reason = FAULT, "; ".join(f"{k}: {v}" for k, v in faults.items())
        elif self.current_job is not None:  # a step under way, by the station or an operator's hand
            manual = engine is not None and engine.mode == "manual"
            self.state, self.reason = BUSY, "manual mode: an operator drives the station" if manual else None
        elif engine is not None and engine.mode == "manual":
            self.state, self.reason = MANUAL, "manual mode: an operator drives the station"
        else:
            self.state, self.reason = IDLE, None

    def drive_now(self, device: str, value: bool) -> str | None:
        """Set an output from the loop (station logic, lamps); returns why it was refused, if it was."""
        try:
            self.board.drive(device, bool(value))
        except (KeyError, SafetyInterlock) as exc:
            log.debug("drive %s refused: %s", device, exc)
            return str(exc)
        return None

    def _refresh_current_job(self) -> None:
        """The job whose step this node is running, from the ledger (so it survives a restart)."""
        self.current_job = None
        if self.store is None:
            return
        kind, me = self.config.station.kind, self.config.node.id
        for state in self.store.open_jobs():
            step = state.step(kind)
            if step is not None and step.status == "running" and step.node == me:
                self.current_job = state.job
        self._update_state()

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
        last_ping = last_tick = self.tick_ok_at = time.monotonic()
        unwell = ""
        while self.running:
            try:
                event = self.queue.get(timeout=wait)
            except queue.Empty:
                event = None
            if event is not None:
                self.apply(event)
                if self.queue.empty() and self.sync is not None:
                    self._guarded("flush", self.sync.flush)  # group commit: all that arrived, one write
            now = time.monotonic()
            if now - last_tick >= self.tick:
                last_tick = now
                if self._guarded("tick", self._tick):
                    self.tick_ok_at = time.monotonic()
            if interval and now - last_ping >= interval:
                problem = self.health()
                if problem is None:  # a stuck loop never gets here: systemd restarts the node
                    self.notifier.watchdog()
                    last_ping = now
                    if unwell:
                        log.warning("the loop is well again: watchdog pings resume")
                        unwell = ""
                elif problem != unwell:
                    log.error("no watchdog ping: %s (systemd restarts the node after WatchdogSec)", problem)
                    self.notifier.status(f"unwell: {problem}")
                    unwell = problem

    def health(self) -> str | None:
        """Why the node should be restarted, or None: the check the loop makes before each
        watchdog ping. The tick (devices, timers, sync, archive) must have completed recently,
        and the MQTT thread must be alive."""
        quiet = time.monotonic() - self.tick_ok_at
        if quiet > max(HEALTHY_TICK_S, 10 * self.tick):
            return f"the loop's tick has not completed for {quiet:.0f} s (see the errors above)"
        if self.sync is not None and self.sync.network.ident is not None and not self.sync.network.is_alive():
            return "the MQTT thread has died"
        return None

    def _guarded(self, what: str, fn: Callable[[], Any]) -> bool:
        """Nothing from the network, a file or a bug stops the loop: log, count, go on.
        True when `fn` completed."""
        try:
            fn()
            return True
        except Exception:
            self.counters["errors"] += 1
            log.exception("%s failed", what)
            return False

    def apply(self, event: Event) -> None:
        """Run the handlers of one event; a failing handler is logged and counted, never fatal."""
        self.loop_events += 1
        for handler in self.handlers.get(event.kind, ()):
            try:
                handler(event)
            except Exception:
                self.counters["errors"] += 1
                log.exception("handler for %s event failed", event.kind)

    def _tick(self) -> None:
        if "disk" in self.board.faults and self.store is not None:
            try:
                self.store.probe()
            except OSError:
                pass
            else:
                log.warning("the disk takes writes again: fault cleared")
                del self.board.faults["disk"]
                self._update_state()
        if self.store is not None and self.store.audit() and self.sync is not None:
            self.sync.send_vector()  # lost archived events: ask the peers for them now
        if self.station is not None:
            from edge.engine import Tick

            self.station.feed(Tick())
        self.node_commands.tick()
        self._refresh_console_words()
        if time.monotonic() - self.last_retry >= 2.0:
            self.last_retry = time.monotonic()
            self.board.retry_missing()
        if self.sync is not None:
            self.sync.tick()
            self.mqtt.publish_unions()
        if time.monotonic() - self.last_archive >= self.archive_every_s:
            self.last_archive = time.monotonic()
            self.archive()
        self.mqtt.publish_state()

    def shutdown(self) -> None:
        """Tell systemd we are stopping, put every output in its safe state, release devices."""
        self.running = False
        self.notifier.stopping(self.stop_reason or "stopping")
        self.board.close()
        self.state = STOPPED
        for console in self.consoles:
            if hasattr(console, "close"):
                console.close()
        if self.sync is not None:
            self.mqtt.publish_public_node("offline")  # the public's goodbye (the will is the status's)
            self.sync.stop()
            self.sync.flush()  # events received but not yet written: keep them
        if self.store is not None:
            self.store.close()
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

    def _on_device_fault(self, event: Event) -> None:
        """A device went away or came back (a scanner unplugged, a camera with no frames)."""
        name, fault = event.data["device"], event.data.get("fault")
        if fault:
            self.board.faults[name] = fault
        elif self.board.faults.pop(name, None) is not None:
            log.info("%s is back: fault cleared", name)
        self._update_state()
        self.mqtt.publish_state()

    def _on_input(self, event: Event) -> None:
        log.debug("input %s -> %s", event.data["device"], event.data["value"])

    # -- ledger
    def record(self, job: str, type: str, data: dict[str, Any] | None = None) -> LedgerEvent:
        """Append a local event (durable on return), publish the job's state, start the drain.

        Raises LedgerWriteError when the disk refuses the write: the event does not exist,
        and the node is in fault until a write succeeds again."""
        return self.record_many([(job, type, data or {})])[0]

    def record_many(self, records: list[tuple[str, str, dict[str, Any]]]) -> list[LedgerEvent]:
        """Append several local events in one durable write (all or none), then publish.

        Raises LedgerWriteError when the disk refuses the write: none of them exists, and the
        node is in fault until a write succeeds again."""
        assert self.store is not None
        session = self.commands.session
        if session is not None:  # made by a command: the ledger says which console (or MQTT) it came from
            records = [(job, type, {**data, "via": session.origin}) for job, type, data in records]
        try:
            with self.store.batch():
                events = [self.store.append(job, type, self.config.station.kind, data)
                          for job, type, data in records]
        except OSError as exc:
            self._disk_fault(exc)
            raise LedgerWriteError(f"the ledger could not be written ({exc.strerror or exc}): "
                                   f"nothing was recorded") from None
        self.counters["events"] += len(events)
        jobs = sorted({e.job for e in events})
        self.post("ledger_changed", {"jobs": jobs})  # the station hears of it after this action
        self._refresh_current_job()
        for job in jobs:
            self.mqtt.publish_job(job)
        if self.sync is not None:
            self.sync.drain()
        return events

    def record_operator(self, action: str, detail: dict[str, Any], text: str) -> None:
        """An operator action on the station (`mode`, `reset`): logged, counted, and recorded in
        the ledger as a note on every open job at this station (its part is here or its step
        runs here), so a job's history says who switched or reset the station it was at."""
        self.counters[f"operator_{action}"] = self.counters.get(f"operator_{action}", 0) + 1
        log.warning("operator: %s %s", action, detail)
        kind, me = self.config.station.kind, self.config.node.id
        here = [s.job for s in (self.store.open_jobs() if self.store is not None else [])
                if s.position == kind or any(st.status == "running" and st.node == me for st in s.steps)]
        if here:
            self.record_many([(job, "note", {"text": f"operator: {text}", "operator": action, **detail})
                              for job in here])
        self.mqtt.publish_state()

    def _disk_fault(self, exc: OSError) -> None:
        if "disk" not in self.board.faults:
            log.error("ledger write failed: %s; station in fault until the disk takes writes again", exc)
        self.board.faults["disk"] = "disk full" if exc.errno == errno.ENOSPC else f"disk error: {exc.strerror or exc}"
        self._update_state()

    def _on_session(self, session: int) -> None:
        self.session = session
        write_session(self.config.node.data_dir, session)

    def archive(self) -> list[str]:
        """Move closed jobs to the archive; clear the retained job topics this node published."""
        if self.store is None:
            return []
        jobs = self.store.archive_closed()
        for job in jobs:
            self.mqtt.job_archived(job)
        if jobs:
            log.info("archived %d closed job(s)", len(jobs))
        return jobs

    def _on_ingest(self, events: list[LedgerEvent]) -> None:
        self.counters["events_in"] += len(events)
        self.post("ledger_changed", {"jobs": sorted({e.job for e in events})})
        me = self.config.node.id
        if any(e.job == self.current_job or e.node == me for e in events):
            # an operator elsewhere may have overridden our step; or this node's own history
            # is coming back from its peers after a store loss
            self._refresh_current_job()
        if self.sync is not None:
            # checked once a tick, not per batch: a burst of events folds each job once
            self.mqtt.jobs_to_check.update(e.job for e in events if e.job in self.sync.retained_jobs)

    # -- MQTT
    def _on_mqtt(self, event: Event) -> None:
        if self.sync is not None:
            self.sync.handle(event.kind, event.data)

    @property
    def mode(self) -> str:
        """`auto` or `manual`: the station engine's, else the station file's."""
        return getattr(self.station, "mode", None) or self.config.station.mode

    def now_ms(self) -> int:
        """Unix ms by the node's best clock (never below the ledger's latest HLC reading)."""
        return int(self.store.best_time_s() * 1000) if self.store is not None else self.wall()

    def _counters(self) -> dict[str, int]:
        out = dict(self.counters)
        if self.store is not None:
            out["outbox"] = self.store.outbox_size()
        return out

    # -- commands (one registry: console, socket and MQTT)
    def _on_console_line(self, event: Event) -> None:
        session = event.data.get("session")
        reply = self.commands.run_line(event.data["line"], session)
        if not reply.ok and reply.error:
            log.info("console %s: %s", session.origin if session else "stdin", reply.error[:200])
        event.data["reply"](reply)

    def console_prompt(self) -> str:
        """A people's console prompt: `laser-1 [auto|fault]> ` (read from any thread)."""
        mode = getattr(self.station, "mode", None) or "-"
        return f"{self.config.node.id} [{mode}|{self.state}]> "

    def console_words(self) -> dict[str, list[str]]:
        """What a console completes: command, device and open job names (a snapshot the loop
        refreshes every tick; safe to read from a console's thread)."""
        return self._console_words

    def _refresh_console_words(self) -> None:
        jobs = [s.job for s in self.store.open_jobs()] if self.store is not None else []
        self._console_words = {"commands": sorted(self.commands.commands), "devices": sorted(self.config.hardware),
                               "jobs": jobs}

    def get_status(self) -> dict[str, Any]:
        """The station state as dashboards and the console see it."""
        status: dict[str, Any] = {
            "node": self.config.node.id, "kind": self.config.station.kind, "state": self.state,
            "reason": self.reason, "job": self.current_job,
            "version": __version__,  # edge bundle apply checks a restarted node runs the new version
            "counters": {**self.counters, "loop_events": self.loop_events},
            "devices": self.board.status(),
        }
        if self.station is not None and hasattr(self.station, "get_status"):
            status["station"] = self.station.get_status()
        if self.store is not None:
            status["outbox"] = self.store.outbox_size()
            status["vector"] = self.store.vector()
            status["ledger"] = {"origin": self.store.origin, "incarnation": self.store.incarnation,
                                "incarnations": list(self.store.incarnations),
                                "signed": self.store.signer is not None}
        if self.sync is not None:
            status["mqtt"] = self.sync.status()
        return status


def next_session(data_dir: os.PathLike[str] | str) -> int:
    """Count this boot: the session number in birth and will messages (durable, atomic)."""
    try:
        with open(os.path.join(data_dir, "session"), encoding="ascii") as f:
            current = int(f.read().strip() or 0)
    except (OSError, ValueError):
        current = 0
    try:
        write_session(data_dir, current + 1)
    except OSError as exc:  # a full disk must not stop the boot; the session still counts up
        log.error("could not save the session counter: %s", exc)
    return current + 1


def write_session(data_dir: os.PathLike[str] | str, session: int) -> None:
    from edge.storage import write_atomic

    write_atomic(os.path.join(data_dir, "session"), f"{session}\n".encode("ascii"))


def start_error(exc: Exception) -> str:
    """One line for a node that cannot start (pin conflict, unknown factory, store in use)."""
    if isinstance(exc, HardwareError):
        return f"hardware: {exc}"
    if isinstance(exc, StoreBusy):
        return f"store: {exc}"
    return f"{type(exc).__name__}: {exc}"
