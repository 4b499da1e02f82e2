"""`edge bundle ...`: make a signed offline bundle, check one, apply one to this node."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from edge.bundle import BundleError, Target, check_files, check_signature, create, describe, public_key, read
from edge.cli import arg, command, group, write_secret_file
from edge.config import ConfigError, LineConfig, load_any, load_line
from edge.install import BIN_DIR, PREFIX, Layout
from edge.update import RESTART, Plan, UpdateFailed, apply

group("bundle", "signed offline install and update bundles: make one, check one, apply one")

STATION = "/etc/fabrique-edge/station.toml"
CHECKOUT = Path(__file__).resolve().parents[2]


def say(text: str) -> None:
    print(text, flush=True)


def _fail(text: str, code: int = 1) -> int:
    print(f"edge bundle: {text}", file=sys.stderr)
    return code


@command(
    "bundle keygen", "make the key pair that signs bundles (private key file 0600; prints its [updates.keys] line)",
    arg("out", metavar="KEY_FILE", help="where to write the private key (PEM); must not exist"),
    arg("--name", default="workshop", help="its name under [updates.keys] (1-32 of A-Z a-z 0-9 - _; default "
        "workshop)"),
    description="Make the Ed25519 key pair that signs bundles (the same kind of key as the order\n"
                "keys of `edge orders keygen`, but never the same key). The private key goes to\n"
                "KEY_FILE (mode 0600): keep it on the laptop that makes bundles, with a backup, never\n"
                "on a node or the app backend. Paste the printed line under [updates.keys] in the\n"
                "line file: nodes apply only bundles signed by a key listed there.\n\n"
                "example:\n  edge bundle keygen update-signing.pem --name workshop-2026",
)
def bundle_keygen(args: argparse.Namespace) -> int:
    from edge.config import UPDATE_KEY_RE
    from edge.orders import new_private_key, private_key_pem, public_key_b64

    if not UPDATE_KEY_RE.match(args.name):
        return _fail(f"--name {args.name!r}: 1-32 characters of letters, digits, '-' and '_'", 2)
    key = new_private_key()
    if write_secret_file(args.out, private_key_pem(key)):
        return 2
    print(f"# private key written to {args.out} (mode 0600): it signs software for the nodes; keep it on this "
          f"laptop and in the line's backups only")
    print("# add this line under [updates.keys] in the line file (then give the line file to every node):")
    print(f'{args.name} = "{public_key_b64(key)}"')
    return 0


@command(
    "bundle create", "make a signed bundle of this version and every dependency (needs the package index)",
    arg("--key", required=True, metavar="KEY_FILE", help="the Ed25519 private key (PEM) that signs updates"),
    arg("--out", default=".", metavar="DIR_OR_FILE", help="a folder (the bundle gets its usual name) or a "
        "file name (default: this folder)"),
    arg("--platform", choices=("pi", "native"), default="pi",
        help="pi: Raspberry Pi OS 64-bit (aarch64, glibc 2.36); native: this machine (default pi)"),
    arg("--python", default="3.11", metavar="X.Y", help="the nodes' Python (default 3.11, Bookworm's)"),
    arg("--source", metavar="DIR", help="the fabrique-edge source tree (default: the one this edge runs from)"),
    description="On a connected machine, make ONE file to carry to the trailer:\n"
                "fabrique-edge-<version>-<machine>.bundle.tar, holding the project's wheel, every\n"
                "dependency's wheel for the target, pip's, install.py (the first install on a blank\n"
                "card) and a manifest of every file's sha256, signed with --key. Nodes install it\n"
                "only if the line file lists the key's public half under [updates.keys].\n"
                "picamera2 and lgpio (the [pi] extra) are not in it: they come from apt.\n\n"
                "example:\n  edge bundle keygen update-signing.pem    # once; prints the [updates.keys] line\n"
                "  edge bundle create --key update-signing.pem --out /media/usb/",
)
def bundle_create(args: argparse.Namespace) -> int:
    try:
        pem = Path(args.key).read_bytes()
    except OSError as exc:
        return _fail(f"{args.key}: {exc.strerror or exc}", 2)
    source = Path(args.source) if args.source else (CHECKOUT if (CHECKOUT / "setup.py").is_file() else Path.cwd())
    out = Path(args.out)
    if args.out.endswith("/") or out.is_dir():
        out.mkdir(parents=True, exist_ok=True)
    try:
        path = create(source.resolve(), pem, out, Target.of(args.platform, args.python), say)
        bundle = read(path)
    except BundleError as exc:
        return _fail(str(exc))
    print(f"made {path} ({path.stat().st_size / 1e6:.1f} MB)")
    for line in describe(bundle, None)[:3]:
        print(f"  {line}")
    return 0


TRUST = (
    arg("--config", metavar="FILE", help=f"trust the [updates.keys] of this station file's line file (or of this "
        f"line file; default {STATION})"),
    arg("--key", metavar="PUBLIC_KEY", help="trust this key instead: base64 as in [updates.keys], or a PEM file"),
)


def _trusted(args: argparse.Namespace, default: str) -> tuple[dict[str, bytes], str] | int:
    """The keys to trust and where they come from, or an exit status after saying why."""
    if args.key and args.config:
        return _fail("--key or --config: pick one", 2)
    if args.key:
        try:
            return {"the key given": _key_argument(args.key)}, "--key"
        except BundleError as exc:
            return _fail(str(exc), 2)
    try:
        loaded = load_any(args.config or default)
        line = loaded if isinstance(loaded, LineConfig) else load_line(loaded.node.line_file)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        hint = "" if args.config else " (give --config STATION_FILE or --key PUBLIC_KEY)"
        return _fail(f"cannot read the keys to trust{hint}", 2)
    return line.update_keys, f"[updates.keys] of {line.source}"


def _key_argument(value: str) -> bytes:
    path = Path(value)
    if not path.is_file():
        return public_key(value)
    text = path.read_text(errors="replace")
    if "-----BEGIN" in text:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

        from edge.orders import private_key_from_pem, public_key_b64

        key: Ed25519PrivateKey | Ed25519PublicKey
        try:
            loaded = serialization.load_pem_public_key(text.encode())
        except ValueError:
            try:
                key = private_key_from_pem(text.encode())
            except (ValueError, TypeError) as exc:
                raise BundleError(f"{path}: not an Ed25519 key: {exc}") from None
        else:
            if not isinstance(loaded, Ed25519PublicKey):
                raise BundleError(f"{path}: not an Ed25519 public key")
            key = loaded
        return public_key(public_key_b64(key))
    found = re.search(r"[A-Za-z0-9+/]{42,43}=", text)
    if found is None:
        raise BundleError(f"{path}: holds no base64 public key")
    return public_key(found.group(0))


@command(
    "bundle verify", "check a bundle's signature against the trusted keys and every file's sha256",
    arg("file", metavar="BUNDLE", help="the .bundle.tar file"),
    *TRUST,
    description="Check who signed a bundle (a key under [updates.keys] of the line file, or --key)\n"
                "and that every file in it is the one the signed manifest lists, then print what it\n"
                "holds. Reads the file only. Exit 0 good, 1 refused (the reason is printed), 2 the\n"
                "file or the keys cannot be read.\n\n"
                "examples:\n  edge bundle verify fabrique-edge-0.1.1-aarch64.bundle.tar\n"
                "  edge bundle verify /media/usb/fabrique-edge-0.1.1-aarch64.bundle.tar --config line.toml",
)
def bundle_verify(args: argparse.Namespace) -> int:
    trusted = _trusted(args, STATION)
    if isinstance(trusted, int):
        return trusted
    keys, source = trusted
    try:
        bundle = read(Path(args.file))
    except BundleError as exc:
        return _fail(str(exc), 2 if "no such file" in str(exc) else 1)
    try:
        signer = check_signature(bundle, keys, source)
        check_files(bundle, say)
    except BundleError as exc:
        return _fail(str(exc))
    print("\n".join(describe(bundle, signer)))
    print(f"ok: signed by {signer} ({source}), every file as signed")
    return 0


@command(
    "bundle apply", "install a bundle beside the running version, switch between jobs, roll back if unwell",
    arg("file", metavar="BUNDLE", help="the .bundle.tar file"),
    arg("--config", default=None, metavar="STATION_FILE",
        help=f"the node's station file: its line file's [updates.keys] are trusted, its [console] socket "
             f"is asked (default {STATION}, under --root if given)"),
    arg("--prefix", default=PREFIX, help=f"where versions live (default {PREFIX})"),
    arg("--bin-dir", default=BIN_DIR, help=f"where the `edge` link goes (default {BIN_DIR})"),
    arg("--root", default="/", metavar="DIR", help="act inside this image folder: install and switch, "
        "nothing restarted"),
    arg("--restart-command", default=RESTART, metavar="CMD", help=f"restarts the node (default: {RESTART})"),
    arg("--health-timeout", type=float, default=90.0, metavar="S",
        help="the new version must answer on the console socket within this long (default 90)"),
    arg("--wait-idle", type=float, default=600.0, metavar="S",
        help="wait this long at most for the node to end the step it runs (default 600)"),
    arg("--force", action="store_true", help="switch and restart without waiting for the step to end"),
    arg("--no-system-site-packages", action="store_true",
        help="the new venv does not see apt's Python packages (python3-picamera2, python3-lgpio)"),
    description="Update this node from a bundle, offline:\n"
                "  1. the signature against [updates.keys] of the line file, every file's sha256\n"
                "     (refused: nothing on disk changes)\n"
                "  2. a new venv under PREFIX/versions/ from the bundle's wheels (not again if there)\n"
                "  3. the new version's `edge --version` and `edge check-config STATION_FILE`\n"
                "  4. wait until the node runs no step (its status on the console socket)\n"
                "  5. switch PREFIX/current (PREFIX/previous: the old one), restart the node\n"
                "  6. the node must answer `status` as the new version within --health-timeout;\n"
                "     if not, current goes back, the node is restarted, exit 1\n\n"
                "example:\n  sudo edge bundle apply /media/usb/fabrique-edge-0.1.1-aarch64.bundle.tar",
)
def bundle_apply(args: argparse.Namespace) -> int:
    layout = Layout(args.prefix, args.bin_dir, args.root)
    station = Path(args.config) if args.config else layout.here(STATION)
    try:
        loaded = load_any(station)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return _fail(f"cannot read the station file {station}: nothing changed", 2)
    if isinstance(loaded, LineConfig):
        return _fail(f"{station} is a line file; --config takes the node's station file", 2)
    console = loaded.console.socket if loaded.console.enabled else None
    try:
        bundle = read(Path(args.file))
        line = load_line(loaded.node.line_file)
    except BundleError as exc:
        return _fail(str(exc), 2 if "no such file" in str(exc) else 1)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return _fail("cannot read the line file: nothing changed", 2)
    plan = Plan(station, layout, console, args.restart_command, args.health_timeout, args.wait_idle, args.force,
                not args.no_system_site_packages)
    try:
        done = apply(bundle, line.update_keys, f"[updates.keys] of {line.source}", plan, say)
    except BundleError as exc:
        return _fail(f"{exc}\nnothing changed on this node")
    except UpdateFailed as exc:
        return _fail(str(exc))
    except PermissionError as exc:
        return _fail(f"permission denied on {exc.filename}: run it as root (sudo edge bundle apply ...)", 2)
    print(done)
    return 0
