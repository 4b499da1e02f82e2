"""`edge run`: ready for systemd, watchdog pings, and every output safe after SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
from trailer import ROOT, NotifySocket, example_station

from edge.config import load_line, load_station
from edge.node import ESTOP, FAULT, STOPPED, Node
from edge.notify import SystemdNotifier


def test_sigterm_puts_every_output_in_its_declared_safe_state(monkeypatch, notify_socket, tmp_path):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    config = load_station(example_station("transfer", tmp_path))
    node = Node(config, load_line(config.node.line_file), SystemdNotifier(notify_socket.address), tick=0.05)
    driven_levels: dict[str, int] = {}
    driven = threading.Event()

    def operator() -> None:
        notify_socket.wait_for("READY=1")
        for name, output in node.board.outputs.items():
            node.post("drive", {"device": name, "value": not output.safe_state})
        node.post("probe", {})
        driven.wait(10)
        os.kill(os.getpid(), signal.SIGTERM)

    def probe(_event) -> None:
        for name in node.board.outputs:
            driven_levels[name] = node.board.factory.pin(config.hardware[name].pin).state
        node.factory_seen = node.board.factory
        driven.set()

    node.on("probe", probe)
    thread = threading.Thread(target=operator, daemon=True)
    thread.start()
    assert node.run() == 0
    thread.join(10)

    outputs = {name: cfg for name, cfg in config.hardware.items() if cfg.is_output}
    assert set(driven_levels) == set(outputs) == {"conveyor", "gripper"}
    for name, cfg in outputs.items():
        safe_level = int(cfg.safe_state == cfg.active_high)
        assert driven_levels[name] == 1 - safe_level, f"{name} was never driven out of its safe state"
        assert node.factory_seen.pin(cfg.pin).states[-1].state == safe_level, f"{name} not safe after SIGTERM"
    assert node.state == STOPPED and node.stop_reason == "SIGTERM"
    assert notify_socket.wait_for("STOPPING=1")


def test_emergency_stop_puts_the_node_in_estop(monkeypatch, notify_socket, tmp_path):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    config = load_station(example_station("intake", tmp_path))
    node = Node(config, None, SystemdNotifier(notify_socket.address), tick=0.05)
    seen: list[str] = []

    def operator() -> None:
        notify_socket.wait_for("READY=1")
        node.board.factory.pin(config.hardware["estop"].pin).drive_high()
        node.post("look", {})

    node.on("look", lambda _e: (seen.append(node.state), node.post("stop", {"reason": "test"})))
    threading.Thread(target=operator, daemon=True).start()
    node.run()
    assert seen == [ESTOP]


def start_edge(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "edge", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock", **env})


def test_edge_run_process_speaks_sd_notify_and_exits_0_on_sigterm(notify_socket, tmp_path):
    proc = start_edge("run", "--config", str(example_station("transfer", tmp_path)), "--log-format", "journal",
                      env={"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "100000"})
    try:
        ready = notify_socket.wait_for("READY=1")
        assert f"MAINPID={proc.pid}" in ready.split("\n")
        assert f"STATUS={FAULT}" in ready.split("\n")  # the example io_board is not plugged in here
        notify_socket.wait_for("WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert notify_socket.wait_for("STOPPING=1")
    lines = err.splitlines()
    assert any(line.startswith("<6>edge.node: ready: station transfer is fault") for line in lines), err
    assert any(line.startswith("<4>edge.hw.serialport: [hardware.io_board]") for line in lines), err
    assert "Traceback" not in err


def test_abstract_notify_socket_is_understood(tmp_path):
    listener = NotifySocket(f"fabrique-test-{os.getpid()}", abstract=True)
    try:
        assert SystemdNotifier(listener.address).ready("idle")
        assert "READY=1" in listener.wait_for("READY=1")
    finally:
        listener.close()


def test_no_notify_socket_means_nothing_sent_and_no_error(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert SystemdNotifier().ready() is False


@pytest.mark.parametrize("body, code", [("[node]\nid = 3\n", 1), (None, 2)])
def test_edge_run_refuses_bad_config_without_a_traceback(tmp_path, body, code):
    path = tmp_path / "station.toml"
    if body is not None:
        path.write_text(body)
    proc = start_edge("run", "--config", str(path), env={})
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code
    assert str(path) in err and "Traceback" not in err


def test_edge_help_teaches_every_command():
    proc = start_edge("--help", env={})
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    for word in ("check-config", "run"):
        assert word in out
