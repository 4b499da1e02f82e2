"""`edge demo`: the simulated trailer line, end to end, on this machine.

A real mosquitto runs the shipped hub config; six `edge run` processes run the example
stations with mock pins; a dashboard watches over MQTT. A visitor's signed order is launched
at intake and walks its route; the hub broker loses power halfway and the line carries on.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

from edge.cli import arg, command

STATIONS = ("intake", "laser", "printer", "transfer", "inspection", "pickup")
GPIO_TYPES = ("digital_output", "digital_input", "emergency_stop", "door_interlock")


_SAY = threading.Lock()


def say(text: str = "") -> None:
    """One line to the terminal; the dashboard's thread prints too, so lines must not interleave."""
    with _SAY:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def gpio_hardware(example: Path) -> str:
    """The GPIO devices of an example station file, as TOML (serial devices, scanners and
    the Pi camera need real ports or a sensor, so the demo leaves them out)."""
    doc = tomllib.loads(example.read_text())
    out = []
    for name, device in doc.get("hardware", {}).items():
        if device.get("type") in GPIO_TYPES:
            out.append(f"\n[hardware.{name}]")
            out += [f"{key} = {json.dumps(value)}" for key, value in device.items()]
    return "\n".join(out) + "\n"


class Dashboard:
    """What an operator's screen would show: job states as they change, from retained topics."""

    def __init__(self, port: int, password: str):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.last: dict[str, str] = {}
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-dashboard", protocol=mqtt.MQTTv5)
        self.client.username_pw_set("dashboard", password)
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe("fabrique/demo/job/#", qos=1),
                                                         self.ready.set())
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.ready.wait(10)

    def _message(self, _c: Any, _u: Any, msg: Any) -> None:
        if not msg.payload:
            return
        try:
            job = json.loads(msg.payload)
        except ValueError:
            return
        marks = {"done": "done", "running": "working", "pending": "-", "failed": "FAILED", "skipped": "skipped"}
        line = "  ".join(f"{s['step']}:{marks.get(s['status'], s['status'])}" for s in job.get("steps", []))
        text = f"  [dashboard] job {job['job']} {job['status']:<11} {line}"
        with self.lock:
            if self.last.get(job["job"]) != text:
                self.last[job["job"]] = text
                say(text)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@command(
    "demo", "run the simulated trailer line: broker, six stations, a visitor's order",
    arg("--keep", metavar="DIR", help="keep the line's files (logs, ledgers) in DIR"),
    arg("--pace", type=float, default=0.4, help="seconds between steps (default 0.4)"),
    arg("--log-level", choices=("debug", "info", "warning"), default="info", help="the stations' log level"),
    description=__doc__,
)
def demo(args: argparse.Namespace) -> int:
    from edge.orders import Order, private_key_from_pem, sign_order
    from edge.sim.line import EXAMPLES, SimBroker, SimNode, converged, password_of, wait_until

    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        print("edge demo: mosquitto is not installed (apt-get install mosquitto, or run `make demo`)",
              file=sys.stderr)
        return 2
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fabrique-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    names = [f"{kind}-1" for kind in STATIONS]
    broker = SimBroker(workdir / "hub", users={n: password_of(n) for n in names},
                       people={"dashboard": password_of("dashboard")})
    nodes: dict[str, SimNode] = {}
    dashboard: Dashboard | None = None
    try:
        say(f"== The trailer's hub broker (systemd/mosquitto/hub.conf): nodes on :{broker.port}, "
            f"dashboards on :{broker.people_port}")
        broker.start()
        for kind, name in zip(STATIONS, names, strict=True):
            nodes[kind] = SimNode(workdir, name, broker.port, kind=kind,
                                  hardware=gpio_hardware(EXAMPLES / f"{kind}.toml"),
                                  log_level=args.log_level).start()
        wait_until(lambda: all(n.status()["mqtt"]["connected"] for n in nodes.values()), 30, "stations online")
        for node in nodes.values():
            st = node.status()
            outputs = [d for d, v in st["devices"].items() if v["type"] == "digital_output"]
            say(f"   {node.name:<13} {st['state']:<6} outputs safe: {', '.join(outputs) or '-'}")
        dashboard = Dashboard(broker.people_port, password_of("dashboard"))

        key = private_key_from_pem((EXAMPLES.parent / "keys" / "EXAMPLE-ONLY-order-signing.pem").read_bytes())
        order = Order(f"V{int(time.time()) % 100000:05d}", "stand", {"colour": "red", "text": "Hello Lyon"},
                      issued_at=int(time.time()), expires_at=int(time.time()) + 86400, key_id="example-1")
        payload = sign_order(order, key)
        say(f"\n== A visitor's app shows a QR code: order {order.order_id}, a red stand engraved 'Hello Lyon'")
        say(qr_text(payload))
        say(f"   payload ({len(payload)} characters): {payload}")
        try:
            nodes["intake"].command("launch " + payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1])
        except RuntimeError as exc:
            say(f"   a tampered copy is refused: {str(exc).split(' -> ')[-1]}")
        launched = nodes["intake"].command(f"launch {payload}")
        say(f"== Scanned at intake: job {launched['job']} launched, route {' -> '.join(launched['route'])}")
        job = launched["job"]
        for kind in launched["route"]:
            node = nodes[kind]
            wait_until(lambda node=node: _has_job(node, job), 30, f"{kind} to hear of the job")
            if kind == "printer":
                say("\n== The hub Pi loses power: the broker is gone. The printer works on, offline.")
                broker.kill()
                wait_until(lambda node=node: not node.status()["mqtt"]["connected"], 30, "printer to notice")
            node.command(f"step {job} started")
            time.sleep(args.pace)
            node.command(f"step {job} done")
            time.sleep(args.pace)
            if kind == "printer":
                say(f"   printer-1 outbox: {node.status()['outbox']} event(s) kept on disk, waiting")
                say("== Power is back: the broker restarts, the outbox drains.")
                broker.start()
                wait_until(lambda node=node: node.status()["outbox"] == 0, 30, "the printer's outbox to drain")
        done = nodes["pickup"].command(f"complete {job}")
        say(f"\n== Handed over at pickup: job {job} is {done['status']}.")
        # what each station recorded itself is what every station must end up holding
        origins = {n.name: n.origin for n in nodes.values()}
        expected = {origins[n.name]: n.status()["vector"].get(origins[n.name], 0) for n in nodes.values()}
        expected = {o: v for o, v in expected.items() if v}
        wait_until(converged(list(nodes.values()), expected), 30, "every station to agree")
        say("== Every station holds the same ledger and the same job state:")
        states = {kind: node.command(f"job {job}") for kind, node in nodes.items()}
        for kind, node in nodes.items():
            st = node.status()
            same = "same" if states[kind] == states["pickup"] else "DIFFERENT"
            say(f"   {node.name:<13} events {sum(st['vector'].values()):>3}  job {states[kind]['status']:<9} ({same})")
        ok = all(s == states["pickup"] for s in states.values())
        if args.keep:
            say(f"\nFiles of this run (logs, ledgers, broker config): {workdir}")
        return 0 if ok else 1
    except (RuntimeError, AssertionError, OSError) as exc:
        print(f"edge demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if dashboard is not None:
            dashboard.close()
        for node in nodes.values():
            node.stop()
        broker.kill()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _has_job(node: Any, job: str) -> bool:
    try:
        return node.command(f"job {job}")["status"] != "unknown"
    except RuntimeError:
        return False


def qr_text(payload: str) -> str:
    import segno

    out = io.StringIO()
    segno.make(payload, error="m").terminal(out=out, compact=True)
    return out.getvalue().rstrip()
