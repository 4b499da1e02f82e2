"""sd_notify(3) without libsystemd: READY=1, WATCHDOG=1, STOPPING=1 over NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Speaks to systemd when NOTIFY_SOCKET is set; does nothing (and never fails) otherwise."""

    def __init__(self, address: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.address = ("\0" + address[1:]) if address and address.startswith("@") else address
        self.sock: socket.socket | None = None
        if self.address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, *fields: str) -> bool:
        if self.sock is None or not self.address:
            return False
        try:
            self.sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address.lstrip("\0"), exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []), f"MAINPID={os.getpid()}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    @staticmethod
    def watchdog_interval() -> float | None:
        """Seconds between pings (half of WATCHDOG_USEC), or None when no watchdog is asked for."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
            return None
        try:
            return max(int(usec) / 2_000_000, 0.01)
        except ValueError:
            return None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
