"""Signed order payloads, the visitor's QR code: encode, sign, verify, reject with a reason.

Text form: ``FE1:`` + Base45 (RFC 9285) of a compact binary record, so the whole payload
uses only QR alphanumeric characters (5.5 bits a character instead of 8 in byte mode) and
survives any scanner that types it like a keyboard. The binary record (big-endian):

    version u8 (=1) | key id (u8 len + ASCII) | order id (u8 len + ASCII)
    | issued_at u32 (Unix s) | expires_at u32 (Unix s, 0 = only the line's max age)
    | product (u8 len + ASCII) | option count u8
    | per option: name (u8 len + ASCII), tag u8 (0 text: u8 len + UTF-8 | 1 integer: i32)
    | Ed25519 signature (64 bytes) over every byte before it

See docs/orders.md for a worked example. Pure: no file I/O, `now` is passed in.
`verify_order` never raises: every input gets a `Verdict`.
"""

from __future__ import annotations

import base64
import logging
import re
import struct
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.config import LineConfig, OptionSpec
from edge.public import job_secret, order_payload

log = logging.getLogger(__name__)

PREFIX = "FE1:"
VERSION = 1
MAX_PAYLOAD_CHARS = 600
SIGNATURE_BYTES = 64
MAX_OPTIONS = 16
TAG_TEXT, TAG_INTEGER = 0, 1
BASE45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_B45 = {c: i for i, c in enumerate(BASE45)}
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
KEY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
#: Characters allowed in engraved text when the line file's option gives no `charset`.
DEFAULT_CHARSET = ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .,-'’!?&+#@()"
                   "ÀÂÄÇÉÈÊËÎÏÔÖÙÛÜŸŒÆàâäçéèêëîïôöùûüÿœæß")
REASONS = ("bad_format", "bad_signature", "unknown_key", "expired", "unknown_product", "bad_option", "too_long")


@dataclass(frozen=True)
class Order:
    """One visitor's order, as signed by the app backend."""

    order_id: str
    product: str
    options: Mapping[str, str | int] = field(default_factory=dict)
    issued_at: int = 0
    expires_at: int = 0
    key_id: str = ""
    secret: str = ""  # the job secret, from the signature (edge.public): proves the visitor's QR

    def to_json(self) -> dict[str, Any]:
        out = {"order_id": self.order_id, "product": self.product, "options": dict(self.options),
               "issued_at": self.issued_at, "expires_at": self.expires_at, "key_id": self.key_id}
        if self.secret:
            out["secret"] = self.secret
        return out

    def launch_data(self, route: tuple[str, ...] | list[str]) -> dict[str, Any]:
        """The `data` of the ledger's `created` event for this order (job id = order id)."""
        return {"product": self.product, "route": list(route), "order": self.to_json()}


@dataclass(frozen=True)
class Verdict:
    """The answer of `verify_order`: `.ok` and `.order`, or `.reason` (one of REASONS) and `.detail`."""

    ok: bool
    order: Order | None = None
    reason: str = ""
    detail: str = ""

    def __str__(self) -> str:
        return f"valid order {self.order.order_id}" if self.ok and self.order else f"{self.reason}: {self.detail}"


def _reject(reason: str, detail: str) -> Verdict:
    return Verdict(False, None, reason, detail)


# ---------------------------------------------------------------- base45 (RFC 9285)

def b45encode(data: bytes) -> str:
    out = []
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        c, n = n % 45, n // 45
        d, e = n % 45, n // 45
        out += (BASE45[c], BASE45[d], BASE45[e])
    if len(data) % 2:
        n = data[-1]
        out += (BASE45[n % 45], BASE45[n // 45])
    return "".join(out)


def b45decode(text: str) -> bytes:
    """Strict decode: every string decodes to one byte string or raises ValueError."""
    if len(text) % 3 == 1:
        raise ValueError("Base45 length is not valid")
    try:
        values = [_B45[c] for c in text]
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]!r} is not a Base45 character") from None
    out = bytearray()
    for i in range(0, len(values), 3):
        chunk = values[i:i + 3]
        if len(chunk) == 3:
            n = chunk[0] + chunk[1] * 45 + chunk[2] * 2025
            if n > 0xFFFF:
                raise ValueError("Base45 group out of range")
            out += bytes((n >> 8, n & 0xFF))
        else:
            n = chunk[0] + chunk[1] * 45
            if n > 0xFF:
                raise ValueError("Base45 group out of range")
            out.append(n)
    return bytes(out)


# ---------------------------------------------------------------- binary record

def _put_str(buf: bytearray, text: str, what: str, encoding: str = "ascii") -> None:
    raw = text.encode(encoding)
    if not 0 < len(raw) <= 255 and not (what == "text" and len(raw) == 0):
        raise ValueError(f"{what} must be 1-255 bytes")
    buf.append(len(raw))
    buf += raw


def encode_body(order: Order) -> bytes:
    """The signed part of the payload (everything but the signature); raises ValueError."""
    if not KEY_ID_RE.match(order.key_id):
        raise ValueError("key id must be 1-16 of A-Z a-z 0-9 - _")
    if not ID_RE.match(order.order_id):
        raise ValueError("order id must be 1-32 of A-Z a-z 0-9 - _")
    if not ID_RE.match(order.product):
        raise ValueError("product id must be 1-32 of A-Z a-z 0-9 - _")
    if len(order.options) > MAX_OPTIONS:
        raise ValueError(f"at most {MAX_OPTIONS} options")
    buf = bytearray([VERSION])
    _put_str(buf, order.key_id, "key id")
    _put_str(buf, order.order_id, "order id")
    buf += struct.pack(">II", order.issued_at, order.expires_at)
    _put_str(buf, order.product, "product")
    buf.append(len(order.options))
    for name, value in order.options.items():
        _put_str(buf, name, "option name")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"option {name}: value must be text or an integer")
        if isinstance(value, int):
            buf.append(TAG_INTEGER)
            buf += struct.pack(">i", value)
        else:
            buf.append(TAG_TEXT)
            _put_str(buf, value, "text", "utf-8")
    return bytes(buf)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("record ends early")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def text(self, what: str, encoding: str = "ascii", pattern: re.Pattern[str] | None = None) -> str:
        raw = self.take(self.u8())
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            raise ValueError(f"{what} is not {encoding} text") from None
        if pattern is not None and not pattern.match(text):
            raise ValueError(f"{what} {text!r} is not valid")
        return text


def decode_body(body: bytes) -> Order:
    """Parse the signed part; raises ValueError on anything malformed."""
    r = _Reader(body)
    version = r.u8()
    if version != VERSION:
        raise ValueError(f"record version {version} is not supported (this node reads {VERSION})")
    key_id = r.text("key id", pattern=KEY_ID_RE)
    order_id = r.text("order id", pattern=ID_RE)
    issued_at, expires_at = struct.unpack(">II", r.take(8))
    product = r.text("product", pattern=ID_RE)
    count = r.u8()
    if count > MAX_OPTIONS:
        raise ValueError(f"{count} options (at most {MAX_OPTIONS})")
    options: dict[str, str | int] = {}
    for _ in range(count):
        name = r.text("option name", pattern=ID_RE)
        if name in options:
            raise ValueError(f"option {name!r} appears twice")
        tag = r.u8()
        if tag == TAG_TEXT:
            options[name] = r.text(f"option {name}", "utf-8")
        elif tag == TAG_INTEGER:
            options[name] = struct.unpack(">i", r.take(4))[0]
        else:
            raise ValueError(f"option {name!r} has unknown type tag {tag}")
    if r.pos != len(body):
        raise ValueError(f"{len(body) - r.pos} stray bytes after the options")
    return Order(order_id, product, options, issued_at, expires_at, key_id)


# ---------------------------------------------------------------- sign

def sign_order(order: Order, private_key: Ed25519PrivateKey) -> str:
    """The QR payload text of `order`, signed; raises ValueError if the order cannot be encoded."""
    body = encode_body(order)
    return PREFIX + b45encode(body + private_key.sign(body))


def new_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def private_key_from_pem(pem: bytes) -> Ed25519PrivateKey:
    """Raises ValueError if `pem` is not an unencrypted Ed25519 private key."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The base64 raw public key, as the line file's `[orders.keys]` wants it."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


# ---------------------------------------------------------------- verify

def verify_order(payload: object, line: LineConfig, now: float) -> Verdict:
    """Check a scanned payload against the line's keys and catalogue. Never raises.

    Checks run in this order, the first failure is the reason: too_long (payload size),
    bad_format, unknown_key, bad_signature, expired, unknown_product, bad_option / too_long
    (an engraved text over its `max_length`).
    """
    try:
        return _verify(payload, line, now)
    except Exception as exc:  # the promise is a Verdict for any input
        log.exception("order check failed unexpectedly")
        return _reject("bad_format", f"could not be read ({type(exc).__name__})")


def _verify(payload: object, line: LineConfig, now: float) -> Verdict:
    if isinstance(payload, bytes | bytearray):
        if len(payload) > MAX_PAYLOAD_CHARS:
            return _reject("too_long", f"{len(payload)} bytes; an order is at most {MAX_PAYLOAD_CHARS}")
        try:
            payload = bytes(payload).decode("ascii")
        except UnicodeDecodeError:
            return _reject("bad_format", "not text: an order payload is QR alphanumeric text")
    if not isinstance(payload, str):
        return _reject("bad_format", f"expected text, got {type(payload).__name__}")
    text = order_payload(payload.strip("\r\n\t"))  # a QR URL a phone opens holds the payload
    if len(text) > MAX_PAYLOAD_CHARS:
        return _reject("too_long", f"{len(text)} characters; an order is at most {MAX_PAYLOAD_CHARS}")
    if not text.startswith(PREFIX):
        return _reject("bad_format", f"does not start with {PREFIX!r}: not a fabrique order (v1)")
    try:
        raw = b45decode(text[len(PREFIX):])
    except ValueError as exc:
        return _reject("bad_format", f"Base45: {exc}")
    if len(raw) <= SIGNATURE_BYTES:
        return _reject("bad_format", "too short to hold a signature")
    body, signature = raw[:-SIGNATURE_BYTES], raw[-SIGNATURE_BYTES:]
    try:
        order = decode_body(body)
    except (ValueError, struct.error) as exc:
        return _reject("bad_format", str(exc))
    public = line.order_keys.get(order.key_id)
    if public is None:
        known = ", ".join(sorted(line.order_keys)) or "none"
        return _reject("unknown_key", f"signed with key {order.key_id!r}; this line trusts: {known}")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, body)
    except (InvalidSignature, ValueError):
        return _reject("bad_signature", f"signature does not match key {order.key_id!r}: tampered or forged")
    if order.expires_at and now > order.expires_at:
        return _reject("expired", f"order {order.order_id} expired {_ago(now - order.expires_at)} ago")
    if now - order.issued_at > line.order_max_age_s:
        return _reject("expired", f"order {order.order_id} was issued {_ago(now - order.issued_at)} ago; "
                                  f"the line accepts orders up to {_ago(line.order_max_age_s)} old")
    product = line.products.get(order.product)
    if product is None:
        return _reject("unknown_product", f"product {order.product!r} is not made on this line "
                                          f"({', '.join(sorted(line.products))})")
    options, problem = _check_options(order.options, product.options)
    if problem is not None:
        return problem
    return Verdict(True, Order(order.order_id, order.product, options, order.issued_at,
                               order.expires_at, order.key_id, job_secret(signature)))


def _check_options(given: Mapping[str, str | int],
                   specs: Mapping[str, OptionSpec]) -> tuple[dict[str, str | int], Verdict | None]:
    for name in given:
        if name not in specs:
            return {}, _reject("bad_option", f"option {name!r} is not offered for this product")
    options: dict[str, str | int] = {}
    for name, spec in specs.items():
        if name not in given:
            if spec.default is not None:
                options[name] = spec.default
            elif spec.required:
                return {}, _reject("bad_option", f"option {name!r} is required")
            continue
        value = given[name]
        if isinstance(value, str):  # a phone may send "é" as e + combining accent: engrave one letter
            value = unicodedata.normalize("NFC", value)
        problem = _check_value(spec, value)
        if problem is not None:
            return {}, problem
        options[name] = value
    return options, None


def _check_value(spec: OptionSpec, value: str | int) -> Verdict | None:
    name = spec.name
    if spec.kind == "integer":
        if not isinstance(value, int):
            return _reject("bad_option", f"option {name!r} must be an integer")
        if (spec.minimum is not None and value < spec.minimum) or (spec.maximum is not None and value > spec.maximum):
            return _reject("bad_option", f"option {name!r} = {value} is out of range "
                                         f"{spec.minimum}..{spec.maximum}")
        return None
    if not isinstance(value, str):
        return _reject("bad_option", f"option {name!r} must be text")
    if spec.kind == "choice":
        if value not in spec.choices:
            return _reject("bad_option", f"option {name!r} = {value!r} is not one of {', '.join(spec.choices)}")
        return None
    if spec.required and not value.strip():
        return _reject("bad_option", f"option {name!r} is required and is empty")
    limit = spec.max_length or 20
    if len(value) > limit:
        return _reject("too_long", f"option {name!r} has {len(value)} characters; at most {limit}")
    allowed = spec.charset or DEFAULT_CHARSET
    bad = sorted({c for c in value if c not in allowed})
    if bad:
        return _reject("bad_option", f"option {name!r} has characters that cannot be engraved: "
                                     f"{' '.join(repr(c) for c in bad[:5])}")
    return None


def _ago(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 2 * 86400:
        return f"{seconds // 86400} days"
    if seconds >= 2 * 3600:
        return f"{seconds // 3600} hours"
    if seconds >= 120:
        return f"{seconds // 60} minutes"
    return f"{seconds} s"
