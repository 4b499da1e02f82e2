"""What `edge web` runs with: flags, or a config file with the same names, flags winning.

    # /etc/fabrique-edge/web.toml (paths relative to this file)
    [web]
    line = "line.toml"                 # the line file: stations' stories, products, order keys
    broker = "127.0.0.1:1884"          # the hub's people's listener
    user = "web"                       # read-only: fabrique/+/public/# and nothing else
    password_file = "web.password"     # `edge keys password web --secret line.secret`
    listen = "0.0.0.0:80"              # QR codes open HTTP://HUB.LOCAL/O/...: port 80
    line_id = "demo"                   # default: the line file's [line] id
    keepalive = 5                      # s: a frozen broker is noticed in about that long
    cloud = false                      # true in the cloud: the trailer's uplink says if it is online

Checked like every config of the line (edge.configfile): every problem at once, with its line.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from edge.configfile import ConfigError, ConfigIssue, open_document

DEFAULTS = {"broker": "127.0.0.1:1884", "user": "web", "listen": "0.0.0.0:8080", "keepalive": 5, "cloud": False}
_ADDRESS = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class WebSettings:
    line: Path
    broker: tuple[str, int]
    user: str
    password_file: Path | None
    listen: tuple[str, int]
    line_id: str = ""
    keepalive: int = 5
    cloud: bool = False


def address(text: str, lowest_port: int = 1) -> tuple[str, int] | None:
    """"host:port" or "[v6]:port" -> (host, port); None if it is neither."""
    found = _ADDRESS.match(text.strip())
    if not found or not lowest_port <= int(found["port"]) <= 65535:
        return None
    return found["v6"] or found["host"], int(found["port"])


def from_file(path: str) -> dict[str, object]:
    """The `[web]` section of a config file, paths made absolute; ConfigError lists every problem."""
    doc = open_document(path)
    s = doc.section("web")
    values: dict[str, object] = {
        "line": s.get_path("line"), "broker": s.get_str("broker", None), "user": s.get_str("user", None),
        "password_file": s.get_path("password_file", None), "listen": s.get_str("listen", None),
        "line_id": s.get_str("line_id", None), "keepalive": s.get_int("keepalive", None, 1, 300),
        "cloud": s.get_bool("cloud", None)}
    for key in ("broker", "listen"):
        if isinstance(values[key], str) and address(str(values[key]), 0 if key == "listen" else 1) is None:
            s.issue(key, f"{values[key]!r} is not HOST:PORT (e.g. \"127.0.0.1:1884\", \"[::]:80\")")
    s.finish()
    doc.finish_top(("web",))
    doc.raise_if_issues()
    return {k: v for k, v in values.items() if v is not None}


def resolve(args: argparse.Namespace) -> WebSettings:
    """The settings from `--config` (if any) and the flags; ConfigError (usage problems as
    issues named after the flag) when something is missing or malformed."""
    values: dict[str, object] = dict(DEFAULTS)
    if args.config:
        values.update(from_file(args.config))
    for key in ("line", "broker", "user", "password_file", "listen", "line_id", "keepalive", "cloud"):
        given = getattr(args, key, None)
        if given is not None and given is not False:
            values[key] = Path(given) if key in ("line", "password_file") else given
    problems = []
    if "line" not in values:
        problems.append("--line FILE is required (or `line` in the [web] section of --config)")
    broker, listen = address(str(values["broker"])), address(str(values["listen"]), 0)
    if broker is None:
        problems.append(f"--broker {values['broker']}: not HOST:PORT (e.g. 127.0.0.1:1884)")
    if listen is None:
        problems.append(f"--listen {values['listen']}: not HOST:PORT (e.g. 0.0.0.0:8080, [::]:80; port 0: any free)")
    if not 1 <= int(str(values["keepalive"])) <= 300:
        problems.append(f"--keepalive {values['keepalive']}: from 1 to 300 s")
    line_id = str(values.get("line_id") or "")
    if line_id and not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", line_id):
        problems.append(f"--line-id {line_id}: 1-32 of a-z 0-9 _ -, starting with a letter or digit")
    if problems:
        raise ConfigError([ConfigIssue("edge web", 0, "", "", p) for p in problems])
    assert broker is not None and listen is not None
    return WebSettings(Path(str(values["line"])), broker, str(values["user"]),
                       Path(str(values["password_file"])) if values.get("password_file") else None, listen,
                       line_id, int(str(values["keepalive"])), bool(values["cloud"]))
