"""Test support for the whole suite: the example line, a real sd_notify socket, the `edge` command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "line"


def run_edge(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `edge` command line in a child process."""
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True,
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


def example_station(name: str, tmp_path: Path, mqtt: str | None = None) -> Path:
    """A copy of examples/line/<name>.toml with its data dir in tmp_path and MQTT off
    (or `mqtt`, the body of an [mqtt] section, instead)."""
    text = (EXAMPLES / f"{name}.toml").read_text()
    head, sep, rest = text.partition("[mqtt]\n")
    body, _, tail = rest.partition("\n\n")
    text = head + sep + (mqtt if mqtt is not None else "enabled = false") + "\n\n" + tail
    text = text.replace('data_dir = "/var/lib/fabrique-edge"', f'data_dir = "{tmp_path / name}"')
    text = text.replace('line_file = "line.toml"', f'line_file = "{EXAMPLES / "line.toml"}"')
    node_id = text.split('id = "', 1)[1].split('"', 1)[0]
    text = text.replace('key_file = "/etc/fabrique-edge/node.key"',
                        f'key_file = "{ROOT / "examples" / "keys" / "nodes" / f"EXAMPLE-ONLY-{node_id}.pem"}"')
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path
