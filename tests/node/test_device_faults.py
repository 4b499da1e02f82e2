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
