"""The web service of `edge web`: Starlette on uvicorn, the broker link on its own thread.

    /                          the line: a card per station (state, job, progress, its trades)
    /screen                    the big screen: the jobs on the line in turn, the stations below
    /job/<public id>           one job's public fields
    /O/<order payload>         a visitor's own page, opened by their QR code (docs/live-view.md)
    /api/line, /api/screen     each view as JSON
    /api/job/<public id>       one job; with ?s=<job secret> also what only the QR's holder sees
    /api/job/<id>/snapshot.jpg?s=<secret>   the inspection's picture
    /api/events[?view=screen]  Server-Sent Events: the full view whenever it changes, a `tick`
    /api/events/job/<id>[?s=]  every 5 s otherwise; a reconnecting page needs no history
    /healthz                   the service and its broker link

Every event and every JSON answer carries `link` (the broker up, or down since when): a page
shows "offline since 14:02" instead of stale data, and notices a dead stream by the missing
ticks. The model is touched under one lock by paho's thread (messages) and the event loop
(views, the clock); each view is serialised once per model version, whatever the viewers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.config import LineConfig
from edge.notify import SystemdNotifier
from edge.orders import verify_order
from edge.public import public_id, unseal
from edge.topics import PUBLIC_ID_RE
from edge.web import pages
from edge.web.model import LineModel
from edge.web.mqtt import now_ms

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
HEARTBEAT_S = 5.0  # a `tick` when nothing changed: the page calls a stream dead after 3 missed
COALESCE_S = 0.1  # a burst of messages makes one event per stream
TICK_S = 0.25  # the model's clock: stale nodes, a settled replay
SECRET_RE = re.compile(r"[a-z2-7]{20}")
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "referrer-policy": "no-referrer",  # a visitor's page address holds their order
    "x-content-type-options": "nosniff",
}


class LiveLine:
    """The model behind a lock: fed by the broker link (the `Sink` of edge.web.mqtt), read by the
    pages and streams, which it wakes when the model's version moves."""

    def __init__(self, model: LineModel):
        self.model = model
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._moved: asyncio.Event | None = None
        self._cache: dict[tuple[str, ...], tuple[int, bytes]] = {}
        self.closing = False

    # the Sink, on paho's thread
    def connected(self) -> None:
        self._apply(lambda m, now: m.connected(now))

    def subscribed(self) -> None:
        self._apply(lambda m, now: m.subscribed(now))

    def lost(self, problem: str) -> None:
        self._apply(lambda m, now: m.disconnected(now, problem))

    def message(self, topic: str, payload: bytes, retained: bool) -> None:
        self._apply(lambda m, now: m.receive(topic, payload, retained, now))

    def _apply(self, change: Callable[[LineModel, int], Any]) -> None:
        with self.lock:
            before = self.model.version
            change(self.model, now_ms())
            moved = self.model.version != before
        if moved and self.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._moved is not None:
            self._moved.set()
        self._moved = asyncio.Event()

    # the event loop's side
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._moved = asyncio.Event()

    @property
    def version(self) -> int:
        return self.model.version

    async def moved(self, seen: int, timeout: float) -> None:
        """Return when the model moved past `seen`, or after `timeout` s."""
        if self.model.version != seen or self._moved is None or self.closing:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._moved.wait(), timeout)

    def close(self) -> None:
        """Streams end (the server is stopping)."""
        self.closing = True
        self._wake()

    async def clock(self, notifier: SystemdNotifier) -> None:
        """The model's clock, and systemd's watchdog (the loop is alive if this runs)."""
        interval = SystemdNotifier.watchdog_interval()
        pinged = 0.0
        while not self.closing:
            self._apply(lambda m, now: m.tick(now))
            if interval and time.monotonic() - pinged >= interval:
                notifier.watchdog()
                pinged = time.monotonic()
            await asyncio.sleep(TICK_S)

    def view(self, name: str, *args: str) -> bytes:
        """A view as JSON (line, screen, job), serialised once per model version."""
        key = (name, *args)
        with self.lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == self.model.version:
                return hit[1]
            data = getattr(self.model, f"{name}_view")(*args)
            body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
            if len(self._cache) > 2000:
                self._cache.clear()
            self._cache[key] = (self.model.version, body)
            return body

    def mine(self, pid: str, secret: str) -> dict[str, Any]:
        """A job as its QR's holder sees it: the public view, and `mine` (text, options, the
        inspection's verdict and picture) opened with the secret."""
        with self.lock:
            data = self.model.job_view(pid)
            sealed, shot = self.model.sealed_job(pid), self.model.sealed_snapshot(pid)
        details = _details(secret, sealed) if sealed else None
        seen = _shot(secret, shot) if shot else None
        data["view"] = "visitor"
        data["mine"] = {
            "text": details[0] if details else None, "options": dict(details[1]) if details else None,
            "snapshot": {"verdict": seen[0], "taken_ms": seen[1],
                         "url": f"/api/job/{pid}/snapshot.jpg?s={secret}&t={seen[1]}"} if seen else None}
        return data

    def snapshot_jpeg(self, pid: str, secret: str) -> bytes | None:
        with self.lock:
            shot = self.model.sealed_snapshot(pid)
        opened = unseal(secret, shot) if shot else None
        try:
            jpeg = base64.b64decode(opened["jpeg"], validate=True) if opened else b""
        except (binascii.Error, TypeError, ValueError):
            return None
        return jpeg if jpeg.startswith(b"\xff\xd8") else None


@lru_cache(maxsize=1024)
def _details(secret: str, token: str) -> tuple[str, tuple[tuple[str, Any], ...]] | None:
    opened = unseal(secret, token)
    if opened is None:
        return None
    options = opened.get("options") if isinstance(opened.get("options"), dict) else {}
    return str(opened.get("text", "")), tuple(sorted(options.items()))


@lru_cache(maxsize=1024)
def _shot(secret: str, token: str) -> tuple[str, int] | None:
    opened = unseal(secret, token)
    if opened is None or not isinstance(opened.get("taken_ms"), int):
        return None
    return str(opened.get("verdict", "")), opened["taken_ms"]


class SecurityHeaders:
    """Content-Security-Policy and friends on every answer (plain ASGI: streams stay streams)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                headers.setdefault("cache-control", "no-cache")
            await send(message)

        await self.app(scope, receive, sending)


def _json(body: bytes | dict[str, Any], status: int = 200) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(raw, status, media_type="application/json", headers={"cache-control": "no-store"})


def _events(live: LiveLine, render: Callable[[], bytes]) -> StreamingResponse:
    """Server-Sent Events: `view` with the whole view when it changed, `tick` when nothing did."""

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        last, quiet = b"", time.monotonic()
        while not live.closing:
            seen = live.version
            body = render()
            if body != last:
                last, quiet = body, time.monotonic()
                yield b"event: view\ndata: " + body + b"\n\n"
            elif time.monotonic() - quiet >= HEARTBEAT_S - 0.05:
                quiet = time.monotonic()
                yield b'event: tick\ndata: {"now_ms":%d}\n\n' % now_ms()
            await live.moved(seen, HEARTBEAT_S)
            await asyncio.sleep(COALESCE_S)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})


def create_app(live: LiveLine, line: LineConfig, feed: Any = None) -> Starlette:
    """The web service of one line. `feed` (edge.web.mqtt.PublicFeed) is started with the app."""
    notifier = SystemdNotifier()

    def html(text: str, status: int = 200, private: bool = False) -> HTMLResponse:
        return HTMLResponse(text, status, headers={"cache-control": "no-store" if private else "no-cache"})

    def secret_of(request: Request, pid: str) -> str | None | Response:
        """The ?s= job secret when it opens `pid`; None without one; a 403 for a wrong one."""
        secret = request.query_params.get("s")
        if secret is None:
            return None
        if not SECRET_RE.fullmatch(secret) or public_id(secret) != pid:
            return _json({"error": f"this secret does not open job {pid}"}, 403)
        return secret

    def pid_of(request: Request) -> str | None:
        pid = request.path_params["pid"]
        return pid if PUBLIC_ID_RE.fullmatch(pid) else None

    def job_of(request: Request) -> tuple[str, str | None] | Response:
        """(public id, secret or None) of a job API request, or the 404/403 to answer instead."""
        pid = pid_of(request)
        if pid is None:
            return _json({"error": "not a public id (8 of a-z 2-7)"}, 404)
        secret = secret_of(request, pid)
        return secret if isinstance(secret, Response) else (pid, secret)

    async def line_page(request: Request) -> Response:
        return html(pages.page("line", line, "", "/api/events", json.loads(live.view("line"))))

    async def screen_page(request: Request) -> Response:
        return html(pages.page("screen", line, "Live", "/api/events?view=screen", json.loads(live.view("screen"))))

    async def job_page(request: Request) -> Response:
        pid = pid_of(request)
        if pid is None:
            return html(pages.refusal(line, "not_found", f"{request.path_params['pid']!r} is not a stand's number (8 "
                                      "letters and digits, shown on the line's page); your own stand's page opens "
                                      "when you scan your QR code"), 404)
        return html(pages.page("job", line, f"Stand {pid}", f"/api/events/job/{pid}", json.loads(live.view("job", pid))))

    async def visitor_page(request: Request) -> Response:
        # No expiry check: the page shows a job the line already has; an expired QR starts nothing.
        verdict = verify_order(request.path_params["payload"], line, now=0)
        if not verdict.ok or verdict.order is None:
            return html(pages.refusal(line, verdict.reason, verdict.detail), 400, private=True)
        order = verdict.order
        secret, product = order.secret, line.products[order.product]
        pid = public_id(secret)
        text = str(order.options.get(product.engraving.text_option if product.engraving else "text", ""))
        colour = order.options.get("colour")
        spec = line.colours.get(colour) if isinstance(colour, str) else None
        rgb = spec.srgb if spec is not None else None
        svg = pages.engraving_svg(product.engraving, text, rgb) if product.engraving is not None and text else None
        main = pages.visitor_main(product, text, colour if isinstance(colour, str) else None, rgb, svg)
        return html(pages.page("visitor", line, f"Your {product.title.lower()}", f"/api/events/job/{pid}?s={secret}",
                               live.mine(pid, secret), main), private=True)

    async def api_line(request: Request) -> Response:
        return _json(live.view("line"))

    async def api_screen(request: Request) -> Response:
        return _json(live.view("screen"))

    async def api_job(request: Request) -> Response:
        found = job_of(request)
        if isinstance(found, Response):
            return found
        pid, secret = found
        return _json(live.mine(pid, secret) if secret else live.view("job", pid))

    async def api_snapshot(request: Request) -> Response:
        pid = pid_of(request)
        secret = secret_of(request, pid) if pid else None
        if isinstance(secret, Response):
            return secret
        jpeg = live.snapshot_jpeg(pid, secret) if pid and secret else None
        if jpeg is None:
            return _json({"error": "no picture (yet), or no secret"}, 404)
        return Response(jpeg, media_type="image/jpeg", headers={"cache-control": "private, no-store"})

    async def events(request: Request) -> Response:
        view = request.query_params.get("view", "line")
        if view not in ("line", "screen"):
            return _json({"error": "view is line or screen"}, 400)
        return _events(live, lambda: live.view(view))

    async def job_events(request: Request) -> Response:
        found = job_of(request)
        if isinstance(found, Response):
            return found
        pid, secret = found
        if secret:
            return _events(live, lambda: json.dumps(live.mine(pid, secret), ensure_ascii=False,
                                                    separators=(",", ":")).encode())
        return _events(live, lambda: live.view("job", pid))

    async def healthz(request: Request) -> Response:
        with live.lock:
            m = live.model
            return _json({"ok": True, "line": m.line_id, "broker": m.link.view(), "trailer": m.link_view()["trailer"],
                          "nodes": len(m.nodes),
                          "jobs": len(m.jobs), "dropped": m.dropped})

    async def not_found(request: Request, exc: Exception) -> Response:
        return html(pages.refusal(line, "not_found", request.url.path), 404)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        live.attach(asyncio.get_running_loop())
        if feed is not None:
            feed.start()
        clock = asyncio.create_task(live.clock(notifier))
        notifier.ready("serving the live views")
        try:
            yield
        finally:
            notifier.stopping()
            live.close()
            clock.cancel()
            if feed is not None:
                await asyncio.to_thread(feed.close)

    routes = [
        Route("/", line_page), Route("/screen", screen_page), Route("/job/{pid}", job_page),
        Route("/O/{payload:path}", visitor_page),
        Route("/api/line", api_line), Route("/api/screen", api_screen), Route("/api/job/{pid}", api_job),
        Route("/api/job/{pid}/snapshot.jpg", api_snapshot), Route("/api/events", events),
        Route("/api/events/job/{pid}", job_events), Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found})
    app.add_middleware(SecurityHeaders)
    return app


def listen_socket(host: str, port: int) -> socket.socket:
    """The listening socket (made here, so a refusal is one clear message before anything runs)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


def serve(app: Starlette, live: LiveLine, sock: socket.socket) -> None:
    """Run uvicorn on `sock` until SIGTERM or SIGINT; open streams end at once on either."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if live.loop is not None:
                live.loop.call_soon_threadsafe(live.close)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", ws="none",
                            timeout_graceful_shutdown=2, server_header=False)
    # uvicorn raises the signal that stopped it again once it is done, with the handlers it found:
    # these, so that a stop asked for is a clean exit (0), as systemd expects of SIGTERM
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    Server(config).run(sockets=[sock])
