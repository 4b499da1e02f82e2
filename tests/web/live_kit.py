"""Helpers of the live-view tests: the line's nodes as plain MQTT clients publishing the public
subtree exactly as docs/mqtt.md says, `edge web` as a real process, and a Server-Sent Events
reader."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mqttclient import TestClient

from edge.config import load_line
from edge.orders import Order, private_key_from_pem, sign_order, verify_order
from edge.public import public_id, public_name, seal
from edge.sim.line import CHECKOUT, EXAMPLE_ORDER_KEY, EXAMPLES, SimBroker, password_of
from edge.topics import Topics

LINE_FILE = EXAMPLES / "line.toml"
LINE = load_line(LINE_FILE)
TOPICS = Topics("demo")
NODES = {"intake-1": "intake", "laser-1": "laser", "printer-1": "printer", "transfer-1": "transfer",
         "inspection-1": "inspection", "pickup-1": "pickup"}
STAND = list(LINE.products["stand"].route)
ARTIFACTS = CHECKOUT / "tests" / "artifacts" / "web"
SCREENSHOTS: list[Path] = []  # saved by the browser tests, listed at the end of the run (conftest.py)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def artifact(name: str) -> Path:
    """A file under tests/artifacts/web/ (the folder ignores itself in git)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    ignore = ARTIFACTS.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# test artifacts (screenshots): never committed\n*\n")
    return ARTIFACTS / name


def start_broker(workdir: Path, bridge: bool = False) -> SimBroker:
    """The hub broker as shipped (hub.conf, people.acl): the six nodes, `web` and `dashboard`;
    `bridge`: and an account that may publish the trailer's uplink as the cloud sees it."""
    people = {"web": password_of("web"), "dashboard": password_of("dashboard")}
    acl = (EXAMPLES.parents[1] / "systemd" / "mosquitto" / "people.acl").read_text()
    if bridge:
        people["bridge"] = password_of("bridge")
        acl += "\nuser bridge\ntopic write fabrique/+/public/uplink\n"
    return SimBroker(workdir, users={n: password_of(n) for n in NODES}, people=people, people_acl=acl).start()


@dataclass(frozen=True)
class Visitor:
    """A visitor's signed order: the QR payload, and the secret and public id the line derives."""

    order_id: str
    text: str
    colour: str
    payload: str
    secret: str

    @classmethod
    def make(cls, order_id: str, text: str = "Camille Dupont", colour: str = "red") -> Visitor:
        key = private_key_from_pem(EXAMPLE_ORDER_KEY.read_bytes())
        payload = sign_order(Order(order_id, "stand", {"colour": colour, "text": text}, issued_at=int(time.time()),
                                   key_id="example-1"), key)
        verdict = verify_order(payload, LINE, time.time())
        assert verdict.ok and verdict.order is not None, verdict
        return cls(order_id, text, colour, payload, verdict.order.secret)

    @property
    def pid(self) -> str:
        return public_id(self.secret)

    @property
    def url_path(self) -> str:
        """The path of the QR URL a phone opens: /O/<payload, % and space encoded>."""
        from edge.public import order_url

        return order_url("", self.payload)


def job_body(v: Visitor, steps: dict[str, str], progress: dict[str, int] | None = None, status: str | None = None,
             created_ms: int | None = None, updated_ms: int | None = None, name: str | None = None) -> dict[str, Any]:
    """`public/job/<public id>` as a node publishes it: `steps` step -> status (the rest pending)."""
    created = created_ms or now_ms() - 60_000
    route = []
    for i, step in enumerate(STAND):
        state = steps.get(step, "pending")
        started = created + i * 10_000 if state != "pending" else None
        ended = started + 8_000 if state in ("done", "failed", "skipped") and started else None
        route.append({"step": step, "status": state, "started_ms": started, "ended_ms": ended,
                      "progress": (progress or {}).get(step, 100 if state == "done" else None)})
    running = next((s["step"] for s in route if s["status"] == "running"), None)
    nxt = next((s["step"] for s in route if s["status"] == "pending"), None)
    if status is None:
        status = ("done" if all(s["status"] in ("done", "skipped") for s in route)
                  else "failed" if any(s["status"] == "failed" for s in route)
                  else "in_progress" if any(s["status"] != "pending" for s in route) else "waiting")
    return {"v": 1, "id": v.pid, "product": "stand", "product_title": "Smartphone stand",
            "name": public_name(v.text, "initial") if name is None else name, "colour": v.colour, "status": status,
            "station": running or nxt, "steps": route, "created_ms": created, "updated_ms": updated_ms or now_ms(),
            "sealed": seal(v.secret, {"text": v.text, "options": {"colour": v.colour, "text": v.text}})}


def node_body(node: str, state: str = "idle", job: str | None = None, progress: int | None = None,
              updated_ms: int | None = None, safety: dict[str, str] | None = None, mode: str = "auto") -> dict[str, Any]:
    kind = NODES.get(node, node.split("-")[0])
    return {"v": 1, "node": node, "kind": kind, "title": LINE.public.stations[kind].title if kind in
            LINE.public.stations else kind, "state": state, "mode": mode, "job": job, "progress": progress,
            "since_ms": now_ms() - 5_000, "safety": safety if safety is not None else {"estop": "ok"},
            "updated_ms": updated_ms or now_ms()}


def jpeg(colour: tuple[int, int, int] = (192, 40, 45)) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (480, 320), (230, 230, 225))
    ImageDraw.Draw(image).rounded_rectangle((80, 60, 400, 260), 20, fill=colour)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()


class Nodes:
    """The line's nodes as the broker sees them: one MQTT client per node account, publishing
    retained public topics (on the nodes' listener, under the shipped nodes' ACL)."""

    def __init__(self, broker: SimBroker):
        self.broker = broker
        self.clients: dict[str, TestClient] = {}

    def client(self, node: str) -> TestClient:
        if node not in self.clients:
            self.clients[node] = TestClient(self.broker.port, node, password_of(node), topics=())
        return self.clients[node]

    def publish(self, node: str, topic: str, payload: bytes | str) -> None:
        """Publish retained as `node`; the broker takes it (MQTT 5: 0, or 16 when nobody listens)."""
        reason = self.client(node).publish(topic, payload, retain=True)
        assert reason in (0, 16), f"{node} may not publish {topic}: {reason}"

    def node(self, node: str, state: str = "idle", **kw: Any) -> dict[str, Any]:
        body = node_body(node, state, **kw)
        self.publish(node, TOPICS.public_node(node), json.dumps(body))
        return body

    def all_idle(self) -> None:
        for node in NODES:
            self.node(node)

    def job(self, v: Visitor, steps: dict[str, str], by: str = "intake-1", **kw: Any) -> dict[str, Any]:
        body = job_body(v, steps, **kw)
        self.publish(by, TOPICS.public_job(v.pid), json.dumps(body))
        return body

    def snapshot(self, v: Visitor, picture: bytes, verdict: str = "pass", taken_ms: int | None = None) -> int:
        taken = taken_ms or now_ms()
        body = {"v": 1, "sealed": seal(v.secret, {"jpeg": base64.b64encode(picture).decode(), "verdict": verdict,
                                                  "taken_ms": taken})}
        self.publish("inspection-1", TOPICS.public_snapshot(v.pid), json.dumps(body))
        return taken

    def archive(self, v: Visitor) -> None:
        """The job is archived: its public topics are cleared (empty retained)."""
        self.publish("intake-1", TOPICS.public_snapshot(v.pid), b"")
        self.publish("intake-1", TOPICS.public_job(v.pid), b"")

    def close(self) -> None:
        for c in self.clients.values():
            c.client.disconnect()  # first: it wakes paho's loop, which then stops at once
            c.client.loop_stop()
        self.clients.clear()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(url: str, context: ssl.SSLContext | None = None) -> Answer:
    """GET `url` (https: trusting `context`), whatever its status."""
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as r:
            return Answer(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


class EventStream:
    """A Server-Sent Events reader on its own thread: every `view` event's data, in order. Plain
    HTTP/1.0 on a socket of its own, so `close` ends it at once; an https URL with `context`."""

    def __init__(self, url: str, context: ssl.SSLContext | None = None):
        self.views: list[dict[str, Any]] = []
        self.ticks = 0
        self.cond = threading.Condition()
        self.closed = False
        parts = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        if parts.scheme == "https":
            self.sock = (context or ssl.create_default_context()).wrap_socket(self.sock, server_hostname=parts.hostname)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n\r\n".encode())
        self.sock.settimeout(None)
        self.file = self.sock.makefile("rb")
        self.status = int(self.file.readline().split()[1])
        self.headers: dict[str, str] = {}
        while (line := self.file.readline().decode().rstrip("\r\n")):
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        event, data = "", []
        try:
            for raw in self.file:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif not line:
                    with self.cond:
                        if event == "view":
                            self.views.append(json.loads("\n".join(data)))
                        elif event == "tick":
                            self.ticks += 1
                        self.cond.notify_all()
                    event, data = "", []
        except (OSError, ValueError):  # closed here, or by the server
            pass
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def wait(self, check: Callable[[dict[str, Any]], Any], timeout: float = 10, what: str = "a view") -> dict[str, Any]:
        """The first view (received so far or later) for which `check` is true."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for view in self.views:
                    if check(view):
                        return view
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise AssertionError(f"no {what} in {timeout} s; last: {self.views[-1] if self.views else None}")
                self.cond.wait(left)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class WebServer:
    """`edge web` as the hub runs it, a real process with a real uvicorn on a free port."""

    def __init__(self, workdir: Path, broker: SimBroker, keepalive: int = 2, password: str | None = None,
                 extra: tuple[str, ...] = ()):
        workdir.mkdir(parents=True, exist_ok=True)
        self.password_file = workdir / "web.password"
        self.password_file.write_text((password or password_of("web")) + "\n")
        self.log = workdir / "web.log"
        self.broker = broker
        self.args = ["--line", str(LINE_FILE), "--broker", f"127.0.0.1:{broker.people_port}", "--user", "web",
                     "--password-file", str(self.password_file), "--keepalive", str(keepalive),
                     "--log-format", "text", *extra]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, listen: str = "127.0.0.1:0", wait_link: bool = True) -> WebServer:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge", "web", *self.args, "--listen", listen],
                                         cwd=CHECKOUT, text=True, stdout=subprocess.PIPE, stderr=log,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        assert " on http://" in line, f"edge web did not start: {line!r}\n{self.log.read_text()[-3000:]}"
        self.url = line.split(" on ", 1)[1].split()[0].rstrip("/")
        if wait_link:
            self.wait_link(True)
        return self

    def get(self, path: str) -> Answer:
        return fetch(self.url + path)

    def json(self, path: str) -> Any:
        answer = self.get(path)
        assert answer.status == 200, (path, answer.status, answer.text[:500])
        return answer.json()

    def wait_link(self, up: bool, timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            link = self.json("/healthz")["broker"]
            if link["up"] == up and (up or link["state"] == "down"):
                return link
            time.sleep(0.05)
        raise AssertionError(f"the broker link did not go {'up' if up else 'down'}: {link}\n{self.log.read_text()[-2000:]}")

    def wait(self, path: str, check: Callable[[Any], Any], timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            data = self.json(path)
            if check(data):
                return data
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} never matched: {data}")
            time.sleep(0.05)

    def stream(self, path: str) -> EventStream:
        return EventStream(self.url + path)

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.terminate()
        try:
            code = self.proc.wait(15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

