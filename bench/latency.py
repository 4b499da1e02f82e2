"""Station latency: a visitor's scan at intake -> job durable -> first actuator change.

A real intake node (the example station file, mock pins, a FIFO as its scanner, the store on
disk with fsync, signed events) runs its loop; the bench writes signed orders into the FIFO one
at a time and times, from the write:
  durable   the `created` event is on disk (Node.record returned)
  actuator  the first output the station drives after that (the green lamp) has changed
Prints JSON with p50/p99 ms; target: actuator p99 under 50 ms on this machine.

usage: python bench/latency.py [--scans N] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ["GPIOZERO_PIN_FACTORY"] = "mock"

from trailer import EXAMPLES, example_station  # noqa: E402

from bench.report import emit, machine, pct  # noqa: E402
from edge.config import load_line, load_station  # noqa: E402
from edge.node import Node  # noqa: E402
from edge.sim.line import example_order  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scans", type=int, default=200, help="how many visitors scan (default 200)")
    ap.add_argument("--json", metavar="OUT", help="also write the JSON to this file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        tmp_path = Path(tmp)
        fifo = tmp_path / "scanner.fifo"
        os.mkfifo(fifo)
        station = example_station("intake", tmp_path, scanner_fifo=fifo, bench=True)
        text = station.read_text()
        text = text.replace("max_open_jobs = 12", f"max_open_jobs = {args.scans + 1}")
        pool = ", ".join(f'"C{n:04d}"' for n in range(args.scans + 1))  # a tray per visitor
        text = re.sub(r"^carriers = .*$", f"carriers = [{pool}]", text, flags=re.M)
        station.write_text(text)
        node = Node(load_station(station), load_line(EXAMPLES / "line.toml"), tick=0.5)
        marks: dict[str, float] = {}
        record_many, drive_now = node.record_many, node.drive_now

        def timed_record(records):
            events = record_many(records)
            if any(type == "created" for _job, type, _data in records):
                marks["durable"] = time.perf_counter()
            return events

        def timed_drive(device, value):
            refused = drive_now(device, value)
            if device == "light_green" and value and "durable" in marks and "actuator" not in marks:
                marks["actuator"] = time.perf_counter()
            return refused

        node.record_many, node.drive_now = timed_record, timed_drive
        node.start()
        loop = threading.Thread(target=node.loop, daemon=True)
        loop.start()
        writer = os.open(fifo, os.O_WRONLY)
        durable, actuator = [], []
        try:
            orders = [example_order(f"LAT{n:05d}") for n in range(args.scans)]
            for payload in orders:
                time.sleep(0.12)  # visitors, not a flood: the scanner refuses over 10 codes a second
                marks.clear()
                node.station.flash = None  # each visitor sees the lamp go green anew
                node.drive_now("light_green", False)
                t0 = time.perf_counter()
                os.write(writer, (payload + "\n").encode())
                deadline = t0 + 10
                while "actuator" not in marks and time.perf_counter() < deadline:
                    time.sleep(0.0002)
                if "actuator" not in marks:
                    raise SystemExit(f"no green lamp 10 s after a scan: {node.get_status()['station']}")
                durable.append((marks["durable"] - t0) * 1000)
                actuator.append((marks["actuator"] - t0) * 1000)
        finally:
            os.close(writer)
            node.post("stop", {"reason": "bench over"})
            loop.join(10)
            node.shutdown()
    result = {
        "bench": "latency", "machine": machine(),
        "scans": args.scans,
        "scan_to_durable": {"p50_ms": pct(durable, 50), "p99_ms": pct(durable, 99),
                            "mean_ms": round(statistics.mean(durable), 3)},
        "scan_to_actuator": {"p50_ms": pct(actuator, 50), "p99_ms": pct(actuator, 99),
                             "mean_ms": round(statistics.mean(actuator), 3)},
        "targets": {"actuator_p99_under_50_ms": pct(actuator, 99) < 50},
    }
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
