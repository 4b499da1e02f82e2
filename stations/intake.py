"""Intake: a visitor scans the QR code of the stand they designed; the job is launched here.

Pure: events in, actions out (edge.engine). A scan is verified against the line's order keys
and catalogue; a good order launches its job (the `created` event, the route from the line
file), binds it to a carrier (scanned by a carrier reader, or the next free one of the pool),
and records the intake step done: the visitor sees green. A bad one (forged, expired, unknown
product, bad option, garbage), a second scan of a launched order, a full line or no free
carrier: red, with the reason in the station's message. Nothing else is recorded for those.

`[station]` keys (besides `kind`, `title` and the lamps):
    scanner           the scanner the visitor uses (default: every scanner but the carrier reader)
    carrier_scanner   a reader of carrier codes; a carrier scanned within `carrier_window_s`
                      before the order is the one bound (default: none, the pool is used)
    carriers          the pool of carrier codes, e.g. ["T01", "T02", ...]
    carrier_window_s  seconds a scanned carrier waits for its order (default 30)
    max_open_jobs     the line is full above this many open jobs (default 30)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from edge.configfile import Section
from edge.engine import Action, Boot, Event, Flash, Record, Scan, StationInfo, Tell, View, check_hardware
from edge.orders import verify_order

CARRIER_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")


@dataclass(frozen=True)
class IntakeOptions:
    scanner: str | None = None
    carrier_scanner: str | None = None
    carriers: tuple[str, ...] = ()
    carrier_window_s: int = 30
    max_open_jobs: int = 30


def read_config(s: Section) -> IntakeOptions:
    scanner = s.get_str("scanner", None)
    carrier_scanner = s.get_str("carrier_scanner", None)
    carriers = s.get_str_list("carriers", [])
    for code in carriers or ():
        if not CARRIER_RE.fullmatch(code):
            s.issue("carriers", f"{code!r} is not a carrier code (1-32 of A-Z a-z 0-9 _ . -)")
    if carriers and len(set(carriers)) != len(carriers):
        s.issue("carriers", "names a carrier twice")
    if not carriers and not carrier_scanner:
        s.issue("carriers", "list the carrier pool (e.g. [\"T01\", \"T02\"]) or set carrier_scanner")
    window = s.get_int("carrier_window_s", 30, 1, 600)
    max_open = s.get_int("max_open_jobs", 30, 1, 10_000)
    return IntakeOptions(scanner, carrier_scanner, tuple(carriers or ()), window or 30, max_open or 30)


@dataclass
class Intake:
    """The intake's decisions; its memory is only what the ledger cannot tell (a carrier just
    scanned, counters)."""

    options: IntakeOptions
    info: StationInfo
    pending_carrier: tuple[str, float] | None = None
    launched: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    last: dict[str, Any] | None = None

    def handle(self, event: Event, view: View) -> list[Action]:
        if isinstance(event, Boot):
            return []  # launching is one instant: nothing is left half-done by a power cut
        if not isinstance(event, Scan):
            return []
        if self.options.carrier_scanner and event.device == self.options.carrier_scanner:
            return self._carrier_scanned(event.text.strip(), view)
        if self.options.scanner and event.device != self.options.scanner:
            return []
        return self._order_scanned(event.text.strip(), view)

    def _carrier_scanned(self, code: str, view: View) -> list[Action]:
        if not CARRIER_RE.fullmatch(code):
            return self._refuse("bad_carrier", f"{code[:40]!r} is not a carrier code")
        if code in view.carriers:
            return self._refuse("carrier_busy", f"carrier {code} still carries job {view.carriers[code]}")
        self.pending_carrier = (code, view.now)
        return [Tell(f"carrier {code} ready: scan the visitor's code")]

    def _order_scanned(self, payload: str, view: View) -> list[Action]:
        if view.line is None:
            return self._refuse("no_line", "no line file loaded")
        verdict = verify_order(payload, view.line, view.now)
        if not verdict.ok or verdict.order is None:
            return self._refuse(verdict.reason, f"order refused: {verdict.reason}: {verdict.detail}")
        order = verdict.order
        known = view.jobs.get(order.order_id) or view.lookup(order.order_id)
        if known is not None and known.created_by:
            where = f", at the {known.position}" if known.is_open and known.position else ""
            return self._refuse("already_launched", f"order {order.order_id} was already launched "
                                                     f"({known.status}{where})")
        if len(view.jobs) >= self.options.max_open_jobs:
            return self._refuse("line_full", f"the line is full ({len(view.jobs)} jobs open): "
                                             f"please come back in a few minutes")
        carrier = self._carrier(view)
        if carrier is None:
            return self._refuse("no_carrier", "no free carrier" if not self.options.carrier_scanner
                                else "scan a free carrier first, then the visitor's code")
        route = view.line.products[order.product].route
        job = order.order_id
        self.launched += 1
        self.pending_carrier = None
        self.last = {"ok": True, "job": job, "carrier": carrier}
        actions: list[Action] = [Record(job, "created", order.launch_data(route)),
                                 Record(job, "carrier", {"carrier": carrier})]
        if self.info.kind in route:
            actions += [Record(job, "step_started", {"step": self.info.kind}),
                        Record(job, "step_done", {"step": self.info.kind})]
        return actions + [Flash("green"), Tell(f"job {job} launched on carrier {carrier}: "
                                              f"{' -> '.join(route)}")]

    def _carrier(self, view: View) -> str | None:
        if self.options.carrier_scanner:
            if self.pending_carrier is None:
                return None
            code, at = self.pending_carrier
            fresh = view.now - at <= self.options.carrier_window_s
            return code if fresh and code not in view.carriers else None
        return next((c for c in self.options.carriers if c not in view.carriers), None)

    def _refuse(self, reason: str, text: str) -> list[Action]:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self.last = {"ok": False, "reason": reason, "text": text}
        return [Flash("red", buzz=True), Tell(text, ok=False)]

    def get_status(self) -> dict[str, Any]:
        return {"launched": self.launched, "refused": dict(self.refused), "last_scan": self.last,
                "carriers": "scanned" if self.options.carrier_scanner else f"pool of {len(self.options.carriers)}",
                "waiting_carrier": self.pending_carrier[0] if self.pending_carrier else None}


def hardware(options: IntakeOptions) -> list[tuple[str, str | None, str]]:
    """The devices the keys name, with the type each must be (checked by `edge check-config`)."""
    return [("scanner", options.scanner, "scanner"), ("carrier_scanner", options.carrier_scanner, "scanner")]


def machine(options: IntakeOptions | None, info: StationInfo) -> Intake:
    options = options or IntakeOptions(carriers=tuple(f"T{n:02d}" for n in range(1, 13)))
    check_hardware(hardware(options), info)
    return Intake(options, info)
