"""What every benchmark prints: percentiles and the machine it ran on (imported as bench.report)."""

from __future__ import annotations

import os
import platform


def pct(values: list[float], p: float) -> float:
    """The `p`th percentile of `values` (nearest rank), rounded to 3 decimals."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 3)


def machine() -> dict[str, object]:
    return {"cpus": os.cpu_count(), "python": platform.python_version()}
