"""Fixtures of the live-view tests: the hub broker as shipped, the nodes as plain MQTT clients,
`edge web` as a real process, and a real Chromium for the browser tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # lets test modules `import live_kit`

from live_kit import SCREENSHOTS, Nodes, WebServer, start_broker  # noqa: E402

from edge.sim.line import SimBroker  # noqa: E402


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[SimBroker]:
    broker = start_broker(tmp_path / "hub")
    yield broker
    if broker.running:
        broker.resume()
    broker.kill()


@pytest.fixture
def nodes(hub: SimBroker) -> Iterator[Nodes]:
    line = Nodes(hub)
    yield line
    line.close()


@pytest.fixture
def web(tmp_path: Path, hub: SimBroker) -> Iterator[WebServer]:
    server = WebServer(tmp_path / "web", hub).start()
    yield server
    server.kill()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SCREENSHOTS:
        terminalreporter.section("live view screenshots")
        for path in SCREENSHOTS:
            terminalreporter.write_line(str(path))
