"""Fixtures shared by every test folder (helpers live in tests/trailer.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from trailer import EXAMPLES, NotifySocket


@pytest.fixture
def examples() -> Path:
    return EXAMPLES


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()
