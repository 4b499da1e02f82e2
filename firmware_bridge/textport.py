"""A line-based serial port for text firmwares (GRBL, Marlin): a reader thread and a fault."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Self

import serial

log = logging.getLogger(__name__)


class PortGone(Exception):
    """The serial port disappeared (USB cable pulled, device powered off)."""


class TextPort:
    """Open ``port``; every received line (without CR/LF) goes to ``on_line`` on the reader thread."""

    def __init__(self, port: str, baudrate: int, on_line: Callable[[str], None], on_gone: Callable[[str], None]) -> None:
        self.port = port
        try:
            self._serial = serial.Serial(port, baudrate, timeout=0.02, write_timeout=5)
        except (serial.SerialException, OSError) as exc:
            raise PortGone(f"cannot open {port}: {exc}") from exc
        self._on_line = on_line
        self._on_gone = on_gone
        self._closing = threading.Event()
        self._write_lock = threading.Lock()
        self._thread = threading.Thread(target=self._read_loop, name=f"text-{port}", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        with self._write_lock:
            try:
                self._serial.write(data)
            except (serial.SerialException, OSError) as exc:
                raise PortGone(f"{self.port}: write failed, device unplugged? ({exc})") from exc

    def close(self) -> None:
        self._closing.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2)
        try:
            self._serial.close()
        except (serial.SerialException, OSError):
            log.debug("closing %s failed", self.port)

    def _read_loop(self) -> None:
        pending = b""
        while not self._closing.is_set():
            try:
                data = self._serial.read(max(1, self._serial.in_waiting))
            except (serial.SerialException, OSError, TypeError) as exc:
                if not self._closing.is_set():
                    self._on_gone(f"{self.port}: port gone, device unplugged? ({exc})")
                return
            if not data:
                continue
            pending += data
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.strip(b"\r").decode("ascii", "replace").strip()
                if line:
                    self._on_line(line)


class TextDevice:
    """What the GRBL and Marlin drivers share: the port, the condition their state lives
    under, and how a vanished port becomes the driver's own `gone` fault."""

    gone: type[Exception] = PortGone

    def __init__(self, port: str, baudrate: int) -> None:
        self.port_name = port
        self.baudrate = baudrate
        self._port: TextPort | None = None
        self._lock = threading.Condition()
        self._gone: str | None = None

    def open(self) -> object:
        raise NotImplementedError

    def close(self) -> None:
        if self._port is not None:
            self._port.close()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_port(self, on_line: Callable[[str], None]) -> None:
        try:
            self._port = TextPort(self.port_name, self.baudrate, on_line, self._on_gone)
        except PortGone as exc:
            raise self.gone(str(exc)) from exc

    def _write(self, data: bytes) -> None:
        if self._port is None:
            raise self.gone(f"{self.port_name}: not open")
        try:
            self._port.write(data)
        except PortGone as exc:
            self._on_gone(str(exc))
            raise self.gone(str(exc)) from exc

    def _on_gone(self, why: str) -> None:
        with self._lock:
            self._gone = why
            self._lock.notify_all()
        log.error("%s", why)
