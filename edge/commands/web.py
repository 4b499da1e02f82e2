"""`edge web`: serve the live views of the line (the hub's unit systemd/fabrique-web.service)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from edge.cli import arg, command

if TYPE_CHECKING:
    from edge.config import LineConfig
    from edge.web.settings import WebSettings

log = logging.getLogger("edge.web")


@command(
    "web", "serve the live views of the line: the stations, the big screen, each visitor's stand (SSE, JSON)",
    arg("--config", "-c", metavar="FILE", help="a config file whose [web] section holds the settings below "
        "(same names, password_file with an underscore); flags given as well win"),
    arg("--line", metavar="FILE", help="the line file: stations' titles, texts and trades, products, order keys"),
    arg("--broker", metavar="HOST:PORT", help="the hub's people's listener (default 127.0.0.1:1884)"),
    arg("--user", metavar="NAME", help="the broker account, read-only on fabrique/+/public/# (default web)"),
    arg("--password-file", dest="password_file", metavar="FILE",
        help="the account's password, one line (`edge keys password web --secret line.secret`)"),
    arg("--listen", metavar="HOST:PORT", help="where to serve (default 0.0.0.0:8080; phones open "
        "HTTP://HUB.LOCAL/O/...: port 80 on the hub; port 0: any free one, printed)"),
    arg("--line-id", dest="line_id", metavar="ID", help="the line's topics, fabrique/<ID>/public/# (default: the "
        "line file's [line] id)"),
    arg("--keepalive", type=int, metavar="S", help="MQTT keepalive: a frozen broker is noticed in about S s "
        "(default 5)"),
    arg("--cloud", action="store_true", help="this instance serves the cloud's copy of the line: the trailer's "
        "uplink (public/uplink, from the hub's bridge) down shows \"the trailer is offline\""),
    arg("--log-format", choices=("auto", "journal", "text"), default="auto",
        help="journal: <priority> prefixes for journald; auto picks journal under systemd"),
    arg("--log-level", choices=("debug", "info", "warning", "error"), default="info"),
    description="Serve the line live on the trailer's Wi-Fi, from the broker's public subtree only:\n"
                "  /            a card per station: state, job, progress, the trades behind it\n"
                "  /screen      the big screen: each job on the line in turn, the stations below\n"
                "  /O/<order>   a visitor's own stand (the QR code's URL): steps, engraving, inspection\n"
                "  /job/<id>    a job's public face;  /api/...  JSON and Server-Sent Events;  /healthz\n"
                "An unreachable broker is not fatal: the pages say \"offline since\" until it answers.\n\n"
                "examples:\n"
                "  edge web --config /etc/fabrique-edge/web.toml\n"
                "  edge web --line line.toml --broker 127.0.0.1:1884 --user web --password-file web.password "
                "--listen 0.0.0.0:8080\n"
                "See docs/live-view.md.",
)
def web(args: argparse.Namespace) -> int:
    from edge.config import ConfigError, load_line
    from edge.logs import setup_logging
    from edge.web.settings import resolve

    try:
        settings = resolve(args)
        line = load_line(settings.line)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 2 if exc.unreadable or any(i.file == "edge web" for i in exc.issues) else 1
    password = ""
    if settings.password_file is not None:
        try:
            password = settings.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            print(f"edge web: --password-file {settings.password_file}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    setup_logging(args.log_level, args.log_format)
    return _serve(settings, line, password)


def _serve(settings: WebSettings, line: LineConfig, password: str) -> int:
    from edge.web.app import LiveLine, create_app, listen_socket, serve
    from edge.web.model import LineModel
    from edge.web.mqtt import PublicFeed, now_ms

    host, port = settings.listen
    try:
        sock = listen_socket(host, port)
    except OSError as exc:
        print(f"edge web: --listen {host}:{port}: cannot listen there ({exc.strerror or exc})", file=sys.stderr)
        return 1
    model = LineModel(line, settings.line_id, cloud=settings.cloud, started_ms=now_ms())
    live = LiveLine(model)
    bhost, bport = settings.broker
    feed = PublicFeed(bhost, bport, settings.user, password, model.subscription, live, keepalive=settings.keepalive)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    print(f"edge web: the live views of line {model.line_id} on http://{shown}:{bound[1]}/ "
          f"(broker {bhost}:{bport}, user {settings.user})", flush=True)
    serve(create_app(live, line, feed), live, sock)
    return 0
