"""`edge check-config`: validate station and line files before a node boots on them."""

from __future__ import annotations

import argparse
import sys

from edge.cli import arg, command
from edge.config import ConfigError, LineConfig, StationConfig, advice, load_any, load_line
from edge.nodekey import NodeKeyError, load


@command(
    "check-config", "validate station and line files (exit 0 valid, 1 invalid, 2 unreadable)",
    arg("files", nargs="+", metavar="FILE", help="station files and line files (TOML)"),
    arg("-q", "--quiet", action="store_true", help="print only errors"),
    description="Check station and line files: types, ranges, unknown keys, pin and port\n"
                "conflicts (the console UART's pins too), port paths, that a station's line file\n"
                "exists, loads and has the station's line id, and that no two station files\n"
                "given share a node id. Every error is printed as FILE:LINE: [section] key:\n"
                "message, all of them at once; warnings (a missing key or password file) too.\n\n"
                "example:\n  edge check-config /etc/fabrique-edge/station.toml\n"
                "  edge check-config examples/line/*.toml",
)
def check_config(args: argparse.Namespace) -> int:
    worst = 0
    ids: dict[str, str] = {}  # node id -> the station file that named it first
    for path in args.files:
        try:
            config = load_any(path)
            issues = []
        except ConfigError as exc:
            config, issues = None, exc.issues
            if exc.unreadable:
                worst = 2
        if isinstance(config, StationConfig) and config.node.id:
            first = ids.setdefault(config.node.id, path)
            if first != path:
                issues = [*issues, f"{path}: [node] id: {config.node.id!r} is also the id in {first}: two nodes "
                                   f"with one id overwrite each other's state and refuse each other's events"]
        for issue in issues:
            print(issue, file=sys.stderr)
        if issues:
            worst = max(worst, 1)
            print(f"{path}: {len(issues)} error{'s' if len(issues) != 1 else ''}", file=sys.stderr)
        elif not args.quiet and config is not None:
            print(f"{path}: ok ({_describe(config)})")
        if isinstance(config, StationConfig):
            for warning in station_warnings(config):
                print(f"{path}: warning: {warning}", file=sys.stderr)
    return worst


def station_warnings(config: StationConfig) -> list[str]:
    """What loads but will not work: advice() plus the key file against the line's keys."""
    try:
        line = load_line(config.node.line_file)
    except ConfigError:
        return []  # already reported at [node] line_file
    out = advice(config, line)
    try:
        signer = load(config.node.key_file)
    except FileNotFoundError:
        out.append(f"[node] key_file {config.node.key_file} does not exist yet: the node makes it at first "
                   f"boot; `edge keys new --config FILE` makes it now and prints the line for the line file")
        return out
    except NodeKeyError as exc:
        out.append(f"[node] key_file: {exc}")
        return out
    listed = line.node_keys.get(config.node.id, ())
    if listed and signer.public_key not in listed:
        out.append(f"[node] key_file {config.node.key_file} is not the key {line.source} lists for "
                   f"{config.node.id!r}: peers will refuse this node's events")
    return out


def _describe(config) -> str:
    if isinstance(config, LineConfig):
        return f"line {config.id}, {len(config.products)} product(s), {len(config.order_keys)} order key(s)"
    return (f"node {config.node.id}, station {config.station.kind}, "
            f"{len(config.hardware)} device(s)")
