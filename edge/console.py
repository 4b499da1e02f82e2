"""The manual-override console: command lines from an operator, dispatched on the node loop
through the node's one command registry. This module reads lines and writes replies."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from edge.control import MAX_LINE, Reply

Post = Callable[[str, dict[str, Any]], None]
log = logging.getLogger(__name__)


def format_reply(reply: Reply) -> str:
    """`ok {json}` or `error <why>`: one line an operator reads and a script parses."""
    if reply.ok:
        return "ok " + json.dumps(reply.result, separators=(",", ":"), default=str)
    return f"error {reply.error}"


class StreamConsole:
    """Reads lines from a text stream (stdin of `edge run`) on a thread; replies on another stream."""

    def __init__(self, post: Post, source: TextIO | None = None, sink: TextIO | None = None):
        self.post = post
        self.source = source or sys.stdin
        self.sink = sink or sys.stdout
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="console-stdin", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        for raw in self.source:
            line = raw.rstrip("\r\n")
            if len(line) > MAX_LINE:
                self.reply(Reply(False, error=f"line too long ({len(line)} characters, at most {MAX_LINE})"))
                continue
            if line.strip() and not line.lstrip().startswith("#"):
                self.post("console_line", {"line": line, "reply": self.reply})

    def reply(self, reply: Reply) -> None:
        with self.lock:
            try:
                self.sink.write(format_reply(reply) + "\n")
                self.sink.flush()
            except (OSError, ValueError):
                pass  # the operator went away; the node carries on


class SerialConsole:
    """The operator's terminal on a serial port (e.g. the header UART): one command per line
    (CR or LF ends it), one reply line back. A missing port is logged, never fatal."""

    def __init__(self, post: Post, port: str, baudrate: int, banner: str = ""):
        self.post = post
        self.port = port
        self.baudrate = baudrate
        self.banner = banner
        self.handle: Any = None
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="console-serial", daemon=True)

    def start(self) -> None:
        import serial

        try:
            self.handle = serial.Serial(self.port, self.baudrate, timeout=0.2)
        except (serial.SerialException, OSError, ValueError) as exc:
            log.error("[console] serial_port %s cannot be opened: %s", self.port, exc)
            return
        self._write(self.banner)
        self.thread.start()

    def _run(self) -> None:
        buf = b""
        while not self.stopping.is_set():
            try:
                chunk = self.handle.read(256)
            except (OSError, ValueError) as exc:
                log.error("[console] serial_port %s: %s", self.port, exc)
                return
            buf += chunk
            *lines, buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", errors="replace").strip()
                if len(line) > MAX_LINE:
                    self.reply(Reply(False, error=f"line too long ({len(line)} characters, at most {MAX_LINE})"))
                elif line and not line.startswith("#"):
                    self.post("console_line", {"line": line, "reply": self.reply})
            if len(buf) > MAX_LINE:
                buf = b""
                self.reply(Reply(False, error=f"line too long (more than {MAX_LINE} characters)"))

    def _write(self, text: str) -> None:
        if not text or self.handle is None:
            return
        with self.lock:
            try:
                self.handle.write(text.encode() + b"\r\n")
            except (OSError, ValueError) as exc:
                log.warning("[console] serial_port %s: %s", self.port, exc)

    def reply(self, reply: Reply) -> None:
        self._write(format_reply(reply))

    def close(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(2)
        if self.handle is not None:
            self.handle.close()


class SocketConsole:
    """A local unix socket (`edge console`-style tools, scripts): one command per line."""

    def __init__(self, post: Post, path: str):
        self.post = post
        self.path = path
        self.server: socket.socket | None = None
        self.thread = threading.Thread(target=self._accept, name="console-socket", daemon=True)

    def start(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(self.path)
            os.chmod(self.path, 0o660)
            server.listen(4)
        except OSError as exc:
            log.error("[console] socket %s cannot be opened: %s", self.path, exc)
            return
        self.server = server
        self.thread.start()

    def _accept(self) -> None:
        while self.server is not None:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="console-client", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        lock = threading.Lock()

        def reply(r: Reply) -> None:
            with lock, contextlib.suppress(OSError):
                conn.sendall((format_reply(r) + "\n").encode())

        with conn, conn.makefile("r", encoding="utf-8", errors="replace", newline="\n") as lines:
            for raw in lines:
                line = raw.rstrip("\r\n")
                if len(line) > MAX_LINE:
                    reply(Reply(False, error=f"line too long ({len(line)} characters, at most {MAX_LINE})"))
                elif line.strip() and not line.lstrip().startswith("#"):
                    self.post("console_line", {"line": line, "reply": reply})

    def close(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
