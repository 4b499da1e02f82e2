"""The operator's console on a serial port and on a local socket: the same commands, replies.
Here the serial port is set to the machine face (one `ok`/`error` line per command); the
people face, the default, is tested in test_console_people.py."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
import tty

from trailer import ROOT, example_station

from edge.sim.line import wait_until

PENDING: dict[int, bytes] = {}  # what was read past the last line, per fd


def read_line(fd: int, timeout: float = 20) -> str:
    buf = PENDING.pop(fd, b"")
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no reply line; got {buf!r}"
        buf += os.read(fd, 1024)
    line, _, PENDING[fd] = buf.partition(b"\n")
    return line.decode().rstrip("\r")


def test_serial_and_socket_consoles_answer_the_operator(tmp_path):
    master, slave = pty.openpty()
    tty.setraw(master)
    sock_path = tmp_path / "console.sock"
    station = example_station("transfer", tmp_path)
    text = station.read_text()
    text = text.replace('serial_port = "/dev/ttyAMA0"',
                        f'serial_port = "{os.ttyname(slave)}"\nserial_face = "machine"')
    text = text.replace('socket = "/run/fabrique-edge/console.sock"', f'socket = "{sock_path}"')
    station.write_text(text)
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(station)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
    try:
        assert "console of transfer-1" in read_line(master)  # the banner
        os.write(master, b"drive conveyor on\r")  # a motion output: the machine face says how to insist
        assert read_line(master).endswith("; repeat with --force to do it anyway")
        os.write(master, b"drive conveyor on --force\r")
        assert json.loads(read_line(master).removeprefix("ok "))["conveyor"] is True
        os.write(master, b"drive conveyer on\r")
        assert "no output named 'conveyer'" in read_line(master)
        os.write(master, b"x" * 3000 + b"\r")
        assert read_line(master).startswith("error line too long")
        os.write(master, b"# a comment\r\x1b[A\x00\r@machine\rping\r")  # ignored, noise, the face it has
        assert read_line(master) == "error unknown command '[a' (try 'help')"
        assert read_line(master) == 'ok {"face":"machine"}'
        assert read_line(master) == 'ok "pong"'

        wait_until(sock_path.exists, 20, "the console socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(sock_path))
            s.sendall(b"status\nnote J1 from the socket\n")
            with s.makefile() as answers:
                replies = answers.readline(), answers.readline()
        status = json.loads(replies[0].removeprefix("ok "))
        assert status["devices"]["conveyor"]["value"] is True  # what the serial console did
        assert replies[1].startswith("error ") and "no job 'J1'" in replies[1]  # a note never makes a job
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        os.close(master)
        os.close(slave)
    assert not sock_path.exists()  # removed on the way out
