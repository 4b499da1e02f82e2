"""`edge run`: start the node for one station file (what systemd's unit runs)."""

from __future__ import annotations

import argparse
import logging
import sys

from edge.cli import arg, command, load_station_and_line
from edge.config import ConfigError
from edge.logs import setup_logging
from edge.node import Node, start_error

log = logging.getLogger("edge.run")


@command(
    "run", "run the node of one station until SIGTERM",
    arg("--config", "-c", required=True, metavar="FILE", help="the station file (TOML)"),
    arg("--log-format", choices=("auto", "journal", "text"), default="auto",
        help="journal: <priority> prefixes for journald; auto picks journal under systemd"),
    arg("--log-level", choices=("debug", "info", "warning", "error"), default=None,
        help="override [node] log_level"),
    arg("--world", action="store_true",
        help="simulate the parts and people around a node on mock pins (the simulated line: carriers "
             "on the belt break its beams, visitors open released lockers)"),
    arg("--speed", type=float, default=1.0, metavar="X",
        help="with --world: the simulated world runs X times faster (belt, visitors; default 1)"),
    arg("--clock-skew", type=float, default=0.0, metavar="SECONDS",
        help="with --world: the node's wall clock is this many seconds off (negative: behind, as a Pi "
             "without a real-time clock after a power cut)"),
    description="Start the node: reserve pins and ports, drive every output to its safe state,\n"
                "load the station, then apply events until SIGTERM or SIGINT. On stop every\n"
                "output is put in its declared safe state before the process exits 0.\n"
                "Speaks sd_notify (READY=1, WATCHDOG=1, STOPPING=1) when NOTIFY_SOCKET is set.\n\n"
                "The pin factory comes from GPIOZERO_PIN_FACTORY, else [node] pin_factory.\n"
                "example (no Pi needed):\n"
                "  GPIOZERO_PIN_FACTORY=mock edge run --config examples/line/transfer.toml",
)
def run(args: argparse.Namespace) -> int:
    loaded = load_station_and_line(args.config)
    if isinstance(loaded, ConfigError):
        return 2 if loaded.unreadable else 1
    config, line = loaded
    if (args.clock_skew or args.speed != 1.0) and not args.world:
        print("edge run: --clock-skew and --speed change the simulated world; they need --world", file=sys.stderr)
        return 2
    if not 0.1 <= args.speed <= 20:
        print(f"edge run: --speed {args.speed:g} is out of range (0.1 to 20)", file=sys.stderr)
        return 2
    setup_logging(args.log_level or config.node.log_level, args.log_format)
    node = Node(config, line)
    if args.world:
        from edge.sim.world import World

        World(node, clock_skew_s=args.clock_skew, speed=args.speed)
    try:
        return node.run()
    except Exception as exc:
        log.error("node cannot start: %s", start_error(exc))
        return 1
