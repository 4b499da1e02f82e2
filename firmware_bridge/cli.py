"""Command line: stream a G-code job, identify a device, or start a simulator to try both."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from firmware_bridge.grbl import Grbl, GrblFault, modal_prelude
from firmware_bridge.link import BoardLink, LinkFault
from firmware_bridge.marlin import Marlin, MarlinFault

EPILOG = """\
examples:
  python -m firmware_bridge identify --port /dev/ttyACM0
  python -m firmware_bridge identify --port /dev/ttyUSB0 --flavor grbl
  python -m firmware_bridge stream --port /dev/ttyUSB0 --flavor grbl engraving.nc --json report.json
  python -m firmware_bridge stream --port /dev/ttyUSB1 --flavor marlin stand.gcode --resume-from 1200
  python -m firmware_bridge sim grbl          # prints a pty to point the commands above at

exit status: 0 done, 1 the device faulted during the job (the message says where to resume),
2 bad input (no such file, port cannot be opened, not the firmware asked for, cannot resume there).
"""


class BadInput(Exception):
    """Something the operator gave us is wrong: one line, exit 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m firmware_bridge",
        description="Talk to the trailer's serial devices: GRBL lasers, Marlin printers and our own boards.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the link does (stderr)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stream = sub.add_parser(
        "stream",
        help="send a G-code file to a GRBL or Marlin device",
        description="Send a G-code file. GRBL lines are character-counted against the 128-byte RX buffer; "
        "Marlin lines are numbered and checksummed and resent on request. A progress bar goes to stderr, "
        "the report (lines, bytes, errors, resends, seconds; GRBL: lines acknowledged and executed) to stdout. "
        "On a GRBL fault the laser is stopped (feed hold, soft reset) before the command exits.",
    )
    stream.add_argument("file", type=Path, help="G-code file to send")
    stream.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    stream.add_argument(
        "--flavor", required=True, choices=["grbl", "marlin"], help="firmware on the other end"
    )
    stream.add_argument("--baud", type=int, default=115200, help="baud rate (default 115200)")
    stream.add_argument("--json", type=Path, metavar="OUT", help="also write the report as JSON to OUT")
    stream.add_argument(
        "--resume-from",
        type=int,
        default=0,
        metavar="N",
        help="skip the first N lines of the file (N is printed when a job stops on a fault); GRBL: "
        "the modal state of lines 1..N (units, distance mode, coordinates, feed, laser mode and power) "
        "is restored first, without moving",
    )
    stream.add_argument(
        "--check", action="store_true", help="GRBL only: dry-run the file in check mode ($C) first"
    )

    identify = sub.add_parser(
        "identify",
        help="ask a device what it is",
        description="Our boards answer the HELLO handshake (name, firmware, protocol); GRBL its $I build info; "
        "Marlin its M115 firmware line.",
    )
    identify.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyACM0")
    identify.add_argument(
        "--flavor", default="board", choices=["board", "grbl", "marlin"], help="default: board"
    )
    identify.add_argument("--baud", type=int, default=115200, help="baud rate (default 115200)")

    sim = sub.add_parser("sim", help="run a simulated device on a pseudo-terminal until Ctrl-C")
    sim.add_argument(
        "flavor", choices=["board", "grbl", "marlin", "firmware"], help="firmware = the AVR binary in simavr"
    )
    return parser


class ProgressBar:
    """A one-line bar on stderr, redrawn at most five times a second."""

    def __init__(self, total: int, start: int) -> None:
        self.total = max(total, 1)
        self.start = start
        self.began = time.monotonic()
        self.drawn = 0.0

    def __call__(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.drawn < 0.2:
            return
        self.drawn = now
        width = 30
        filled = int(width * done / self.total)
        rate = (done - self.start) / max(now - self.began, 1e-6)
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} lines {rate:6.0f} lines/s"
        )
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


def read_job(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="ascii", errors="strict")
    except FileNotFoundError as exc:
        raise BadInput(f"no such G-code file: {path}") from exc
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read {path}: {exc}") from exc
    return text.splitlines()


def stream_command(args: argparse.Namespace) -> int:
    job = read_job(args.file)
    if not 0 <= args.resume_from <= len(job):
        raise BadInput(f"--resume-from {args.resume_from} is outside the file ({len(job)} lines)")
    if args.check and args.flavor != "grbl":
        raise BadInput("--check is GRBL's check mode; Marlin has none")
    grbl = args.flavor == "grbl"
    if grbl and args.resume_from:
        try:
            prelude = modal_prelude(job, args.resume_from)
        except ValueError as exc:
            raise BadInput(f"cannot resume at line {args.resume_from + 1}: {exc}") from exc
        print(f"resuming at line {args.resume_from + 1} after: {' | '.join(prelude)}", file=sys.stderr)
    bar = ProgressBar(len(job), args.resume_from)
    result: dict[str, Any] = {"port": args.port, "flavor": args.flavor, "file": str(args.file)}
    device = Grbl(args.port, args.baud) if args.flavor == "grbl" else Marlin(args.port, args.baud)
    try:
        device.open()
    except (GrblFault, MarlinFault) as exc:
        raise BadInput(str(exc)) from exc
    status = 0
    try:
        if isinstance(device, Grbl) and args.check:
            errors = device.check(job)
            if errors:
                for error in errors:
                    print(f"check: {error}", file=sys.stderr)
                raise BadInput(f"check mode found {len(errors)} bad line(s); nothing was run")
        report = device.stream(job, start=args.resume_from, on_progress=bar)
        bar(report.position, final=True)
        result.update(status="done", **vars(report))
    except (GrblFault, MarlinFault) as fault:
        bar(fault.position, final=True)
        result.update(status="fault", fault=str(fault), position=fault.position)
        print(f"fault: {fault}", file=sys.stderr)
        resume_at = fault.position
        if isinstance(fault, GrblFault):
            resume_at = fault.executed
            result.update(executed=fault.executed, refused=fault.refused)
            print(f"acknowledged {fault.position} lines, executed {fault.executed}", file=sys.stderr)
            if fault.refused:
                print(f"refused lines: {', '.join(str(i + 1) for i in fault.refused)}", file=sys.stderr)
            if isinstance(device, Grbl) and device.buffer_reports is False:
                print("note: GRBL's status reports carry no Bf: ($10=3 adds them), so the last line known "
                      "to have run can be far behind the machine", file=sys.stderr)
        print(f"resume with: --resume-from {resume_at}", file=sys.stderr)
        status = 1
    finally:
        device.close()
    if not grbl:
        result.pop("executed", None)
        result.pop("refused", None)
    keys = ("status", "lines", "bytes", "errors", "resends", "seconds", "position", "executed")
    summary = {k: result[k] for k in keys if k in result}
    if "seconds" in summary:
        summary["seconds"] = round(summary["seconds"], 3)
    print(" ".join(f"{key}={value}" for key, value in summary.items()))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return status


def identify(port: str, flavor: str = "board", baudrate: int = 115200) -> str:
    """One line saying what answers on `port`: our board's HELLO, GRBL's version or Marlin's M115.

    Raises LinkFault, GrblFault or MarlinFault (absent port, no answer, another device)."""
    if flavor == "board":
        with BoardLink(port, baudrate=baudrate, heartbeat=0) as link:
            who = link.identity
            assert who is not None
            return (f"{who.name} firmware {who.version} protocol {who.protocol}: "
                    f"{who.outputs} outputs, {who.inputs} inputs, {who.servos} servos")
    if flavor == "grbl":
        grbl = Grbl(port, baudrate)
        try:
            version = grbl.open()
            return f"GRBL {version}: RX buffer {grbl.rx_buffer} bytes, state {grbl.status().state}"
        finally:
            grbl.close()
    marlin = Marlin(port, baudrate)
    try:
        marlin.open()
        return marlin.identify()
    finally:
        marlin.close()


def identify_command(args: argparse.Namespace) -> int:
    try:
        print(identify(args.port, args.flavor, args.baud))
    except (LinkFault, GrblFault, MarlinFault) as exc:
        raise BadInput(str(exc)) from exc
    return 0


def sim_command(args: argparse.Namespace) -> int:
    from firmware_bridge import sim
    from firmware_bridge.sim.avr import SimulatedFirmware

    devices = {
        "board": sim.SimulatedBoard,
        "grbl": sim.SimulatedGrbl,
        "marlin": sim.SimulatedMarlin,
        "firmware": SimulatedFirmware,
    }
    stop = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    device = devices[args.flavor]()
    device.start()
    print(f"{args.flavor} simulator on {device.port} (Ctrl-C to stop)", flush=True)
    try:
        signal.sigwait(stop)
    finally:
        device.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.CRITICAL, format="%(levelname)s %(name)s: %(message)s"
    )
    commands = {"stream": stream_command, "identify": identify_command, "sim": sim_command}
    try:
        return commands[args.command](args)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
