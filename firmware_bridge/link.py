"""The reliable link to one of our boards over pyserial.

Commands go out with a sequence number, at most ``window`` in flight. The board runs them
strictly in order, answers each with a REPLY and keeps its last replies, so a retransmitted
command is answered again but never run twice. Lost or damaged frames are repaired by:

* a NAK from the board (it saw a damaged frame or a gap): go back and resend from there;
* a REPLY for a later command: the earlier reply was lost, ask for it again;
* a timeout on the oldest command (a lost tail): resend it, backing off; after
  ``silence_limit`` seconds without an intact frame the link gives up.

A HELLO starts the session and returns the board's identity; a board that speaks another
protocol version is refused. When idle the link sends a PING every ``heartbeat`` seconds,
which also feeds the firmware's host-silence watchdog. An unplugged port (read/write error,
EIO on a pty) or a board that stops answering puts the link in fault; :meth:`BoardLink.run`
reports how many commands were acknowledged, so a job resumes from there.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import serial

from firmware_bridge import protocol as p
from firmware_bridge.protocol import Frame, FrameDecoder, Identity, Kind, Opcode, Status

log = logging.getLogger(__name__)


class LinkFault(Exception):
    """The link cannot carry on; ``position`` is the last acknowledged command count of a run."""

    def __init__(self, message: str, position: int = 0) -> None:
        super().__init__(message)
        self.position = position


class IncompatibleFirmware(LinkFault):
    """The board speaks another protocol version (or is not the board asked for)."""


class DeviceSilent(LinkFault):
    """The board stopped answering although the port is still there."""


class DeviceUnplugged(LinkFault):
    """The port went away (USB cable pulled, board reset the USB chip)."""


class BoardRestarted(LinkFault):
    """The board lost its session (power glitch or reset): its outputs are in their safe state."""


class CommandRefused(Exception):
    """The board ran the command and said no; ``status`` tells why."""

    def __init__(self, status: int) -> None:
        meaning = p.STATUS_MEANING.get(status, f"status {status}") if status in Status._value2member_map_ else f"status {status}"
        super().__init__(meaning)
        self.status = status


@dataclass
class LinkStats:
    """Counters for reports and benchmarks."""

    commands: int = 0
    frames_sent: int = 0
    retransmits: int = 0
    timeouts: int = 0
    naks: int = 0
    damaged: int = 0
    heartbeats: int = 0


@dataclass
class PendingCommand:
    """A command in flight; :meth:`wait` returns the reply data or raises."""

    seq: int
    kind: int
    payload: bytes
    sent_at: float = 0.0
    first_sent_at: float = 0.0
    retries: int = 0
    retransmitted: bool = False
    status: int | None = None
    data: bytes = b""
    error: LinkFault | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float | None = None) -> bytes:
        if not self.done.wait(timeout):
            raise DeviceSilent(f"no reply to command seq {self.seq} within {timeout} s")
        if self.error is not None:
            raise self.error
        if self.status != Status.OK:
            raise CommandRefused(self.status if self.status is not None else -1)
        return self.data


class BoardLink:
    """Reliable, windowed command transport to one board on a serial port."""

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 115200,
        window: int = p.WINDOW,
        in_flight: int = 4,
        retransmit_after: float = 0.1,
        silence_limit: float = 3.0,
        heartbeat: float = 0.25,
        expect_name: str | None = None,
    ) -> None:
        if not 1 <= window <= p.WINDOW:
            raise ValueError(f"window must be 1..{p.WINDOW}")
        self.port = port
        self.baudrate = baudrate
        self.window = window
        self.max_in_flight = max(1, min(in_flight, window))
        self.retransmit_after = retransmit_after
        self.silence_limit = silence_limit
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._last_heard = time.monotonic()
        self.heartbeat = heartbeat
        self.expect_name = expect_name
        self.identity: Identity | None = None
        self.stats = LinkStats()
        self.fault: LinkFault | None = None
        self._serial: serial.Serial | None = None
        self._decoder = FrameDecoder()
        self._lock = threading.Condition()
        self._in_flight: OrderedDict[int, PendingCommand] = OrderedDict()
        self._next_seq = 0
        self._last_sent = 0.0
        self._session = False
        self._closing = False
        self._reader: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------
    def open(self, timeout: float = 5.0) -> Identity:
        """Open the port, say HELLO and check the board is one we can drive."""
        try:
            self._serial = serial.Serial(self.port, self.baudrate, timeout=0.01, write_timeout=2)
        except (serial.SerialException, OSError) as exc:
            raise DeviceUnplugged(f"cannot open {self.port}: {exc}") from exc
        self._reader = threading.Thread(target=self._read_loop, name=f"link-{self.port}", daemon=True)
        self._reader.start()
        with self._lock:
            hello = self._send_new(Kind.HELLO, b"", seq=random.randrange(256))
        try:
            data = hello.wait(timeout)
        except (LinkFault, CommandRefused) as exc:
            self.close()
            if isinstance(exc, DeviceSilent):
                raise DeviceSilent(
                    f"{self.port}: no answer to HELLO within {timeout:g} s; is this one of our boards "
                    f"(protocol {p.PROTOCOL_VERSION}, {self.baudrate} baud) and powered?"
                ) from exc
            if isinstance(exc, LinkFault):
                raise
            raise IncompatibleFirmware(f"{self.port}: the board refused HELLO ({exc})") from exc
        identity = p.parse_identity(data)
        if identity is None:
            self.close()
            raise IncompatibleFirmware(f"{self.port}: the board's identity reply is malformed ({data.hex()})")
        if identity.protocol != p.PROTOCOL_VERSION:
            self.close()
            raise IncompatibleFirmware(
                f"{self.port}: board '{identity.name}' firmware {identity.version} speaks protocol "
                f"{identity.protocol}, this host speaks {p.PROTOCOL_VERSION}: flash firmware for protocol "
                f"{p.PROTOCOL_VERSION} (firmware_bridge/firmware) or update the host"
            )
        if self.expect_name is not None and identity.name != self.expect_name:
            self.close()
            raise IncompatibleFirmware(
                f"{self.port}: expected board '{self.expect_name}', found '{identity.name}' {identity.version}"
            )
        self.identity = identity
        with self._lock:
            self._session = True
        log.info("%s: %s firmware %s, protocol %d", self.port, identity.name, identity.version, identity.protocol)
        return identity

    def close(self) -> None:
        """Stop the reader and close the port; commands still in flight fail."""
        with self._lock:
            self._closing = True
            self._fail_all(LinkFault(f"{self.port}: link closed"))
        if self._reader is not None and threading.current_thread() is not self._reader:
            self._reader.join(timeout=2)
        if self._serial is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                self._serial.close()

    def __enter__(self) -> BoardLink:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands ----------------------------------------------------------------
    def submit(self, payload: bytes) -> PendingCommand:
        """Queue one command, blocking while the window is full."""
        if len(payload) > p.MAX_PAYLOAD:
            raise ValueError(f"command of {len(payload)} bytes exceeds {p.MAX_PAYLOAD}")
        with self._lock:
            while self._window_full() and self.fault is None and not self._closing:
                self._lock.wait(0.1)
            self._raise_if_faulted()
            self.stats.commands += 1
            return self._send_new(Kind.COMMAND, payload)

    def call(self, payload: bytes, timeout: float = 10.0) -> bytes:
        """Send one command and wait for its reply data (raises CommandRefused on a refusal)."""
        return self.submit(payload).wait(timeout)

    def run(
        self,
        commands: Sequence[bytes],
        start: int = 0,
        on_reply: Callable[[int, bytes], None] | None = None,
        timeout: float = 30.0,
    ) -> int:
        """Run ``commands[start:]`` through the window; returns the count acknowledged.

        On a fault the raised LinkFault carries ``position``: commands before it are done,
        resume with ``run(commands, start=fault.position)`` on a fresh link.
        """
        pending: list[tuple[int, PendingCommand]] = []
        position = start

        def settle(block: bool) -> None:
            nonlocal position
            while pending and (block or pending[0][1].done.is_set()):
                index, cmd = pending.pop(0)
                try:
                    data = cmd.wait(timeout)
                except LinkFault as fault:
                    fault.position = position
                    raise
                if on_reply is not None:
                    on_reply(index, data)
                position = index + 1

        try:
            for index in range(start, len(commands)):
                pending.append((index, self.submit(commands[index])))
                settle(block=False)
            settle(block=True)
        except LinkFault as fault:
            fault.position = position
            raise
        return position

    def identify(self) -> Identity:
        identity = p.parse_identity(self.call(p.command(Opcode.IDENTIFY)))
        if identity is None:
            raise IncompatibleFirmware(f"{self.port}: malformed identity")
        return identity

    def ping(self) -> None:
        self.call(p.command(Opcode.PING))

    def status(self) -> p.BoardStatus:
        status = p.parse_status(self.call(p.command(Opcode.STATUS)))
        if status is None:
            raise LinkFault(f"{self.port}: malformed status reply")
        return status

    def set_output(self, index: int, on: bool) -> None:
        self.call(p.set_output(index, on))

    def read_inputs(self) -> int:
        data = self.call(p.command(Opcode.READ_INPUTS))
        return data[0] if data else 0

    def pulse(self, index: int, ms: int) -> None:
        self.call(p.pulse(index, ms))

    def servo(self, index: int, microseconds: int) -> None:
        self.call(p.servo(index, microseconds))

    def safe(self) -> None:
        self.call(p.command(Opcode.SAFE))

    def arm(self) -> None:
        self.call(p.command(Opcode.ARM))

    def set_watchdog(self, ms: int) -> None:
        self.call(p.watchdog(ms))

    def echo(self, data: bytes) -> bytes:
        return self.call(p.command(Opcode.ECHO, data))

    # -- internals (all called with self._lock held unless noted) -------------------
    def _raise_if_faulted(self) -> None:
        if self.fault is not None:
            raise self.fault
        if self._closing:
            raise LinkFault(f"{self.port}: link closed")

    def _window_full(self) -> bool:
        # the window bounds the span of sequence numbers, not the count: the board only
        # keeps the last ``WINDOW`` replies, so an old unanswered command pins the window
        # (and a shallow pipeline keeps a resent frame from queueing behind many others)
        if not self._in_flight:
            return False
        oldest = next(iter(self._in_flight))
        return len(self._in_flight) >= self.max_in_flight or p.seq_distance(self._next_seq, oldest) >= self.window

    def _send_new(self, kind: int, payload: bytes, seq: int | None = None) -> PendingCommand:
        if seq is not None:
            self._next_seq = seq
        cmd = PendingCommand(self._next_seq, kind, payload)
        self._next_seq = p.seq_after(self._next_seq)
        self._in_flight[cmd.seq] = cmd
        self._transmit(cmd)
        return cmd

    @property
    def rto(self) -> float:
        """Retransmission timeout from measured round trips (Jacobson/Karels, Karn's rule)."""
        if self._srtt is None:
            return self.retransmit_after
        return min(1.0, max(0.05, 2 * self._srtt + 4 * self._rttvar))

    def _measure(self, cmd: PendingCommand, now: float) -> None:
        if cmd.retransmitted:
            return
        sample = now - cmd.first_sent_at
        if self._srtt is None:
            self._srtt, self._rttvar = sample, sample / 2
        else:
            self._rttvar += 0.25 * (abs(self._srtt - sample) - self._rttvar)
            self._srtt += 0.125 * (sample - self._srtt)

    def _transmit(self, cmd: PendingCommand) -> None:
        if cmd.sent_at:
            cmd.retransmitted = True
            self.stats.retransmits += 1
        cmd.sent_at = self._last_sent = time.monotonic()
        if not cmd.first_sent_at:
            cmd.first_sent_at = cmd.sent_at
        self.stats.frames_sent += 1
        data = p.encode_frame(Frame(cmd.kind, cmd.seq, cmd.payload))
        try:
            assert self._serial is not None
            self._serial.write(data)
        except (serial.SerialException, OSError) as exc:
            self._set_fault(DeviceUnplugged(f"{self.port}: write failed, device unplugged? ({exc})"))

    def _set_fault(self, fault: LinkFault) -> None:
        if self.fault is None and not self._closing:
            log.error("%s", fault)
            self.fault = fault
        self._fail_all(fault)

    def _fail_all(self, fault: LinkFault) -> None:
        for cmd in self._in_flight.values():
            cmd.error = fault
            cmd.done.set()
        self._in_flight.clear()
        self._lock.notify_all()

    def _read_loop(self) -> None:
        """Reader thread: frames in, timers, retransmits, heartbeat."""
        assert self._serial is not None
        while True:
            with self._lock:
                if self._closing or self.fault is not None:
                    return
            try:
                data = self._serial.read(max(1, self._serial.in_waiting))
            except (serial.SerialException, OSError, TypeError) as exc:
                with self._lock:
                    self._set_fault(DeviceUnplugged(f"{self.port}: port gone, device unplugged? ({exc})"))
                return
            with self._lock:
                before = self._decoder.rejected
                for frame in self._decoder.feed(data):
                    self._last_heard = time.monotonic()
                    self._on_frame(frame)
                self.stats.damaged += self._decoder.rejected - before
                self._on_time(time.monotonic())

    def _on_frame(self, frame: Frame) -> None:
        now = time.monotonic()
        if frame.kind == Kind.REPLY:
            cmd = self._in_flight.pop(frame.seq, None)
            if cmd is None:
                return  # a duplicate reply to something already settled
            cmd.status = frame.payload[0] if frame.payload else Status.BAD_ARGUMENT
            cmd.data = frame.payload[1:]
            cmd.done.set()
            self._measure(cmd, now)
            for lost in list(self._in_flight.values()):
                # the board runs in order and the line is FIFO: an earlier command it saw before
                # this one has run, so its reply was lost. Ask again (the board answers from cache)
                if p.seq_distance(frame.seq, lost.seq) < 128 and lost.sent_at <= cmd.sent_at:
                    self._transmit(lost)
            self._lock.notify_all()
        elif frame.kind == Kind.NAK:
            self.stats.naks += 1
            if frame.payload[:1] == bytes((p.NakReason.NO_SESSION,)) and self._session:
                self._set_fault(BoardRestarted(f"{self.port}: the board restarted; its outputs went to their safe state"))
                return
            reason, held, trigger_seq = (frame.payload + b"\0\0\0")[:3]
            trigger = self._in_flight.get(trigger_seq) if reason == p.NakReason.GAP else None
            for cmd in list(self._in_flight.values()):
                distance = p.seq_distance(cmd.seq, frame.seq)
                if distance >= self.window or (distance and held & (1 << (distance - 1))):
                    continue  # already run, or held by the board waiting for its turn
                if trigger is not None:
                    # the FIFO line delivered ``cmd`` before the early frame that drew this NAK
                    # (if it was sent first): it was lost, resend it
                    if p.seq_distance(trigger.seq, cmd.seq) < 128 and cmd.sent_at <= trigger.sent_at:
                        self._transmit(cmd)
                elif now - cmd.sent_at > (self._srtt or self.retransmit_after):
                    self._transmit(cmd)  # missing, and not resent since the board could know

    def _on_time(self, now: float) -> None:
        if self._in_flight:
            oldest = next(iter(self._in_flight.values()))
            if oldest.retries >= 5 and now - max(self._last_heard, oldest.first_sent_at) > self.silence_limit:
                self._set_fault(
                    DeviceSilent(
                        f"{self.port}: no intact frame from the board for {self.silence_limit:g} s with commands "
                        "waiting; board hung, powered off, cable cut or line too noisy?"
                    )
                )
                return
            for cmd in list(self._in_flight.values()):
                # nothing came back to trigger a NAK or a rescue (a lost tail): resend, backing off
                # capped so that several tries fit in silence_limit before the link gives up
                if now - cmd.sent_at > min(self.silence_limit / 8, self.rto * (1 << min(cmd.retries, 2))):
                    cmd.retries += 1
                    self.stats.timeouts += 1
                    self._transmit(cmd)
        elif self._session and self.heartbeat and now - self._last_sent > self.heartbeat:
            self.stats.heartbeats += 1
            self._send_new(Kind.COMMAND, p.command(Opcode.PING))

