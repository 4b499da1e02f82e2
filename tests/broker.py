"""A real mosquitto for tests: started on a free port, and stopped, killed, paused by them."""

from __future__ import annotations

import os
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
    """A mosquitto password file made by the real mosquitto_passwd."""
    path.unlink(missing_ok=True)
    for user, password in users.items():
        flags = ["-b"] if path.exists() else ["-c", "-b"]
        subprocess.run(["mosquitto_passwd", *flags, str(path), user, password], check=True,
                       capture_output=True)


class Broker:
    """One mosquitto process. `conf` is the shipped hub config, rewritten for this test."""

    def __init__(self, workdir: Path, port: int | None = None, users: dict[str, str] | None = None,
                 anonymous: bool = False, extra: str = ""):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.users = users or {}
        self.log = self.dir / "mosquitto.log"
        self.conf = self.dir / "mosquitto.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_conf(anonymous, extra)

    def _write_conf(self, anonymous: bool, extra: str) -> None:
        lines = []
        for line in (SHIPPED / "hub.conf").read_text().splitlines():
            key = line.split(" ", 1)[0]
            if key in ("listener", "password_file", "acl_file", "persistence_location", "allow_anonymous"):
                continue
            lines.append(line)
        lines += [f"listener {self.port} 127.0.0.1", f"persistence_location {self.dir}/",
                  f"log_dest file {self.log}", "log_type information"]
        if anonymous:
            lines.append("allow_anonymous true")
        else:
            passwd = self.dir / "passwd"
            make_passwords(passwd, self.users)
            shutil.copy(SHIPPED / "acl", self.dir / "acl")
            lines += ["allow_anonymous false", f"password_file {passwd}", f"acl_file {self.dir / 'acl'}"]
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
