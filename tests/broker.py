"""A real mosquitto for tests: started on a free port, and stopped, killed, paused by them."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from trailer import ROOT

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
SHIPPED = ROOT / "systemd" / "mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_passwords(path: Path, users: dict[str, str]) -> None:
    """A mosquitto password file made by the real mosquitto_passwd (empty for no users)."""
    path.unlink(missing_ok=True)
    path.touch()
    for user, password in users.items():
        flags = ["-b"] if path.stat().st_size else ["-c", "-b"]
        subprocess.run(["mosquitto_passwd", *flags, str(path), user, password], check=True,
                       capture_output=True)


class Broker:
    """One mosquitto process running the shipped hub config, rewritten for this test:
    its two listeners on free ports, its files in `workdir`, the shipped ACLs as they are.

    `users` are node accounts (nodes' listener, `port`), `people` the dashboard, operator and
    Home Assistant accounts (people's listener, `people_port`).
    """

    def __init__(self, workdir: Path, users: dict[str, str] | None = None,
                 people: dict[str, str] | None = None, anonymous: bool = False, extra: str = "",
                 people_acl: str | None = None):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.people_port = free_port()
        self.log = self.dir / "mosquitto.log"
        self.conf = self.dir / "mosquitto.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_conf(users or {}, people or {}, anonymous, extra, people_acl)

    def _write_conf(self, users: dict[str, str], people: dict[str, str], anonymous: bool, extra: str,
                    people_acl: str | None) -> None:
        make_passwords(self.dir / "nodes.passwd", users)
        make_passwords(self.dir / "people.passwd", people)
        shutil.copy(SHIPPED / "nodes.acl", self.dir / "nodes.acl")
        (self.dir / "people.acl").write_text(people_acl or (SHIPPED / "people.acl").read_text())
        ports = iter([self.port, self.people_port])
        lines = []
        for line in (SHIPPED / "hub.conf").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "listener":
                line = f"listener {next(ports)} 127.0.0.1"
            elif key in ("password_file", "acl_file"):
                line = f"{key} {self.dir / Path(value).name}"
            elif key == "persistence_location":
                line = f"persistence_location {self.dir}/"
            elif key == "allow_anonymous" and anonymous:
                line = "allow_anonymous true"
            lines.append(line)
        # mosquitto started as root drops to user `mosquitto`, which cannot read pytest's tmp dir
        lines += [f"user {pwd.getpwuid(os.geteuid()).pw_name}", f"log_dest file {self.log}",
                  "log_type information"]
        if extra:
            lines.append(extra)
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10) -> Broker:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}: {self.read_log()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.read_log()[-2000:]}")

    def stop(self) -> None:
        """A clean stop (SIGTERM): mosquitto saves its persistence file."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        """kill -9: nothing saved beyond what autosave already wrote."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> Broker:
        self.stop()
        return self.start()

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
