"""Barcode/QR scanners: every code read is posted as `on_scan(name, text)` from a reader thread.

    source   what it reads                                          keys
    serial   a USB-CDC scanner, one code per line (CR, LF or CRLF)   port, baudrate
    evdev    a USB scanner that types like a keyboard (grabbed)      path (/dev/input/by-id/...)
    camera   QR codes and barcodes in a [hardware.x] camera's frames camera, interval_ms
    file     lines from a file or FIFO (tests, the demo, a pipe)     path

What is posted: UTF-8 text of 1..4096 characters once spaces, tabs and NULs at its ends are
trimmed, with no control character inside, while the scanner is not flooding (at most 20
codes at once, then 10 a second). Anything else is *rejected*: counted by reason in
`status()["rejects"]` and logged at most once every 10 s per reason, without the code itself
(it can be a visitor's order). The camera reports a code once when it comes into view, not
once per frame; it may be reported again after 3 frames without it.

Unplugged: serial and evdev scanners, and a missing file, are a `fault` naming the port or
path; the reader retries every 0.5 s and clears the fault when the device is back (a half
code from before is dropped). A camera that fails to give frames is a fault until it gives one.
`on_fault(name, fault | None)` hears every change. Nothing escapes the reader thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import select
import stat
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

from edge.config import HardwareConfig
from edge.hw.keymap import EVIOCGRAB, INPUT_EVENT, KeyboardDecoder, Typed

log = logging.getLogger(__name__)

MAX_SCAN = 4096  # characters
FLOOD_BURST, FLOOD_RATE = 20, 10.0  # codes at once, then codes a second
LOG_EVERY_S = 10.0
RETRY_S = 0.5
POLL_S = 0.2
LEAVE_FRAMES = 3  # frames without a code before it has left the camera's view
TRIM = " \t\x00"
CONTROL = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})  # controls, format marks, line separators
ABSENT = frozenset({errno.ENOENT, errno.ENODEV, errno.ENXIO})
EOL = re.compile(rb"\r\n|\r|\n")

OnScan = Callable[[str, str], None]
OnFault = Callable[[str, str | None], None]


def check_code(raw: bytes | str) -> Typed:
    """The code as it will be posted (trimmed), or the reason it is not."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Typed("", "not_utf8", f"byte 0x{exc.object[exc.start]:02x} at {exc.start} is not UTF-8")
    text = raw.strip(TRIM)
    if not text:
        return Typed("", "empty", "empty code")
    if len(text) > MAX_SCAN:
        return Typed("", "too_long", f"{len(text)} characters, at most {MAX_SCAN}")
    for i, char in enumerate(text):
        if unicodedata.category(char) in CONTROL:
            return Typed("", "control", f"control character U+{ord(char):04X} at {i}")
    return Typed(text)


class LineSplitter:
    """Bytes in, lines out. A line ends at CR, LF or CRLF, also when the CR and the LF arrive
    in two reads. A line longer than `limit` bytes is returned as None (too long)."""

    def __init__(self, limit: int = 4 * MAX_SCAN):
        self.limit = limit
        self.reset()

    def reset(self) -> None:
        self.buf = bytearray()
        self.overflow = False
        self.after_cr = False

    def feed(self, data: bytes) -> list[bytes | None]:
        if not data:
            return []
        lines: list[bytes | None] = []
        pos = 1 if self.after_cr and data[:1] == b"\n" else 0
        self.after_cr = False
        for end in EOL.finditer(data, pos):
            self._add(data[pos:end.start()])
            lines.append(None if self.overflow else bytes(self.buf))
            self.buf.clear()
            self.overflow = False
            pos = end.end()
        self.after_cr = data.endswith(b"\r")
        self._add(data[pos:])
        return lines

    def _add(self, part: bytes) -> None:
        if self.overflow:
            return
        if len(self.buf) + len(part) > self.limit:
            self.overflow = True
            self.buf.clear()
        else:
            self.buf += part


class FloodGate:
    """A token bucket: `burst` codes at once, then `rate` codes a second."""

    def __init__(self, burst: int = FLOOD_BURST, rate: float = FLOOD_RATE):
        self.burst, self.rate = burst, rate
        self.tokens = float(burst)
        self.last: float | None = None

    def allow(self, now: float) -> bool:
        if self.last is not None:
            self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Scanner:
    """One scanner: connects, reads on its own thread, posts good codes, counts the rest.

    A source says how to connect (`_connect`, raising while the device is absent), how to read
    until the device goes (`_read`, returning on end of input, raising on loss) and how to let
    go (`_disconnect`). The thread reconnects; the loop thread only ever sees posted codes.
    """

    source = ""

    def __init__(self, config: HardwareConfig, on_scan: OnScan, on_fault: OnFault | None = None):
        self.name = config.name
        self.config = config
        self.on_scan = on_scan
        self.on_fault = on_fault
        self.fault: str | None = None
        self.count = 0
        self.rejects: dict[str, int] = {}
        self.connected = False
        self.changed = threading.Condition()  # notified on every code, rejection and fault change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gate = FloodGate()
        self._logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    @property
    def where(self) -> str:
        return str(self.config.path)

    def open(self) -> None:
        """Connect now, so a scanner missing at start is a fault at start; then read on a thread."""
        self._try_connect()
        self._thread = threading.Thread(target=self._run, name=f"scanner-{self.name}", daemon=True)
        self._thread.start()

    def _try_connect(self) -> bool:
        try:
            self._connect()
        except Exception as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            hint = " (is it plugged in?)" if getattr(exc, "errno", None) in ABSENT else ""
            self._set_fault(f"cannot open {self.where}: {reason}{hint}")
            return False
        self.connected = True
        self._set_fault(None)
        return True

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self.connected and not self._try_connect():
                    self._stop.wait(RETRY_S)
                    continue
                lost: Exception | None = None
                try:
                    self._read()  # returns at the end of input (a FIFO's writer left): reopen at once
                except Exception as exc:  # unplugged (or a bug): let go, report, reconnect
                    lost = exc
                self._disconnect()
                self.connected = False
                if lost is not None and not self._stop.is_set():
                    self._set_fault(f"lost {self.where}: {lost}")
                    self._stop.wait(RETRY_S)
        finally:
            self._disconnect()

    # -- what every source shares: check, gate, post, count, log
    def _offer(self, raw: bytes | str, reason: str | None = None, detail: str = "") -> None:
        text = raw if isinstance(raw, str) else ""
        if reason is None:
            text, reason, detail = check_code(raw)
        if reason is None and not self._gate.allow(time.monotonic()):
            reason, detail = "flood", f"more than {FLOOD_BURST} codes at once or {FLOOD_RATE:g} a second"
        if reason is not None:
            self._reject(reason, detail)
            return
        try:
            self.on_scan(self.name, text)
        except Exception:
            log.exception("[hardware.%s] posting a scan failed", self.name)
        with self.changed:
            self.count += 1
            self.changed.notify_all()

    def _reject(self, reason: str, detail: str) -> None:
        with self.changed:
            self.rejects[reason] = self.rejects.get(reason, 0) + 1
            self.changed.notify_all()
        self._say(reason, f"rejected a code: {detail}")

    def _say(self, key: str, message: str) -> None:
        """A warning, at most one every LOG_EVERY_S per key, telling how many were held back."""
        now = time.monotonic()
        if now - self._logged.get(key, -LOG_EVERY_S) < LOG_EVERY_S:
            self._unlogged[key] = self._unlogged.get(key, 0) + 1
            return
        self._logged[key] = now
        held = self._unlogged.pop(key, 0)
        log.warning("[hardware.%s] %s%s", self.name, message, f" ({held} more since the last report)" if held else "")

    def _set_fault(self, fault: str | None) -> None:
        with self.changed:
            before, self.fault = self.fault, fault
            self.changed.notify_all()
        if fault == before:
            return
        if fault is None:
            log.info("[hardware.%s] %s is back", self.name, self.where)
        elif before is None:
            log.warning("[hardware.%s] %s", self.name, fault)
        if self.on_fault is not None:
            try:
                self.on_fault(self.name, fault)
            except Exception:
                log.exception("[hardware.%s] reporting a fault failed", self.name)

    def status(self) -> dict[str, Any]:
        with self.changed:
            return {"type": "scanner", "source": self.source, "scans": self.count,
                    "rejected": sum(self.rejects.values()), "rejects": dict(self.rejects),
                    "fault": self.fault, **self._details()}

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10) -> bool:
        """Block until `predicate(status())` holds (a self-test's "scan a code now"); False on timeout."""
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self.status()), timeout)

    def close(self) -> None:
        self._stop.set()
        if self._thread is None:
            self._disconnect()
        else:
            self._thread.join(timeout=2)

    # -- per source
    def _details(self) -> dict[str, Any]:
        return {"path": self.where}

    def _connect(self) -> None:
        raise NotImplementedError

    def _read(self) -> None:
        raise NotImplementedError

    def _disconnect(self) -> None:
        pass


class LineScanner(Scanner):
    """A source of text lines, one code per line."""

    def __init__(self, config: HardwareConfig, on_scan: OnScan, on_fault: OnFault | None = None):
        super().__init__(config, on_scan, on_fault)
        self.lines = LineSplitter()

    def feed(self, data: bytes) -> None:
        """Bytes as read from the device: the reader thread calls this for every read."""
        for line in self.lines.feed(data):
            if line is None:
                self._reject("too_long", f"a line of more than {self.lines.limit} bytes")
            else:
                self._offer(line)


class SerialScanner(LineScanner):
    """A USB-CDC scanner: a serial port that sends one code per line."""

    source = "serial"
    handle: Any = None

    @property
    def where(self) -> str:
        return str(self.config.port)

    def _connect(self) -> None:
        import serial

        try:
            self.handle = serial.Serial(self.config.port, self.config.baudrate, timeout=POLL_S)
        except serial.SerialException as exc:
            raise OSError(exc.errno, os.strerror(exc.errno) if exc.errno else str(exc)) from exc
        self.lines.reset()

    def _read(self) -> None:
        while not self._stop.is_set():
            self.feed(self.handle.read(256))

    def _disconnect(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            with contextlib.suppress(Exception):
                handle.close()

    def _details(self) -> dict[str, Any]:
        return {"port": self.where}


class FileScanner(LineScanner):
    """Lines from a file or FIFO, read as they come (like `tail -f`); a new writer is welcome."""

    source = "file"
    fd: int | None = None

    def _connect(self) -> None:
        self.fd = os.open(str(self.config.path), os.O_RDONLY | os.O_NONBLOCK)
        self.lines.reset()

    def _read(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], POLL_S)
            chunk = os.read(self.fd, 4096) if ready else b""
            if ready and not chunk:
                self._stop.wait(POLL_S)  # writer gone or end of file: wait for more
            self.feed(chunk)

    def _disconnect(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


class KeyboardScanner(Scanner):
    """A scanner that types like a USB keyboard, read from its evdev node and grabbed, so its
    keys do not reach a console. Key codes are decoded as the US keyboard the scanner assumes."""

    source = "evdev"
    fd: int | None = None

    def __init__(self, config: HardwareConfig, on_scan: OnScan, on_fault: OnFault | None = None):
        super().__init__(config, on_scan, on_fault)
        self.keys = KeyboardDecoder(MAX_SCAN)
        self.pending = b""
        self.grabbed = False

    def _connect(self) -> None:
        fd = os.open(str(self.config.path), os.O_RDONLY | os.O_NONBLOCK)
        try:
            fcntl.ioctl(fd, EVIOCGRAB, 1)
            self.grabbed = True
        except OSError as exc:
            self.grabbed = False
            self._say("grab", f"could not grab {self.where} ({exc.strerror}): its keys also reach the console")
        self.fd = fd
        self.keys.reset()
        self.pending = b""

    def _read(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], POLL_S)
            if not ready:
                continue
            chunk = os.read(self.fd, INPUT_EVENT.size * 64)  # ENODEV when unplugged
            if chunk:
                self.feed(chunk)
            elif stat.S_ISREG(os.fstat(self.fd).st_mode):
                self._stop.wait(POLL_S)
            else:
                return  # a FIFO's writer left: reopen (and find out whether the path is still there)

    def feed(self, data: bytes) -> None:
        """Bytes of input_event structs as read from the device, cut anywhere."""
        data = self.pending + data
        cut = len(data) - len(data) % INPUT_EVENT.size
        self.pending = data[cut:]
        for _sec, _usec, type_, code, value in INPUT_EVENT.iter_unpack(data[:cut]):
            typed = self.keys.event(type_, code, value)
            if typed is not None:
                self._offer(typed.text, typed.reason, typed.detail)

    def _disconnect(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        if self.grabbed:
            with contextlib.suppress(OSError):  # unplugged: the grab went with the device
                fcntl.ioctl(fd, EVIOCGRAB, 0)
        self.grabbed = False
        os.close(fd)

    def _details(self) -> dict[str, Any]:
        return {"path": self.where, "grabbed": self.grabbed}


class CameraScanner(Scanner):
    """Decodes QR codes and barcodes (zxing-cpp) from the frames of a camera of the same station,
    one frame every `interval_ms`. A code is offered when it comes into view, once."""

    source = "camera"

    def __init__(self, config: HardwareConfig, on_scan: OnScan, on_fault: OnFault | None = None,
                 cameras: Mapping[str, Any] | None = None):
        super().__init__(config, on_scan, on_fault)
        self.cameras: Mapping[str, Any] = cameras if cameras is not None else {}
        self.camera = str(config.camera)
        self.interval = config.interval_ms / 1000
        self.frames = 0
        self.in_view: dict[bytes, int] = {}  # raw code -> frames since last seen

    @property
    def where(self) -> str:
        return f"camera {self.camera}"

    def _connect(self) -> None:
        import zxingcpp  # noqa: F401  (missing = a fault at start, not a crash per frame)

    def _read(self) -> None:
        while not self._stop.wait(self.interval):
            self.frame()

    def frame(self) -> None:
        """Capture and decode one frame; a code that just came into view is offered."""
        import zxingcpp

        camera = self.cameras.get(self.camera)
        try:
            if camera is None:
                raise LookupError(f"no camera device named {self.camera!r} on this board")
            image = camera.capture()
        except Exception as exc:
            self._set_fault(f"{self.where}: {exc}")
            return
        self._set_fault(None)
        try:
            found = zxingcpp.read_barcodes(image, text_mode=zxingcpp.TextMode.Plain)
        except Exception as exc:
            self._say("decode", f"could not decode a frame: {exc}")
            found = []
        seen = {code.bytes: code for code in found}
        for raw, code in seen.items():
            if raw not in self.in_view:
                binary = code.content_type == zxingcpp.ContentType.Binary
                self._offer(raw if binary else code.text)  # raw bytes: checked like a serial line
        for raw in list(self.in_view):
            self.in_view[raw] = 0 if raw in seen else self.in_view[raw] + 1
            if self.in_view[raw] >= LEAVE_FRAMES:
                del self.in_view[raw]
        self.in_view.update({raw: 0 for raw in seen})
        with self.changed:
            self.frames += 1
            self.changed.notify_all()

    def _details(self) -> dict[str, Any]:
        return {"camera": self.camera, "frames": self.frames, "in_view": len(self.in_view)}


SOURCES: dict[str, type[Scanner]] = {
    "serial": SerialScanner, "evdev": KeyboardScanner, "camera": CameraScanner, "file": FileScanner,
}


def make_scanner(config: HardwareConfig, on_scan: OnScan, on_fault: OnFault | None = None,
                 cameras: Mapping[str, Any] | None = None) -> Scanner:
    """The scanner for `config.source`; a camera scanner finds its camera in `cameras` by name."""
    if config.source == "camera":
        return CameraScanner(config, on_scan, on_fault, cameras)
    return SOURCES[config.source or "serial"](config, on_scan, on_fault)
