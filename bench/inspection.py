"""Inspection benchmark (JSON on stdout): how fast the camera's frames are judged, and how well.

* decode: `edge.vision.find_labels` (zxing-cpp on the grayscale frame, then the symbol's corners
  refined on its finder patterns) on a rendered frame of a red stand, at 640x480 and at the
  camera's full 1640x1232; decodes a second and p50/p99 ms. Target: >= 30/s at 640x480.
* inspect: `edge.vision.inspect` (label, exposure, sharpness, label match, colour, engraving)
  on the same frames; inspections a second and p50/p99 ms. Target: well above 10/s at 640x480.
* accuracy: the simulated world's rendered set (`edge.sim.parts.shots`: good parts, wrong
  colours, missing and wrong engravings, other parts' labels, no label, too dark, overexposed,
  too blurred; turned, noisy, dimmer, brighter, warm; 640x480 and 1640x1232), each judged once:
  correct decisions, wrong passes (a defective part or an unjudgeable frame passed; target 0),
  wrong rejects (a good part rejected, or a frame that should be retaken rejected), retakes,
  and the truth x decision table.

Frames are rendered before the clock starts; only the analysis is timed.

usage: python bench/inspection.py [--repeat N] [--json OUT]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# bench/serial.py must not shadow pyserial's ``serial``: this folder off the path
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.report import emit, machine, pct  # noqa: E402
from edge.config import load_line  # noqa: E402
from edge.sim.parts import COLOURS, LABELS, render, shots  # noqa: E402
from edge.vision import ColourRef, Expected, Layout, find_labels, inspect  # noqa: E402
from stations.inspection import expected_strokes, product_layout  # noqa: E402

SIZES = ((640, 480), (1640, 1232))
NAME = "François Lefèvre"
TARGETS = {"decode_per_s_at_640x480": ">= 30", "inspect_per_s_at_640x480": "> 10", "wrong_passes": 0}


def timed(run: Callable[[], Any], repeat: int) -> dict[str, float]:
    run()  # warm up
    times = []
    for _ in range(repeat):
        begun = time.perf_counter()
        run()
        times.append((time.perf_counter() - begun) * 1000)
    return {"per_s": round(1000 / statistics.mean(times), 1), "p50_ms": pct(times, 50), "p99_ms": pct(times, 99)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=50, help="timed runs per measurement (default 50)")
    ap.add_argument("--json", metavar="OUT", help="also write the JSON to this file")
    args = ap.parse_args()
    line = load_line(ROOT / "examples" / "line" / "line.toml")
    # the example line's layouts; the line file checks no keyring colour: the set gives it a region
    layouts = {"stand": product_layout(line.products["stand"]),
               "keyring": Layout(16, (22, -2, 8, 20), product_layout(line.products["keyring"]).engraving)}

    @cache
    def toolpath(product: str, text: str) -> Any:
        return expected_strokes(line.products[product], {"text": text}, line)

    refs = tuple(ColourRef.of_hex(name, srgb, 10.0) for name, srgb in COLOURS.items())
    colour = {ref.name: ref for ref in refs}
    speed = {}
    for size in SIZES:
        frame = render(layout=layouts["stand"], label=LABELS[0], colour="red", strokes=toolpath("stand", NAME),
                       size=size, angle_deg=7.0, noise=4.0)
        expected = Expected(LABELS, colour["red"], toolpath("stand", NAME), refs)
        assert inspect(frame, expected, layouts["stand"]).verdict == "pass"
        key = f"{size[0]}x{size[1]}"
        speed[key] = {"decode": timed(lambda f=frame: find_labels(f), args.repeat),
                      "inspect": timed(lambda f=frame, e=expected: inspect(f, e, layouts["stand"]), args.repeat)}

    table: dict[str, dict[str, int]] = {}
    counts = {"frames": 0, "correct": 0, "wrong_passes": 0, "wrong_rejects": 0, "retakes": 0,
              "retakes_of_good_parts": 0}
    for shot in shots(SIZES):
        expected = Expected(LABELS, colour[shot.ordered_colour] if shot.ordered_colour else None,
                            toolpath(shot.product, shot.ordered_text) if shot.ordered_text else (), refs)
        frame = shot.frame(layouts[shot.product], toolpath(shot.product, shot.engraved) if shot.engraved else None)
        finding = inspect(frame, expected, layouts[shot.product])
        row = table.setdefault(shot.truth, {"pass": 0, "reject": 0, "retake": 0})
        row[finding.verdict] += 1
        counts["frames"] += 1
        counts["correct"] += finding.verdict == shot.verdict and finding.check in shot.checks
        counts["wrong_passes"] += finding.verdict == "pass" and shot.verdict != "pass"
        counts["wrong_rejects"] += finding.verdict == "reject" and shot.verdict != "reject"
        counts["retakes"] += finding.verdict == "retake"
        counts["retakes_of_good_parts"] += finding.verdict == "retake" and shot.truth == "good"

    out = {
        "bench": "inspection",
        "machine": machine(),
        "layouts_mm": {name: {"label": layout.label_mm, "colour": layout.colour, "engraving": layout.engraving}
                       for name, layout in layouts.items()},
        "field_mm": 120.0,
        "speed": speed,
        "accuracy": {**counts, "truth_x_decision": table},
        "targets": TARGETS,
        "targets_met": {
            "decode_per_s_at_640x480": speed["640x480"]["decode"]["per_s"] >= 30,
            "inspect_per_s_at_640x480": speed["640x480"]["inspect"]["per_s"] > 10,
            "wrong_passes": counts["wrong_passes"] == 0,
        },
    }
    emit(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
