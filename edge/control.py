"""The node's command registry: declared once, dispatched from the console, the local socket
and MQTT `cmd` topics alike (Klipper's `register_command`).

A command names its parameters in order, so a console line `drive conveyor on` and an MQTT
payload `{"command": "drive", "args": {"device": "conveyor", "value": true}}` reach the same
handler with the same checked arguments. Commands that move hardware or change a job by hand
are `local_only`: an operator must be at the station (its serial console or its local socket),
and, when the station file sets an operator PIN, logged in (`login`). A few ask first
(`confirm`): a people's console asks "are you sure", a script repeats the line with `--force`.

Every console connection is a `Session` (where it comes from, which face it shows, whether its
operator is logged in); MQTT commands come in a session that is not local.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import os
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_LINE = 1024
TRUE_WORDS = {"1", "on", "true", "yes"}
FALSE_WORDS = {"0", "off", "false", "no"}


class CommandError(Exception):
    """A command could not run; the message says why, in the operator's words."""


@dataclass(frozen=True)
class Param:
    name: str
    type: type = str
    required: bool = True
    help: str = ""
    rest: bool = False  # takes the rest of a console line (free text)

    def convert(self, value: Any) -> Any:
        if self.type is bool:
            if isinstance(value, bool):
                return value
            word = str(value).lower()
            if word in TRUE_WORDS | FALSE_WORDS:
                return word in TRUE_WORDS
            raise CommandError(f"{self.name}: {value!r} is not on/off")
        if self.type is int:
            if isinstance(value, bool):
                raise CommandError(f"{self.name}: {value!r} is not a whole number")
            try:
                return int(value)
            except (TypeError, ValueError):
                raise CommandError(f"{self.name}: {value!r} is not a whole number") from None
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise CommandError(f"{self.name}: must be text")
        return str(value)


@dataclass(frozen=True)
class Reply:
    ok: bool
    result: Any = None
    error: str | None = None
    # what the command needs before it runs: "confirm" (repeat with force) or "pin" (login first)
    ask: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "result": self.result} if self.ok else {"ok": False, "error": self.error}


Handler = Callable[[dict[str, Any]], Any]
Confirm = Callable[[dict[str, Any]], "str | None"]


@dataclass
class Session:
    """One console connection (or MQTT): where it comes from and who is at it."""

    origin: str = "stdin"  # "serial:/dev/ttyAMA0", "socket", "stdin", "mqtt"
    local: bool = True  # at the station: "at the station" commands allowed
    face: str = "machine"  # "machine": one ok/error line per command; "people": prompt, tables, questions
    operator_until: float = 0.0  # monotonic time the operator's login lasts until (0: not logged in)


MQTT_SESSION = Session("mqtt", local=False)


@dataclass(frozen=True)
class NodeCommand:
    name: str
    help: str
    handler: Handler
    params: tuple[Param, ...] = ()
    local_only: bool = False
    confirm: Confirm | None = None  # a question when this call needs confirming, else None
    examples: tuple[str, ...] = ()

    def usage(self) -> str:
        words = [self.name] + [(f"<{p.name}>" if p.required else f"[{p.name}]") + ("..." if p.rest else "")
                               for p in self.params]
        return " ".join(words)


@dataclass
class CommandSet:
    """Every command a node answers, whichever transport asked."""

    commands: dict[str, NodeCommand] = field(default_factory=dict)
    guard: OperatorGuard | None = None  # the operator PIN, when the station file sets one
    session: Session | None = None  # who asks, while a command runs (the loop runs one at a time)

    def register(self, name: str, help: str, handler: Handler, *params: Param,
                 local_only: bool = False, confirm: Confirm | None = None, examples: tuple[str, ...] = ()) -> None:
        if name in self.commands:
            raise ValueError(f"node command {name!r} registered twice")
        self.commands[name] = NodeCommand(name, help, handler, tuple(params), local_only, confirm, examples)

    def dispatch(self, name: str, args: Mapping[str, Any] | None, remote: bool = False,
                 session: Session | None = None) -> Reply:
        """Check and run one command; never raises: every failure is a Reply with a reason.
        `session` says who asks (default: MQTT when `remote`, else a local console)."""
        session = session or (MQTT_SESSION if remote else Session())
        command = self.commands.get(name)
        if command is None:
            return Reply(False, error=f"unknown command {name[:40]!r}{self.did_you_mean(name)} (try 'help')")
        if command.local_only and not session.local:
            return Reply(False, error=f"{name!r} is only allowed at the station (its serial console or local socket)")
        args = dict(args or {})
        force = args.pop("force", False) is True
        if command.local_only and self.guard is not None and not self.guard.allows(session):
            return Reply(False, error=f"{name}: {self.guard.why_not()}", ask="pin")
        self.session = session
        try:
            checked = self._check(command, args)
            question = command.confirm(checked) if command.confirm is not None and not force else None
            if question:
                return Reply(False, error=f"{name}: {question}; repeat with --force to do it anyway", ask="confirm")
            return Reply(True, command.handler(checked))
        except CommandError as exc:
            return Reply(False, error=f"{name}: {exc}")
        except Exception as exc:  # a handler bug must not take the node down
            return Reply(False, error=f"{name} failed: {type(exc).__name__}: {exc}")
        finally:
            self.session = None

    def did_you_mean(self, name: str) -> str:
        close = difflib.get_close_matches(name.lower(), self.commands, n=1, cutoff=0.6)
        return f"; did you mean {close[0]!r}?" if close else ""

    def _check(self, command: NodeCommand, args: dict[str, Any]) -> dict[str, Any]:
        known = {p.name for p in command.params}
        unknown = sorted(set(args) - known)
        if unknown:
            raise CommandError(f"unknown argument {unknown[0]!r}; usage: {command.usage()}")
        out: dict[str, Any] = {}
        for p in command.params:
            if p.name in args:
                out[p.name] = p.convert(args[p.name])
            elif p.required:
                raise CommandError(f"missing <{p.name}>; usage: {command.usage()}")
        return out

    def parse_line(self, line: str) -> tuple[str, dict[str, Any]]:
        """A console line -> (command, args); raises CommandError naming what is wrong."""
        if len(line) > MAX_LINE:
            raise CommandError(f"line too long ({len(line)} characters, at most {MAX_LINE})")
        head = line.split(None, 1)
        if not head:
            raise CommandError("empty line")
        name = head[0].lower()
        command = self.commands.get(name)
        if command is None:
            raise CommandError(f"unknown command {name[:40]!r}{self.did_you_mean(name)} (try 'help')")
        force = False
        words = line.split()
        if "--force" in words[1:] and command.confirm is not None:  # a script's "yes, I am sure"
            force = True
            line = " ".join(w for w in words if w != "--force")
        rest_at = next((i for i, p in enumerate(command.params) if p.rest), None)
        if rest_at is not None:
            # free text (a note, a QR payload) is taken as typed: inner spaces and quotes kept
            values = line.lstrip().split(None, rest_at + 1)[1:]
        else:
            try:
                values = shlex.split(line)[1:]
            except ValueError as exc:
                raise CommandError(f"cannot read the line: {exc}") from None
        if len(values) > len(command.params):
            raise CommandError(f"too many arguments; usage: {command.usage()}")
        args: dict[str, Any] = {p.name: v for p, v in zip(command.params, values, strict=False)}
        if force:
            args["force"] = True
        return name, args

    def run_line(self, line: str, session: Session | None = None) -> Reply:
        """Parse and dispatch a console line (a local console session unless told otherwise)."""
        try:
            name, args = self.parse_line(line)
        except CommandError as exc:
            return Reply(False, error=str(exc))
        return self.dispatch(name, args, session=session or Session())

    def markdown(self) -> str:
        """The command table of docs/console.md."""
        rows = ["| command | where | what |", "|---|---|---|"]
        for c in sorted(self.commands.values(), key=lambda c: c.name):
            where = "at the station" if c.local_only else "anywhere (also MQTT)"
            rows.append(f"| `{c.usage()}` | {where} | {c.help} |")
        return "\n".join(rows) + "\n"

    def help(self, name: str | None = None) -> Any:
        """Every command (usage, what it does), or one command with its parameters and examples."""
        if name is None:
            return [{"command": c.usage(), "help": c.help, "console_only": c.local_only}
                    for c in sorted(self.commands.values(), key=lambda c: c.name)]
        command = self.commands.get(name.lower())
        if command is None:
            raise CommandError(f"unknown command {name[:40]!r}{self.did_you_mean(name)} (try 'help')")
        return {"command": command.usage(), "help": command.help, "console_only": command.local_only,
                "params": {p.name: p.help for p in command.params if p.help},
                "examples": list(command.examples), "asks_to_confirm": command.confirm is not None,
                "needs_pin": command.local_only and self.guard is not None}


# ---------------------------------------------------------------- the operator PIN

PIN_ITERATIONS = 200_000


def hash_pin(pin: str, salt: bytes | None = None, iterations: int = PIN_ITERATIONS) -> str:
    """`pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>`: what `pin_hash` in [console] holds."""
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", pin.encode(), salt, iterations)
    return f"pbkdf2-sha256${iterations}${salt.hex()}${digest.hex()}"


def check_pin_hash(stored: str) -> str | None:
    """What is wrong with a `pin_hash` value, or None."""
    parts = stored.split("$")
    if len(parts) != 4 or parts[0] != "pbkdf2-sha256" or not parts[1].isdigit():
        return "not a PIN hash: make one with `edge keys pin`"
    try:
        bytes.fromhex(parts[2]), bytes.fromhex(parts[3])
    except ValueError:
        return "not a PIN hash: make one with `edge keys pin`"
    return None


def verify_pin(pin: str, stored: str) -> bool:
    if check_pin_hash(stored) is not None:
        return False
    _scheme, iterations, salt, digest = stored.split("$")
    mine = hashlib.pbkdf2_hmac("sha256", pin.encode(), bytes.fromhex(salt), int(iterations))
    return hmac.compare_digest(mine.hex(), digest)


@dataclass
class OperatorGuard:
    """The operator PIN of a station: a console session logs in once (`login`), stays logged in
    while it is used (`timeout_s` idle logs it out), and the node locks every login out for
    `lockout_s` after `lockout_after` wrong PINs in a row (whichever console they came from)."""

    pin_hash: str
    timeout_s: float = 300.0
    lockout_after: int = 5
    lockout_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    locked_until: float = 0.0

    def allows(self, session: Session) -> bool:
        now = self.clock()
        if session.operator_until > now:
            session.operator_until = now + self.timeout_s  # in use: the session stays open
            return True
        return False

    def why_not(self) -> str:
        left = self.locked_until - self.clock()
        if left > 0:
            return f"the operator PIN is locked for {left:.0f} s after {self.lockout_after} wrong tries"
        return "this command needs the operator PIN: type `login` first"

    def login(self, session: Session, pin: str) -> str:
        """Log `session` in; raises CommandError on a wrong PIN or during a lockout."""
        now = self.clock()
        if self.locked_until > now:
            raise CommandError(f"locked for {self.locked_until - now:.0f} s after {self.lockout_after} wrong PINs")
        if not verify_pin(pin, self.pin_hash):
            self.failures += 1
            if self.failures >= self.lockout_after:
                self.failures, self.locked_until = 0, now + self.lockout_s
                raise CommandError(f"wrong PIN; {self.lockout_after} wrong tries: locked for {self.lockout_s:.0f} s")
            raise CommandError(f"wrong PIN ({self.lockout_after - self.failures} tries left before a lockout)")
        self.failures = 0
        session.operator_until = now + self.timeout_s
        return f"logged in for {self.timeout_s / 60:g} min while in use"

    @staticmethod
    def logout(session: Session) -> str:
        session.operator_until = 0.0
        return "logged out"
