"""Barcode/QR scanners: a serial (USB-CDC) scanner or a file/FIFO of lines; each read is posted."""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Any

from edge.config import HardwareConfig

log = logging.getLogger(__name__)
MAX_SCAN = 4096


class Scanner:
    """Reads one code per line on a reader thread and posts `(name, text)`; never touches state."""

    def __init__(self, config: HardwareConfig, on_scan: Callable[[str, str], None]):
        self.name = config.name
        self.source = config.source or "serial"
        self.port = config.port
        self.baudrate = config.baudrate
        self.path = config.path
        self.on_scan = on_scan
        self.fault: str | None = None
        self.count = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: Any = None

    def open(self) -> None:
        """Open the port now (so a missing scanner is a fault at start), then read on a thread."""
        if self.source == "serial":
            import serial

            try:
                self._handle = serial.Serial(self.port, self.baudrate, timeout=0.2)
            except (serial.SerialException, OSError, ValueError) as exc:
                self.fault = f"cannot open {self.port}: {exc}"
                log.warning("[hardware.%s] %s", self.name, self.fault)
                return
        self._thread = threading.Thread(target=self._run, name=f"scanner-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            if self.source == "serial":
                self._read_serial()
            else:
                self._read_file()
        except Exception as exc:  # a reader must report, never kill the node
            self.fault = f"scanner stopped: {exc}"
            log.warning("[hardware.%s] %s", self.name, self.fault)

    def _emit(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").strip("\r\n\x00 ")
        if text:
            self.count += 1
            self.on_scan(self.name, text)

    def _read_serial(self) -> None:
        buf = b""
        while not self._stop.is_set():
            buf += self._handle.read(256)
            *lines, buf = buf.replace(b"\r", b"\n").split(b"\n")
            for line in lines:
                self._emit(line)
            buf = buf[-MAX_SCAN:]

    def _read_file(self) -> None:
        fd = os.open(str(self.path), os.O_RDONLY | os.O_NONBLOCK)
        buf = b""
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.2)
                chunk = os.read(fd, 4096) if ready else b""
                if ready and not chunk:
                    self._stop.wait(0.2)  # writer gone or end of file: wait for more
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    self._emit(line)
                buf = buf[-MAX_SCAN:]
        finally:
            os.close(fd)

    def status(self) -> dict[str, Any]:
        return {"type": "scanner", "source": self.source, "scans": self.count, "fault": self.fault}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._handle is not None:
            self._handle.close()
