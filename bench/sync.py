"""MQTT sync benchmark: raw broker latency, node-to-node handoff, and convergence after an outage.

Prints one JSON object:
  raw        paho + mosquitto QoS 1 on loopback: one-way (publish -> delivery) and round trip
             (request -> echo -> reply), p50/p99 in ms
  handoff    event appended (durably) on node A -> ingested (durably) on node B, p50/p99 ms;
             two Sync instances with their own stores and loop threads, one real mosquitto
  converge   six `edge run` processes; the broker is down while 10,000 events accumulate in
             their outboxes; seconds from broker start to all six holding all 10,000, and the
             events/s that makes
  signatures what signing costs: Ed25519 sign and verify per event (us), and a store's ingest
             of 10,000 signed events with and without verification (events/s, and the ratio)
Every event is signed by its node and verified on ingest, as on a real line.
Targets: handoff p99 <= 10x raw round-trip p99; 10,000 events converge in <= 5 s.

usage: python bench/sync.py [--quick] [--only PART] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from bench.report import emit, machine, pct  # noqa: E402
from edge.clock import Timestamp  # noqa: E402
from edge.ledger import Event, EventVerifier  # noqa: E402
from edge.sim.line import SimBroker, SimNode, password_of, sim_signer  # noqa: E402
from edge.store import Store  # noqa: E402
from edge.sync import MqttLink, Sync  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")



def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def client(port: int, user: str, password: str, name: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, password)
    c.connect("127.0.0.1", port)
    c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the nodes do
    c.loop_start()
    return c


def bench_raw(broker: SimBroker, samples: int) -> dict[str, float]:
    """One-way and round-trip QoS 1 latency between two plain paho clients."""
    got: queue.Queue[float] = queue.Queue()
    a = client(broker.port, "intake-1", password_of("intake-1"), "raw-a")
    b = client(broker.port, "laser-1", password_of("laser-1"), "raw-b")
    b.on_message = lambda c, u, m: (got.put(time.perf_counter()),
                                    c.publish("fabrique/demo/node/laser-1/state", m.payload, qos=1))
    a.on_message = lambda c, u, m: got.put(time.perf_counter())
    b.subscribe("fabrique/demo/node/intake-1/state", qos=1)
    a.subscribe("fabrique/demo/node/laser-1/state", qos=1)
    time.sleep(0.5)
    one_way, round_trip = [], []
    for i in range(samples):
        t0 = time.perf_counter()
        a.publish("fabrique/demo/node/intake-1/state", str(i), qos=1)
        t1 = got.get(timeout=5)
        t2 = got.get(timeout=5)
        one_way.append((t1 - t0) * 1000)
        round_trip.append((t2 - t0) * 1000)
    for c in (a, b):
        c.loop_stop()
        c.disconnect()
    return {"one_way_p50_ms": pct(one_way, 50), "one_way_p99_ms": pct(one_way, 99),
            "round_trip_p50_ms": pct(round_trip, 50), "round_trip_p99_ms": pct(round_trip, 99),
            "samples": samples}


class LoopNode:
    """A Sync with its own store and loop thread: the node's event path without hardware."""

    def __init__(self, name: str, port: int, data: Path, applied: queue.Queue[tuple[str, float]] | None):
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        verifier = EventVerifier({n: [sim_signer(n).public_key] for n in ("intake-1", "laser-1")})
        self.store = Store.open(data / name, name, signer=sim_signer(name), verifier=verifier)
        link = MqttLink("127.0.0.1", port, name, password_of(name), keepalive=5)
        on_ingest = None
        if applied is not None:
            def on_ingest(evs):
                now = time.perf_counter()
                for e in evs:
                    applied.put((e.id, now))
        self.sync = Sync(name, "demo", "transfer", link, self.store, lambda k, d: self.events.put((k, d)),
                         session=1, on_ingest=on_ingest)
        self.running = True
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()
        self.sync.start()

    def loop(self) -> None:
        while self.running:
            try:
                kind, data = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if kind == "call":
                data()
            else:
                self.sync.handle(kind, data)
            if self.events.empty():
                self.sync.flush()

    def call(self, fn) -> None:
        self.events.put(("call", fn))

    def close(self) -> None:
        done = threading.Event()
        self.call(lambda: (self.sync.stop(), done.set()))
        done.wait(10)
        self.running = False
        self.thread.join(5)
        self.store.close()


def bench_handoff(broker: SimBroker, samples: int, tmp: Path) -> dict[str, float]:
    applied: queue.Queue[tuple[str, float]] = queue.Queue()
    a = LoopNode("intake-1", broker.port, tmp, None)
    b = LoopNode("laser-1", broker.port, tmp, applied)
    deadline = time.monotonic() + 10
    while not (a.sync.connected and b.sync.connected) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    latencies = []
    for i in range(samples):
        created: dict[str, float] = {}

        def make(i=i, created=created) -> None:
            t0 = time.perf_counter()
            ev = a.store.append(f"H{i % 20}", "note", "intake", {"i": i})
            created[ev.id] = t0
            a.sync.drain()

        a.call(make)
        event_id, t1 = applied.get(timeout=10)
        latencies.append((t1 - created[event_id]) * 1000)
    a.close()
    b.close()
    return {"p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99), "mean_ms": round(statistics.mean(latencies), 3),
            "samples": samples}


def bench_converge(total: int, tmp: Path) -> dict[str, float]:
    """Six nodes that know the broker (sessions exist); it goes down; events pile up; it returns."""
    names = ["intake-1", "laser-1", "printer-1", "transfer-1", "inspection-1", "pickup-1"]
    broker = SimBroker(tmp / "broker6", users={n: password_of(n) for n in names}).start()
    nodes = [SimNode(tmp / "six", n, broker.port, kind=n.split("-")[0], keepalive=5).start() for n in names]
    try:
        while not all(n.status()["mqtt"]["connected"] for n in nodes):
            time.sleep(0.05)
        broker.stop()
        while any(n.status()["mqtt"]["connected"] for n in nodes):
            time.sleep(0.05)
        per = -(-total // len(nodes))  # at least `total` in all: a launch and per - 1 notes each
        progress(f"converge: broker down; {per} events on each of six nodes through their consoles")
        threads = [threading.Thread(target=n.notes, args=(f"{n.name}-J", per - 1)) for n in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        expected = {n.origin: per for n in nodes}
        progress("converge: broker up")
        cpu0 = {n.name: cpu_seconds(n.proc.pid) for n in nodes}
        t0 = time.perf_counter()
        broker.start()
        while True:
            vectors = [n.status()["vector"] for n in nodes]
            if all(v == expected for v in vectors):
                break
            if time.perf_counter() - t0 > 300:
                raise SystemExit(f"no convergence after 300 s: {vectors}")
            time.sleep(0.05)
        seconds = time.perf_counter() - t0
        cpu = {n.name: round(cpu_seconds(n.proc.pid) - cpu0[n.name], 2) for n in nodes}
        cpu["mosquitto"] = round(cpu_seconds(broker.proc.pid), 2)
        dup = sum(n.status()["mqtt"]["duplicates"] for n in nodes)
    finally:
        for n in nodes:
            n.kill()
        broker.kill()
    return {"events": per * len(nodes), "nodes": len(nodes), "seconds": round(seconds, 3),
            "events_per_s": round(per * len(nodes) / seconds, 1),
            "deliveries_per_s": round(per * len(nodes) * (len(nodes) - 1) / seconds, 1),
            "duplicates_received": dup, "cpu_seconds": cpu}


def bench_signatures(tmp: Path, total: int) -> dict[str, float]:
    """Ed25519 per event, and what verification does to a store's ingest rate."""
    signer = sim_signer("intake-1")
    verifier = EventVerifier({"intake-1": [signer.public_key]})
    now_ms = time.time_ns() // 1_000_000 - total  # a burst that just happened
    plain = [Event(f"intake-1.0000cafe:{i + 1}", f"S{i % 50}", "note", "intake",
                   Timestamp(now_ms + i, 0, "intake-1"), {"text": f"note {i}"}) for i in range(total)]
    t0 = time.perf_counter()
    signed = [signer.sign(e) for e in plain]
    sign_us = (time.perf_counter() - t0) / total * 1e6
    t0 = time.perf_counter()
    assert all(verifier.check(e) is None for e in signed)
    verify_us = (time.perf_counter() - t0) / total * 1e6
    rates = {}
    for label, v in (("without", None), ("with", verifier)):
        with Store.open(tmp / f"ingest-{label}", "laser-1", verifier=v) as store:
            t0 = time.perf_counter()
            for start in range(0, total, 500):  # as MQTT batches arrive
                report = store.ingest([e.to_json() for e in signed[start:start + 500]])
                assert not report.forged
            rates[label] = total / (time.perf_counter() - t0)
    return {"sign_us": round(sign_us, 1), "verify_us": round(verify_us, 1), "events": total,
            "ingest_per_s_without_verify": round(rates["without"]), "ingest_per_s_with_verify": round(rates["with"]),
            "verify_slowdown": round(rates["without"] / rates["with"], 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples and 2,000 events (a smoke run)")
    ap.add_argument("--only", choices=("latency", "converge", "signatures"),
                    help="run one part (latency is raw and handoff together)")
    ap.add_argument("--json", metavar="OUT", help="also write the JSON to this file")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (node logs, ledgers)")
    args = ap.parse_args()
    samples = 200 if args.quick else 1000
    total = 2000 if args.quick else 10_000
    result: dict = {"bench": "sync", "machine": machine(),
                    "mosquitto": subprocess.run(["mosquitto", "-h"], capture_output=True,
                                                text=True).stdout.split("\n")[0]}
    targets: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmpdir:
        tmp = Path(args.keep or tmpdir)
        if args.only in (None, "latency"):
            names = ["intake-1", "laser-1"]
            broker = SimBroker(tmp / "broker", users={n: password_of(n) for n in names}).start()
            try:
                progress("raw paho + mosquitto latency")
                raw = result["raw"] = bench_raw(broker, samples)
                progress("handoff latency node A -> node B")
                handoff = result["handoff"] = bench_handoff(broker, samples // 2, tmp)
            finally:
                broker.kill()
            targets["handoff_p99_over_raw_round_trip_p99"] = round(handoff["p99_ms"] / raw["round_trip_p99_ms"], 2)
            targets["handoff_ok"] = handoff["p99_ms"] <= 10 * raw["round_trip_p99_ms"]
        if args.only in (None, "converge"):
            converge = result["converge"] = bench_converge(total, tmp)
            targets["converge_ok"] = converge["seconds"] <= 5.0 and converge["events"] >= 10_000
        if args.only in (None, "signatures"):
            progress("signature cost")
            result["signatures"] = bench_signatures(tmp, total)
    result["targets"] = targets
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
