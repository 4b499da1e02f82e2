"""The hardware seam: every device of a station comes from one `Board`, built from config.

The board reserves each pin and port before any device starts, so two devices claiming one
resource fail at start-up naming both, not mid-job. Tests swap the pin factory, not the code.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from edge.config import HardwareConfig
from edge.hw.camera import FileCamera, PiCamera, make_camera
from edge.hw.gcode import GcodeDevice
from edge.hw.gpio import HardwareError, Input, Output, SafetyCircuit, make_pin_factory
from edge.hw.scanner import Scanner, make_scanner
from edge.hw.serialport import SerialDevice, port_identity

log = logging.getLogger(__name__)
Post = Callable[[str, dict[str, Any]], None]


class SafetyInterlock(Exception):
    """An output was asked to leave its safe state while a safety circuit is open."""


class Board:
    """All devices of one station; `post(kind, data)` is how devices report to the node loop."""

    def __init__(self, hardware: dict[str, HardwareConfig], post: Post, pin_factory: str | None = None):
        self.config = hardware
        self.post = post
        self.pin_factory_name = pin_factory
        self.factory: Any = None
        self.claims: dict[str, str] = {}
        self.outputs: dict[str, Output] = {}
        self.inputs: dict[str, Input] = {}
        self.safety: dict[str, SafetyCircuit] = {}
        self.serial: dict[str, SerialDevice] = {}
        self.gcode: dict[str, GcodeDevice] = {}  # GRBL lasers, Marlin printers
        self.cameras: dict[str, FileCamera | PiCamera] = {}
        self.scanners: dict[str, Scanner] = {}
        self.faults: dict[str, str] = {}
        self.retrying: set[str] = set()  # devices being opened again on a thread (retry_missing)
        # drive's check-then-set and the trip callback's safe_all exclude each other, so an
        # output the loop sets while a stop opens cannot end up on after it was forced safe
        self.safety_lock = threading.RLock()

    def claim(self, resource: str, owner: str) -> None:
        """Reserve a pin or port; a second claim fails naming both owners."""
        holder = self.claims.get(resource)
        if holder is not None and holder != owner:
            raise HardwareError(f"{resource} is claimed by both {holder} and {owner}")
        self.claims[resource] = owner

    def start(self) -> None:
        """Reserve every resource, then build the devices; outputs start in their safe state."""
        for dev in self.config.values():
            if dev.pin is not None:
                self.claim(f"GPIO{dev.pin}", f"[hardware.{dev.name}]")
            if dev.port is not None:
                self.claim(f"port {port_identity(dev.port)}", f"[hardware.{dev.name}]")
        if any(dev.pin is not None for dev in self.config.values()):
            self.factory = make_pin_factory(self.pin_factory_name)
        try:
            for dev in self.config.values():
                self._build(dev)
        except Exception:
            self.close()
            raise

    def _build(self, dev: HardwareConfig) -> None:
        if dev.type == "digital_output":
            self.outputs[dev.name] = Output(dev, self.factory)
        elif dev.type == "digital_input":
            self.inputs[dev.name] = Input(dev, self.factory, self._input_changed)
        elif dev.type in ("emergency_stop", "door_interlock"):
            self.safety[dev.name] = SafetyCircuit(dev, self.factory, self._safety_changed)
        elif dev.type == "serial" and dev.protocol in ("grbl", "marlin"):
            machine = GcodeDevice(dev, self.post)
            machine.open()
            if machine.fault:
                self.faults[dev.name] = machine.fault
            self.gcode[dev.name] = machine
        elif dev.type == "serial":
            port = SerialDevice(dev)
            port.open()
            if port.fault:
                self.faults[dev.name] = port.fault
            self.serial[dev.name] = port
        elif dev.type == "camera":
            camera = make_camera(dev)
            try:
                camera.open()
            except HardwareError as exc:
                self.faults[dev.name] = str(exc)
            self.cameras[dev.name] = camera
        elif dev.type == "scanner":
            scanner = make_scanner(dev, lambda name, text: self.post("scan", {"device": name, "text": text}),
                                   lambda name, fault: self.post("device_fault", {"device": name, "fault": fault}),
                                   cameras=self.cameras)
            scanner.open()
            if scanner.fault:
                self.faults[dev.name] = scanner.fault
            self.scanners[dev.name] = scanner

    def retry_missing(self) -> None:
        """Try again, each on a thread of its own, to open a serial device or G-code machine that
        was missing at start, once its port exists (a USB adapter plugged in late, a board
        re-enumerated). One that opens posts `device_fault {fault: None}`: its fault clears
        without a restart. A camera in fault is tried again the same way."""
        missing: list[tuple[str, Any]] = []
        missing += [(n, m) for n, m in self.gcode.items() if m.driver is None and not m.busy]
        missing += [(n, p) for n, p in self.serial.items() if p.handle is None]
        for name, device in missing:
            port = getattr(device, "port", "")
            if name in self.retrying or not port or not os.path.exists(port):
                continue
            self.retrying.add(name)
            threading.Thread(target=self._reopen, args=(name, device), name=f"reopen-{name}", daemon=True).start()
        for name, camera in self.cameras.items():
            if name in self.faults and name not in self.retrying and name not in self.scanners:
                self.retrying.add(name)
                threading.Thread(target=self._reopen, args=(name, camera), name=f"reopen-{name}", daemon=True).start()

    def _reopen(self, name: str, device: Any) -> None:
        try:
            try:
                device.open()
                fault = getattr(device, "fault", None)
            except HardwareError as exc:
                fault = str(exc)
            if fault is None:
                log.info("[hardware.%s] found: it opened while the node runs", name)
            self.post("device_fault", {"device": name, "fault": fault})
        finally:
            self.retrying.discard(name)

    def _input_changed(self, name: str, value: bool) -> None:
        self.post("input", {"device": name, "value": value})

    def _safety_changed(self, name: str, tripped: bool) -> None:
        if tripped:
            self.safe_all()  # first, from the callback thread, before the loop hears of it
            for machine in self.gcode.values():
                machine.emergency()  # a laser or printer mid-job: feed hold
        self.post("safety", {"device": name, "tripped": tripped})

    def tripped(self) -> list[str]:
        return [name for name, circuit in self.safety.items() if circuit.tripped]

    def drive(self, name: str, value: bool) -> None:
        """Set an output; leaving the safe state is refused while a safety circuit is open."""
        if name not in self.outputs:
            raise KeyError(f"no output named {name!r} (outputs: {', '.join(self.outputs) or 'none'})")
        output = self.outputs[name]
        with self.safety_lock:
            if bool(value) != output.safe_state and self.tripped():
                raise SafetyInterlock(f"{name}: refused, safety circuit open: {', '.join(self.tripped())}")
            output.set(value)

    def safe_all(self) -> None:
        """Every output to its safe state; any thread, any time, idempotent."""
        with self.safety_lock:
            self._safe_all()

    def _safe_all(self) -> None:
        for output in self.outputs.values():
            try:
                output.safe()
            except Exception as exc:  # one broken output must not stop the others going safe
                log.error("[hardware.%s] could not go to safe state: %s", output.name, exc)

    def status(self) -> dict[str, Any]:
        devices: dict[str, Any] = {}
        for group in (self.outputs, self.inputs, self.safety, self.serial, self.gcode, self.cameras, self.scanners):
            for name, device in group.items():
                devices[name] = device.status()
        return devices

    def close(self) -> None:
        """Outputs safe first, then release every device."""
        self.safe_all()
        for group in (self.scanners, self.cameras, self.gcode, self.serial, self.inputs, self.safety, self.outputs):
            for device in group.values():
                try:
                    device.close()
                except Exception as exc:
                    log.warning("closing %s: %s", getattr(device, "name", device), exc)
            group.clear()
