"""A noise proxy: sits between the host and a device and damages the bytes in between.

It opens the device's port like a host would, and offers a new pty (``proxy.port``) to
the real host. Each direction has its own seeded random generator, so a run with the same
seed damages the same byte positions. It can flip bits (a bit error rate), drop and inject
bytes, and pace each direction at a baud rate like a real UART.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import termios
import threading
import time
import tty
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class LineNoise:
    """How a direction of the cable misbehaves, all probabilities per byte except the BER."""

    bit_error_rate: float = 0.0
    drop_rate: float = 0.0
    inject_rate: float = 0.0


@dataclass
class NoiseCounters:
    flipped_bits: int = 0
    dropped: int = 0
    injected: int = 0
    forwarded: int = 0


class _Direction:
    def __init__(self, noise: LineNoise, seed: int, baudrate: int | None) -> None:
        self.rng = random.Random(seed)
        self.counters = NoiseCounters()
        self.byte_time = 10.0 / baudrate if baudrate else 0.0
        self.line_free_at = 0.0
        self.set(noise)

    def set(self, noise: LineNoise) -> None:
        self.p_any_flip = 1.0 - (1.0 - noise.bit_error_rate) ** 8
        self.noise = noise

    def damage(self, data: bytes) -> bytes:
        n = self.noise
        if not (n.bit_error_rate or n.drop_rate or n.inject_rate):
            self.counters.forwarded += len(data)
            return data
        out = bytearray()
        rng = self.rng
        for byte in data:
            if n.inject_rate and rng.random() < n.inject_rate:
                out.append(rng.randrange(256))
                self.counters.injected += 1
            if n.drop_rate and rng.random() < n.drop_rate:
                self.counters.dropped += 1
                continue
            if self.p_any_flip and rng.random() < self.p_any_flip:
                for bit in range(8):  # at least one flip, the rest at the plain rate
                    if bit == 0 or rng.random() < n.bit_error_rate:
                        byte ^= 1 << rng.randrange(8)
                        self.counters.flipped_bits += 1
            out.append(byte)
        self.counters.forwarded += len(out)
        return bytes(out)

    def pace(self, n: int) -> None:
        if not self.byte_time:
            return
        now = time.monotonic()
        self.line_free_at = max(self.line_free_at, now) + n * self.byte_time
        delay = self.line_free_at - now
        if delay > 0.0005:
            time.sleep(delay)


class NoiseProxy:
    """Forward bytes between ``device_port`` and a fresh pty, damaging them on the way."""

    def __init__(
        self,
        device_port: str,
        to_device: LineNoise | None = None,
        to_host: LineNoise | None = None,
        seed: int = 1,
        baudrate: int | None = None,
    ) -> None:
        self._device = os.open(device_port, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self._device)
        attrs = termios.tcgetattr(self._device)
        termios.tcsetattr(self._device, termios.TCSANOW, attrs)
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self.downstream = _Direction(to_device or LineNoise(), seed, baudrate)
        self.upstream = _Direction(to_host or LineNoise(), seed + 1_000_003, baudrate)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._pump, args=(self._master, self._device, self.downstream), daemon=True),
            threading.Thread(target=self._pump, args=(self._device, self._master, self.upstream), daemon=True),
        ]

    def start(self) -> NoiseProxy:
        for thread in self._threads:
            thread.start()
        return self

    def __enter__(self) -> NoiseProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def crackle(self, noise: LineNoise | None = None) -> None:
        """From now on damage both directions with `noise` (None: a clean line again), as a cable
        next to a motor does while the motor runs."""
        self.downstream.set(noise or LineNoise())
        self.upstream.set(noise or LineNoise())

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        for fd in (self._master, self._slave, self._device):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _pump(self, source: int, sink: int, direction: _Direction) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([source], [], [], 0.02)
                if not ready:
                    continue
                data = os.read(source, 16 if direction.byte_time else 4096)
            except OSError:
                return  # the device was unplugged: the host side goes quiet, like a dead cable
            if not data:
                return
            data = direction.damage(data)
            view = memoryview(data)
            while view and not self._stop.is_set():
                try:
                    view = view[os.write(sink, view) :]
                except BlockingIOError:
                    select.select([], [sink], [], 0.02)
                except OSError:
                    return
            direction.pace(len(data))  # the line is busy for as long as those bytes take
