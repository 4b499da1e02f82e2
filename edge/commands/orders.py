"""`edge orders ...`: make signing keys, make signed QR orders, check a payload or a photo of one."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edge.cli import arg, command, group, write_secret_file
from edge.config import ConfigError, LineConfig, load_line, load_station
from edge.orders import (
    Order,
    Verdict,
    new_private_key,
    private_key_from_pem,
    private_key_pem,
    public_key_b64,
    sign_order,
    verify_order,
)

group("orders", "make signing keys, make signed QR orders, check a payload or a photo of one")

LINE_ARGS = (
    arg("--line", metavar="LINE_FILE", help="the line file with the products and [orders.keys]"),
    arg("--config", metavar="STATION_FILE", help="a station file; its node.line_file is used"),
)


@command(
    "orders keygen", "make an order-signing key pair (private key file 0600, public key line printed)",
    arg("out", metavar="KEY_FILE", help="where to write the private key (PEM); must not exist"),
    arg("--key-id", default="k1", help="the key id written into every order it signs (1-16 of A-Z a-z 0-9 - _)"),
    description="Make an Ed25519 key pair for the app backend that signs orders.\n\n"
                "The private key goes to KEY_FILE (mode 0600) and belongs on the backend only.\n"
                "The printed line is the public key: paste it under [orders.keys] in the line\n"
                "file. Rotate keys by adding a new id next to the old one, signing with the new\n"
                "one, and removing the old id once its orders have expired.\n\n"
                "example:\n  edge orders keygen backend-2026a.pem --key-id 2026a",
)
def orders_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    key = new_private_key()
    if write_secret_file(out, private_key_pem(key)):
        return 2
    print(f"# private key written to {out} (mode 0600); keep it on the app backend only")
    print("# add this line under [orders.keys] in the line file:")
    print(f'{args.key_id} = "{public_key_b64(key)}"')
    return 0


@command(
    "orders make", "sign an order and print its QR payload (and draw the QR code with --png)",
    arg("--key", required=True, metavar="KEY_FILE", help="private key file from 'edge orders keygen'"),
    arg("--key-id", required=True, help="the id of that key in the line file's [orders.keys]"),
    arg("--order-id", required=True, help="order id (1-32 of A-Z a-z 0-9 - _); also the job id"),
    arg("--product", required=True, help="product id from the line file, e.g. stand"),
    arg("--option", action="append", default=[], metavar="NAME=VALUE",
        help="a text or choice option, e.g. --option colour=red --option 'text=Hello'"),
    arg("--int", action="append", default=[], metavar="NAME=NUMBER", help="an integer option"),
    arg("--valid-days", type=float, default=14.0, help="expiry, days after issue (default 14; 0 = none)"),
    arg("--issued-at", type=int, help="issue time, Unix seconds (default now)"),
    arg("--png", metavar="FILE", help="also write the QR code as a PNG image"),
    arg("--scale", type=int, default=6, help="PNG pixels per QR module (default 6)"),
    *LINE_ARGS,
    description="Sign an order as the app backend would, for tests and demos. Prints the payload;\n"
                "with --line or --config the order is checked against the catalogue first.\n\n"
                "example:\n  edge orders make --key backend.pem --key-id k1 --order-id A7K2-0042 \\\n"
                "      --product stand --option colour=red --option 'text=Hello' --png order.png",
)
def orders_make(args: argparse.Namespace) -> int:
    try:
        key = private_key_from_pem(Path(args.key).read_bytes())
    except (OSError, ValueError) as exc:
        print(f"{args.key}: cannot read the private key ({exc})", file=sys.stderr)
        return 2
    options: dict[str, str | int] = {}
    for item in args.option:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"--option {item!r}: expected NAME=VALUE", file=sys.stderr)
            return 2
        options[name] = value
    for item in args.int:
        name, _, value = item.partition("=")
        try:
            options[name] = int(value)
        except ValueError:
            print(f"--int {item!r}: expected NAME=NUMBER", file=sys.stderr)
            return 2
    issued = args.issued_at if args.issued_at is not None else int(time.time())
    expires = issued + int(args.valid_days * 86400) if args.valid_days else 0
    order = Order(args.order_id, args.product, options, issued, expires, args.key_id)
    try:
        payload = sign_order(order, key)
    except (ValueError, OverflowError) as exc:
        print(f"cannot encode this order: {exc}", file=sys.stderr)
        return 2
    if args.line or args.config:
        line = _line(args)
        if line is None:
            return 2
        verdict = verify_order(payload, line, time.time())
        if not verdict.ok:
            print(f"this order would be rejected: {verdict.reason}: {verdict.detail}", file=sys.stderr)
            return 1
    if args.png:
        import segno

        try:
            segno.make(payload, error="m").save(args.png, kind="png", scale=args.scale, border=4)
        except OSError as exc:
            print(f"{args.png}: {exc.strerror}", file=sys.stderr)
            return 2
    print(payload)
    return 0


@command(
    "orders verify", "check a QR payload or a photo of it (exit 0 valid, 1 rejected, 2 unreadable)",
    arg("payload", nargs="?", help="the scanned text ('-' reads stdin); or use --image"),
    arg("--image", metavar="FILE", help="a photo or screenshot of the QR code (PNG, JPEG...)"),
    *LINE_ARGS,
    arg("--now", type=float, help="check as if at this Unix time (default: this machine's clock)"),
    arg("--json", action="store_true", help="print the verdict as JSON"),
    description="Check an order the way a station does: format, key, signature, expiry, product\n"
                "and options against the line file. Rejections name a reason: bad_format,\n"
                "bad_signature, unknown_key, expired, unknown_product, bad_option, too_long.\n\n"
                "Exit status: 0 valid, 1 rejected (reason printed), 2 unreadable input\n"
                "(no QR code in the image, missing file, broken line file).\n\n"
                "examples:\n  edge orders verify --line line.toml 'FE1:...'\n"
                "  edge orders verify --config /etc/fabrique-edge/station.toml --image photo.jpg",
)
def orders_verify(args: argparse.Namespace) -> int:
    if (args.payload is None) == (args.image is None):
        print("give either a PAYLOAD or --image FILE", file=sys.stderr)
        return 2
    line = _line(args)
    if line is None:
        return 2
    if args.image:
        payload = _read_qr(Path(args.image))
        if payload is None:
            return 2
    else:
        payload = sys.stdin.read() if args.payload == "-" else args.payload
    verdict = verify_order(payload, line, args.now if args.now is not None else time.time())
    _print_verdict(verdict, args.json)
    return 0 if verdict.ok else 1


def _print_verdict(verdict: Verdict, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"ok": verdict.ok, "reason": verdict.reason or None, "detail": verdict.detail or None,
                          "order": verdict.order.to_json() if verdict.order else None}, ensure_ascii=False))
    elif verdict.ok and verdict.order:
        o = verdict.order
        opts = ", ".join(f"{k}={v!r}" for k, v in o.options.items()) or "no options"
        print(f"valid: order {o.order_id}, product {o.product}, {opts} (key {o.key_id})")
    else:
        print(f"rejected: {verdict.reason}: {verdict.detail}")


def _line(args: argparse.Namespace) -> LineConfig | None:
    """The line file from --line, or from the station file's node.line_file."""
    try:
        if args.line:
            return load_line(args.line)
        if args.config:
            return load_line(load_station(args.config).node.line_file)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return None
    print("which line? give --line LINE_FILE or --config STATION_FILE", file=sys.stderr)
    return None


def _read_qr(path: Path) -> str | None:
    """The text of the first QR code in an image file; None (reason printed) if there is none."""
    import zxingcpp
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            found = zxingcpp.read_barcodes(image)
    except FileNotFoundError:
        print(f"{path}: no such file", file=sys.stderr)
        return None
    except (UnidentifiedImageError, OSError) as exc:
        print(f"{path}: not a readable image ({exc})", file=sys.stderr)
        return None
    codes = [r for r in found if "QR" in str(r.format)]
    if not codes:
        print(f"{path}: no QR code found in the image", file=sys.stderr)
        return None
    if len(codes) > 1:
        print(f"{path}: {len(codes)} QR codes in the image; checking the first", file=sys.stderr)
    return codes[0].text
