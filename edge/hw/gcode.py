"""G-code machines on the node: a GRBL laser or a Marlin printer behind the firmware bridge.

The bridge's drivers block while they stream, so each job runs on a worker thread of its own;
what it does reaches the node loop as posted events, like every other device:

    stream_progress  {device, job, done, total}             at most every PROGRESS_S
    stream_end       {device, job, ok, reason, executed, refused}

A device that is absent or answers wrongly at start is a fault with the reason (the node goes
on without it). The safety path does not wait for the loop: `emergency()` puts the machine in
feed hold from the safety input's own callback, beside the relays going safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from edge.config import HardwareConfig

log = logging.getLogger(__name__)
Post = Callable[[str, dict[str, Any]], None]
PROGRESS_S = 0.5


class GcodeDevice:
    """One G-code machine (`protocol = "grbl"` or `"marlin"`) and the job it streams."""

    def __init__(self, config: HardwareConfig, post: Post):
        self.name = config.name
        self.port = config.port or ""
        self.baudrate = config.baudrate
        self.protocol = config.protocol
        self.post = post
        self.driver: Any = None
        self.version: str | None = None
        self.fault: str | None = None
        self.job: str | None = None
        self.total = 0
        self.done = 0
        self.held = False
        self.thread: threading.Thread | None = None
        self.settings: dict[int, str] = {}  # GRBL's $$, read at open

    def open(self) -> None:
        """Connect and identify the machine; a failure is this device's fault, never a crash."""
        try:
            if self.protocol == "grbl":
                from firmware_bridge.grbl import Grbl

                self.driver = Grbl(self.port, self.baudrate)
                self.version = f"GRBL {self.driver.open()}".strip()
                self.settings = self.driver.settings()
            else:
                from firmware_bridge.marlin import Marlin

                self.driver = Marlin(self.port, self.baudrate)
                self.driver.open()
                self.version = self.driver.identify()
            self.fault = None
            log.info("[hardware.%s] %s on %s", self.name, self.version, self.port)
        except Exception as exc:  # absent port, wrong device, no answer: the reason is the fault
            self.fault = f"{self.port}: {exc}"
            log.warning("[hardware.%s] %s", self.name, self.fault)
            if self.driver is not None:
                self.driver.close()
            self.driver = None

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, job: str, lines: Sequence[str], start: int = 0,
              on_fault: Callable[[], None] | None = None, check: bool = False) -> str | None:
        """Stream `lines` from index `start` on a worker thread; returns why not, if it cannot."""
        if self.driver is None:
            return self.fault or f"[hardware.{self.name}] is not connected"
        if self.busy:
            return f"[hardware.{self.name}] is busy with job {self.job}"
        self.job, self.total, self.done, self.held = job, len(lines), start, False
        self.thread = threading.Thread(target=self._run, args=(job, list(lines), start, on_fault, check),
                                       name=f"stream-{self.name}", daemon=True)
        self.thread.start()
        return None

    def _run(self, job: str, lines: list[str], start: int, on_fault: Callable[[], None] | None,
             check: bool) -> None:
        last = 0.0

        def progress(done: int) -> None:
            nonlocal last
            self.done = done
            now = time.monotonic()
            if now - last >= PROGRESS_S or done == len(lines):
                last = now
                self.post("stream_progress", {"device": self.name, "job": job, "done": done, "total": len(lines),
                                              "readings": self._temperatures(getattr(self.driver, "temperatures", None))})

        end: dict[str, Any] = {"device": self.name, "job": job, "ok": True, "reason": "", "refused": []}
        try:
            if check and self.protocol == "grbl":
                errors = self.driver.check(lines)
                if errors:
                    refused = [getattr(e, "line_number", 0) for e in errors]
                    self.post("stream_end", {**end, "ok": False, "executed": start, "refused": refused,
                                             "reason": f"check mode refused {len(errors)} line(s), first: {errors[0]}"})
                    return
            kwargs: dict[str, Any] = {"start": start, "on_progress": progress}
            if self.protocol == "grbl":  # GRBL cuts the relays first on a fault; Marlin: the except below
                kwargs["on_fault"] = on_fault
            report = self.driver.stream(lines, **kwargs)
            end["executed"] = getattr(report, "executed", None) or getattr(report, "position", len(lines))
        except Exception as exc:
            if on_fault is not None:
                on_fault()
            executed = getattr(exc, "executed", None)
            end.update(ok=False, reason=str(exc) or type(exc).__name__,
                       executed=executed if isinstance(executed, int) else getattr(exc, "position", self.done),
                       refused=list(getattr(exc, "refused", []) or []))
            log.warning("[hardware.%s] job %s stopped: %s", self.name, job, end["reason"])
        self.post("stream_end", end)

    def reading(self) -> dict[str, Any]:
        """What the machine says of itself now (a Marlin: its temperatures, M105); {} if nothing."""
        if self.driver is None or self.protocol != "marlin" or self.busy:
            return {}
        try:
            return self._temperatures(self.driver.report_temperatures())
        except Exception as exc:  # no answer: the station's rule decides without it
            log.warning("[hardware.%s] no temperature report: %s", self.name, exc)
            return {}

    @staticmethod
    def _temperatures(temps: Any) -> dict[str, Any]:
        if temps is None:
            return {}
        return {name: value for name, value in (("bed", temps.bed), ("hotend", temps.hotend)) if value is not None}

    # -- the operator's and the safety path's
    def emergency(self) -> None:
        """Feed hold at once (any thread): the safety input's callback calls this. GRBL holds
        in its planner (`!`); the Marlin driver stops sending between lines."""
        if self.driver is not None:
            try:
                self.driver.feed_hold()
                self.held = self.busy  # an idle machine has nothing to hold: nothing to resume
            except Exception as exc:  # the relays are off anyway; say why the hold failed
                log.error("[hardware.%s] feed hold failed: %s", self.name, exc)

    def hold(self) -> None:
        self.emergency()

    def release(self) -> None:
        """After a stop was reset: an idle machine the stop put in feed hold goes back to idle
        (GRBL holds even when idle); a job's hold is its station's to resume."""
        if self.driver is not None and not self.busy:
            try:
                self.resume()
            except Exception as exc:  # gone: its fault says so
                log.warning("[hardware.%s] could not leave the hold: %s", self.name, exc)

    def resume(self) -> None:
        if self.driver is not None:
            self.driver.resume()
            self.held = False

    def command(self, line: str) -> None:
        if self.driver is None:
            raise RuntimeError(self.fault or f"[hardware.{self.name}] is not connected")
        if self.busy:
            raise RuntimeError(f"[hardware.{self.name}] is busy with job {self.job}")
        if self.held or (self.protocol == "grbl" and self.driver.status().state.startswith("Hold")):
            raise RuntimeError(f"[hardware.{self.name}] is held: `resume` first")
        self.driver.command(line)

    def require(self, settings: dict[int, str], why: str) -> str | None:
        """A fault if the machine's settings are not `settings` (e.g. GRBL's laser mode $32=1)."""
        if self.driver is None or self.protocol != "grbl":
            return None
        wrong = {n: self.settings.get(n) for n, v in settings.items() if self.settings.get(n) != v}
        if wrong:
            self.fault = (f"{', '.join(f'${n}={v}' for n, v in wrong.items())} on {self.port}: "
                          f"set {', '.join(f'${n}={settings[n]}' for n in wrong)} ({why})")
        return self.fault

    def status(self) -> dict[str, Any]:
        return {"type": "serial", "protocol": self.protocol, "port": self.port, "open": self.driver is not None,
                "version": self.version, "fault": self.fault,
                "job": {"job": self.job, "done": self.done, "total": self.total, "held": self.held}
                if self.busy else None}

    def close(self) -> None:
        if self.driver is not None:
            if self.busy:
                self.emergency()
            self.driver.close()
            self.driver = None
