"""The framed protocol spoken to our own boards: pure encode/decode, no I/O.

A frame on the wire is ``COBS(kind | seq | length | payload | crc16) 0x00``:

* ``kind``    one byte, see :class:`Kind`;
* ``seq``     one byte, the command sequence number (mod 256);
* ``length``  one byte, payload length, at most :data:`MAX_PAYLOAD`;
* ``payload`` for a COMMAND: opcode then arguments; for a REPLY: status then data;
* ``crc16``   CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) over kind..payload, big-endian.

COBS removes every zero byte from the frame so a single ``0x00`` marks the end of
each frame: after line noise the receiver resynchronises at the next zero.
docs/firmware.md is the full description for writing a board in any language.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

PROTOCOL_VERSION = 1
MAX_PAYLOAD = 48
HEADER = 3
CRC_SIZE = 2
MAX_FRAME = HEADER + MAX_PAYLOAD + CRC_SIZE
MAX_ENCODED = MAX_FRAME + MAX_FRAME // 254 + 2  # COBS overhead plus the delimiter
DELIMITER = b"\x00"
WINDOW = 8  # commands in flight; the board holds this many early commands and past replies


class Kind(enum.IntEnum):
    """What a frame is."""

    COMMAND = 0x01  # host -> board: payload = opcode, args
    REPLY = 0x02  # board -> host: seq of the command; payload = status, data
    NAK = 0x03  # board -> host: seq = next expected; payload = reason, bitmap of early frames held
    HELLO = 0x04  # host -> board: start a session at seq; reply carries the identity


class Opcode(enum.IntEnum):
    """Commands a board understands."""

    IDENTIFY = 0x01
    PING = 0x02
    STATUS = 0x03
    SET_OUTPUT = 0x10
    READ_INPUTS = 0x11
    PULSE = 0x12
    SERVO = 0x13
    SAFE = 0x14
    WATCHDOG = 0x15
    ARM = 0x16
    ECHO = 0x20


class NakReason(enum.IntEnum):
    """First byte of a NAK payload."""

    GAP = 0  # an early frame came in (third byte: its seq); second byte: early frames held
    NO_SESSION = 1  # the board has not seen HELLO since it started: it restarted
    DAMAGED = 2  # a chunk failed its check; second byte: early frames held


class Status(enum.IntEnum):
    """First byte of every reply payload."""

    OK = 0
    UNKNOWN_OPCODE = 1
    BAD_ARGUMENT = 2
    LOCKED_SAFE = 3  # the watchdog tripped: outputs stay safe until ARM


STATUS_MEANING = {
    Status.OK: "ok",
    Status.UNKNOWN_OPCODE: "the board does not know this command",
    Status.BAD_ARGUMENT: "an argument is out of range for this board",
    Status.LOCKED_SAFE: "outputs are locked in their safe state after a host-silence trip; send ARM",
}


@dataclass(frozen=True)
class Frame:
    """One decoded frame."""

    kind: int
    seq: int
    payload: bytes = b""


@dataclass(frozen=True)
class Identity:
    """What a board says about itself in reply to HELLO or IDENTIFY."""

    protocol: int
    firmware: tuple[int, int, int]
    outputs: int
    inputs: int
    servos: int
    name: str

    @property
    def version(self) -> str:
        return ".".join(str(part) for part in self.firmware)


@dataclass(frozen=True)
class BoardStatus:
    """Reply to STATUS."""

    locked_safe: bool
    outputs: int
    inputs: int
    executed: int
    watchdog_ms: int


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE; crc16(b"123456789") == 0x29B1."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result holds no zero byte."""
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
        else:
            block.append(byte)
            if len(block) == 254:
                out.append(255)
                out += block
                block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes | None:
    """Undo :func:`cobs_encode`; None if ``data`` is not valid COBS."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            return None
        block = data[i + 1 : i + code]
        if len(block) != code - 1 or 0 in block:
            return None
        out += block
        i += code
        if code < 255 and i < n:
            out.append(0)
    return bytes(out)


def encode_frame(frame: Frame) -> bytes:
    """Frame -> bytes on the wire, delimiter included."""
    if len(frame.payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(frame.payload)} bytes exceeds {MAX_PAYLOAD}")
    body = bytes((frame.kind & 0xFF, frame.seq & 0xFF, len(frame.payload))) + frame.payload
    body += struct.pack(">H", crc16(body))
    return cobs_encode(body) + DELIMITER


def decode_body(encoded: bytes) -> Frame | None:
    """One COBS chunk (without delimiter) -> Frame, or None if it is damaged."""
    if not encoded or len(encoded) > MAX_ENCODED:
        return None
    body = cobs_decode(encoded)
    if body is None or len(body) < HEADER + CRC_SIZE:
        return None
    kind, seq, length = body[0], body[1], body[2]
    if length > MAX_PAYLOAD or len(body) != HEADER + length + CRC_SIZE:
        return None
    if crc16(body[:-CRC_SIZE]) != struct.unpack(">H", body[-CRC_SIZE:])[0]:
        return None
    if kind not in Kind._value2member_map_:
        return None
    return Frame(kind, seq, bytes(body[HEADER:-CRC_SIZE]))


@dataclass
class FrameDecoder:
    """Incremental decoder: feed any bytes, get whole good frames; never raises."""

    buffer: bytearray = field(default_factory=bytearray)
    rejected: int = 0  # damaged chunks thrown away

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        for byte in data:
            if byte == 0:
                if self.buffer:
                    frame = decode_body(bytes(self.buffer))
                    if frame is None:
                        self.rejected += 1
                    else:
                        frames.append(frame)
                    self.buffer.clear()
            elif len(self.buffer) <= MAX_ENCODED:
                self.buffer.append(byte)
            # longer than any frame: keep discarding until the next delimiter
        return frames


def seq_after(seq: int, n: int = 1) -> int:
    return (seq + n) & 0xFF


def seq_distance(newer: int, older: int) -> int:
    """How far ``newer`` is ahead of ``older`` (mod 256)."""
    return (newer - older) & 0xFF


def command(opcode: int, args: bytes = b"") -> bytes:
    return bytes((opcode,)) + args


def set_output(index: int, on: bool) -> bytes:
    return command(Opcode.SET_OUTPUT, bytes((index, 1 if on else 0)))


def pulse(index: int, ms: int) -> bytes:
    return command(Opcode.PULSE, struct.pack(">BH", index, ms))


def servo(index: int, microseconds: int) -> bytes:
    return command(Opcode.SERVO, struct.pack(">BH", index, microseconds))


def watchdog(ms: int) -> bytes:
    return command(Opcode.WATCHDOG, struct.pack(">H", ms))


def parse_identity(data: bytes) -> Identity | None:
    """Reply data of HELLO/IDENTIFY -> Identity, None if too short."""
    if len(data) < 7:
        return None
    name = data[7:].decode("ascii", "replace")
    return Identity(data[0], (data[1], data[2], data[3]), data[4], data[5], data[6], name)


def identity_bytes(identity: Identity) -> bytes:
    return bytes((identity.protocol, *identity.firmware, identity.outputs, identity.inputs, identity.servos)) + (
        identity.name.encode("ascii")[: MAX_PAYLOAD - 8]
    )


def parse_status(data: bytes) -> BoardStatus | None:
    if len(data) < 9:
        return None
    flags, outputs, inputs, executed, wd = struct.unpack(">BBBIH", data[:9])
    return BoardStatus(bool(flags & 1), outputs, inputs, executed, wd)


def status_bytes(status: BoardStatus) -> bytes:
    return struct.pack(
        ">BBBIH", int(status.locked_safe), status.outputs, status.inputs, status.executed & 0xFFFFFFFF, status.watchdog_ms
    )
