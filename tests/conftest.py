"""Fixtures shared by every test folder (helpers live in tests/trailer.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from trailer import EXAMPLES, NotifySocket

# Property tests assert behaviour, never speed: a loaded CI machine must not fail them on time.
settings.register_profile("fabrique", deadline=None)
settings.load_profile("fabrique")


@pytest.fixture
def examples() -> Path:
    return EXAMPLES


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()
