"""Serial devices (laser controller, printer, our own boards) opened by path or by-id link."""

from __future__ import annotations

import logging
import os
from typing import Any

from edge.config import HardwareConfig

log = logging.getLogger(__name__)


def port_identity(port: str) -> str:
    """The device a port path names: by-id and by-path links resolve to the same /dev/tty*."""
    return os.path.realpath(port)


class SerialDevice:
    """A serial port with its protocol; a missing port is a fault with a reason, not a crash."""

    def __init__(self, config: HardwareConfig):
        self.name = config.name
        self.port = config.port or ""
        self.baudrate = config.baudrate
        self.protocol = config.protocol
        self.handle: Any = None
        self.fault: str | None = None

    def open(self) -> None:
        import serial

        if not os.path.exists(self.port):
            self.handle = None
            self.fault = f"{self.port} not found (is the device plugged in?)"
            log.warning("[hardware.%s] %s", self.name, self.fault)
            return
        try:
            self.handle = serial.Serial(self.port, self.baudrate, timeout=0.1, exclusive=True)
            self.fault = None
        except (serial.SerialException, OSError, ValueError) as exc:
            self.handle = None
            self.fault = f"cannot open {self.port}: {exc}"
            log.warning("[hardware.%s] %s", self.name, self.fault)

    def status(self) -> dict[str, Any]:
        return {"type": "serial", "port": self.port, "protocol": self.protocol,
                "open": self.handle is not None, "fault": self.fault}

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
