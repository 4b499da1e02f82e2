"""The systemd watchdog path: the node pings only when its loop turns and passes its health check,
so a stuck or sick node stops pinging and systemd restarts it (WatchdogSec in the unit)."""

from __future__ import annotations

import threading
import time

import pytest
from trailer import NotifySocket, example_station

import edge.node
from edge.config import load_line, load_station
from edge.node import Node
from edge.notify import SystemdNotifier


def datagrams(ns: NotifySocket, seconds: float) -> list[str]:
    """Every datagram that arrives within `seconds`."""
    got: list[str] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        ns.sock.settimeout(left)
        try:
            got.append(ns.sock.recv(4096).decode())
        except TimeoutError:
            break
    return got


def pings(messages: list[str]) -> int:
    return sum("WATCHDOG=1" in m.split("\n") for m in messages)


@pytest.fixture
def node(monkeypatch, notify_socket, tmp_path):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    config = load_station(example_station("transfer", tmp_path))
    node = Node(config, load_line(config.node.line_file), SystemdNotifier(notify_socket.address), tick=0.02)

    def run() -> None:  # Node.run without its signal handlers (those belong to the main thread)
        node.start()
        try:
            node.loop()
        finally:
            node.shutdown()

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    notify_socket.wait_for("READY=1")
    yield node
    node.post("stop", {"reason": "test"})
    runner.join(10)
    assert not runner.is_alive()


def test_a_stuck_loop_stops_the_pings_and_they_resume_when_it_turns_again(node, notify_socket):
    assert pings(datagrams(notify_socket, 0.5)) >= 3
    release = threading.Event()
    node.on("hang", lambda _e: release.wait(30))  # a handler that never returns (a hung device call)
    node.post("hang", {})
    time.sleep(0.2)
    datagrams(notify_socket, 0.05)  # whatever was sent before the handler started
    assert pings(datagrams(notify_socket, 1.0)) == 0, "a stuck loop still pinged the watchdog"
    release.set()
    assert pings(datagrams(notify_socket, 0.5)) >= 3


def test_a_tick_that_keeps_failing_stops_the_pings_and_says_why(node, notify_socket, monkeypatch, caplog):
    monkeypatch.setattr(edge.node, "HEALTHY_TICK_S", 0.3)
    assert pings(datagrams(notify_socket, 0.3)) >= 2
    broken = threading.Event()
    broken.set()
    real_tick = node.node_commands.tick

    def tick() -> None:
        if broken.is_set():
            raise RuntimeError("the device thread is wedged")
        real_tick()

    monkeypatch.setattr(node.node_commands, "tick", tick)
    time.sleep(0.6)  # the loop keeps turning, but its tick fails: unwell after HEALTHY_TICK_S
    before = datagrams(notify_socket, 0.05)  # what was sent while we slept
    seen = datagrams(notify_socket, 1.0)
    assert pings(seen) == 0
    assert any(m.startswith("STATUS=unwell: the loop's tick has not completed") for m in before + seen), before
    assert "no watchdog ping: the loop's tick has not completed" in caplog.text
    broken.clear()
    assert pings(datagrams(notify_socket, 0.5)) >= 3
    assert "the loop is well again" in caplog.text


def test_the_node_is_healthy_while_its_loop_turns(node):
    time.sleep(0.2)
    assert node.health() is None
