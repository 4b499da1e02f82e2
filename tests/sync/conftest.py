"""Fixtures for the MQTT sync tests: a real mosquitto with the shipped hub config and ACLs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Broker
from linenodes import LineNode, password_of

USERS = ("intake-1", "laser-1", "printer-1", "transfer-1", "inspection-1", "pickup-1", "spare-1", "rogue-1")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    people = {"dashboard": "pw-dashboard", "operator": "pw-operator", "homeassistant": "pw-ha"}
    b = Broker(tmp_path / "broker", users={u: password_of(u) for u in USERS}, people=people).start()
    yield b
    b.resume() if b.running else None
    b.kill()


@pytest.fixture
def line(tmp_path: Path, broker: Broker) -> Iterator[dict[str, LineNode]]:
    """Node processes by name, made on demand: line["intake-1"] starts one."""
    nodes: dict[str, LineNode] = {}

    class Line(dict):
        def __missing__(self, name: str) -> LineNode:
            node = LineNode(tmp_path, name, broker.port).start()
            nodes[name] = node
            self[name] = node
            return node

    yield Line()
    for node in nodes.values():
        node.kill()
