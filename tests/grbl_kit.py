"""Test jobs for the GRBL tests."""

from __future__ import annotations


def engraving(segments: int) -> list[str]:
    """A raster of short segments with lines of varying length, like a laser engraving."""
    lines = ["G21", "G90", "F6000", "M4 S300"]
    for i in range(segments):
        lines.append(f"G1 X{10 + (i % 40) * 0.25:.3f} Y{10 + (i // 40) * 0.1:.2f}" + (" S800" if i % 7 == 0 else ""))
    return [*lines, "M5"]
