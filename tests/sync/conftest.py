"""Fixtures for the MQTT sync tests: a real mosquitto with the shipped hub config and ACLs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.sim.line import SimBroker, SimNode, password_of


def kind_of(name: str) -> str:
    """The station kind a test node runs: intake-1 is an intake; spare and rogue nodes are intakes too."""
    kind = name.split("-")[0]
    return kind if kind in ("intake", "laser", "printer", "transfer", "inspection", "pickup") else "intake"


USERS = ("intake-1", "laser-1", "printer-1", "transfer-1", "inspection-1", "pickup-1", "spare-1", "rogue-1")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[SimBroker]:
    people = {"dashboard": "pw-dashboard", "operator": "pw-operator", "homeassistant": "pw-ha"}
    b = SimBroker(tmp_path / "broker", users={u: password_of(u) for u in USERS}, people=people).start()
    yield b
    b.resume() if b.running else None
    b.kill()


@pytest.fixture
def line(tmp_path: Path, broker: SimBroker) -> Iterator[dict[str, SimNode]]:
    """Node processes by name, made on demand: line["intake-1"] starts one."""
    nodes: dict[str, SimNode] = {}

    class Line(dict):
        def __missing__(self, name: str) -> SimNode:
            node = SimNode(tmp_path, name, broker.port, kind=kind_of(name)).start()
            nodes[name] = node
            self[name] = node
            return node

    yield Line()
    for node in nodes.values():
        node.kill()
