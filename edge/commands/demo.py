"""`edge demo`: a day at the simulated trailer, end to end, on this machine.

A real mosquitto runs the shipped hub config; six `edge run` processes run the example
station files (examples/line/) on mock pins, with a simulated world behind the pins (carriers
on the belt break its beams, visitors open their lockers, the inspection camera sees the part)
and the laser and printer are simulated GRBL and Marlin controllers on pseudo-terminals.
Nobody drives a console: visitors arrive at seeded moments and scan their QR code at the
intake, the line makes each stand by itself, and the visitor scans the code again at the
pickup and takes the stand from the locker that opens. Only the operator steps in, to `retry`
a machine a fault left stuck.

--chaos injects faults, each once at a seeded moment while parts are on the line:
  broker  the hub's mosquitto frozen (SIGSTOP) or killed, then back
  node    one station killed (kill -9) and restarted, as systemd does
  power   the whole trailer loses power: broker, stations and their machines, then boots
  clock   a station loses power and boots an hour behind (a Pi has no real-time clock)
  serial  noise on the printer's serial cable for a few seconds

The live views run beside the line, as on the hub: `edge web` with the broker's `web` account
(the line, the big screen, the first visitor's own page: their URLs are printed).

At the end the run is checked from the stations' own ledgers (edge.sim.report): every job
completed or failed with a reason, no event lost, no step done twice, every ledger the same;
`--json FILE` keeps that report. Exit 1 when a check fails, 2 for bad arguments. `--keep` keeps
the line running after the day until Ctrl-C, to build a dashboard against it; `--workdir DIR`
keeps its files.

examples:
  edge demo                                      one visitor, no faults
  edge demo --visitors 12 --chaos all            a short day with one of each fault (make demo)
  edge demo --visitors 30 --chaos broker,node,serial,power,clock --json r.json --seed 7
  edge demo --keep --mqtt-port 1884 --web-port 8080   a line to build a dashboard on, until Ctrl-C
"""

from __future__ import annotations

import argparse
import io
import json
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.cli import arg, command
from edge.public import order_url
from edge.sim.day import CHAOS_KINDS

STATIONS = ("intake", "laser", "printer", "transfer", "inspection", "pickup")


class Dashboard:
    """A plain MQTT client on the people's listener, as MQTT Explorer would be: every retained
    job state it gets goes to `on_job` (the live view)."""

    def __init__(self, port: int, password: str, on_job: Callable[[dict[str, Any]], None]):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.on_job = on_job
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-dashboard", protocol=mqtt.MQTTv5)
        self.client.username_pw_set("dashboard", password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("fabrique/demo/job/#", qos=1)
        self.client.on_message = self._message
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            job = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            return
        if isinstance(job, dict) and "job" in job:
            self.on_job(job)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class LiveViews:
    """`edge web` beside the simulated line, as on the hub: the read-only `web` account on the
    people's listener, serving the line, the big screen and the visitors' pages."""

    def __init__(self, workdir: Path, broker_port: int, password: str, line_file: Path, port: int | None):
        folder = workdir / "web"
        folder.mkdir(parents=True, exist_ok=True)
        secret = folder / "web.password"
        secret.write_text(password + "\n")
        secret.chmod(0o600)
        self.log = folder / "web.log"
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge", "web", "--line", str(line_file), "--broker", f"127.0.0.1:{broker_port}",
                 "--user", "web", "--password-file", str(secret), "--listen", f"127.0.0.1:{port or 0}",
                 "--log-format", "text"], stdout=subprocess.PIPE, stderr=log, text=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        said = self.proc.stdout.readline() if ready else ""
        if " on http://" not in said:
            self.close()
            raise RuntimeError(f"edge web did not start; see {self.log}")
        self.url = said.split(" on ", 1)[1].split()[0].rstrip("/")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@command(
    "demo", "a day at the simulated trailer: broker, six stations, visitors, faults on demand, a checked report",
    arg("--visitors", type=int, default=1, metavar="N",
        help="how many visitors order a stand (1-200, default 1); past 12 they queue for carriers"),
    arg("--speed", type=float, default=1.0, metavar="X",
        help="run the day X times faster: visitors' arrivals, belt, lockers, laser, outages (0.25-8, default 1)"),
    arg("--chaos", default="", metavar="KINDS",
        help="faults to inject, each once at a seeded moment, comma-separated: " + ", ".join(CHAOS_KINDS)
        + " (or `all`)"),
    arg("--seed", type=int, metavar="S", help="draw visitors, arrivals and fault moments from this seed (default: "
        "a random one, printed; the same seed, the same day)"),
    arg("--mqtt-port", type=int, metavar="P", help="the broker's port for dashboards (MQTT Explorer, Home "
        "Assistant); default a free one, printed"),
    arg("--json", metavar="FILE", help="write the run's report (checked from the stations' ledgers) to FILE"),
    arg("--web-port", type=int, metavar="P", help="the live views' port (edge web: the line, the big screen, "
        "each visitor's page); default a free one, printed"),
    arg("--keep", action="store_true", help="after the day, keep the line running (broker, stations, live views) "
        "until Ctrl-C: build a dashboard against it"),
    arg("--stay", dest="keep", action="store_true", help=argparse.SUPPRESS),  # the name it had first
    arg("--workdir", metavar="DIR", help="run the line in DIR and keep its files there (logs, ledgers, station "
        "files, the laser's previews, the inspection's snapshots); default a temporary folder, removed"),
    arg("--log-level", choices=("debug", "info", "warning"), default="info", help="the stations' log level"),
    description=__doc__,
)
def demo(args: argparse.Namespace) -> int:
    from edge.sim.day import Day, expected_day_s, make_visitors, plan_chaos
    from edge.sim.line import SimBroker, SimNode, password_of, wait_until
    from edge.sim.view import LineView

    chaos = _chaos_kinds(args.chaos)
    problem = (chaos if isinstance(chaos, str) else None) or _bad_numbers(args)
    if problem:
        print(f"edge demo: {problem}", file=sys.stderr)
        return 2
    assert not isinstance(chaos, str)
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        print("edge demo: mosquitto is not installed (apt-get install mosquitto, or run `make demo`)",
              file=sys.stderr)
        return 2
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fabrique-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    names = [f"{kind}-1" for kind in STATIONS]
    try:
        broker = SimBroker(workdir / "hub", users={n: password_of(n) for n in names},
                           people={"dashboard": password_of("dashboard"), "web": password_of("web")},
                           people_port=args.mqtt_port)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"edge demo: cannot set up the broker: {exc}", file=sys.stderr)
        return 1
    nodes: dict[str, SimNode] = {}
    dashboard: Dashboard | None = None
    web: LiveViews | None = None
    view = LineView(names)
    began = time.monotonic()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    try:
        view.say(f"== A day at the trailer: {args.visitors} visitor(s), --seed {seed} (the same seed, the same day)"
                 f", --speed {args.speed:g}, chaos: {', '.join(chaos) or 'none'}")
        broker.start()
        view.say(f"== The hub broker (systemd/mosquitto/hub.conf): stations on 127.0.0.1:{broker.port}; watch the "
                 f"line with MQTT Explorer or Home Assistant on 127.0.0.1:{broker.people_port}, user dashboard, "
                 f"password {password_of('dashboard')} (a throwaway demo account), topics fabrique/demo/#")
        for kind, name in zip(STATIONS, names, strict=True):
            nodes[kind] = SimNode(workdir, name, broker.port, kind=kind, example=True, world=True,
                                  log_level=args.log_level, speed=args.speed)
        for node in nodes.values():
            node.spawn()
        try:
            web = LiveViews(workdir, broker.people_port, password_of("web"), nodes["intake"].line_file, args.web_port)
            view.say(f"== The live views (edge web, docs/live-view.md): the line {web.url}/ , the big screen "
                     f"{web.url}/screen")
        except (RuntimeError, OSError) as exc:
            view.say(f"!! the live views did not start: {exc}")
        for node in nodes.values():
            node.ready(60)
        wait_until(lambda: all(n.status()["mqtt"]["connected"] for n in nodes.values()), 30, "stations online")
        view.say("== Six stations from examples/line/*.toml, on mock pins with a simulated world behind them:")
        for node in nodes.values():
            st = node.status()
            outputs = [d for d, v in st["devices"].items() if v["type"] == "digital_output"]
            view.say(f"   {node.name:<13} {st['state']:<6} outputs safe: {', '.join(outputs) or '-'}")
        dashboard = Dashboard(broker.people_port, password_of("dashboard"), view.job)

        rng = random.Random(seed)
        visitors = make_visitors(args.visitors, rng, args.speed)
        arrivals = visitors[-1].arrives_s
        faults = plan_chaos(chaos, rng, 3 / args.speed, 0.7 * expected_day_s(len(visitors), args.speed), list(nodes))
        first = visitors[0]
        view.say(f"\n== {first.name}'s app shows a QR code: order {first.job}, a {first.colour} stand engraved "
                 f"{first.text!r}")
        view.say(qr_text(first.payload))
        view.say(f"   payload ({len(first.payload)} characters): {first.payload}")
        if web is not None:
            view.say(f"   {first.name}'s own page, what their phone opens: {order_url(web.url, first.payload)}")
        view.say("== Someone scans a tampered copy at intake:")
        nodes["intake"].scan(first.payload[:-2] + ("A" if first.payload[-2] != "A" else "B") + first.payload[-1])
        refused = wait_until(lambda: _last_scan(nodes["intake"], lambda s: not s.get("ok")), 30, "the refusal")
        view.say(f"   refused, red light: {refused.get('reason')}")
        if len(visitors) > 1:
            view.say(f"== {len(visitors)} visitors arrive over {arrivals:.0f} s; nobody touches a console but the "
                     "operator, to clear a stuck machine")
        for fault in faults:
            view.say(f"   chaos planned: {fault.kind}{' ' + fault.target if fault.target else ''} at +{fault.at_s:.0f} s")
        view.start()
        day = Day(broker, nodes, visitors, faults, view, args.speed, rng)
        try:
            day.run(timeout_s=180 + (arrivals + 25 * len(visitors)) / min(args.speed, 1.0) + 60 * len(faults))
        finally:
            view.close()
        for v in visitors:
            if v.outcome != "completed":
                view.say(f"   {v.name} ({v.job}): {v.outcome}")
        view.say(f"\n== The day is over: {sum(v.outcome == 'completed' for v in visitors)} of {len(visitors)} "
                 f"visitor(s) took their stand home. Waiting for every station to hold the same ledger...")
        vectors = wait_until(lambda: _agreed(nodes), 90, "every station to agree")
        dashboard.close()
        dashboard = None
        view.say(f"== Every station holds the same ledger: {sum(vectors.values())} events from {len(vectors)} "
                 f"origin(s), nothing left to send")
        report = {"seed": seed, "speed": args.speed,
                  **run_report(nodes, len(visitors), time.monotonic() - began, day.injected)}
        report["chaos_planned"] = [{"kind": f.kind, "target": f.target, "at_s": f.at_s, "done": f.done} for f in faults]
        report["operator_actions"] = day.operator_actions
        problems = report["problems"]
        problems += [f"chaos {kind} planned but not injected" for kind in chaos if kind not in day.injected]
        problems += [f"chaos failed: {e}" for e in day.chaos_errors]
        view.say(f"\n== The run, checked from the six ledgers: {report['jobs_total']} job(s), "
                 f"{report['jobs_completed']} completed, {report['jobs_failed']} failed, {report['lost_events']} "
                 f"event(s) lost, {report['duplicated_steps']} step(s) done twice, "
                 f"{'converged' if report['nodes_converged'] else 'NOT converged'}; faults: "
                 + (", ".join(f"{k} {n}" for k, n in sorted(day.injected.items())) or "none")
                 + "".join(f"\n   problem: {p}" for p in problems))
        for failed in report["failed"]:
            view.say(f"   failed: {failed['job']} at {failed['step'] or '-'}: {failed['reason']}")
        lat = report["latency_ms"]
        view.say(f"   scan to first machine p50 {lat['scan_to_start_p50']} ms, p99 {lat['scan_to_start_p99']} ms; "
                 f"hand-off between stations p50 {lat['handoff_p50']} ms, p99 {lat['handoff_p99']} ms; "
                 f"{report['duration_s']} s")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
            view.say(f"The run's report: {args.json}")
        if args.workdir:
            preview = nodes["laser"].data_dir / "files" / "jobs" / first.job / "laser-preview.png"
            view.say(f"\nThe laser's toolpath of order {first.job}: {preview}")
            shots = sorted((nodes["inspection"].data_dir / "files" / "jobs" / first.job).glob(
                "inspection-*-annotated.jpg"))
            if shots:
                view.say(f"What the inspection camera saw of it: {shots[-1]}")
            view.say(f"Files of this run (logs, ledgers, station files, broker config): {workdir}")
        if args.keep:
            keep_running(view, broker, web)
        return 1 if problems else 0
    except (RuntimeError, AssertionError, OSError) as exc:
        view.close()
        print(f"edge demo: {exc}", file=sys.stderr)
        return 1
    finally:
        view.close()
        if dashboard is not None:
            dashboard.close()
        if web is not None:
            web.close()
        for node in nodes.values():
            node.close()
        broker.kill()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def keep_running(view: Any, broker: Any, web: LiveViews | None) -> None:
    """The day is over; the line keeps running until Ctrl-C (or SIGTERM)."""
    from edge.sim.line import password_of

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    view.say(f"\n== --keep: the line keeps running until Ctrl-C. MQTT 127.0.0.1:{broker.people_port} (user dashboard, "
             f"password {password_of('dashboard')}, topics fabrique/demo/#)"
             + (f"; live views {web.url}/ and {web.url}/screen" if web is not None else ""))
    stop.wait()
    view.say("== Stopping the line")


def _chaos_kinds(text: str) -> list[str] | str:
    """The kinds of `--chaos`, or what is wrong with it."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    if kinds == ["all"]:
        return list(CHAOS_KINDS)
    unknown = [k for k in kinds if k not in CHAOS_KINDS]
    if unknown:
        return f"--chaos: {', '.join(unknown)} is not a fault kind (kinds: {', '.join(CHAOS_KINDS)}, or all)"
    return list(dict.fromkeys(kinds))


def _bad_numbers(args: argparse.Namespace) -> str | None:
    if not 1 <= args.visitors <= 200:
        return f"--visitors {args.visitors}: from 1 to 200"
    if not 0.25 <= args.speed <= 8:
        return f"--speed {args.speed:g}: from 0.25 to 8"
    for flag, port in (("--mqtt-port", args.mqtt_port), ("--web-port", args.web_port)):
        if port is not None and not 1 <= port <= 65535:
            return f"{flag} {port}: not a TCP port"
        if port is not None:
            import socket

            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError as exc:
                    return f"{flag} {port}: cannot listen there ({exc.strerror}); pick another"
    if args.mqtt_port is not None and args.mqtt_port == args.web_port:
        return f"--mqtt-port and --web-port: both {args.mqtt_port}; pick two ports"
    return None


def _agreed(nodes: dict[str, Any]) -> dict[str, int] | None:
    """Every station's version vector, once they are all the same and nothing waits to be sent."""
    try:
        statuses = [n.status() for n in nodes.values()]
    except RuntimeError:
        return None
    vectors = [s["vector"] for s in statuses]
    if any(v != vectors[0] for v in vectors) or any(s["outbox"] for s in statuses):
        return None
    return vectors[0]


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


def _last_scan(node: Any, check: Any) -> dict[str, Any] | None:
    last = node.status()["station"].get("last_scan")
    return last if last and check(last) else None


def qr_text(payload: str) -> str:
    import segno

    out = io.StringIO()
    segno.make(payload, error="m").terminal(out=out, compact=True)
    return out.getvalue().rstrip()
