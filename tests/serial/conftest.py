"""Fixtures for the serial tests: simulated devices on real pseudo-terminals."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from firmware_bridge.link import BoardLink
from firmware_bridge.sim.board import SimulatedBoard

Wait = Callable[..., None]


def _wait_until(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll an event we cannot subscribe to (a pin level, a counter) with a generous deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def wait_until() -> Wait:
    return _wait_until


@pytest.fixture
def board() -> Iterator[SimulatedBoard]:
    with SimulatedBoard() as device:
        yield device  # type: ignore[misc]


@pytest.fixture
def link(board: SimulatedBoard) -> Iterator[BoardLink]:
    with BoardLink(board.port) as connected:
        yield connected
