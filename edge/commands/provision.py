"""`edge provision`: a flashed Pi becomes a station node (and, with --hub, the line's broker and live
view)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from edge.cli import arg, command, load_station_and_line
from edge.provision import (
    EDGE_BIN,
    LINE_FILE,
    MOSQUITTO_DIR,
    MOSQUITTO_DROPIN,
    UNIT,
    WEB_PASSWORD,
    WEB_UNIT,
    WEB_UNIT_PATH,
    WEB_WANTS,
    ProvisionError,
    Target,
    hub_items,
    line_stations,
    read_secret,
    run_plan,
    station_items,
)


@command(
    "provision",
    "make this Pi a station node (user, dirs, config, password, unit, UART) and the hub (broker, live view)",
    arg("--station", metavar="FILE", help="the station file of this node (its line file beside it)"),
    arg("--hub", action="store_true",
        help="also set up mosquitto for the line (a conf.d drop-in, ACLs and password files for every "
             "station file beside the line file) and its live view, edge web (fabrique-web.service)"),
    arg("--line", metavar="FILE", help="the line file (with --hub and no --station: a hub that runs no station)"),
    arg("--secret", metavar="FILE",
        help="the line's secret (edge keys secret): every MQTT password is derived from it"),
    arg("--root", metavar="DIR", default="/", help="provision the system under DIR (an image, a test folder)"),
    arg("--hostname", metavar="NAME", help="host name (default: the node id; the hub without a station: hub)"),
    arg("--dry-run", action="store_true", help="say what would change, change nothing"),
    description="Put in place everything a station node needs, checking each against what is\n"
                "there and changing only what differs: a second run changes nothing and says so.\n"
                "  - the service user `fabrique` (systemd-sysusers) in groups gpio, dialout, video, input\n"
                "  - /etc/fabrique-edge (root:fabrique 0750): station.toml, line.toml, the printer's\n"
                "    G-code library, the MQTT password file (0640, the service reads it, nothing else)\n"
                "    and the node key (made if missing; its [nodes.keys] line is printed)\n"
                "  - /var/lib/fabrique-edge (fabrique 0750), the unit, enabled; /usr/local/bin/edge\n"
                "  - the host name; the header UART for the operator's console when [console]\n"
                "    serial_port is /dev/ttyAMA0, serial0 or ttyS0 (config.txt, cmdline.txt, no getty)\n"
                "With --hub: mosquitto's conf.d drop-in (works with Debian's mosquitto.conf), the\n"
                "nodes' ACL and password files made with mosquitto_passwd from the line's station files;\n"
                "the live view (fabrique-web.service, port 80), enabled, with the line file and its\n"
                "account's password in /etc/fabrique-edge/ (web.password root 0600: systemd hands it over).\n"
                "Passwords are derived from the line's secret, so hub and nodes agree by themselves.\n"
                "On a running system (--root /) changed services are reloaded and restarted.\n\n"
                "examples:\n"
                "  edge keys secret line.secret          # once per line, on the technician's laptop\n"
                "  sudo edge provision --station laser.toml --secret line.secret\n"
                "  sudo edge provision --hub --line line.toml --secret line.secret\n"
                "  edge provision --station laser.toml --secret line.secret --root /mnt/image --dry-run",
)
def provision(args: argparse.Namespace) -> int:
    if args.station is None and not (args.hub and args.line):
        print("edge provision: give --station FILE (or --hub --line FILE for a hub without a station)",
              file=sys.stderr)
        return 2
    target = Target(args.root)
    if not target.root.is_dir():
        print(f"edge provision: --root {args.root}: no such directory", file=sys.stderr)
        return 2
    try:
        secret = read_secret(Path(args.secret)) if args.secret else None
        items, notes, station = [], [], None
        if args.station:
            try:
                station, line = load_station_and_line(args.station)
            except Exception:
                print(f"{args.station}: nothing provisioned: fix the file first (edge check-config)", file=sys.stderr)
                return 1
            items, notes = station_items(station, line, secret, target, args.hostname)
        if args.hub:
            if args.line:
                from edge.config import ConfigError, load_line

                try:
                    line = load_line(args.line)
                except ConfigError as exc:
                    print(exc, file=sys.stderr)
                    return 1
            if secret is None:
                print("edge provision --hub: give --secret FILE: the broker's password files are derived from it",
                      file=sys.stderr)
                return 2
            stations = line_stations(line)
            if not stations:
                print(f"edge provision --hub: no station file of line {line.id!r} beside {line.source}",
                      file=sys.stderr)
                return 1
            if station is None:
                from edge.provision import _hostname_items

                items += _hostname_items(target, args.hostname or "hub")
            hub, hub_notes = hub_items(line, stations, secret, target, items)
            items += hub
            notes += hub_notes
            notes.append(f"broker accounts for {len(stations)} station(s): "
                         + ", ".join(s.node.id for s in stations))
        outcome = run_plan(items, target, args.dry_run)
    except (ProvisionError, FileNotFoundError, PermissionError) as exc:
        print(f"edge provision: {exc}", file=sys.stderr)
        return 1
    verb = "would change" if args.dry_run else "changed"
    for item, why in outcome.changed:
        if why[0].startswith("missing"):
            print(f"{'would make' if args.dry_run else 'made'}: {item.describe()}")
        else:
            print(f"{verb}: {item.describe()}: {'; '.join(why)}")
    if not outcome.changed:
        print(f"nothing to change: {len(outcome.kept)} item(s) already as they should be")
    else:
        print(f"{len(outcome.changed)} item(s) {verb}, {len(outcome.kept)} already as they should be")
    for note in notes:
        print(f"note: {note}")
    if station is not None and not args.dry_run:
        _key_line(station, target)
    if outcome.changed and not args.dry_run:
        _restart(outcome, target, station is not None, args.hub)
    return 0


def _key_line(station, target: Target) -> None:
    from edge.config import load_line
    from edge.nodekey import NodeKeyError, line_entry, load

    try:
        signer = load(target.path(station.node.key_file))
    except (OSError, NodeKeyError) as exc:
        print(f"note: the node key cannot be read: {exc}")
        return
    entry = line_entry(station.node.id, signer)
    if signer.public_key in load_line(station.node.line_file).node_keys.get(station.node.id, ()):
        print(f"the line file lists this node's key ({station.node.id})")
    else:
        print("the line file does not list this node's key yet: add this line under [nodes.keys] in "
              "line.toml, on every node and the hub, then provision again (docs/flashing.md):")
        print(f"  {entry}")


def _restart(outcome, target: Target, node: bool, hub: bool) -> None:
    """On a running system: reload units and restart what changed; elsewhere say what to run."""
    touched = {str(item.path) for item, _ in outcome.changed}
    broker = any(path.startswith((str(MOSQUITTO_DIR), str(MOSQUITTO_DROPIN))) for path in touched)
    web_inputs = {str(p) for p in (WEB_UNIT_PATH, WEB_WANTS, WEB_PASSWORD, LINE_FILE, EDGE_BIN)}
    web = hub and bool(touched & web_inputs)
    running = target.live and Path("/run/systemd/system").is_dir() and shutil.which("systemctl")
    todo = [["systemctl", "daemon-reload"]]
    if broker:
        todo.append(["systemctl", "restart", "mosquitto.service"])  # read at start only
    if node:
        todo.append(["systemctl", "restart", UNIT])
    if web:
        todo.append(["systemctl", "restart", WEB_UNIT])  # starts it the first time too
    if not running:
        print("then, on the running system: " + "; ".join(" ".join(cmd) for cmd in todo))
        return
    for cmd in todo:
        done = subprocess.run(cmd, capture_output=True, text=True)
        print(f"ran: {' '.join(cmd)}" + ("" if done.returncode == 0 else f": failed: {done.stderr.strip()}"))
