"""Engraving benchmark (JSON on stdout): a visitor's 20-character name, text to G-code, and
streaming that job to the GRBL simulator with character counting versus send-and-wait.

* text_to_gcode: `firmware_bridge.engrave.engrave` on a 20-character French name in the
  stand's engraving area (examples/line/line.toml), repeated; p50/p99 ms.
* stream: the same job streamed to the GRBL simulator on a real pty, with a 2 ms USB-serial
  adapter latency and motion at `--time-scale` of real time (default 0.05: the short strokes
  of small letters run faster than a round trip, as they do at a high feed), both ways in the
  same run; the ratio send-and-wait / counting is what the character counting buys.

usage: python bench/engrave.py [--repeat N] [--time-scale S] [--json OUT]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/serial.py must not shadow pyserial's ``serial``: this folder off the path
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.report import emit, machine, pct  # noqa: E402
from edge.config import load_line  # noqa: E402
from firmware_bridge.engrave import EngravingArea, LaserMaterial, engrave  # noqa: E402
from firmware_bridge.grbl import Grbl  # noqa: E402
from firmware_bridge.sim.grbl import SimulatedGrbl  # noqa: E402

NAME = "François Lefèvre-Zoë"  # 20 characters, accents to compose
LATENCY_S = 0.002



def stream_seconds(lines: tuple[str, ...], counting: bool, time_scale: float) -> float:
    with SimulatedGrbl(latency=LATENCY_S, time_scale=time_scale) as sim:
        grbl = Grbl(sim.port)
        try:
            grbl.open()
            begun = time.perf_counter()
            grbl.stream(lines, counting=counting)
            while grbl.status().state != "Idle":  # the planner runs dry: the job is burnt
                time.sleep(0.005)
            return time.perf_counter() - begun
        finally:
            grbl.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=50, help="text-to-G-code runs (default 50)")
    ap.add_argument("--time-scale", type=float, default=0.05, help="simulated motion time factor (default 0.05)")
    ap.add_argument("--json", metavar="OUT", help="also write the JSON to this file")
    args = ap.parse_args()
    line = load_line(ROOT / "examples" / "line" / "line.toml")
    spec = line.products["stand"].engraving
    material = line.materials[spec.material]
    area, laser = EngravingArea.of(spec), LaserMaterial.of(material)
    times = []
    for _ in range(args.repeat):
        begun = time.perf_counter()
        job = engrave(NAME, area, laser)
        times.append((time.perf_counter() - begun) * 1000)
    counting = stream_seconds(job.gcode, True, args.time_scale)
    waiting = stream_seconds(job.gcode, False, args.time_scale)
    out = {
        "bench": "engrave",
        "machine": machine(),
        "text": NAME,
        "characters": len(NAME),
        "gcode_lines": len(job.gcode),
        "gcode_bytes": sum(len(g) + 1 for g in job.gcode),
        "letter_height_mm": round(job.letter_height_mm, 2),
        "text_to_gcode_ms": {"p50": pct(times, 50), "p99": pct(times, 99), "mean": round(statistics.mean(times), 3)},
        "stream": {
            "usb_latency_ms": LATENCY_S * 1000,
            "time_scale": args.time_scale,
            "character_counting_s": round(counting, 3),
            "send_and_wait_s": round(waiting, 3),
            "ratio_send_and_wait_over_counting": round(waiting / counting, 2),
        },
    }
    emit(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
