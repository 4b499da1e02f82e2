"""The `edge` command: one registry of subcommands, declared once with help and arguments.

A command module in `edge/commands/` declares its commands with `@command(...)`;
`main()` imports every module there, so adding a command group is adding a file.

    @command("orders verify", "check a QR payload", arg("payload", help="..."))
    def orders_verify(args: argparse.Namespace) -> int: ...

Exit codes: 0 ok, 1 the input was judged invalid, 2 usage error or unreadable input.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge import __version__

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Arg:
    """One argparse argument: the flags and keyword arguments of `add_argument`."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    """A subcommand: its words ("orders verify"), one-line help, longer description, args."""

    name: str
    help: str
    handler: Handler
    args: tuple[Arg, ...] = ()
    description: str | None = None


REGISTRY: dict[str, Command] = {}
GROUP_HELP: dict[str, str] = {}


def arg(*flags: str, **options: Any) -> Arg:
    """Declare an argument exactly as `argparse.add_argument` takes it."""
    return Arg(tuple(flags), dict(options))


def group(name: str, help: str) -> None:
    """Give a command group (the first word of "orders verify") its help line."""
    GROUP_HELP[name] = help


def command(name: str, help: str, *args: Arg, description: str | None = None) -> Callable[[Handler], Handler]:
    """Register a subcommand; `name` is one or two words ("run", "orders verify")."""

    def register(handler: Handler) -> Handler:
        if name in REGISTRY:
            raise ValueError(f"command {name!r} registered twice")
        REGISTRY[name] = Command(name, help, handler, tuple(args), description or handler.__doc__)
        return handler

    return register


def write_secret_file(path: str | Any, body: bytes, kept: str = "not overwriting a key") -> int:
    """Write a new private file (mode 0600, never over an existing one): 0, or the exit status
    after printing why not (`kept`: what an existing file means to the user)."""
    import os

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"{path}: already exists; {kept}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    with os.fdopen(fd, "wb") as f:
        f.write(body)
    return 0


def load_station_and_line(path: str) -> Any:
    """A station file and its line file, or the ConfigError after printing each of its issues
    on stderr (the caller picks the exit status)."""
    from edge.config import ConfigError, load_line, load_station

    try:
        config = load_station(path)
        return config, load_line(config.node.line_file)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return exc


def _load_commands() -> None:
    import edge.commands

    for info in pkgutil.iter_modules(edge.commands.__path__):
        importlib.import_module(f"edge.commands.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree built from the registry."""
    _load_commands()
    parser = argparse.ArgumentParser(
        prog="edge",
        description="fabrique-edge: the offline-first controller of one station of the trailer line.",
        epilog="Run 'edge COMMAND --help' for the options of one command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fabrique-edge {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name in sorted(REGISTRY):
        cmd = REGISTRY[name]
        words = name.split()
        if len(words) == 1:
            sub = top.add_parser(name, help=cmd.help, description=cmd.description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        else:
            head, tail = words[0], " ".join(words[1:])
            if head not in groups:
                gp = top.add_parser(head, help=GROUP_HELP.get(head, f"{head} commands"),
                                    description=GROUP_HELP.get(head))
                groups[head] = gp.add_subparsers(dest=f"{head}_command", metavar="SUBCOMMAND")
                gp.set_defaults(_group_parser=gp)
            sub = groups[head].add_parser(tail, help=cmd.help, description=cmd.description,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
        for a in cmd.args:
            sub.add_argument(*a.flags, **a.options)
        sub.set_defaults(_handler=cmd.handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `edge` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "_handler", None)
    if handler is None:
        (getattr(args, "_group_parser", None) or parser).print_help(sys.stderr)
        return 2
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0

