"""`edge keys ...`: the node's event-signing key and the line file entry that lists it."""

from __future__ import annotations

import argparse
import sys

from edge.cli import arg, command, group, write_secret_file
from edge.config import ConfigError, load_line, load_station
from edge.nodekey import NodeKeyError, line_entry, load, load_or_create

group("keys", "the node's event-signing key, the operator PIN, the line's MQTT secret")

CONFIG = arg("--config", metavar="STATION_FILE", required=True, help="the node's station file")


def _station(path: str):
    try:
        return load_station(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return None


@command(
    "keys new", "make the node's key file ([node] key_file) if it does not exist; print its line",
    CONFIG,
    description="Make this node's Ed25519 event-signing key at [node] key_file (mode 0600).\n"
                "An existing key is never overwritten. Paste the printed line under\n"
                "[nodes.keys] in the line file, on every node of the line.\n\n"
                "example:\n  edge keys new --config /etc/fabrique-edge/station.toml",
)
def keys_new(args: argparse.Namespace) -> int:
    config = _station(args.config)
    if config is None:
        return 1
    path = config.node.key_file
    try:
        signer, made = load_or_create(path)
    except (NodeKeyError, OSError) as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    print(f"# {'made' if made else 'kept the existing'} key {path}; back it up with the line's keys")
    print("# under [nodes.keys] in the line file:")
    print(line_entry(config.node.id, signer))
    return 0


@command(
    "keys show", "print the node's [nodes.keys] line and whether the line file lists it",
    CONFIG,
    description="Show this node's public key as a line for [nodes.keys], and check the\n"
                "line file lists it. Exit 0 when listed, 1 when not, 2 when there is no key.\n\n"
                "example:\n  edge keys show --config /etc/fabrique-edge/station.toml",
)
def keys_show(args: argparse.Namespace) -> int:
    config = _station(args.config)
    if config is None:
        return 1
    try:
        signer = load(config.node.key_file)
    except FileNotFoundError:
        print(f"{config.node.key_file}: no key yet; make one with `edge keys new --config {args.config}`",
              file=sys.stderr)
        return 2
    except NodeKeyError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(line_entry(config.node.id, signer))
    line = load_line(config.node.line_file)
    listed = line.node_keys.get(config.node.id, ())
    if signer.public_key in listed:
        print(f"# listed in {line.source}")
        return 0
    print(f"# NOT listed in {line.source} [nodes.keys]: peers refuse this node's events", file=sys.stderr)
    return 1


@command(
    "keys pin", "hash an operator PIN for [console] pin_hash (asked twice, never shown)",
    arg("--stdin", action="store_true", help="read the PIN from one line of standard input (scripts)"),
    description="Ask for the station's operator PIN twice (hidden) and print the line to put in\n"
                "the station file's [console] section. Only the salted hash (PBKDF2-SHA256) is\n"
                "stored: the PIN itself is never written anywhere. 4 to 32 digits or letters.\n\n"
                "example:\n  edge keys pin            # then paste the line under [console]",
)
def keys_pin(args: argparse.Namespace) -> int:
    import getpass

    from edge.control import hash_pin

    if args.stdin:
        pin = sys.stdin.readline().strip()
    else:
        try:
            pin = getpass.getpass("operator PIN: ")
            if getpass.getpass("again: ") != pin:
                print("the two PINs differ: nothing made", file=sys.stderr)
                return 1
        except (EOFError, KeyboardInterrupt):
            print("no PIN given", file=sys.stderr)
            return 1
    if not (4 <= len(pin) <= 32 and pin.isalnum() and pin.isascii()):
        print("a PIN is 4 to 32 digits or letters", file=sys.stderr)
        return 1
    print("# under [console] in the station file (the PIN itself is not stored):")
    print(f'pin_hash = "{hash_pin(pin)}"')
    return 0


@command(
    "keys secret", "make the line's secret: every MQTT password of the line is derived from it",
    arg("file", metavar="FILE", help="where to write it (mode 0600; an existing file is never overwritten)"),
    description="Make a new line secret (32 random bytes, base64). `edge provision --secret FILE`\n"
                "derives each MQTT account's password from it: the hub's password files and\n"
                "each node's password file then agree without anyone typing a password, and a\n"
                "replaced node gets its password back. Keep it with the line's backups, off the\n"
                "trailer's network; anyone holding it can log in as any account of the line.\n\n"
                "example:\n  edge keys secret line.secret",
)
def keys_secret(args: argparse.Namespace) -> int:
    from edge.provision import new_secret

    if write_secret_file(args.file, new_secret(), kept="kept (a new secret changes every password of the line)"):
        return 1
    print(f"made {args.file}: keep it with the line's keys, never in the trailer's network share")
    return 0


@command(
    "keys password", "print one MQTT account's password (a dashboard tool's, say), derived from the line's secret",
    arg("account", help="the account: a node id, or dashboard, operator, homeassistant, web"),
    arg("--secret", metavar="FILE", required=True, help="the line's secret (edge keys secret)"),
    description="Print the password `edge provision --hub` gave ACCOUNT on the broker, for a tool\n"
                "that logs in with it (a dashboard, Home Assistant). It goes to standard output only.\n\n"
                "example:\n  edge keys password dashboard --secret line.secret",
)
def keys_password(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge.provision import ProvisionError, account_password, read_secret

    try:
        print(account_password(read_secret(Path(args.secret)), args.account))
    except ProvisionError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0
