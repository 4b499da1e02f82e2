"""The node's command registry: declared once, dispatched from the console, the local socket
and MQTT `cmd` topics alike (Klipper's `register_command`).

A command names its parameters in order, so a console line `drive conveyor on` and an MQTT
payload `{"command": "drive", "args": {"device": "conveyor", "value": true}}` reach the same
handler with the same checked arguments. Commands that move hardware are `local_only`:
an operator must be at the station's console to take manual override.
"""

from __future__ import annotations

import shlex
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

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "result": self.result} if self.ok else {"ok": False, "error": self.error}


Handler = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class NodeCommand:
    name: str
    help: str
    handler: Handler
    params: tuple[Param, ...] = ()
    local_only: bool = False

    def usage(self) -> str:
        words = [self.name] + [(f"<{p.name}>" if p.required else f"[{p.name}]") + ("..." if p.rest else "")
                               for p in self.params]
        return " ".join(words)


@dataclass
class CommandSet:
    """Every command a node answers, whichever transport asked."""

    commands: dict[str, NodeCommand] = field(default_factory=dict)

    def register(self, name: str, help: str, handler: Handler, *params: Param,
                 local_only: bool = False) -> None:
        if name in self.commands:
            raise ValueError(f"node command {name!r} registered twice")
        self.commands[name] = NodeCommand(name, help, handler, tuple(params), local_only)

    def dispatch(self, name: str, args: Mapping[str, Any] | None, remote: bool) -> Reply:
        """Check and run one command; never raises: every failure is a Reply with a reason."""
        command = self.commands.get(name)
        if command is None:
            return Reply(False, error=f"unknown command {name!r} (try 'help')")
        if remote and command.local_only:
            return Reply(False, error=f"{name!r} is only allowed from the station's own console")
        try:
            checked = self._check(command, dict(args or {}))
            return Reply(True, command.handler(checked))
        except CommandError as exc:
            return Reply(False, error=f"{name}: {exc}")
        except Exception as exc:  # a handler bug must not take the node down
            return Reply(False, error=f"{name} failed: {type(exc).__name__}: {exc}")

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
            raise CommandError(f"unknown command {name!r} (try 'help')")
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
        return name, {p.name: v for p, v in zip(command.params, values, strict=False)}

    def run_line(self, line: str) -> Reply:
        """Parse and dispatch a console line (local: every command allowed)."""
        try:
            name, args = self.parse_line(line)
        except CommandError as exc:
            return Reply(False, error=str(exc))
        return self.dispatch(name, args, remote=False)

    def markdown(self) -> str:
        """The command table of docs/console.md."""
        rows = ["| command | where | what |", "|---|---|---|"]
        for c in sorted(self.commands.values(), key=lambda c: c.name):
            where = "console only" if c.local_only else "console, socket, MQTT"
            rows.append(f"| `{c.usage()}` | {where} | {c.help} |")
        return "\n".join(rows) + "\n"

    def help(self, name: str | None = None) -> Any:
        """Every command (usage, what it does), or one command with its parameters."""
        if name is None:
            return [{"command": c.usage(), "help": c.help, "console_only": c.local_only}
                    for c in sorted(self.commands.values(), key=lambda c: c.name)]
        command = self.commands.get(name)
        if command is None:
            raise CommandError(f"unknown command {name[:40]!r} (try 'help')")
        return {"command": command.usage(), "help": command.help, "console_only": command.local_only,
                "params": {p.name: p.help for p in command.params if p.help}}
