"""`edge demo`: the simulated trailer line, end to end, on this machine.

A real mosquitto runs the shipped hub config; six `edge run` processes run the example
station files (examples/line/) on mock pins, with a simulated world behind the pins (carriers
on the belt break its beams, visitors open their lockers). Nobody types at a console: a
visitor's QR code is scanned at intake, the line makes the stand by itself, the visitor scans
the same code at pickup and takes it from the locker that opens. Halfway, the hub broker loses
power and the stations carry on offline. At the end the run is checked from the stations' own
ledgers (edge.sim.report): every job completed or failed with a reason, no event lost, no step
done twice, every ledger the same; `--json FILE` keeps that report. Exit 1 when a check fails.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edge.cli import arg, command

STATIONS = ("intake", "laser", "printer", "transfer", "inspection", "pickup")


_SAY = threading.Lock()


def say(text: str = "") -> None:
    """One line to the terminal; the dashboard's thread prints too, so lines must not interleave."""
    with _SAY:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


class Dashboard:
    """What an operator's screen would show: job states as they change, from retained topics."""

    def __init__(self, port: int, password: str):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.last: dict[str, str] = {}
        self.events: dict[str, int] = {}  # job -> the most events a state of it shown had
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
        events = job.get("events", 0)
        with self.lock:
            if events < self.events.get(job["job"], 0):
                return  # a broker that lost power restored an older retained state: not news
            self.events[job["job"]] = events
            if self.last.get(job["job"]) != text:
                self.last[job["job"]] = text
                say(text)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@command(
    "demo", "run the simulated trailer line: broker, six stations, visitors and their QR codes",
    arg("--keep", metavar="DIR", help="keep the line's files (logs, ledgers, station files) in DIR"),
    arg("--visitors", type=int, default=1, choices=range(1, 13), metavar="N",
        help="how many visitors order a stand (1-12, default 1); more show the line's queue"),
    arg("--log-level", choices=("debug", "info", "warning"), default="info", help="the stations' log level"),
    arg("--seed", type=int, metavar="S", help="draw the visitors' names and colours from this seed (default: "
        "a random one, printed)"),
    arg("--json", metavar="FILE", help="write the run's report (checked from the stations' ledgers) to FILE"),
    description=__doc__,
)
def demo(args: argparse.Namespace) -> int:
    from edge.sim.line import SimBroker, SimNode, converged, password_of, wait_until

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
    screens: Screens | None = None
    began = time.monotonic()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    try:
        say(f"== Visitors drawn with --seed {seed} (the same seed, the same visitors)")
        say(f"== The trailer's hub broker (systemd/mosquitto/hub.conf): nodes on :{broker.port}, "
            f"dashboards on :{broker.people_port}")
        broker.start()
        for kind, name in zip(STATIONS, names, strict=True):
            nodes[kind] = SimNode(workdir, name, broker.port, kind=kind, example=True, world=True,
                                  log_level=args.log_level).start()
        wait_until(lambda: all(n.status()["mqtt"]["connected"] for n in nodes.values()), 30, "stations online")
        say("== Six stations from examples/line/*.toml, on mock pins with a simulated world behind them:")
        for node in nodes.values():
            st = node.status()
            outputs = [d for d, v in st["devices"].items() if v["type"] == "digital_output"]
            say(f"   {node.name:<13} {st['state']:<6} outputs safe: {', '.join(outputs) or '-'}")
        dashboard = Dashboard(broker.people_port, password_of("dashboard"))
        screens = Screens(list(nodes.values()))

        rng = random.Random(seed)
        visitors = [visitor_order(i, rng) for i in range(args.visitors)]
        orders = [(job, code) for job, code, _options in visitors]
        first, payload, options = visitors[0]
        say(f"\n== A visitor's app shows a QR code: order {first}, a {options['colour']} stand engraved "
            f"{options['text']!r}")
        say(qr_text(payload))
        say(f"   payload ({len(payload)} characters): {payload}")
        say("== Someone scans a tampered copy at intake:")
        nodes["intake"].scan(payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1])
        refused = wait_until(lambda: _last_scan(nodes["intake"], lambda s: not s.get("ok")), 30, "the refusal")
        say(f"   refused, red light: {refused.get('reason')}")
        say("== The visitor scans the real code at intake; nobody touches a console from here on:")
        for job, code in orders:
            nodes["intake"].scan(code)
            wait_until(lambda job=job: _last_scan(nodes["intake"], lambda s, j=job: s.get("job") == j), 30,
                       f"intake to launch {job}")
        wait_until(lambda: _step(nodes["pickup"], first, "laser") == "running", 60, "the laser to start")
        nodes["pickup"].scan(payload)
        say("== The visitor is impatient and scans the code at pickup already:")
        answer = wait_until(lambda: _last_scan(nodes["pickup"], lambda s: s.get("reason") == "not_ready"), 30,
                            "the pickup's answer")
        say(f"   pickup-1 answers: {nodes['pickup'].status()['station']['message']['text']} ({answer['job']})")
        printer = nodes["printer"]
        wait_until(lambda: _step(printer, first, "printer") == "running", 60, "the printer to start")
        say("\n== The hub Pi loses power: the broker is gone. The printer works on, offline.")
        broker.kill()
        wait_until(lambda: _step(printer, first, "printer") == "done", 60, "the printer to finish")
        say(f"   printer-1 outbox: {printer.status()['outbox']} event(s) kept on disk, waiting")
        say("== Power is back: the broker restarts, the outbox drains, the line moves on.")
        broker.start()
        wait_until(lambda: printer.status()["outbox"] == 0, 30, "the printer's outbox to drain")
        for job, code in orders:
            wait_until(lambda job=job: _step(nodes["pickup"], job, "pickup") == "running", 120,
                       f"job {job} to reach a locker")
            say(f"== The visitor of order {job} scans the same QR code at pickup:")
            nodes["pickup"].scan(code)
            wait_until(lambda job=job: _status(nodes["pickup"], job) == "completed", 60,
                       f"the visitor to take the stand of {job}")
            say(f"   job {job} completed: the visitor took the stand and shut the locker")
        # what each station recorded itself is what every station must end up holding
        screens.close()
        origins = {n.name: n.origin for n in nodes.values()}
        expected = {origins[n.name]: n.status()["vector"].get(origins[n.name], 0) for n in nodes.values()}
        expected = {o: v for o, v in expected.items() if v}
        wait_until(converged(list(nodes.values()), expected), 30, "every station to agree")
        say("\n== Every station holds the same ledger and the same job state:")
        states = {kind: node.command(f"job {first}") for kind, node in nodes.items()}
        for kind, node in nodes.items():
            st = node.status()
            same = "same" if states[kind] == states["pickup"] else "DIFFERENT"
            say(f"   {node.name:<13} events {sum(st['vector'].values()):>3}  job {states[kind]['status']:<9} ({same})")
        ok = all(s == states["pickup"] for s in states.values())
        report = {"seed": seed, **run_report(nodes, len(orders), time.monotonic() - began, {"broker": 1})}
        problems = report["problems"]
        say(f"\n== The run, checked from the six ledgers: {report['jobs_total']} job(s), "
            f"{report['jobs_completed']} completed, {report['jobs_failed']} failed, {report['lost_events']} "
            f"event(s) lost, {report['duplicated_steps']} step(s) done twice, "
            f"{'converged' if report['nodes_converged'] else 'NOT converged'}"
            + "".join(f"\n   problem: {p}" for p in problems))
        ok = ok and not problems
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
            say(f"The run's report: {args.json}")
        if args.keep:
            preview = nodes["laser"].data_dir / "files" / "jobs" / first / "laser-preview.png"
            say(f"\nThe laser's toolpath of order {first}: {preview}")
            shots = sorted((nodes["inspection"].data_dir / "files" / "jobs" / first).glob("inspection-*-annotated.jpg"))
            if shots:
                say(f"What the inspection camera saw of it: {shots[-1]}")
            say(f"Files of this run (logs, ledgers, station files, broker config): {workdir}")
        return 0 if ok else 1
    except (RuntimeError, AssertionError, OSError) as exc:
        print(f"edge demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if screens is not None:
            screens.close()
        if dashboard is not None:
            dashboard.close()
        for node in nodes.values():
            node.close()
        broker.kill()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def run_report(nodes: dict[str, Any], launched: int, seconds: float, faults: dict[str, int]) -> dict[str, Any]:
    """The run's report from every station's own ledger (read-only, while they run): see
    edge.sim.report. `problems` lists what failed its checks."""
    from edge.sim.report import checks, line_report
    from edge.store import Store

    ledgers = {}
    for node in nodes.values():
        store = Store.open(node.data_dir, readonly=True)
        try:
            ledgers[node.name] = list(store.events_since({}))
        finally:
            store.close()
    report = line_report(ledgers)
    return {**report, "visitors": launched, "faults_injected": faults, "duration_s": round(seconds, 1),
            "problems": checks(report, expected_jobs=launched)}


VISITORS = ("Zoé", "François", "Léa", "Noël", "Chloé", "Jérôme", "Maëlle", "Aurélien", "Hélène", "Benoît",
            "Cécile", "Gaëtan", "Anaïs", "Loïc", "Ophélie", "Joël", "Béatrice", "Théo", "Inès", "Raphaël")
COLOURS = ("red", "blue", "green", "white", "black")


def visitor_order(i: int, rng: random.Random) -> tuple[str, str, dict[str, str]]:
    """Visitor `i`'s order id, signed QR payload (the EXAMPLE order key) and options: a first
    name to engrave (accents included, as phones type them) and a colour, drawn from `rng`."""
    from edge.orders import Order, private_key_from_pem, sign_order
    from edge.sim.line import EXAMPLE_ORDER_KEY

    key = private_key_from_pem(EXAMPLE_ORDER_KEY.read_bytes())
    now = int(time.time())
    order_id = f"V{now % 100000:05d}{chr(ord('A') + i)}"
    options = {"colour": rng.choice(COLOURS), "text": rng.choice(VISITORS)}
    order = Order(order_id, "stand", options, issued_at=now, expires_at=now + 86400, key_id="example-1")
    return order_id, sign_order(order, key), options


class Screens:
    """What each station's screen says, as it changes: a thread polls the stations' status
    (read-only console queries: the line is not driven from here)."""

    def __init__(self, nodes: list[Any]):
        self.nodes = nodes
        self.seen: dict[str, Any] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(0.1):
            for node in self.nodes:
                try:
                    message = node.status()["station"].get("message")
                except (RuntimeError, KeyError, OSError):
                    continue
                if message and message != self.seen.get(node.name):
                    self.seen[node.name] = message
                    say(f"   [{node.name}] {message['text']}")

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)


def _last_scan(node: Any, check: Any) -> dict[str, Any] | None:
    last = node.status()["station"].get("last_scan")
    return last if last and check(last) else None


def _job(node: Any, job: str) -> dict[str, Any] | None:
    try:
        return node.command(f"job {job}")
    except RuntimeError:
        return None


def _status(node: Any, job: str) -> str | None:
    state = _job(node, job)
    return state["status"] if state else None


def _step(node: Any, job: str, step: str) -> str | None:
    state = _job(node, job)
    return next((s["status"] for s in state["steps"] if s["step"] == step), None) if state else None


def qr_text(payload: str) -> str:
    import segno

    out = io.StringIO()
    segno.make(payload, error="m").terminal(out=out, compact=True)
    return out.getvalue().rstrip()
