"""Shared parts of the ledger tests: a demo line with a real signing key, orders, events."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.clock import Timestamp
from edge.config import LineConfig, OptionSpec, Product
from edge.ledger import Event, node_of
from edge.orders import Order, public_key_b64, sign_order

REPO = Path(__file__).resolve().parents[2]
NOW = 1_795_000_000  # 2026-11-18, a fixed "now" so expiry tests do not depend on this machine's clock
ENTRY = "import sys; from edge.cli import main; sys.exit(main(sys.argv[1:]))"
ROUTE = ("intake", "laser", "printer", "pickup")

BACKEND_KEY = Ed25519PrivateKey.generate()
ROGUE_KEY = Ed25519PrivateKey.generate()

STAND = Product("stand", "Smartphone stand", ROUTE, {
    "colour": OptionSpec("colour", "choice", choices=("black", "white", "red"), default="black"),
    "text": OptionSpec("text", "text", max_length=20, charset="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 !-'"),
    "size": OptionSpec("size", "integer", minimum=1, maximum=3, default=2),
})
KEYRING = Product("keyring", "Engraved keyring", ("intake", "laser", "pickup"), {
    "text": OptionSpec("text", "text", max_length=12, required=True),
})


def make_line(source: Path = Path("line.toml")) -> LineConfig:
    keys = {"2026a": base64.b64decode(public_key_b64(BACKEND_KEY))}
    return LineConfig(source, "demo", "Demo trailer", {"stand": STAND, "keyring": KEYRING}, keys, 30 * 86400)


def make_order(**changes: Any) -> Order:
    fields: dict[str, Any] = {"order_id": "A7K2-20261118-0042", "product": "stand",
                              "options": {"colour": "red", "text": "Bonjour Lyon!"},
                              "issued_at": NOW - 3600, "expires_at": NOW + 14 * 86400, "key_id": "2026a"}
    fields.update(changes)
    return Order(**fields)


def signed(key: Ed25519PrivateKey = BACKEND_KEY, **changes: Any) -> str:
    return sign_order(make_order(**changes), key)


def event(node: str, seq: int, job: str, type: str, wall: int = 0, counter: int = 0,
          station: str = "intake", **data: Any) -> Event:
    """An event of `node` (a node id, or an origin `<node>.<incarnation>`)."""
    return Event(f"{node}:{seq}", job, type, station, Timestamp(wall, counter, node_of(node)), data)


