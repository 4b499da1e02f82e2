"""The operator's console: command lines from a person or a program, dispatched on the node
loop through the node's one command registry. This module reads lines and writes replies.

Two faces on the one registry:

- the **machine face** (standard input, the local socket, a serial port set
  `serial_face = "machine"`): one command per line in, one `ok <JSON>` / `error <why>` line out;
- the **people face** (the serial port by default, and `edge console`): a prompt
  (`laser-1 [auto|fault]> `), echo and line editing, history, Tab completion, replies as short
  text and tables, a question before what cannot be taken back, the PIN asked hidden. On the
  serial port it is prompt_toolkit running over the port (the bytes read are fed to a pipe
  input, the screen is a VT100 output writing to the port), as its telnet server does.

`@machine` or `@people` typed alone on a line switches that connection's face. Every
connection is a `Session`; each line goes to the node as a `console_line` event with the
session and a reply callback, which the node calls from its loop thread.

A serial port that goes away (a USB adapter pulled out, a read error) is closed and opened
again, every second, at the same path, until it comes back: the greeting says it is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.application.current import create_app_session
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.data_structures import Size
from prompt_toolkit.document import Document
from prompt_toolkit.history import DummyHistory, InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.keys import Keys
from prompt_toolkit.output.color_depth import ColorDepth
from prompt_toolkit.output.vt100 import Vt100_Output
from prompt_toolkit.shortcuts import CompleteStyle

from edge.console_text import (
    OVERRIDE_STATUSES,
    PIN_LOCKED,
    STEP_STATUSES,
    params_from_help,
    prompt_from_status,
    question_of,
    render,
    safe,
    with_force,
    words_from,
)
from edge.control import MAX_LINE, CommandSet, Reply, Session

Post = Callable[[str, dict[str, Any]], None]
Ask = Callable[[str], Awaitable[Reply]]
log = logging.getLogger(__name__)

PEOPLE, MACHINE = "people", "machine"
FACES = (PEOPLE, MACHINE)
REPLY_TIMEOUT_S = 30.0  # a person waits this long for the node's answer to one line
RETRY_S = 1.0  # a serial port that went away is tried again this often
MAX_WAITING_LINES = 1000  # machine face: lines read and not yet answered, beyond which lines are dropped
MAX_OUTPUT = 1 << 20  # bytes queued for a terminal that does not read them, beyond which output is dropped
MAX_HELD = 64 * 1024  # bytes typed while a face is switching
TERMINAL_SIZE = Size(rows=24, columns=80)  # a serial line tells no size: the VT100 default


def format_reply(reply: Reply) -> str:
    """`ok {json}` or `error <why>`: one line an operator reads and a script parses."""
    if reply.ok:
        return "ok " + json.dumps(reply.result, separators=(",", ":"), default=str)
    return f"error {reply.error}"


def too_long(length: int | None = None) -> Reply:
    if length is None:
        return Reply(False, error=f"line too long (more than {MAX_LINE} characters)")
    return Reply(False, error=f"line too long ({length} characters, at most {MAX_LINE})")


def face_switch(line: str) -> str | None:
    """`@people` / `@machine` typed alone on a line: the face asked for."""
    word = line.strip().lower()
    return word[1:] if word in ("@people", "@machine") else None


def clean_line(text: str) -> str:
    """A line as typed, without the control characters a terminal or line noise adds
    (tabs become spaces; undecodable bytes are U+FFFD)."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == "\t":
            out.append(" ")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            out.append("\ufffd")
        elif ch.isprintable():
            out.append(ch)
    return "".join(out)


def secret(line: str) -> bool:
    """A line that carries the PIN (`login 1234`): never kept in a history, never shown."""
    words = line.split()
    return len(words) > 1 and words[0].lower() == "login"


# ---------------------------------------------------------------- standard input (machine face)

class StreamConsole:
    """Reads lines from a text stream (stdin of `edge run`) on a thread; replies on another
    stream; the machine face only."""

    def __init__(self, post: Post, source: TextIO | None = None, sink: TextIO | None = None):
        self.post = post
        self.source = source or sys.stdin
        self.sink = sink or sys.stdout
        self.lock = threading.Lock()
        self.session = Session(origin="stdin", local=True, face=MACHINE)
        self.thread = threading.Thread(target=self._run, name="console-stdin", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            for raw in self.source:
                self._line(raw.rstrip("\r\n"))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.warning("[console] standard input: %s", exc)

    def _line(self, line: str) -> None:
        if len(line) > MAX_LINE:
            self.reply(too_long(len(line)))
            return
        line = clean_line(line)
        face = face_switch(line)
        if face == MACHINE:
            self.reply(Reply(True, {"face": MACHINE}))
        elif face == PEOPLE:
            self.reply(Reply(False, error="standard input is the machine face only: the people face is "
                                          "on the serial console and in `edge console`"))
        elif line.strip() and not line.lstrip().startswith("#"):
            self.post("console_line", {"line": line, "reply": self.reply, "session": self.session})

    def reply(self, reply: Reply) -> None:
        with self.lock:
            try:
                self.sink.write(format_reply(reply) + "\n")
                self.sink.flush()
            except (OSError, ValueError):
                pass  # the operator went away; the node carries on


# ---------------------------------------------------------------- the people face's parts

def worth_keeping(line: str) -> bool:
    """A line for the history (Up recalls it): never one that carries the PIN, nor an over-long one."""
    return bool(line.strip()) and not secret(line) and len(line) <= MAX_LINE


class ConsoleHistory(InMemoryHistory):
    """The lines recalled with Up, in memory."""

    def append_string(self, string: str) -> None:
        if worth_keeping(string):
            super().append_string(string)


class Vocabulary:
    """What a people face knows to show and complete: the prompt, the command, device and job
    names, and each command's parameter names. From the node's callables when it gives them,
    else asked of the node (`status`, `jobs`, `help`) before each prompt."""

    def __init__(self, prompt: Callable[[], str] | None = None,
                 words: Callable[[], Mapping[str, Iterable[str]]] | None = None,
                 commands: CommandSet | None = None):
        self.prompt_fn = prompt
        self.words_fn = words
        self.commands = commands
        self.prompt = "edge> "
        self.words: dict[str, list[str]] = {"commands": [], "devices": [], "jobs": []}
        self.params: dict[str, list[str]] = {}

    async def refresh(self, ask: Ask) -> None:
        status: Reply | None = None
        if self.prompt_fn is not None:
            try:
                self.prompt = safe(self.prompt_fn()).replace("\n", " ")[:120]
            except Exception as exc:  # the node's callable must never take a console down
                log.debug("[console] prompt: %s", exc)
        else:
            status = await ask("status")
            if status.ok:
                self.prompt = prompt_from_status(status.result)
        if self.commands is not None:
            self.params = {name: [p.name for p in c.params] for name, c in list(self.commands.commands.items())}
        elif not self.params:
            helped = await ask("help")
            if helped.ok:
                self.params = params_from_help(helped.result)
        if self.words_fn is not None:
            try:
                given = self.words_fn()
                self.words = {k: [str(w) for w in given.get(k, ())] for k in ("commands", "devices", "jobs")}
            except Exception as exc:
                log.debug("[console] words: %s", exc)
        else:
            status = status or await ask("status")
            jobs = await ask("jobs")
            self.words = words_from(status.result if status.ok else None, jobs.result if jobs.ok else None,
                                    self.params)
        if not self.words["commands"]:
            self.words["commands"] = sorted(self.params)

    def choices(self, param: str) -> list[str]:
        """The words a parameter takes, by its name (`device`, `job`, `value`...)."""
        fixed = {"value": ["on", "off"], "mode": ["auto", "manual"], "to": list(OVERRIDE_STATUSES),
                 "status": list(STEP_STATUSES)}
        if param == "device":
            return self.words.get("devices", [])
        if param == "job":
            return self.words.get("jobs", [])
        if param == "command":
            return self.words.get("commands", [])
        return fixed.get(param, [])


class CommandCompleter(Completer):
    """Tab: a command's name for the first word, then what its parameter takes (a device name,
    a job id, on/off...), from a Vocabulary."""

    def __init__(self, vocabulary: Vocabulary):
        self.vocabulary = vocabulary

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        words = text.split()
        fresh = not text or text[-1].isspace()  # the cursor starts a new word
        if not words or (len(words) == 1 and not fresh):
            candidates = self.vocabulary.words.get("commands", [])
            prefix = words[0] if words else ""
        else:
            params = self.vocabulary.params.get(words[0].lower(), [])
            index = len(words) - 1 if fresh else len(words) - 2
            if index >= len(params):
                return
            candidates = self.vocabulary.choices(params[index])
            prefix = "" if fresh else words[-1]
        low = prefix.lower()
        for word in sorted(set(candidates)):
            if word.lower().startswith(low):
                yield Completion(word + " ", start_position=-len(prefix), display=word)


Question = Callable[[str, bool], Awaitable[str | None]]


class PeopleDialog:
    """What a person's console does with one typed line: sends it, asks before what cannot be
    taken back (`[y/N]`, then the line again with `--force`), asks the PIN hidden when a
    command needs a login (`login <pin>`, then the line again), and shows the reply as text.
    Shared by the serial people face and `edge console`."""

    def __init__(self, ask: Ask, write: Callable[[str], None], question: Question):
        self.ask = ask
        self.write = write
        self.question = question

    async def run(self, line: str) -> Reply | None:
        """Handle one line; the reply it ended with (None: nothing was sent)."""
        if len(line) > MAX_LINE:
            reply = too_long(len(line))
            self.write(render(line, reply))
            return reply
        line = clean_line(line).strip()
        if not line or line.startswith("#"):
            return None
        words = line.split()
        if words[0].lower() == "login" and len(words) == 1:
            first = await self.ask("login")  # no PIN on this station: it says so, nothing to ask
            if first.ok or PIN_LOCKED in (first.error or "") or "locked for" in (first.error or ""):
                self.write(render("login", first))
                return first
            login = await self._login()
            if login is None:
                self.write("not done")
                return Reply(False, error="not done")
            self.write(render("login", login))
            return login
        reply = await self.ask(line)
        for _ in range(4):  # a login, then a question, then the command
            if reply.ask == "confirm":
                # the question on its own line (a terminal wraps it), the answer on the next
                self.write(question_of(reply, words[0].lower()))
                answer = await self.question("[y/N] ", False)
                if (answer or "").strip().lower() not in ("y", "yes"):
                    self.write("not done")
                    return reply
                reply = await self.ask(with_force(line))
            elif reply.ask == "pin" and PIN_LOCKED not in (reply.error or ""):
                self.write(safe(reply.error or "this command needs the operator PIN"))
                login = await self._login()
                if login is None:
                    self.write("not done")
                    return reply
                if not login.ok:
                    self.write(render("login", login))
                    return login
                self.write(render("login", login))
                reply = await self.ask(line)
            else:
                break
        self.write(render(line, reply))
        return reply

    async def _login(self) -> Reply | None:
        pin = await self.question("PIN: ", True)
        if pin is None or not pin.strip():
            return None
        return await self.ask(f"login {pin.strip()}")


# ---------------------------------------------------------------- one connection, both faces

_TOO_LONG = object()  # machine face: a line went past MAX_LINE before its end


class Unreadable(Exception):
    """A key handler of prompt_toolkit failed on what came in: the prompt is started again."""


def _ignored_sequences() -> KeyBindings:
    """Sequences a terminal (or line noise) may send that prompt_toolkit would act on: a
    colour code looks like a mouse report to it (and fails to parse), a cursor report
    answers a question never asked. Ignored."""
    bindings = KeyBindings()
    for key in (Keys.Vt100MouseEvent, Keys.CPRResponse):
        bindings.add(key)(lambda event: None)
    return bindings


class _Screen:
    """The file-like object prompt_toolkit's Vt100_Output writes to: text to the terminal's
    bytes, each newline as CR LF (a serial port in raw mode does not add the CR)."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, terminal: Terminal):
        self.terminal = terminal

    def write(self, data: str) -> int:
        self.terminal.send_text(data)
        return len(data)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


class Terminal:
    """One console connection (a serial port while it is open, a socket client) on an asyncio
    loop: bytes in through `feed`, bytes out through `send`. Runs the face of its session and
    switches on `@people` / `@machine`. Every method runs on the loop's thread."""

    def __init__(self, post: Post, session: Session, send: Callable[[bytes], None], *,
                 banner: str = "", vocabulary: Vocabulary | None = None, history: ConsoleHistory | None = None,
                 eol: str = "\r\n", greet_machine: bool = False, reply_timeout: float = REPLY_TIMEOUT_S,
                 on_end: Callable[[], None] | None = None):
        self.post = post
        self.session = session
        self._send = send
        self.banner = banner
        self.vocabulary = vocabulary or Vocabulary()
        self.history = history if history is not None else ConsoleHistory()
        self.eol = eol
        self.greet_machine = greet_machine
        self.reply_timeout = reply_timeout
        self.on_end = on_end
        self.closed = False
        self.eof = False
        self.mode: str | None = None  # the face reading the input now (None: switching)
        self.held = b""  # input that came while switching faces
        self.partial = b""  # machine face: the line being read
        self.discarding = False  # machine face: in a line too long, until its end
        self.lines: asyncio.Queue[str | object | None] = asyncio.Queue()
        self.dropped = 0
        self.pipe: Any = None
        self.sessions: list[PromptSession[str]] = []  # the people face's prompts, while it runs
        self.task: asyncio.Task[None] | None = None
        self.greeted = False

    # -- the transport's side
    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def feed(self, data: bytes) -> None:
        if self.closed or not data:
            return
        if self.mode == PEOPLE and self.pipe is not None:
            self._to_pipe(data)
        elif self.mode == MACHINE:
            self._split(data)
        else:
            self.held = (self.held + data)[-MAX_HELD:]

    def end_of_input(self) -> None:
        """The other side will send nothing more (a socket client's EOF): answer what came, then end."""
        self.eof = True
        if self.mode == MACHINE:
            if self.partial and not self.discarding:
                self._queue(self.partial.decode("utf-8", errors="replace"))
            self.partial = b""
            self.lines.put_nowait(None)
        elif self.pipe is not None:
            with contextlib.suppress(OSError):
                self.pipe.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.pipe is not None:
            with contextlib.suppress(OSError):
                self.pipe.close()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def unstick(self) -> None:
        """A prompt's key handler failed (the loop's exception handler says so): end the
        prompt, which is asked again."""
        for session in self.sessions:
            with contextlib.suppress(Exception):  # not running, or ending already
                if session.app.is_running:
                    session.app.exit(exception=Unreadable())

    # -- output
    def send_bytes(self, data: bytes) -> None:
        if self.closed or not data:
            return
        try:
            self._send(data)
        except Exception as exc:  # a terminal gone mid-write: the transport reports it
            log.debug("[console] %s: write: %s", self.session.origin, exc)

    def send_text(self, text: str) -> None:
        self.send_bytes(text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8", "replace"))

    def write_machine(self, text: str) -> None:
        self.send_bytes((text + self.eol).encode("utf-8", "replace"))

    def write_people(self, text: str) -> None:
        self.send_text(text + "\n")

    # -- the node
    async def ask(self, line: str) -> Reply:
        """Post one line to the node; its reply (or why there is none)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Reply] = loop.create_future()

        def settle(reply: Reply) -> None:
            if not answer.done():
                answer.set_result(reply)

        def reply(reply: Reply) -> None:  # called on the node's loop thread
            with contextlib.suppress(RuntimeError):  # this console closed meanwhile
                loop.call_soon_threadsafe(settle, reply)

        try:
            self.post("console_line", {"line": line, "reply": reply, "session": self.session})
        except Exception as exc:
            return Reply(False, error=f"the node did not take the line: {exc}")
        try:
            return await asyncio.wait_for(answer, self.reply_timeout)
        except TimeoutError:
            return Reply(False, error=f"no answer from the node in {self.reply_timeout:g} s")

    # -- the faces
    async def _run(self) -> None:
        try:
            while not self.closed and not self.eof:
                try:
                    if self.session.face == PEOPLE:
                        await self._people()
                    else:
                        await self._machine()
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug or a byte nobody foresaw: this face starts again
                    log.exception("[console] %s: the %s face stopped; starting it again", self.session.origin,
                                  self.session.face)
                    self.mode = None
                    await asyncio.sleep(0.2)
        finally:
            self.mode = None
            if self.on_end is not None and not self.closed:
                self.on_end()

    async def _machine(self) -> None:
        self.mode = MACHINE
        if self.greet_machine and not self.greeted and self.banner:
            self.write_machine(self.banner)
        self.greeted = True
        held, self.held = self.held, b""
        self._split(held)
        while True:
            line = await self.lines.get()
            if line is None:  # the end of the input
                self.eof = True
                return
            if self.dropped:
                self.write_machine(format_reply(Reply(False, error=f"{self.dropped} line(s) dropped: more than "
                                                                 f"{MAX_WAITING_LINES} lines waiting")))
                self.dropped = 0
            if line is _TOO_LONG or not isinstance(line, str):
                self.write_machine(format_reply(too_long()))
                continue
            if len(line) > MAX_LINE:
                self.write_machine(format_reply(too_long(len(line))))
                continue
            line = clean_line(line)
            face = face_switch(line)
            if face == PEOPLE:
                self.mode = None
                rest = []
                while not self.lines.empty():
                    more = self.lines.get_nowait()
                    if isinstance(more, str):
                        rest.append(more.encode("utf-8", "replace") + b"\r")
                self.held = b"".join(rest) + self.partial + self.held
                self.partial, self.discarding = b"", False
                self.session.face = PEOPLE
                self.write_machine(format_reply(Reply(True, {"face": PEOPLE})))
                return
            if face == MACHINE:
                self.write_machine(format_reply(Reply(True, {"face": MACHINE})))
            elif line.strip() and not line.lstrip().startswith("#"):
                self.write_machine(format_reply(await self.ask(line)))

    def _split(self, data: bytes) -> None:
        """Machine face: CR or LF ends a line; a line over MAX_LINE is refused once, up to its end."""
        data = self.partial + data
        *complete, self.partial = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        for raw in complete:
            if self.discarding:
                self.discarding = False
                continue
            self._queue(raw.decode("utf-8", errors="replace"))
        if len(self.partial) > MAX_LINE and not self.discarding:
            self.discarding = True
            self._queue(_TOO_LONG)  # answered in its turn
        if self.discarding:
            self.partial = b""

    def _queue(self, line: str | object) -> None:
        if self.lines.qsize() >= MAX_WAITING_LINES:
            self.dropped += 1
        else:
            self.lines.put_nowait(line)

    def _to_pipe(self, data: bytes) -> None:
        """People face: what was read goes to prompt_toolkit's input pipe, never blocking the
        loop; what does not fit (a flood while the node thinks) is dropped."""
        while data and self.pipe is not None:
            try:
                written = os.write(self.pipe.pipe.write_fd, data)
            except BlockingIOError:
                log.debug("[console] %s: input dropped (%d bytes): typed faster than read", self.session.origin,
                          len(data))
                return
            except OSError:
                return
            data = data[written:]

    async def _people(self) -> None:
        with create_pipe_input() as pipe:
            os.set_blocking(pipe.pipe.write_fd, False)
            self.pipe = pipe
            self.mode = PEOPLE
            try:
                held, self.held = self.held, b""
                self._to_pipe(held)
                output = Vt100_Output(_Screen(self), lambda: TERMINAL_SIZE, term="vt100",  # type: ignore[arg-type]
                                      default_color_depth=ColorDepth.DEPTH_1_BIT, enable_cpr=False)
                with create_app_session(input=pipe, output=output):
                    await self._people_loop(pipe)
            finally:
                self.pipe = None
                self.mode = None
                self.sessions = []

    async def _people_loop(self, pipe: Any) -> None:
        if self.banner:
            self.write_people(self.banner if "Tab" in self.banner or not self.banner.endswith("type help")
                              else self.banner + ", Tab completes, Up recalls")
        prompt: PromptSession[str] = PromptSession(
            history=self.history, completer=CommandCompleter(self.vocabulary), key_bindings=_ignored_sequences(),
            complete_style=CompleteStyle.READLINE_LIKE, complete_while_typing=False, enable_history_search=False,
            enable_suspend=False, enable_open_in_editor=False, enable_system_prompt=False, mouse_support=False)
        asker: PromptSession[str] = PromptSession(history=DummyHistory(), key_bindings=_ignored_sequences(),
                                                  enable_suspend=False, enable_open_in_editor=False)
        self.sessions = [prompt, asker]

        async def question(text: str, hidden: bool) -> str | None:
            try:
                # never prompt_toolkit's own handler: it would print and wait on the node's stdin
                return await asker.prompt_async(text, is_password=hidden, set_exception_handler=False)
            except (KeyboardInterrupt, EOFError, Unreadable):
                return None

        dialog = PeopleDialog(self.ask, self.write_people, question)
        while not self.closed:
            await self.vocabulary.refresh(self.ask)
            try:
                text = await prompt.prompt_async(self.vocabulary.prompt, set_exception_handler=False)
            except KeyboardInterrupt:  # Ctrl-C: the line is abandoned
                continue
            except Unreadable:
                self.write_people("error: the console could not read that input; type the line again")
                continue
            except EOFError:
                if self.eof or self.closed or pipe.closed:
                    return
                continue  # Ctrl-D at an empty prompt: nothing to leave on a serial console
            for line in text.splitlines():  # a bracketed paste can hold many lines
                face = face_switch(line)
                if face == MACHINE:
                    self.session.face = MACHINE
                    self.write_people(format_reply(Reply(True, {"face": MACHINE})))
                    return
                if face == PEOPLE:
                    self.write_people("this is the people face already")
                    continue
                await dialog.run(line)


# ---------------------------------------------------------------- an asyncio loop on a thread

class _LoopThread:
    """Runs one coroutine on its own asyncio loop and thread; `stop` cancels it and waits."""

    def __init__(self, name: str, main: Callable[[], Coroutine[Any, Any, None]],
                 terminals: Callable[[], Iterable[Terminal]] = tuple):
        self.main = main
        self.terminals = terminals
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._on_error)
        try:
            self.task = loop.create_task(self.main())
            self.loop = loop
            if self.stopping.is_set():
                self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self.task)
        except Exception:
            log.exception("[console] %s stopped", self.thread.name)
        finally:
            with contextlib.suppress(Exception):
                left = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in left:
                    t.cancel()
                if left:
                    loop.run_until_complete(asyncio.wait(left, timeout=2))
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _on_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """An exception no task caught (prompt_toolkit's key handlers run as loop callbacks):
        logged, and the people faces' prompts start again."""
        exc = context.get("exception")
        log.warning("[console] %s: %s%s", self.thread.name, context.get("message", "error"),
                    f": {type(exc).__name__}: {exc}" if exc else "", exc_info=exc)
        for terminal in list(self.terminals()):
            terminal.unstick()

    def stop(self, timeout: float = 3.0) -> None:
        self.stopping.set()
        loop, task = self.loop, self.task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                loop.call_soon_threadsafe(task.cancel)
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout)


class _Link(asyncio.Protocol):
    """Bytes from a transport to a callback; the end of it to another."""

    def __init__(self, data: Callable[[bytes], None] | None, lost: Callable[[Exception | None], None]):
        self.data = data
        self.lost = lost

    def data_received(self, data: bytes) -> None:
        if self.data is not None:
            self.data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost(exc)


# ---------------------------------------------------------------- the serial port

class SerialConsole:
    """The operator's terminal on a serial port (the header UART, a USB serial adapter):
    the people face by default (`face="machine"`: one reply line per command line). A port
    missing at start or gone later is logged once and opened again every second; each time it
    opens the terminal is greeted with `banner`.

    `prompt` (the prompt text), `words` (`{"commands", "devices", "jobs"}` to complete) and
    `commands` (the registry, for each command's parameter names) are called from the
    console's thread; without them the console asks the node (`status`, `jobs`, `help`)."""

    def __init__(self, post: Post, port: str, baudrate: int, banner: str = "", *, face: str = PEOPLE,
                 prompt: Callable[[], str] | None = None,
                 words: Callable[[], Mapping[str, Iterable[str]]] | None = None,
                 commands: CommandSet | None = None, reply_timeout: float = REPLY_TIMEOUT_S,
                 retry_s: float = RETRY_S):
        if face not in FACES:
            raise ValueError(f"serial console face {face!r} is not one of {', '.join(FACES)}")
        self.post = post
        self.port = port
        self.baudrate = baudrate
        self.banner = banner
        self.face = face
        self.vocabulary = Vocabulary(prompt, words, commands)
        self.history = ConsoleHistory()  # kept while the cable is out: Up still recalls
        self.reply_timeout = reply_timeout
        self.retry_s = retry_s
        self.terminal: Terminal | None = None
        self.runner = _LoopThread("console-serial", self._main,
                                  lambda: [self.terminal] if self.terminal is not None else [])

    def start(self) -> None:
        self.runner.start()

    def close(self) -> None:
        self.runner.stop()

    async def _main(self) -> None:
        import serial

        loop = asyncio.get_running_loop()
        told = False  # a trouble with the port was logged: nothing more until it opens again
        flapping = False  # the last time it opened, it went away at once
        while not self.runner.stopping.is_set():
            try:
                handle = serial.Serial(self.port, self.baudrate, timeout=0)
            except (serial.SerialException, OSError, ValueError) as exc:
                if not told:
                    log.error("[console] serial_port %s cannot be opened: %s; trying again every %g s",
                              self.port, exc, self.retry_s)
                    told = True
                await asyncio.sleep(self.retry_s)
                continue
            if told:
                log.warning("[console] serial_port %s is back", self.port)
                told = False
            opened = loop.time()
            try:
                why = await self._serve(handle)
            except (OSError, ValueError) as exc:  # not a port asyncio can watch, a vanished fd...
                why = f"{type(exc).__name__}: {exc}"
            finally:
                with contextlib.suppress(Exception):
                    handle.close()
            if self.runner.stopping.is_set():
                return
            short = loop.time() - opened < 2 * self.retry_s
            if short and flapping:  # logged already, a moment ago
                log.debug("[console] serial_port %s: %s", self.port, why)
            else:
                log.error("[console] serial_port %s: %s; opening it again when it comes back", self.port, why)
                told = True
            flapping = short
            await asyncio.sleep(self.retry_s if short else min(self.retry_s, 0.2))

    async def _serve(self, handle: Any) -> str:
        """Run the terminal while the port is open; why it ended."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[str] = loop.create_future()

        def lost(exc: Exception | None) -> None:
            if not ended.done():
                ended.set_result(str(exc) if exc else "the port closed")

        writer: list[asyncio.WriteTransport] = []

        def send(data: bytes) -> None:
            if not writer or writer[0].is_closing():
                return
            if writer[0].get_write_buffer_size() > MAX_OUTPUT:
                return  # nobody reads this port (flow control, a hung terminal): drop, never block
            writer[0].write(data)

        session = Session(origin=f"serial:{self.port}", local=True, face=self.face)
        terminal = Terminal(self.post, session, send, banner=self.banner, vocabulary=self.vocabulary,
                            history=self.history, eol="\r\n", greet_machine=True,
                            reply_timeout=self.reply_timeout, on_end=lambda: lost(None))
        fd = handle.fileno()
        rfile = os.fdopen(os.dup(fd), "rb", buffering=0)
        wfile = os.fdopen(os.dup(fd), "wb", buffering=0)
        reader = writer_transport = None
        try:
            reader, _ = await loop.connect_read_pipe(lambda: _Link(terminal.feed, lost), rfile)
            writer_transport, _ = await loop.connect_write_pipe(lambda: _Link(None, lost), wfile)
            writer.append(writer_transport)
            self.terminal = terminal
            terminal.start()
            return await ended
        finally:
            terminal.close()
            self.terminal = None
            if reader is not None:
                reader.close()
            else:
                rfile.close()
            if writer_transport is not None:
                writer_transport.abort()
            else:
                wfile.close()


# ---------------------------------------------------------------- the local socket

class SocketConsole:
    """A local unix socket (scripts, `edge console`): the machine face for each client, who
    may switch to the people face with `@people` (e.g. `socat -,raw,echo=0 UNIX-CONNECT:...`)."""

    def __init__(self, post: Post, path: str, *, banner: str = "", prompt: Callable[[], str] | None = None,
                 words: Callable[[], Mapping[str, Iterable[str]]] | None = None,
                 commands: CommandSet | None = None, reply_timeout: float = REPLY_TIMEOUT_S):
        self.post = post
        self.path = path
        self.banner = banner
        self.prompt = prompt
        self.words = words
        self.commands = commands
        self.reply_timeout = reply_timeout
        self.server: socket.socket | None = None
        self.clients: set[Any] = set()
        self.runner = _LoopThread("console-socket", self._main,
                                  lambda: [c.terminal for c in self.clients if c.terminal is not None])

    def start(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(self.path)
            os.chmod(self.path, 0o660)
            server.listen(8)
        except OSError as exc:
            log.error("[console] socket %s cannot be opened: %s", self.path, exc)
            return
        self.server = server
        self.runner.start()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.server is not None
        server = await loop.create_unix_server(self._client, sock=self.server)
        try:
            await asyncio.Future()  # until stopped
        finally:
            server.close()
            for client in list(self.clients):
                client.terminal.close()
                client.transport.abort()
            await asyncio.sleep(0)

    def _client(self) -> asyncio.Protocol:
        console = self

        class Client(asyncio.Protocol):
            terminal: Terminal | None = None
            transport: Any = None

            def connection_made(self, transport: Any) -> None:
                self.transport = transport

                def send(data: bytes) -> None:
                    if transport.is_closing():
                        return
                    if transport.get_write_buffer_size() > MAX_OUTPUT:
                        log.warning("[console] socket client reads nothing: closing it")
                        transport.abort()
                        return
                    transport.write(data)

                session = Session(origin="socket", local=True, face=MACHINE)
                vocabulary = Vocabulary(console.prompt, console.words, console.commands)
                self.terminal = Terminal(console.post, session, send, banner=console.banner,
                                         vocabulary=vocabulary, eol="\n", greet_machine=False,
                                         reply_timeout=console.reply_timeout, on_end=transport.close)
                console.clients.add(self)
                self.terminal.start()

            def data_received(self, data: bytes) -> None:
                if self.terminal is not None:
                    self.terminal.feed(data)

            def eof_received(self) -> bool:
                if self.terminal is not None:
                    self.terminal.end_of_input()  # answer what came, then close
                return True

            def connection_lost(self, exc: Exception | None) -> None:
                if self.terminal is not None:
                    self.terminal.close()
                console.clients.discard(self)

        return Client()

    def close(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        self.runner.stop()
        server.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
