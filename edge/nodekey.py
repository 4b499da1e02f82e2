"""The node's own event-signing key: an Ed25519 private key in a PEM file (mode 0600),
named by `[node] key_file`. Its public key is listed under `[nodes.keys]` in the line file,
so every node verifies every event, first-hand or relayed (edge.ledger.EventVerifier).

A node that boots without its key file makes one and logs the line to add to the line file;
until the line file lists it, peers refuse its events and the node shows a fault. Replacing a
node's SD card: restore its key file from the line's backup, or make a new key and add it
beside the old one in the line file (docs/operations.md).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from edge.ledger import EventSigner
from edge.orders import new_private_key, private_key_from_pem, private_key_pem


class NodeKeyError(Exception):
    """The key file exists but cannot be used (unreadable, not an Ed25519 key)."""


def load(path: Path) -> EventSigner:
    """The signer of a key file; raises FileNotFoundError or NodeKeyError."""
    try:
        pem = Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise NodeKeyError(f"{path}: {exc.strerror or exc}") from None
    try:
        key = private_key_from_pem(pem)
    except (ValueError, TypeError) as exc:
        raise NodeKeyError(f"{path}: not an unencrypted Ed25519 private key (PEM): {exc}") from None
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    return EventSigner(seed)


def create(path: Path) -> EventSigner:
    """Make a new key file (mode 0600, never overwriting one); raises FileExistsError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_key_pem(new_private_key()))
        f.flush()
        os.fsync(f.fileno())
    return load(path)


def load_or_create(path: Path) -> tuple[EventSigner, bool]:
    """(signer, made_now): the key file's signer, making the file if it does not exist."""
    try:
        return load(path), False
    except FileNotFoundError:
        try:
            return create(path), True
        except FileExistsError:  # made by someone else meanwhile
            return load(path), False


def public_b64(signer: EventSigner) -> str:
    return base64.b64encode(signer.public_key).decode("ascii")


def line_entry(node: str, signer: EventSigner) -> str:
    """The line to add under `[nodes.keys]` in the line file."""
    return f'{node} = "{public_b64(signer)}"'
