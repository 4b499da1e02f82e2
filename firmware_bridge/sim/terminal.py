"""A device on the master side of a pseudo-terminal."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import tty

log = logging.getLogger(__name__)


class PtyDevice:
    """Base for simulated devices: a reader thread hands received bytes to :meth:`received`."""

    name = "device"

    def __init__(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._plugged = True
        self._thread = threading.Thread(target=self._read_loop, name=f"sim-{self.name}", daemon=True)

    def start(self) -> PtyDevice:
        self._thread.start()
        return self

    def __enter__(self) -> PtyDevice:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def received(self, data: bytes) -> None:  # pragma: no cover - overridden
        """Called on the reader thread with whatever the host wrote."""

    def tick(self) -> None:
        """Called on the reader thread about every 5 ms, for time-driven behaviour."""

    def send(self, data: bytes) -> None:
        """Write to the host; silently dropped once unplugged."""
        with self._write_lock:
            if not self._plugged:
                return
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self._master, view)
                except BlockingIOError:
                    select.select([], [self._master], [], 0.05)
                    continue
                except OSError:
                    return
                view = view[n:]

    def unplug(self) -> None:
        """Yank the cable: close both pty ends so the host gets EIO. The reader thread stops
        first: closed descriptor numbers are reused by the next file opened, which it would read."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        with self._write_lock:
            if not self._plugged:
                return
            self._plugged = False
            for fd in (self._master, self._slave):
                with contextlib.suppress(OSError):
                    os.close(fd)
        log.info("%s on %s unplugged", self.name, self.port)

    def close(self) -> None:
        self.unplug()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.005)
                data = os.read(self._master, 4096) if ready else b""
            except (OSError, ValueError):
                return
            if data:
                self.received(data)
            self.tick()
