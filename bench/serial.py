"""Serial benchmarks (JSON on stdout): own-protocol goodput under line noise, GRBL streaming rate.

Everything runs on real pseudo-terminals. A noise proxy between host and device paces both
directions at 115200 baud (10 bits per byte) like a real UART, so rates are wire-bound the
way they are in the trailer. Seeds are fixed: a rerun damages the same byte positions.

* goodput: ECHO commands with 32-byte payloads through the reliable link, against the
  Python twin of the firmware and against the real firmware binary running in simavr.
  Goodput = payload bytes acknowledged per second. Bit error rates 0, 1e-4, 1e-3.
* grbl: an engraving program of short segments (0.2 mm at F6000, 2 ms each) streamed to
  the GRBL simulator with a 2 ms USB-serial adapter latency, character counting against the
  128-byte RX buffer vs one line at a time, in the same run. A stream ends when every line
  has run (GRBL idle), not at the last ``ok``.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# this file is named serial.py: its own folder must not shadow pyserial's ``serial``
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH]
sys.path.insert(0, str(_BENCH.parent))

from firmware_bridge import protocol as p  # noqa: E402
from firmware_bridge.grbl import Grbl  # noqa: E402
from firmware_bridge.link import BoardLink  # noqa: E402
from firmware_bridge.sim.avr import SimulatedFirmware, build_firmware  # noqa: E402
from firmware_bridge.sim.board import SimulatedBoard  # noqa: E402
from firmware_bridge.sim.grbl import SimulatedGrbl  # noqa: E402
from firmware_bridge.sim.noise import LineNoise, NoiseProxy  # noqa: E402

BAUD = 115200
PAYLOAD = 32


def goodput(device_port: str, ber: float, count: int, seed: int) -> dict[str, float | int]:
    noise = LineNoise(bit_error_rate=ber)
    commands = [p.command(p.Opcode.ECHO, i.to_bytes(4, "big") + bytes(PAYLOAD - 4)) for i in range(count)]
    with NoiseProxy(device_port, noise, noise, seed=seed, baudrate=BAUD) as proxy:
        with BoardLink(proxy.port, heartbeat=0) as link:
            began = time.monotonic()
            done = link.run(commands)
            seconds = time.monotonic() - began
            stats = link.stats
        return {
            "bit_error_rate": ber,
            "commands": done,
            "seconds": round(seconds, 3),
            "goodput_bytes_per_s": round(done * PAYLOAD / seconds, 1),
            "retransmits": stats.retransmits,
            "timeouts": stats.timeouts,
            "naks": stats.naks,
            "damaged_replies": stats.damaged,
            "bits_flipped": proxy.downstream.counters.flipped_bits + proxy.upstream.counters.flipped_bits,
        }


def goodput_series(open_device: Callable[[], Any], count: int) -> dict[str, object]:
    runs = []
    for seed, ber in enumerate((0.0, 1e-4, 1e-3), start=1):
        with open_device() as device:
            runs.append(goodput(device.port, ber, count, seed))
    clean = runs[0]["goodput_bytes_per_s"]
    return {
        "runs": runs,
        "ratio_1e-4_vs_clean": round(runs[1]["goodput_bytes_per_s"] / clean, 3),
        "ratio_1e-3_vs_clean": round(runs[2]["goodput_bytes_per_s"] / clean, 3),
    }


def engraving(segments: int) -> list[str]:
    lines = ["G21", "G90", "F6000", "M4 S300"]
    for i in range(segments):
        row, col = divmod(i, 100)
        x = col * 0.2 if row % 2 == 0 else (99 - col) * 0.2
        lines.append(f"G1 X{10 + x:.3f} Y{10 + row * 0.1:.3f}")
    return [*lines, "M5"]


def grbl_rate(segments: int, latency: float) -> dict[str, object]:
    job = engraving(segments)
    result: dict[str, object] = {"segments": segments, "segment_ms": 2.0, "adapter_latency_ms": latency * 1000}
    for mode, counting in (("character_counting", True), ("one_line_at_a_time", False)):
        with SimulatedGrbl(latency=latency) as sim, NoiseProxy(sim.port, baudrate=BAUD) as proxy, Grbl(proxy.port) as laser:
            report = laser.stream(job, counting=counting)
            result[mode] = {
                "lines": report.lines,
                "executed": report.executed,
                "seconds": round(report.seconds, 3),
                "lines_per_s": round(report.lines / report.seconds, 1),
                "rx_overflow_bytes": sim.overflowed,
                "most_bytes_buffered": sim.most_buffered,
            }
    counted = result["character_counting"]["lines_per_s"]  # type: ignore[index]
    single = result["one_line_at_a_time"]["lines_per_s"]  # type: ignore[index]
    result["speedup"] = round(counted / single, 2)
    return result


def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)
    began = time.monotonic()
    build_firmware()
    out = {
        "machine": {"python": platform.python_version(), "cpu": platform.machine()},
        "baudrate": BAUD,
        "payload_bytes": PAYLOAD,
        "own_protocol_twin": goodput_series(SimulatedBoard, 1000),
        "own_protocol_firmware_in_simavr": goodput_series(SimulatedFirmware, 400),
        "grbl_streaming": grbl_rate(1500, 0.002),
    }
    firmware = out["own_protocol_firmware_in_simavr"]["ratio_1e-4_vs_clean"]  # type: ignore[index]
    twin = out["own_protocol_twin"]["ratio_1e-4_vs_clean"]  # type: ignore[index]
    speedup = out["grbl_streaming"]["speedup"]  # type: ignore[index]
    out["targets"] = {
        "goodput_1e-4_over_clean_at_least": 0.9,
        "firmware_ratio_1e-4": firmware, "firmware_ok": firmware >= 0.9,
        "twin_ratio_1e-4": twin, "twin_ok": twin >= 0.9,
        "grbl_speedup_at_least": 1.5, "grbl_speedup": speedup, "grbl_ok": speedup >= 1.5,
    }
    out["seconds_total"] = round(time.monotonic() - began, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
