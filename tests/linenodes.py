"""Nodes of a test line: real `edge run` processes, driven through their stdin console."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trailer import EXAMPLES, ROOT

from edge.ledger import Event
from edge.store import Store

NODE_KINDS = {"intake": "intake", "laser": "laser", "printer": "printer", "transfer": "transfer",
              "inspection": "inspection", "pickup": "pickup", "rogue": "transfer", "spare": "intake",
              "node": "transfer"}


def password_of(name: str) -> str:
    return f"pw-{name}-test"


class LineNode:
    """One node process of the test line."""

    def __init__(self, workdir: Path, name: str, port: int, keepalive: int = 2, protocol: str = "5",
                 username: str | None = None, password: str | None = None, mqtt_extra: str = ""):
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.dir / "data"
        self.log = self.dir / "node.log"
        pw = self.dir / "mqtt.password"
        pw.write_text((password or password_of(name)) + "\n")
        kind = NODE_KINDS.get(name.split("-")[0], "transfer")
        self.config = self.dir / "station.toml"
        self.config.write_text(f"""\
[node]
id = "{name}"
line = "demo"
data_dir = "{self.data_dir}"
line_file = "{EXAMPLES / 'line.toml'}"
log_level = "info"

[mqtt]
host = "127.0.0.1"
port = {port}
username = "{username or name}"
password_file = "{pw}"
keepalive = {keepalive}
protocol = "{protocol}"
{mqtt_extra}
[station]
kind = "{kind}"

[console]
stdin = true
""")
        self.proc: subprocess.Popen[str] | None = None
        self.replies: queue.Queue[str] = queue.Queue()
        self.lock = threading.Lock()

    def start(self) -> LineNode:
        self.replies = queue.Queue()
        logf = open(self.log, "a")  # noqa: SIM115 - owned by the child process's lifetime
        self.proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(self.config),
                                      "--log-format", "text"], cwd=ROOT, text=True, bufsize=1,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf,
                                     env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
        logf.close()
        threading.Thread(target=self._read, args=(self.proc, self.replies), daemon=True).start()
        assert self.command("ping") == "pong"
        return self

    @staticmethod
    def _read(proc: subprocess.Popen[str], replies: queue.Queue[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            replies.put(line.rstrip("\n"))

    def command(self, line: str, timeout: float = 30) -> Any:
        """Send a console line; return the result of `ok ...`, raise on `error ...`."""
        with self.lock:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            reply = self.replies.get(timeout=timeout)
        status, _, rest = reply.partition(" ")
        if status == "ok":
            return json.loads(rest)
        raise RuntimeError(f"{self.name}: {line!r} -> {reply}")

    def notes(self, job: str, count: int, prefix: str = "n") -> list[str]:
        """Record `count` notes on `job` through the console in one go; returns their ids."""
        with self.lock:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write("".join(f"note {job} {prefix}{i}\n" for i in range(count)))
            self.proc.stdin.flush()
            replies = [self.replies.get(timeout=60) for _ in range(count)]
        ids = []
        for reply in replies:
            assert reply.startswith("ok "), reply
            ids.append(json.loads(reply[3:])["id"])
        return ids

    def status(self) -> dict[str, Any]:
        return self.command("status")

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def ledger_ids(self) -> list[str]:
        """Every event id stored on disk (hot set and archive), duplicates included if any."""
        store = Store.open(self.data_dir, readonly=True)
        try:
            ids = [doc["id"] for doc in store.db.table("events").all()]
            for _job, record in store.archive.records():
                ids += [e["id"] for e in record.get("events", [])]
            return ids
        finally:
            store.close()

    def ledger(self) -> list[Event]:
        store = Store.open(self.data_dir, readonly=True)
        try:
            return list(store.events_since({}))
        finally:
            store.close()


def wait_until(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def converged(nodes: list[LineNode], expected: dict[str, int]) -> Callable[[], bool]:
    """True once every node's version vector equals `expected`."""
    def check() -> bool:
        return all(n.status()["vector"] == expected for n in nodes)
    return check
