"""A Python twin of the reference firmware: same frames, same rules, on a pty.

The firmware in ``firmware_bridge/firmware`` is the reference; this twin lets the host
side be exercised fast and in bulk (noise tests, benchmarks) and logs every command it
executes so a test can prove each ran exactly once.
"""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass, field

from firmware_bridge.protocol import (
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    WINDOW,
    BoardStatus,
    Frame,
    FrameDecoder,
    Identity,
    Kind,
    NakReason,
    Opcode,
    Status,
    encode_frame,
    identity_bytes,
    seq_after,
    seq_distance,
    status_bytes,
)
from firmware_bridge.sim.terminal import PtyDevice


@dataclass
class BoardLogic:
    """The board's side of the protocol, without I/O: frames in, frames out."""

    identity: Identity = field(
        default_factory=lambda: Identity(PROTOCOL_VERSION, (1, 0, 0), 4, 4, 1, "fabrique-io-sim")
    )
    safe_outputs: int = 0b1000
    watchdog_ms: int = 1000
    outputs: int = 0b1000
    inputs: int = 0
    servo_us: int = 0
    locked_safe: bool = False
    executed: int = 0
    log: list[bytes] = field(default_factory=list)  # every executed command payload, in order
    session: bool = False
    expected: int = 0
    cache: dict[int, bytes] = field(default_factory=dict)  # seq % WINDOW -> reply payload
    early: dict[int, bytes] = field(default_factory=dict)  # seq -> command that came before its turn
    gap_reported: bool = False  # a GAP NAK already asked for the frame now expected
    last_heard: float = field(default_factory=time.monotonic)

    def handle(self, frame: Frame, now: float) -> list[Frame]:
        """One intact frame from the host -> the frames to send back."""
        self.last_heard = now
        if frame.kind == Kind.HELLO:
            self.session = True
            self.expected = seq_after(frame.seq)
            self.cache.clear()
            self.early.clear()
            self.gap_reported = False
            return [Frame(Kind.REPLY, frame.seq, bytes((Status.OK,)) + identity_bytes(self.identity))]
        if frame.kind != Kind.COMMAND:
            return []
        if not self.session:
            return [Frame(Kind.NAK, self.expected, bytes((NakReason.NO_SESSION, 0, 0)))]
        distance = seq_distance(frame.seq, self.expected)
        if distance == 0:
            replies = [self._run(frame.seq, frame.payload)]
            while self.expected in self.early:  # the gap is filled: run what waited behind it
                seq = self.expected
                replies.append(self._run(seq, self.early.pop(seq)))
            return replies
        if distance >= 256 - WINDOW:  # one we already ran: its reply was lost, send it again
            return [Frame(Kind.REPLY, frame.seq, self.cache.get(frame.seq % WINDOW, bytes((Status.OK,))))]
        if distance < WINDOW:  # early: one before it is missing; hold it and say which
            again = frame.seq in self.early
            self.early[frame.seq] = frame.payload
            if self.gap_reported and not again:
                return []  # one NAK per gap is enough; a resent early frame asks again
            self.gap_reported = True
        return [self.nak(NakReason.GAP, frame.seq)]

    def nak(self, reason: int, trigger: int = 0) -> Frame:
        held = 0
        for i in range(1, WINDOW):
            if seq_after(self.expected, i) in self.early:
                held |= 1 << (i - 1)
        return Frame(Kind.NAK, self.expected, bytes((reason, held, trigger)))

    def damaged(self) -> list[Frame]:
        """A chunk failed its check: say what is missing."""
        return [self.nak(NakReason.DAMAGED)] if self.session else []

    def _run(self, seq: int, payload: bytes) -> Frame:
        reply = self.execute(payload)
        self.cache[seq % WINDOW] = reply
        self.expected = seq_after(seq)
        self.gap_reported = False
        return Frame(Kind.REPLY, seq, reply)

    def execute(self, payload: bytes) -> bytes:
        if not payload:
            return bytes((Status.BAD_ARGUMENT,))
        op, args = payload[0], payload[1:]
        self.executed += 1
        self.log.append(payload)
        ok = bytes((Status.OK,))
        if op == Opcode.IDENTIFY:
            return ok + identity_bytes(self.identity)
        if op == Opcode.PING:
            return ok
        if op == Opcode.STATUS:
            return ok + status_bytes(
                BoardStatus(self.locked_safe, self.outputs, self.inputs, self.executed, self.watchdog_ms)
            )
        if op == Opcode.READ_INPUTS:
            return ok + bytes((self.inputs,))
        if op == Opcode.ECHO:
            return ok + args[: MAX_PAYLOAD - 1]
        if op == Opcode.SAFE:
            self.outputs = self.safe_outputs
            self.servo_us = 0
            return ok
        if op == Opcode.ARM:
            self.locked_safe = False
            return ok
        if op == Opcode.WATCHDOG:
            if len(args) != 2 or not 50 <= struct.unpack(">H", args)[0] <= 60000:
                return bytes((Status.BAD_ARGUMENT,))
            self.watchdog_ms = struct.unpack(">H", args)[0]
            return ok
        if op in (Opcode.SET_OUTPUT, Opcode.PULSE, Opcode.SERVO):
            return self._drive(op, args)
        return bytes((Status.UNKNOWN_OPCODE,))

    def _drive(self, op: int, args: bytes) -> bytes:
        if self.locked_safe:
            return bytes((Status.LOCKED_SAFE,))
        if op == Opcode.SET_OUTPUT and len(args) == 2 and args[0] < self.identity.outputs:
            mask = 1 << args[0]
            self.outputs = (self.outputs | mask) if args[1] else (self.outputs & ~mask)
            return bytes((Status.OK,))
        if op == Opcode.PULSE and len(args) == 3 and args[0] < self.identity.outputs:
            self.outputs ^= 1 << args[0]  # the twin does not time pulses; it toggles back at once
            self.outputs ^= 1 << args[0]
            return bytes((Status.OK,))
        if op == Opcode.SERVO and len(args) == 3 and args[0] < self.identity.servos:
            us = struct.unpack(">H", args[1:])[0]
            if us == 0 or 500 <= us <= 2500:
                self.servo_us = us
                return bytes((Status.OK,))
        return bytes((Status.BAD_ARGUMENT,))

    def check_watchdog(self, now: float) -> bool:
        """Drive outputs safe and lock them if the host has been silent too long."""
        if self.session and not self.locked_safe and (now - self.last_heard) * 1000 > self.watchdog_ms:
            self.outputs = self.safe_outputs
            self.servo_us = 0
            self.locked_safe = True
            return True
        return False


class SimulatedBoard(PtyDevice):
    """The Python twin on a pty."""

    name = "board"

    def __init__(self, logic: BoardLogic | None = None) -> None:
        super().__init__()
        self.logic = logic or BoardLogic()
        self._decoder = FrameDecoder()
        self.lock = threading.Lock()
        self.watchdog_trips = threading.Event()

    def received(self, data: bytes) -> None:
        now = time.monotonic()
        with self.lock:
            before = self._decoder.rejected
            frames = self._decoder.feed(data)
            replies = [reply for f in frames for reply in self.logic.handle(f, now)]
            if self._decoder.rejected > before:
                replies += self.logic.damaged()
        out = b"".join(encode_frame(r) for r in replies)
        if out:
            self.send(out)

    def tick(self) -> None:
        with self.lock:
            if self.logic.check_watchdog(time.monotonic()):
                self.watchdog_trips.set()
