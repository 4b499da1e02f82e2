"""Fixtures of the station tests: the ledger tests' demo line and signed orders."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "ledger"))  # `import ledger_kit`
