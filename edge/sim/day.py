"""A day at the trailer: visitors, an operator and faults, played against a running simulated line.

Nothing here decides what a station does; it plays the people and the bad luck around the
line, through the same seams a real line has:

    visitors  arrive at seeded moments, each with a signed QR code, and scan it at the intake
              (a line into the scanner's FIFO). A full line ("come back in a few minutes") or no
              free carrier: they wait and scan again. Once their stand waits in a locker, they
              scan the code at the pickup; the world behind the pins opens and shuts the door.
    operator  a failed step that leaves a part stuck in a machine (a power cut in the middle of
              engraving or printing, a move cut short) is `retry`'d at that station's console
              after a while, as the technician would; a part that fails MAX_RETRIES times is
              taken out and its job cancelled with the reason.
    chaos     each fault of `--chaos` at a seeded moment while parts are on the line:
              broker  the hub's mosquitto frozen (SIGSTOP) or killed, then back
              node    one station's process killed (kill -9) and restarted, as systemd does
              power   the whole trailer loses power: the broker, every node and their machines
              clock   a station loses power and comes back with its clock an hour behind (no RTC)
              serial  noise on the printer's serial cable for a few seconds

What the day did is told to the view as it happens; whether the line coped is checked from the
stations' ledgers afterwards (edge.sim.report), never from this bookkeeping.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CHAOS_KINDS = ("broker", "node", "serial", "power", "clock")
ARRIVAL_S = 4.0  # mean time between two visitors at the intake (at --speed 1)
RETRY_SCAN_S = 6.0  # a visitor told the line is full comes back this much later
OPERATOR_S = 3.0  # the operator notices a stuck part and types `retry` after this long
MAX_RETRIES = 3
STUCK_STEPS = ("laser", "printer", "transfer")  # a failed step there leaves the part in the machine
CLOCK_BEHIND_S = 3600.0
FIRST_STAND_S = 14.0  # about how long the line takes to make one stand, scan to locker (at --speed 1)
NEXT_STAND_S = 6.0  # and each further stand, once the line is full (the slowest station's pace)


def expected_day_s(visitors: int, speed: float = 1.0) -> float:
    """About how long a day of `visitors` takes without faults: where to plan the faults."""
    return (FIRST_STAND_S + NEXT_STAND_S * max(0, visitors - 1)) / speed

NAMES = ("Zoé", "François", "Léa", "Noël", "Chloé", "Jérôme", "Maëlle", "Aurélien", "Hélène", "Benoît",
         "Cécile", "Gaëtan", "Anaïs", "Loïc", "Ophélie", "Joël", "Béatrice", "Théo", "Inès", "Raphaël")
COLOURS = ("red", "blue", "green", "white", "black")


@dataclass
class Visitor:
    name: str
    colour: str
    job: str
    payload: str
    arrives_s: float
    launched_s: float | None = None
    scans: int = 0
    pickup_scans: int = 0
    last_pickup_scan: float = 0.0
    outcome: str = ""  # "completed", "failed: <reason>" once their day is over

    @property
    def text(self) -> str:
        return self.name


@dataclass
class Fault:
    at_s: float
    kind: str
    target: str = ""
    done: bool = False


def make_visitors(n: int, rng: random.Random, speed: float = 1.0, key: Any = None) -> list[Visitor]:
    """`n` visitors with first names (accents as phones type them) and colours from `rng`, each
    with an order signed by the EXAMPLE order key, arriving on average ARRIVAL_S / speed apart."""
    from edge.orders import Order, private_key_from_pem, sign_order
    from edge.sim.line import EXAMPLE_ORDER_KEY

    key = key or private_key_from_pem(EXAMPLE_ORDER_KEY.read_bytes())
    now = int(time.time())
    stem = f"V{now % 100000:05d}"
    at = 0.0
    out = []
    for i in range(n):
        name, colour = rng.choice(NAMES), rng.choice(COLOURS)
        job = f"{stem}{_suffix(i)}"
        order = Order(job, "stand", {"colour": colour, "text": name}, issued_at=now, expires_at=now + 86400,
                      key_id="example-1")
        out.append(Visitor(name, colour, job, sign_order(order, key), round(at, 2)))
        at += rng.expovariate(speed / ARRIVAL_S)
    return out


def _suffix(i: int) -> str:
    """AA, AB, ... AZ, BA, ...: two letters, order ids that sort in arrival order (up to 676)."""
    return chr(ord("A") + i // 26) + chr(ord("A") + i % 26)


def plan_chaos(kinds: list[str], rng: random.Random, begin_s: float, end_s: float,
               stations: list[str]) -> list[Fault]:
    """Each fault kind once, at a seeded moment between `begin_s` and `end_s`, in time order,
    apart (each strikes once the one before has recovered, on the chaos thread)."""
    slots = len(kinds)
    span = max(end_s - begin_s, 1.0)
    order = list(kinds)
    rng.shuffle(order)
    faults = []
    for i, kind in enumerate(order):
        lo = begin_s + span * i / slots
        at = rng.uniform(lo, lo + span / slots * 0.6)
        target = ""
        if kind in ("node", "clock"):
            target = rng.choice(stations)
        elif kind == "broker":
            target = rng.choice(("freeze", "kill"))
        faults.append(Fault(round(at, 1), kind, target))
    return faults


@dataclass
class Day:
    """Plays the visitors, the operator and the faults against a running line; `run()` returns
    when every visitor's day is over (their stand taken, or their job failed with a reason)."""

    broker: Any  # edge.sim.line.SimBroker
    nodes: dict[str, Any]  # station kind -> edge.sim.line.SimNode
    visitors: list[Visitor]
    faults: list[Fault]
    view: Any  # edge.sim.view.LineView
    speed: float = 1.0
    rng: random.Random = field(default_factory=random.Random)
    injected: dict[str, int] = field(default_factory=dict)
    operator_actions: dict[str, int] = field(default_factory=dict)
    began: float = field(default_factory=time.monotonic)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)  # job -> its last state seen
    retries: dict[tuple[str, str], int] = field(default_factory=dict)
    failed_since: dict[tuple[str, str], float] = field(default_factory=dict)
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)  # station kind -> its status this round
    on_belt: dict[str, float] = field(default_factory=dict)  # job -> since when its tray sits on the belt unmoved
    scanning: tuple[Visitor, float, tuple[int, int]] | None = None
    queue: list[Visitor] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    chaos_errors: list[str] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.began

    # -- the day
    def run(self, timeout_s: float) -> list[Visitor]:
        self.began = time.monotonic()
        self.queue = list(self.visitors)
        chaos = threading.Thread(target=self._chaos, name="chaos", daemon=True)
        chaos.start()
        deadline = self.began + timeout_s
        try:
            while any(not v.outcome for v in self.visitors):
                if time.monotonic() > deadline:
                    left = [f"{v.job} ({self.states.get(v.job, {}).get('status', 'not launched')})"
                            for v in self.visitors if not v.outcome]
                    raise AssertionError(f"the day did not end in {timeout_s:.0f} s; still open: {', '.join(left)}")
                self._look()
                self._intake()
                self._pickup_and_operator()
                time.sleep(0.2)
            chaos.join()  # every planned fault strikes, even on a line gone quiet, and recovers first
        finally:
            self.stop.set()
        return self.visitors

    def _node(self, kind: str) -> Any | None:
        node = self.nodes.get(kind)
        return node if node is not None and node.running else None

    def _ask(self, kind: str, line: str, timeout: float = 5) -> Any:
        node = self._node(kind)
        if node is None:
            return None
        try:
            return node.command(line, timeout)
        except (RuntimeError, OSError, AttributeError, ValueError):  # down, or killed while asked
            return None

    def _look(self) -> None:
        """What the line shows: each station's status and the jobs of the day, from the pickup
        (else any station that answers)."""
        for kind, node in self.nodes.items():
            status = self._ask(kind, "status") if node.running else None
            self.statuses[kind] = status or {}
            self.view.station(node.name, status if status is not None else {"state": "down"})
        jobs = None
        for kind in ("pickup", *self.nodes):
            jobs = self._ask(kind, "jobs")
            if jobs is not None:
                source = kind
                break
        if jobs is None:
            return
        open_now = {s["job"]: s for s in jobs}
        for v in self.visitors:
            if v.launched_s is None or v.outcome:
                continue
            state = open_now.get(v.job)
            if state is None and v.job in self.states:  # closed since: how?
                state = self._ask(source, f"job {v.job}")
            if state is not None:
                self.states[v.job] = state
                self.view.job(state)

    # -- visitors at the intake, one at a time (one scanner)
    def _intake(self) -> None:
        now = self.now()
        if self.scanning is not None:
            visitor, since, before = self.scanning
            answer = self._scan_answer(visitor, before)
            if answer == "launched":
                visitor.launched_s = now
                self.scanning = None
            elif answer in ("line_full", "no_carrier") or now - since > 10:
                visitor.arrives_s = now + RETRY_SCAN_S / self.speed  # comes back later
                self.queue.append(visitor)
                self.queue.sort(key=lambda v: v.arrives_s)
                self.scanning = None
            elif answer is not None:  # refused for good: their day is over
                visitor.outcome = f"failed: refused at the intake: {answer}"
                self.view.say(f"   {visitor.name}'s order {visitor.job} was refused at the intake: {answer}")
                self.scanning = None
            return
        if not self.queue or self.queue[0].arrives_s > now:
            return
        visitor = self.queue[0]
        status = self._ask("intake", "status")
        if status is None:
            return  # the intake is down: the visitor waits in front of it
        counters = _intake_counters(status)
        try:
            self.nodes["intake"].scan(visitor.payload)
        except OSError:
            return
        self.queue.pop(0)
        visitor.scans += 1
        if visitor.scans == 1:
            self.view.visitor(visitor.job, visitor.name, visitor.colour, visitor.text)
        self.scanning = (visitor, now, counters)

    def _scan_answer(self, visitor: Visitor, before: tuple[int, int]) -> str | None:
        known = self._ask("intake", f"job {visitor.job}")
        if known is not None:
            return "launched"
        status = self._ask("intake", "status")
        if status is None or _intake_counters(status) == before:
            return None
        last = status.get("station", {}).get("last_scan")
        if not last:
            return None  # restarted since: the scan may never have been read
        return "launched" if last.get("ok") else last.get("reason", "refused")

    # -- at the pickup, and the operator
    def _pickup_and_operator(self) -> None:
        now = self.now()
        for v in self.visitors:
            state = self.states.get(v.job)
            if v.outcome or state is None:
                continue
            status = state.get("status")
            if status == "completed":
                v.outcome = "completed"
                continue
            if status == "cancelled":
                v.outcome = "failed: cancelled"
                continue
            steps = {s["step"]: s for s in state.get("steps", [])}
            failed = next((s for s in state.get("steps", []) if s.get("on_route") and s["status"] == "failed"), None)
            if failed is not None:
                self._operator(v, failed, now)
                continue
            if state.get("position") == "transfer" and self._move_cut(v, now):
                continue
            self.on_belt.pop(v.job, None)
            pickup = steps.get("pickup", {})
            if pickup.get("status") == "running" and now - v.last_pickup_scan > 15 / self.speed:
                node = self._node("pickup")
                try:
                    if node is not None:
                        node.scan(v.payload)
                        v.pickup_scans += 1
                        v.last_pickup_scan = now
                except OSError:
                    pass

    def _move_cut(self, visitor: Visitor, now: float) -> bool:
        """A tray on the belt that the transfer is not moving (its move was cut by a power cut):
        the operator puts it back where it came from and types `retry` at the transfer."""
        status = self.statuses.get("transfer") or {}  # as read this round by _look
        moving = ((status.get("station") or {}).get("moving") or {}).get("job")
        if moving == visitor.job or not status:
            self.on_belt.pop(visitor.job, None)
            return True
        since = self.on_belt.setdefault(visitor.job, now)
        if now - since >= 2 * OPERATOR_S / self.speed and self._ask("transfer", f"retry {visitor.job}") is not None:
            self.on_belt.pop(visitor.job, None)
            self._acted("retry", f"retry {visitor.job} at {self.nodes['transfer'].name} (its move was cut: "
                                 f"the tray put back)")
        return True

    def _operator(self, visitor: Visitor, step: dict[str, Any], now: float) -> None:
        key = (visitor.job, step["step"])
        reason = step.get("reason") or "no reason"
        if step["step"] not in STUCK_STEPS:
            visitor.outcome = f"failed: {step['step']}: {reason}"  # the part left the line (reject chute)
            return
        since = self.failed_since.setdefault(key, now)
        if now - since < OPERATOR_S / self.speed:
            return
        tries = self.retries.get(key, 0)
        if tries >= MAX_RETRIES:
            what = f"cancel {visitor.job} part taken out of the {step['step']} after {tries} retries: {reason}"
            # the operator is sure (the part is out): a script's yes is --force (docs/console.md)
            if self._ask(step["step"], what + " --force") is not None or self._ask("pickup", what + " --force") is not None:
                self._acted("cancel", f"{what} (at {step['step']})")
                visitor.outcome = f"failed: {step['step']}: {reason}"
            return
        # GRBL stays locked after an alarm (a reset in motion, a power cut): the operator looks at
        # the machine, then unlocks it before the retry, as docs/stations.md says
        locked = step["step"] == "laser" and re.search(r"ALARM|error:9\b", reason)
        if locked and self._ask("laser", "unlock") is not None:
            self._acted("unlock", f"unlock at {self.nodes['laser'].name} (GRBL locked: {reason})")
        if self._ask(step["step"], f"retry {visitor.job}") is not None:
            self.retries[key] = tries + 1
            self.failed_since.pop(key, None)
            self._acted("retry", f"retry {visitor.job} at {self.nodes[step['step']].name} ({reason})")

    def _acted(self, what: str, text: str) -> None:
        self.operator_actions[what] = self.operator_actions.get(what, 0) + 1
        self.view.operator(text)

    # -- chaos, on its own thread
    def _chaos(self) -> None:
        for fault in self.faults:
            while self.now() < fault.at_s:
                if self.stop.wait(0.1):
                    return
            try:
                FAULTS[fault.kind](self, fault)
            except (RuntimeError, OSError, AssertionError) as exc:
                self.chaos_errors.append(f"{fault.kind}: {exc}")
                self.view.chaos(fault.kind, f"could not recover: {exc}")
                continue
            fault.done = True
            self.injected[fault.kind] = self.injected.get(fault.kind, 0) + 1

    def pause(self, seconds: float) -> None:
        time.sleep(seconds / self.speed)

    def restart(self, nodes: list[Any], clock_skew_s: float = 0.0) -> None:
        for node in nodes:
            node.spawn(clock_skew_s)
        for node in nodes:
            node.ready(60)


def _broker(day: Day, fault: Fault) -> None:
    if fault.target == "freeze":
        day.view.chaos("broker", "the hub's mosquitto hangs (SIGSTOP): every station's link goes quiet")
        day.broker.pause()
        day.pause(6)
        day.broker.resume()
        day.view.chaos("broker", "mosquitto runs again (SIGCONT)", recovered=True)
    else:
        day.view.chaos("broker", "the hub's mosquitto is killed (kill -9); the stations work on, offline")
        day.broker.kill()
        day.pause(5)
        day.broker.start()
        day.view.chaos("broker", "mosquitto restarted: the outboxes drain", recovered=True)


def _node(day: Day, fault: Fault) -> None:
    node = day.nodes[fault.target]
    day.view.chaos("node", f"{node.name} crashes (kill -9)")
    node.kill()
    day.pause(3)
    day.restart([node])
    day.view.chaos("node", f"{node.name} restarted by systemd", recovered=True)


def _power(day: Day, fault: Fault) -> None:
    day.view.chaos("power", "the trailer loses power: the hub, every station and their machines")
    day.broker.kill()
    for node in day.nodes.values():
        node.kill()
        node.power_cut_machines()
    day.pause(4)
    day.broker.start()
    day.restart(list(day.nodes.values()))
    day.view.chaos("power", "power is back: the hub and the six stations boot", recovered=True)


def _clock(day: Day, fault: Fault) -> None:
    node = day.nodes[fault.target]
    day.view.chaos("clock", f"{node.name} loses power and boots with no real-time clock: an hour behind")
    node.kill()
    node.power_cut_machines()
    day.pause(2)
    day.restart([node], clock_skew_s=-CLOCK_BEHIND_S)
    day.view.chaos("clock", f"{node.name} runs {CLOCK_BEHIND_S / 3600:g} h behind the others", recovered=True)


def _serial(day: Day, fault: Fault) -> None:
    from firmware_bridge.sim.noise import LineNoise

    node = day.nodes["printer"]
    line = next(iter(node.lines.values()), None)
    if line is None:
        raise RuntimeError("the printer has no simulated serial line to disturb")
    day.view.chaos("serial", f"noise on {node.name}'s serial cable (bit errors, lost and stray bytes)")
    line.crackle(LineNoise(bit_error_rate=2e-4, drop_rate=5e-4, inject_rate=5e-4))
    day.pause(5)
    line.crackle(None)
    day.view.chaos("serial", f"{node.name}'s cable is clean again", recovered=True)


FAULTS: dict[str, Callable[[Day, Fault], None]] = {
    "broker": _broker, "node": _node, "power": _power, "clock": _clock, "serial": _serial}


def _intake_counters(status: dict[str, Any]) -> tuple[int, int]:
    station = status.get("station") or {}
    return int(station.get("launched", 0)), sum((station.get("refused") or {}).values())
