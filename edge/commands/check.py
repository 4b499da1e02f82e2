"""`edge check-config`: validate station and line files before a node boots on them."""

from __future__ import annotations

import argparse
import sys

from edge.cli import arg, command
from edge.config import ConfigError, LineConfig, load_any


@command(
    "check-config", "validate station and line files (exit 0 valid, 1 invalid, 2 unreadable)",
    arg("files", nargs="+", metavar="FILE", help="station files and line files (TOML)"),
    arg("-q", "--quiet", action="store_true", help="print only errors"),
    description="Check station and line files: types, ranges, unknown keys, pin and port\n"
                "conflicts, and that a station's line file exists and loads. Every error is\n"
                "printed as FILE:LINE: [section] key: message, all of them at once.\n\n"
                "example:\n  edge check-config /etc/fabrique-edge/station.toml\n"
                "  edge check-config examples/line/*.toml",
)
def check_config(args: argparse.Namespace) -> int:
    worst = 0
    for path in args.files:
        try:
            config = load_any(path)
            issues = []
        except ConfigError as exc:
            config, issues = None, exc.issues
            if exc.unreadable:
                worst = 2
        for issue in issues:
            print(issue, file=sys.stderr)
        if issues:
            worst = max(worst, 1)
            print(f"{path}: {len(issues)} error{'s' if len(issues) != 1 else ''}", file=sys.stderr)
        elif not args.quiet and config is not None:
            print(f"{path}: ok ({_describe(config)})")
    return worst


def _describe(config) -> str:
    if isinstance(config, LineConfig):
        return f"line {config.id}, {len(config.products)} product(s), {len(config.order_keys)} order key(s)"
    return (f"node {config.node.id}, station {config.station.kind}, "
            f"{len(config.hardware)} device(s)")
