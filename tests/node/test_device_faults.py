"""A device that goes away and comes back takes the station to fault and out of it again."""

from __future__ import annotations

import os

from trailer import EXAMPLES, example_station, running, wait_for

from edge.config import load_line, load_station
from edge.node import Node


def test_a_scanner_missing_at_boot_faults_the_station_until_it_is_plugged_in(tmp_path, monkeypatch):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    fifo = tmp_path / "scanner.fifo"  # not there yet: the scanner is unplugged
    station = example_station("intake", tmp_path, scanner_fifo=fifo, bench=True)
    with running(Node(load_station(station), load_line(EXAMPLES / "line.toml"), tick=0.1)) as node:
        assert node.state == "fault" and "scanner" in node.reason
        os.mkfifo(fifo)  # plugged in
        wait_for(lambda: node.state == "idle")


def test_a_printer_plugged_in_after_boot_is_found_and_the_fault_clears_without_a_restart(tmp_path, monkeypatch):
    """The USB cable of the printer's board was out at boot: the station is in fault naming it.
    Plugged in (its /dev/serial/by-id link appears), the node opens it by itself, identifies the
    Marlin, and the station goes idle: no restart, no console."""
    from firmware_bridge.sim.marlin import SimulatedMarlin

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    link = tmp_path / "usb-marlin-if00"  # the by-id link: absent while unplugged
    station = example_station("printer", tmp_path, bench=True, ports={"marlin": str(link)})
    with running(Node(load_station(station), load_line(EXAMPLES / "line.toml"), tick=0.1)) as node:
        assert node.state == "fault" and "marlin" in node.reason
        with SimulatedMarlin(home_seconds=0.05) as printer:
            os.symlink(printer.port, link)  # plugged in
            wait_for(lambda: node.state == "idle", 20)
            marlin = node.get_status()["devices"]["marlin"]
            assert marlin["fault"] is None and "Marlin" in (marlin.get("version") or "")
            assert "marlin" not in node.board.faults
