"""`edge console`: the operator's console for people, on a running node's local socket (a shell
on the station's Pi) or on its serial console (a laptop on the cable). It speaks the node's
machine face and shows what a person reads: a prompt, completion, tables, questions."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import re
import sys
from pathlib import Path
from typing import Any

from prompt_toolkit.history import FileHistory, History

from edge import __version__
from edge.cli import arg, command
from edge.console import (
    MACHINE,
    REPLY_TIMEOUT_S,
    CommandCompleter,
    ConsoleHistory,
    PeopleDialog,
    Vocabulary,
    face_switch,
    format_reply,
    secret,
    worth_keeping,
)
from edge.console_text import reply_from_wire
from edge.control import Reply

DEFAULT_SOCKET = "/run/fabrique-edge/console.sock"
HISTORY_FILE = ".fabrique-edge-console-history"  # in the home directory
MAX_PARTIAL = 1 << 20  # a serial line with no end (noise): what is kept of it
ANSI = re.compile(rb"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>78DEHM])")


class Unreachable(Exception):
    """No console to talk to (or it went away); the message says what to check."""


# ---------------------------------------------------------------- the links to a node

class SocketLink:
    """The node's local socket: a line out, its `ok`/`error` line back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str):
        self.reader = reader
        self.writer = writer
        self.where = where

    @classmethod
    async def open(cls, path: str) -> SocketLink:
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=16 << 20)
        except FileNotFoundError:
            raise Unreachable(f"no console socket at {path}: is the node running, and does its station file "
                              f"set `socket` in [console]? (--socket PATH or --config FILE to pick another)") from None
        except PermissionError:
            raise Unreachable(f"permission denied on {path}: the console socket is for the node's user and "
                              f"group (mode 0660); run as that user, join its group, or use sudo") from None
        except ConnectionRefusedError:
            raise Unreachable(f"nothing answers on {path}: the node is not running (a socket file left "
                              f"behind)") from None
        except OSError as exc:
            raise Unreachable(f"cannot connect to {path}: {exc.strerror or exc}") from None
        return cls(reader, writer, path)

    async def ask(self, line: str) -> Reply:
        try:
            self.writer.write(line.encode("utf-8", "replace") + b"\n")
            await self.writer.drain()
            while True:
                raw = await asyncio.wait_for(self.reader.readline(), REPLY_TIMEOUT_S)
                if not raw:
                    raise Unreachable("the node closed the console (did it stop?)")
                reply = reply_from_wire(raw.decode("utf-8", "replace"))
                if reply is not None:
                    return reply
        except TimeoutError:
            raise Unreachable(f"no answer from the node in {REPLY_TIMEOUT_S:g} s") from None
        except (OSError, ValueError) as exc:
            raise Unreachable(f"the console connection broke: {exc}") from None

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class SerialLink:
    """The node's serial console from another computer: switched to the machine face
    (`@machine`) on connect and back to the people face (`@people`) on leaving."""

    def __init__(self, handle: Any, where: str):
        self.handle = handle
        self.where = where
        self.lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.partial = b""
        self.transports: list[Any] = []

    @classmethod
    async def open(cls, port: str, baudrate: int) -> SerialLink:
        import serial

        try:
            handle = serial.Serial(port, baudrate, timeout=0)
        except (serial.SerialException, OSError, ValueError) as exc:
            code = getattr(exc, "errno", None)
            if code == errno.ENOENT:
                raise Unreachable(f"no serial port {port}: is the cable plugged in?") from None
            if code == errno.EACCES:
                raise Unreachable(f"permission denied on {port}: join the `dialout` group, or use sudo") from None
            raise Unreachable(f"cannot open {port}: {exc}") from None
        link = cls(handle, port)
        try:
            await link._connect()
        except BaseException:
            await link.close(restore=False)
            raise
        return link

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        fd = self.handle.fileno()
        link = self

        class Lines(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                link._feed(data)

            def connection_lost(self, exc: Exception | None) -> None:
                link.lines.put_nowait(None)

        reader, _ = await loop.connect_read_pipe(Lines, os.fdopen(os.dup(fd), "rb", buffering=0))
        writer, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(os.dup(fd), "wb", buffering=0))
        self.transports = [reader, writer]
        for attempt in (b"\x03@machine\r", b"\x15\r@machine\r"):  # Ctrl-C drops a half-typed line
            writer.write(attempt)
            try:
                while True:
                    line = await asyncio.wait_for(self.lines.get(), 3)
                    if line is None:
                        raise Unreachable(f"{self.where} closed")
                    if line.strip() == b'ok {"face":"machine"}':
                        return
            except TimeoutError:
                continue
        raise Unreachable(f"no node console answers on {self.where} (is it the node's [console] serial_port, "
                          f"at the right --baudrate?)")

    def _feed(self, data: bytes) -> None:
        data = self.partial + data
        *complete, self.partial = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        for raw in complete:
            line = ANSI.sub(b"", raw)
            if line.strip():
                self.lines.put_nowait(line)
        self.partial = self.partial[-MAX_PARTIAL:]

    async def ask(self, line: str) -> Reply:
        self.transports[1].write(line.encode("utf-8", "replace") + b"\r")
        try:
            while True:
                raw = await asyncio.wait_for(self.lines.get(), REPLY_TIMEOUT_S)
                if raw is None:
                    raise Unreachable(f"{self.where} closed (cable out?)")
                reply = reply_from_wire(raw.decode("utf-8", "replace"))
                if reply is not None:
                    return reply
        except TimeoutError:
            raise Unreachable(f"no answer from the node in {REPLY_TIMEOUT_S:g} s") from None

    async def close(self, restore: bool = True) -> None:
        if restore and len(self.transports) == 2 and not self.transports[1].is_closing():
            self.transports[1].write(b"@people\r")  # the next person at the cable finds the people face
            await asyncio.sleep(0.05)
        for t in self.transports:
            t.close()
        self.handle.close()


# ---------------------------------------------------------------- the conversation

class FileConsoleHistory(FileHistory):
    """Up recalls across runs: the history file, never a line with the PIN in it."""

    def append_string(self, string: str) -> None:
        if worth_keeping(string):
            super().append_string(string)


def history() -> History:
    """The history file in the home directory, or one in memory when it cannot be written."""
    try:
        path = Path.home() / HISTORY_FILE
        with open(path, "a", encoding="utf-8"):
            pass
    except (OSError, RuntimeError):
        return ConsoleHistory()
    return FileConsoleHistory(str(path))


def say(text: str) -> None:
    print(text, flush=True)


async def one_command(link: Any, line: str) -> int:
    """`-c LINE`: its reply for people; 0 when it ran, 1 when not. Questions are asked only
    when standard input is a terminal."""
    asker = None
    if sys.stdin.isatty():
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import DummyHistory

        asker = PromptSession(history=DummyHistory())

    async def question(text: str, hidden: bool) -> str | None:
        if asker is None:
            say(f"{text.rstrip()} (not asked: no terminal)")
            return None
        try:
            return await asker.prompt_async(text, is_password=hidden)
        except (KeyboardInterrupt, EOFError):
            return None

    reply = await PeopleDialog(link.ask, say, question).run(line)
    return 0 if reply is None or reply.ok else 1


async def from_stdin(link: Any) -> int:
    """Lines piped in: each run and shown for people; no questions (no terminal to answer)."""
    failed = False

    async def question(text: str, hidden: bool) -> str | None:
        say(f"{text.rstrip()} (not asked: no terminal)")
        return None

    dialog = PeopleDialog(link.ask, say, question)
    for raw in sys.stdin:
        reply = await dialog.run(raw.rstrip("\r\n"))
        failed = failed or (reply is not None and not reply.ok)
    return 1 if failed else 0


async def interactive(link: Any) -> int:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import DummyHistory
    from prompt_toolkit.output import create_output
    from prompt_toolkit.shortcuts import CompleteStyle

    output = create_output()
    if hasattr(output, "enable_cpr"):
        output.enable_cpr = False  # readline-like completion needs no cursor reports
    vocabulary = Vocabulary()
    await vocabulary.refresh(link.ask)
    session: PromptSession[str] = PromptSession(
        history=history(), completer=CommandCompleter(vocabulary), complete_style=CompleteStyle.READLINE_LIKE,
        complete_while_typing=False, enable_open_in_editor=False, output=output)
    asker: PromptSession[str] = PromptSession(history=DummyHistory(), output=output)

    async def question(text: str, hidden: bool) -> str | None:
        try:
            return await asker.prompt_async(text, is_password=hidden)
        except (KeyboardInterrupt, EOFError):
            return None

    status = await link.ask("status")
    node = status.result if status.ok and isinstance(status.result, dict) else {}
    say(f"fabrique-edge {__version__} console of {node.get('node', '?')} ({node.get('kind', '?')}) at "
        f"{link.where}: type help, Tab completes, Up recalls, Ctrl-D leaves")
    dialog = PeopleDialog(link.ask, say, question)
    raw = False  # `@machine`: show the replies as the machine face's lines
    while True:
        try:
            text = await session.prompt_async(vocabulary.prompt)
        except KeyboardInterrupt:
            continue
        except EOFError:
            return 0
        for line in text.splitlines():
            if line.strip().lower() in ("exit", "quit"):
                return 0
            face = face_switch(line)
            if face is not None:
                raw = face == MACHINE
                say(f"replies shown for {'programs (ok/error lines)' if raw else 'people'}")
            elif raw and line.strip() and not secret(line):
                say(format_reply(await link.ask(line)))
            else:
                await dialog.run(line)
        await vocabulary.refresh(link.ask)


# ---------------------------------------------------------------- the command

def where_to(args: argparse.Namespace) -> tuple[str, str, int]:
    """("socket", path, 0) or ("serial", port, baudrate); raises Unreachable (usage)."""
    if args.socket and args.port:
        raise ValueError("--socket and --port: pick one")
    if args.socket:
        return "socket", args.socket, 0
    if args.port:
        return "serial", args.port, args.baudrate or 115200
    if args.config:
        from edge.config import ConfigError, load_station

        try:
            console = load_station(args.config).console
        except ConfigError as exc:
            raise ValueError("\n".join(str(i) for i in exc.issues) or str(exc)) from None
        if console.socket:
            return "socket", str(console.socket), 0
        if console.serial_port:
            return "serial", console.serial_port, args.baudrate or console.baudrate
        raise ValueError(f"{args.config}: its [console] section sets neither `socket` nor `serial_port`")
    return "socket", DEFAULT_SOCKET, 0


async def talk(args: argparse.Namespace, kind: str, where: str, baudrate: int) -> int:
    link: Any = await (SocketLink.open(where) if kind == "socket" else SerialLink.open(where, baudrate))
    try:
        if args.one_line is not None:
            return await one_command(link, args.one_line)
        if not sys.stdin.isatty():
            return await from_stdin(link)
        return await interactive(link)
    finally:
        await link.close()


@command(
    "console", "talk to a running node's console, for people (prompt, completion, tables, questions)",
    arg("--socket", metavar="PATH", help=f"the node's console socket (default {DEFAULT_SOCKET})"),
    arg("--port", metavar="DEVICE", help="the node's serial console instead, e.g. /dev/ttyUSB0 (from another "
                                         "computer on the cable)"),
    arg("--baudrate", type=int, metavar="N", help="with --port: its speed (default 115200, or the station "
                                                  "file's)"),
    arg("--config", metavar="STATION_FILE", help="take the socket (or serial port) from this station file's "
                                                 "[console] section"),
    arg("-c", dest="one_line", metavar="LINE", help="run this one command line, print its reply, exit"),
    description="Talk to a running node the way an operator does: a prompt with the station's\n"
                "mode and state (`laser-1 [auto|fault]> `), Tab completion of commands, devices and\n"
                "jobs, Up/Down history (~/.fabrique-edge-console-history), replies as text and\n"
                "tables, a [y/N] question before what cannot be taken back, the operator PIN\n"
                "asked hidden. `help` lists the commands, `help drive` tells one; Ctrl-D or `exit`\n"
                "leaves. Lines piped in are run one by one, without questions.\n\n"
                "examples:\n"
                "  edge console                                 # the socket " + DEFAULT_SOCKET + "\n"
                "  edge console --config /etc/fabrique-edge/laser.toml\n"
                "  edge console -c status                       # one command, then exit\n"
                "  edge console -c 'drive conveyor on'          # asks first (on a terminal)\n"
                "  edge console --port /dev/ttyUSB0 --baudrate 115200\n"
                "  echo jobs | edge console --socket /tmp/console.sock\n\n"
                "Exit codes: 0 the command ran, 1 it failed or was not done, 2 no console to\n"
                "talk to (no socket, permission denied, no answer).",
)
def console(args: argparse.Namespace) -> int:
    try:
        kind, where, baudrate = where_to(args)
    except ValueError as exc:
        print(f"edge console: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(talk(args, kind, where, baudrate))
    except Unreachable as exc:
        print(f"edge console: {exc}", file=sys.stderr)
        return 2
