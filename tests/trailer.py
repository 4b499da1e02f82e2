"""Test support for the whole suite: the example line, a real sd_notify socket, the `edge` command."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "line"


def run_edge(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
             cwd: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `edge` command line in a child process (`input`: what is typed at it)."""
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, input=input,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd or ROOT)


class NotifySocket:
    """A real unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path | str, abstract: bool = False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(("\0" + str(path)) if abstract else str(path))
        self.address = ("@" + str(path)) if abstract else str(path)
        self.messages: list[str] = []

    def wait_for(self, field: str, timeout: float = 20) -> str:
        """Block until a datagram containing `field` (e.g. READY=1) arrives; return it."""
        for seen in self.messages:
            if field in seen.split("\n"):
                return seen
        self.sock.settimeout(timeout)
        while True:
            data = self.sock.recv(4096).decode()
            self.messages.append(data)
            if field in data.split("\n"):
                return data

    def close(self) -> None:
        self.sock.close()


def example_station(name: str, tmp_path: Path, mqtt: str | None = None, scanner_fifo: Path | None = None,
                    bench: bool = False, ports: dict[str, str] | None = None) -> Path:
    """A copy of examples/line/<name>.toml with its data dir in tmp_path and MQTT off
    (or `mqtt`, the body of an [mqtt] section, instead). `scanner_fifo`: the scanner reads that
    FIFO instead of its serial port. `bench`: no console, no serial board, the camera on a
    directory of images (what this machine has: pins and files). `ports`: serial devices kept,
    on these ports (a simulator's pty)."""
    text = (EXAMPLES / f"{name}.toml").read_text()
    if scanner_fifo is not None:
        text = re.sub(r'source = "serial"[^\n]*\nport = "[^"]*"\nbaudrate = \d+\n',
                      f'source = "file"\npath = "{scanner_fifo}"\n', text)
    for device, port in (ports or {}).items():  # a serial device on a simulator's pty
        text = re.sub(rf'(\[hardware\.{device}\]\ntype = "serial"\nport = )"[^"]*"', rf'\1"{port}"', text)
    if bench:
        text = text.replace('serial_port = "/dev/ttyAMA0"', "enabled = false")
        kept = "|".join(ports or ()) or "(?!)"
        text = re.sub(rf"\[hardware\.(?!(?:{kept})\])\w+\]\ntype = \"serial\".*?\n\n", "", text, flags=re.S)
        frames = tmp_path / "frames"  # no sensor here: the camera serves a directory of images
        frames.mkdir(exist_ok=True)
        text = re.sub(r'source = "picamera2"\nresolution = [^\n]*\n', f'source = "file"\npath = "{frames}"\n', text)
    head, sep, rest = text.partition("[mqtt]\n")
    body, _, tail = rest.partition("\n\n")
    text = head + sep + (mqtt if mqtt is not None else "enabled = false") + "\n\n" + tail
    text = text.replace('data_dir = "/var/lib/fabrique-edge"', f'data_dir = "{tmp_path / name}"')
    text = text.replace('line_file = "line.toml"', f'line_file = "{EXAMPLES / "line.toml"}"')
    text = re.sub(r'^library = "([^"]*)"', lambda m: f'library = "{(EXAMPLES / m.group(1)).resolve()}"', text,
                  flags=re.M)
    node_id = text.split('id = "', 1)[1].split('"', 1)[0]
    text = text.replace('key_file = "/etc/fabrique-edge/node.key"',
                        f'key_file = "{ROOT / "examples" / "keys" / "nodes" / f"EXAMPLE-ONLY-{node_id}.pem"}"')
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


class Posted:
    """Collects what devices post, with a way to await a kind of event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []
        self.cond = threading.Condition()

    def __call__(self, kind: str, data: dict) -> None:
        with self.cond:
            self.events.append((kind, data))
            self.cond.notify_all()

    def wait(self, kind: str, count: int = 1, timeout: float = 10) -> list[dict]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.of(kind)) >= count, timeout), self.events
            return self.of(kind)

    def of(self, kind: str) -> list[dict]:
        return [data for k, data in self.events if k == kind]

    def texts(self) -> list[str]:
        """The texts of the scans posted, in order."""
        return [d["text"] for d in self.of("scan")]


def wait_for(condition: Callable[[], object], timeout: float = 10) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def pin_history(output) -> list[bool]:
    """Every level a MockFactory output pin took, oldest first."""
    return [bool(s.state) for s in output.device.pin.states]


@contextlib.contextmanager
def running(node):
    """A started node whose loop runs on a thread (signals belong to the main thread: no run())."""
    node.start()
    loop = threading.Thread(target=node.loop, daemon=True)
    loop.start()
    try:
        yield node
    finally:
        node.post("stop", {"reason": "test over"})
        loop.join(10)
        node.shutdown()


class Ticks:
    """Counts the ticks of a node's loop, so a test awaits "a few ticks went by" instead of
    sleeping a guessed time (install before or after start: the loop looks `_tick` up each time)."""

    def __init__(self, node) -> None:
        self.count = 0
        self.cond = threading.Condition()
        tick = node._tick

        def counted() -> None:
            try:
                tick()
            finally:
                with self.cond:
                    self.count += 1
                    self.cond.notify_all()

        node._tick = counted

    def wait(self, more: int = 3, timeout: float = 10) -> None:
        """Block until `more` whole ticks ran after this call."""
        with self.cond:
            target = self.count + more + 1  # the tick under way when called may have started before
            assert self.cond.wait_for(lambda: self.count >= target, timeout), "the node stopped ticking"


def on_loop(node, fn: Callable[[], object], timeout: float = 10) -> object:
    """Run `fn` on a running node's loop thread (where the ledger and the station live) and
    return what it returns (or raise what it raised)."""
    done = threading.Event()
    out: dict[str, object] = {}
    kind = f"test_call_{id(done)}"

    def call(_event) -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test's thread
            out["error"] = exc
        finally:
            done.set()

    node.on(kind, call)
    node.post(kind)
    try:
        assert done.wait(timeout), "the node loop did not run the call"
    finally:
        node.handlers.pop(kind, None)
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out.get("value")
