"""What the line shows the public, and how a visitor proves a job is theirs. Pure: no I/O.

The live views (`edge web`, a big screen, the cloud's virtual visit) read only the broker's
public subtree, `fabrique/<line>/public/...`, which the nodes publish and the web account is
the only reader of. Nothing there names a visitor: a job appears under a **public id**, with the
engraved name reduced as the line file's `[public] name` says (default: its initial).

The visitor's QR code is the proof. Its Ed25519 signature, which only the QR's holder (and the
line's own ledger) has, gives the **job secret**; the secret gives the public id and the key that
seals the job's private details (engraved text, inspection snapshot) on the public subtree. The
web server, shown the QR (as a URL its phone opens), checks the order's signature, derives the
secret and opens the sealed details: the broker never holds them in the clear on a topic the web
account reads.

    job secret   base32(sha256("fabrique-edge job secret\\0" + order signature))[:20], lower case
    public id    base32(sha256("fabrique-edge public id\\0" + secret))[:8], lower case
    seal key     sha256("fabrique-edge seal\\0" + secret): NaCl SecretBox (XSalsa20-Poly1305)

A QR code phones open: `HTTP://HUB.LOCAL/O/` + the order payload with `%` and space
percent-encoded (every character stays in QR alphanumeric mode). Scanners at the intake accept
both forms (`order_payload`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any
from urllib.parse import quote, unquote

from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

SECRET_CHARS = 20
PUBLIC_ID_CHARS = 8
NAME_POLICIES = ("initial", "first", "none")  # [public] name in the line file
URL_MARK = "/O/"
_URL = re.compile(r"^HTTPS?://[^/\s]+/O/(.+)$", re.IGNORECASE)


def _b32(digest: bytes, chars: int) -> str:
    return base64.b32encode(digest).decode("ascii").lower()[:chars]


def job_secret(signature: bytes) -> str:
    """The job secret of an order, from its Ed25519 signature (64 bytes)."""
    return _b32(hashlib.sha256(b"fabrique-edge job secret\0" + bytes(signature)).digest(), SECRET_CHARS)


def public_id(secret: str) -> str:
    """The id a job is shown under in public, from its secret."""
    return _b32(hashlib.sha256(b"fabrique-edge public id\0" + secret.encode()).digest(), PUBLIC_ID_CHARS)


def _box(secret: str) -> SecretBox:
    return SecretBox(hashlib.sha256(b"fabrique-edge seal\0" + secret.encode()).digest())


def seal(secret: str, data: dict[str, Any]) -> str:
    """`data` (JSON) encrypted and authenticated for the holder of `secret`, as base64 text."""
    raw = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    return base64.b64encode(bytes(_box(secret).encrypt(raw))).decode("ascii")


def unseal(secret: str, token: str) -> dict[str, Any] | None:
    """What `seal` sealed, or None for a wrong secret or a damaged token."""
    try:
        data = json.loads(_box(secret).decrypt(base64.b64decode(token, validate=True)))
    except (CryptoError, ValueError, TypeError):
        return None
    return data if isinstance(data, dict) else None


def order_payload(text: str) -> str:
    """The order payload in a scanned text: the text itself, or the payload inside a QR URL
    (`HTTP://HUB.LOCAL/O/FE1:...`, percent-encoded)."""
    found = _URL.match(text.strip("\r\n\t"))
    return unquote(found.group(1)) if found else text


def order_url(base: str, payload: str) -> str:
    """The QR text a phone opens and a scanner reads: `base` (e.g. `HTTP://HUB.LOCAL`, upper case
    keeps the QR in alphanumeric mode) + `/O/` + the payload, `%` and space percent-encoded."""
    return base.rstrip("/") + URL_MARK + quote(payload, safe="$*+-./:ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def public_name(text: str, policy: str) -> str:
    """The engraved name as the public sees it: `initial` "Camille" -> "C.", `first` the first
    word, `none` nothing."""
    words = str(text).split()
    if policy == "none" or not words:
        return ""
    if policy == "first":
        return words[0]
    return words[0][0].upper() + "."
