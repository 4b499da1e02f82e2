"""What every benchmark prints: percentiles and the machine it ran on (imported as bench.report)."""

from __future__ import annotations

import os
import platform


def pct(values: list[float], p: float) -> float:
    """The `p`th percentile of `values` (nearest rank), rounded to 3 decimals."""
    from edge.sim.report import percentile

    value = percentile(values, p, 3)
    if value is None:
        raise ValueError("no values to take a percentile of")
    return value


def machine() -> dict[str, object]:
    return {"cpus": os.cpu_count(), "python": platform.python_version()}


def emit(result: dict, json_path: str | None = None) -> None:
    """Print a benchmark's result as JSON, and write it to `json_path` too when one is given."""
    import json
    from pathlib import Path

    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
