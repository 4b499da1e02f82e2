"""`edge selftest`: the station checked before the technician leaves it (edge/selftest.py)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import textwrap
from typing import Any

from edge.cli import arg, command, load_station_and_line
from edge.config import ConfigError
from edge.selftest import BROKER_TIMEOUT_S, FAIL, OK, PULSE_S, SKIP, STATUSES, WARN, Result, passed, run

DEFAULT_CONFIG = "/etc/fabrique-edge/station.toml"
MAX_TIMEOUT_S = 120.0
SHOWN = {OK: "ok", WARN: "WARN", FAIL: "FAIL", SKIP: "skip"}


@command(
    "selftest", "check a station before leaving it: config, devices, broker, clock, disk, ledger (exit 1: a check failed)",
    arg("--config", "-c", default=DEFAULT_CONFIG, metavar="FILE", help=f"the station file (default {DEFAULT_CONFIG})"),
    arg("--json", action="store_true", help="one JSON object with every check and an overall `ok`"),
    arg("--no-pulse", action="store_true", help="never take an output out of its safe state"),
    arg("--timeout", type=float, default=BROKER_TIMEOUT_S, metavar="S",
        help=f"seconds to wait for the broker's answer (default {BROKER_TIMEOUT_S:g})"),
    description="Check everything a station needs, as the node will use it: the station and line files,\n"
                "the node key listed in [nodes.keys], every [hardware.*] device (inputs and safety\n"
                f"loops read, outputs pulsed for {PULSE_S:g} s and put back in their safe state, serial devices\n"
                "identified, a camera frame grabbed, scanners present), the broker reachable and\n"
                "authorised, the clock, free disk space and the ledger's checksums.\n\n"
                "An output is never pulsed when it has motion = true, when an emergency stop or door\n"
                "loop is open, with --no-pulse, or while the node runs: its devices and its broker\n"
                "connection are then its own, and its own view is read from [console] socket.\n\n"
                "Exit status: 0 nothing failed (warnings allowed), 1 a check failed, 2 the station\n"
                "file cannot be used (its errors printed as by check-config) or a bad option.\n\n"
                "example:\n  sudo edge selftest\n  edge selftest --config station.toml --json --no-pulse",
)
def selftest(args: argparse.Namespace) -> int:
    if not 0 < args.timeout <= MAX_TIMEOUT_S:
        print(f"edge selftest: --timeout {args.timeout:g} is out of range (0 to {MAX_TIMEOUT_S:g} s)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.CRITICAL)  # what the checks find is in their results, not in log lines
    loaded = load_station_and_line(args.config)
    if isinstance(loaded, ConfigError):
        print(f"{args.config}: {len(loaded.issues)} error(s): the selftest needs a station file that loads "
              f"(`edge check-config {args.config}`)", file=sys.stderr)
        if args.json:
            unusable = Result("config", "station and line files", FAIL, "; ".join(map(str, loaded.issues)))
            print(json.dumps(report(args.config, None, [unusable]), ensure_ascii=False))
        return 2
    config, line = loaded
    results = run(config, line, pulse=not args.no_pulse, timeout=args.timeout)
    if args.json:
        print(json.dumps(report(args.config, config, results), ensure_ascii=False))
    else:
        print(f"selftest of node {config.node.id} ({config.station.kind}), {args.config}\n")
        print(render(results, shutil.get_terminal_size().columns))
    return 0 if passed(results) else 1


def report(path: str, config: Any, results: list[Result]) -> dict[str, Any]:
    """The JSON form: every check, the count of each status, and `ok` (no check failed)."""
    return {"ok": passed(results), "config": path,
            "node": config.node.id if config is not None else None,
            "station": config.station.kind if config is not None else None,
            "counts": {s: sum(r.status == s for r in results) for s in STATUSES},
            "checks": [r.to_json() for r in results]}


def render(results: list[Result], columns: int = 100) -> str:
    """Aligned columns (status, group, check, detail), long details wrapped under their column,
    and a last line with the verdict."""
    group_w = max(len(r.group) for r in results)
    name_w = max(len(r.name) for r in results)
    indent = 4 + 2 + group_w + 2 + name_w + 2
    width = max(columns - indent, 40)
    lines = [f"{'':4}  {'GROUP':<{group_w}}  {'CHECK':<{name_w}}  DETAIL"]
    for r in results:
        detail = textwrap.wrap(r.detail, width, break_long_words=False, break_on_hyphens=False) or [""]
        lines.append(f"{SHOWN[r.status]:<4}  {r.group:<{group_w}}  {r.name:<{name_w}}  {detail[0]}")
        lines += [" " * indent + more for more in detail[1:]]
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    verdict = ("FAILED" if counts[FAIL] else "passed with warnings" if counts[WARN] else "passed")
    lines.append(f"\n{counts[OK]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failed, {counts[SKIP]} skipped: "
                 f"{verdict}")
    return "\n".join(lines)
