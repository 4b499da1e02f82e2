"""Live view at scale: a trailer's public subtree through the cloud to thousands of viewers.

On this machine, as in the cloud (docs/live-view.md#in-the-cloud): the shipped three-node NATS
cluster (systemd/cloud/), the hub's mosquitto with the shipped public bridge, two `edge web`
instances reading the cluster, the line's six nodes publishing their public topics on the hub
(stations and jobs, each update stamped with its send time, `updated_ms`), and N SSE viewers
split over both instances (`/api/events`, raw asyncio sockets, one viewer process per instance).

For N = --viewers, doubling up to --max-viewers within --budget: every viewer must see every
update (N held), and the latency from a node's publish to each viewer, p50/p99; the RSS of an
`edge web` instance per 1000 viewers. Then, at the largest N held, kill -9 the cluster node
carrying the hub's bridge, restart it, and kill -9 the one carrying the first `edge web`
instance: how long until each is back, viewers reconnected, updates missed while the cluster
failed over, and updates lost after it (target 0: each view re-reads the current state).
Every cloud link is TLS as shipped, with certificates of a throwaway CA (edge/sim/cloud.py): the
bridge to the nodes, and each `edge web` through its host's nginx stream (a real nginx on the
shipped nginx-fabrique-mqtt.conf). The viewers open the instances directly: the HTTPS front
(nginx-fabrique-web.conf) and a lost instance are tested in tests/web/test_cloud_front.py.

usage: python bench/live.py [--viewers N] [--max-viewers N] [--duration S] [--rate R]
                            [--budget S] [--failover-viewers N] [--quick] [--json OUT] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from bisect import bisect_right
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

LINE_ID = "demo"
NODES = ("intake-1", "laser-1", "printer-1", "transfer-1", "inspection-1", "pickup-1")
JOBS = tuple(f"bench{a}{b}a" for a in "abcd" for b in "ab")  # 8 public ids (a-z 2-7)
BRIDGE_CLIENT = f"fabrique-public-{LINE_ID}"  # remote_clientid in bridge-public.conf
IN_FLIGHT_S = 3.0  # updates sent this long before a node is killed may be on their way through it
RETRY_S = 3.0  # a browser's EventSource waits this long before reconnecting, unless the stream says `retry:`
REQUEST = b"GET /api/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"


# ---------------------------------------------------------------- viewers (one process per instance)

def entities(view: Any) -> dict[str, int]:
    """Every station and job a view shows, with the time of the update it shows: a node's
    `since_ms` (the bench's nodes stamp it with the send time: what the station card shows) and a
    job's `updated_ms`, wherever the view nests them."""
    found: dict[str, int] = {}
    stack = [view]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("node"), str) and isinstance(item.get("since_ms"), int):
                key, ms = f"node/{item['node']}", item["since_ms"]
                found[key] = max(ms, found.get(key, 0))
            elif isinstance(item.get("id"), str) and "steps" in item and isinstance(item.get("updated_ms"), int):
                key, ms = f"job/{item['id']}", item["updated_ms"]
                found[key] = max(ms, found.get(key, 0))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


class Viewer(asyncio.Protocol):
    """One page holding `/api/events` open; reconnects like EventSource, keeps what it has seen."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self.state: dict[str, int] = {}
        self.counts: Counter[int] = Counter()  # updates first seen, per window
        self.ready = asyncio.get_running_loop().create_future()
        self.reconnects = 0
        self.retry_s = RETRY_S
        self.transport: asyncio.Transport | None = None
        self._reset()

    def _reset(self) -> None:
        self.buf = b""
        self.body = b""
        self.head = True
        self.chunked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._reset()
        transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.head:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end].lower(), self.buf[end + 4:]
            if head[9:12] != b"200":
                self.fleet.http_errors += 1
                if self.transport:
                    self.transport.close()
                return
            self.head, self.chunked = False, b"transfer-encoding: chunked" in head
        if self.chunked:
            while (eol := self.buf.find(b"\r\n")) >= 0:
                size = int(self.buf[:eol].split(b";")[0] or b"0", 16)
                if len(self.buf) < eol + 4 + size:
                    break
                self.body += self.buf[eol + 2:eol + 2 + size]
                self.buf = self.buf[eol + 4 + size:]
        else:
            self.body, self.buf = self.body + self.buf, b""
        body = self.body.replace(b"\r\n", b"\n") if b"\r" in self.body else self.body
        now_ms = time.time() * 1000
        while (end := body.find(b"\n\n")) >= 0:
            block, body = body[:end], body[end + 2:]
            lines = block.split(b"\n")
            data = b"\n".join(line[6:] if line.startswith(b"data: ") else line[5:]
                              for line in lines if line.startswith(b"data:"))
            if lines[0].startswith(b"retry:") and lines[0][6:].strip().isdigit():
                self.retry_s = int(lines[0][6:]) / 1000
            if data:
                self.fleet.seen(self, data, now_ms)
        self.body = body

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.fleet.stopping:
            if self.ready.done():
                self.reconnects += 1
            asyncio.get_running_loop().call_later(self.retry_s * (1 + random.random() / 2), self.fleet.connect, self)


class Fleet:
    """The viewers of one `edge web` instance, driven by commands on stdin (one JSON reply each):
    `grow N`, `mark MS` (a new window: updates stamped from MS on), `wait {key: ms} TIMEOUT`
    (until every viewer shows at least that), `report`, `stop`."""

    def __init__(self, port: int):
        self.port = port
        self.viewers: list[Viewer] = []
        self.marks: list[float] = []
        self.latency: list[Counter[int]] = []  # per window: 0.1 ms bins
        self.cache: dict[bytes, dict[str, int]] = {}
        self.http_errors = 0
        self.connect_errors = 0
        self.stopping = False

    def seen(self, viewer: Viewer, data: bytes, now_ms: float) -> None:
        found = self.cache.get(data)
        if found is None:
            try:
                found = entities(json.loads(data))
            except ValueError:
                found = {}
            if len(self.cache) > 256:
                self.cache.clear()
            self.cache[data] = found
        for key, ms in found.items():
            if ms > viewer.state.get(key, 0):
                viewer.state[key] = ms
                window = bisect_right(self.marks, ms) - 1
                if window >= 0:
                    viewer.counts[window] += 1
                    self.latency[window][round((now_ms - ms) * 10)] += 1
        if not viewer.ready.done():
            viewer.ready.set_result(True)

    def connect(self, viewer: Viewer) -> None:
        if self.stopping:
            return

        async def attempt() -> None:
            try:
                await asyncio.get_running_loop().create_connection(lambda: viewer, "127.0.0.1", self.port)
            except OSError:
                self.connect_errors += 1
                asyncio.get_running_loop().call_later(RETRY_S + random.random(), self.connect, viewer)

        asyncio.ensure_future(attempt())

    async def grow(self, count: int, timeout: float) -> dict[str, Any]:
        start = time.monotonic()
        new = [Viewer(self) for _ in range(count - len(self.viewers))]
        self.viewers += new
        for i in range(0, len(new), 200):  # a crowd arriving, not one SYN flood
            for viewer in new[i:i + 200]:
                self.connect(viewer)
            await asyncio.wait([v.ready for v in new[i:i + 200]], timeout=max(1.0, timeout - (time.monotonic() - start)))
        ready = sum(v.ready.done() for v in self.viewers)
        return {"viewers": len(self.viewers), "ready": ready, "seconds": round(time.monotonic() - start, 2)}

    async def wait(self, final: dict[str, int], timeout: float) -> dict[str, Any]:
        start = time.monotonic()

        def behind() -> int:
            return sum(any(v.state.get(k, 0) < ms for k, ms in final.items()) for v in self.viewers)

        while behind() and time.monotonic() - start < timeout:
            await asyncio.sleep(0.1)
        return {"behind": behind(), "seconds": round(time.monotonic() - start, 2)}

    def report(self) -> dict[str, Any]:
        return {"windows": [{"counts": dict(Counter(v.counts[w] for v in self.viewers)),
                             "latency": dict(self.latency[w])} for w in range(len(self.marks))],
                "viewers": len(self.viewers), "connected": sum(v.transport is not None for v in self.viewers),
                "reconnected": sum(v.reconnects > 0 for v in self.viewers),
                "reconnects": sum(v.reconnects for v in self.viewers),
                "http_errors": self.http_errors, "connect_errors": self.connect_errors}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**24)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            cmd, _, arg = line.decode().strip().partition(" ")
            if cmd == "grow":
                count, timeout = arg.split()
                reply = await self.grow(int(count), float(timeout))
            elif cmd == "mark":
                self.marks.append(float(arg))
                self.latency.append(Counter())
                reply = {"windows": len(self.marks)}
            elif cmd == "wait":
                final, timeout = arg.rsplit(" ", 1)
                reply = await self.wait(json.loads(final), float(timeout))
            elif cmd == "report":
                reply = self.report()
            else:
                break
            print(json.dumps(reply), flush=True)
        self.stopping = True
        for viewer in self.viewers:
            if viewer.transport:
                viewer.transport.abort()


def fleet_main(port: int) -> None:
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(Fleet(port).run())


class FleetProcess:
    """A viewer process, seen from the bench."""

    def __init__(self, port: int, log: Path):
        with open(log, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, __file__, "--fleet", str(port)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")

    def reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a viewer process died (exit {self.proc.wait()})")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.send("stop")
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def ask(fleets: list[FleetProcess], command: str) -> list[dict[str, Any]]:
    """Send `command` to every viewer process at once; their replies."""
    for fleet in fleets:
        fleet.send(command)
    return [fleet.reply() for fleet in fleets]


# ---------------------------------------------------------------- the line and the cloud

class LineNodes:
    """The line's six nodes on the hub, publishing their public topics: a station's face, or a
    job one of them moved, round-robin at `rate` updates a second. Each is stamped `updated_ms`
    with its send time, strictly rising per topic."""

    def __init__(self, port: int, rate: float):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from edge.sim.line import password_of
        from edge.topics import PUBLIC_JOB, PUBLIC_NODE

        self.rate = rate
        self.templates = {"node": PUBLIC_NODE.example, "job": PUBLIC_JOB.example}
        self.clients = {}
        for node in NODES:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=node, protocol=mqtt.MQTTv5)
            client.username_pw_set(node, password_of(node))
            client.connect("127.0.0.1", port)
            client.loop_start()
            self.clients[node] = client
        self.uplink: list[tuple[float, bytes]] = []  # the hub's bridge notification, as the hub sees it
        watcher = self.clients[NODES[0]]
        watcher.on_message = lambda _c, _u, msg: self.uplink.append((time.time(), msg.payload))
        watcher.subscribe(f"fabrique/{LINE_ID}/public/uplink", qos=1)
        self.keys = [f"node/{n}" for n in NODES] + [f"job/{j}" for j in JOBS]
        self.last: dict[str, int] = {}
        self.published: list[tuple[str, int]] = []
        self.turn = 0

    def payload(self, key: str, ms: int) -> bytes:
        kind, name = key.split("/")
        doc = dict(self.templates[kind], updated_ms=ms)
        if kind == "node":
            doc.update(node=name, kind=name.split("-")[0], title=name.split("-")[0].title(), job=None,
                       progress=(ms // 1000) % 101, since_ms=ms)
        else:
            doc.update(id=name, created_ms=ms - 60_000, name="A.")
        return json.dumps(doc, separators=(",", ":")).encode()

    def publish(self, key: str) -> None:
        ms = max(int(time.time() * 1000), self.last.get(key, 0) + 1)
        self.last[key] = ms
        node = key.split("/")[1] if key.startswith("node/") else NODES[hash(key) % len(NODES)]
        self.clients[node].publish(f"fabrique/{LINE_ID}/public/{key}", self.payload(key, ms), qos=1, retain=True)
        self.published.append((key, ms))

    def run(self, seconds: float = float("inf"), count: int | None = None, until: Any = None) -> None:
        """Publish for `seconds`, or `count` updates, or until `until()` is true: one update every
        1/rate s, the topics in turn."""
        start = time.monotonic()
        tick = 0
        while time.monotonic() - start < seconds and tick != count and not (until and until()):
            self.publish(self.keys[self.turn % len(self.keys)])
            self.turn += 1
            tick += 1
            time.sleep(max(0.0, start + tick / self.rate - time.monotonic()))

    def round(self) -> dict[str, int]:
        """Every topic once more, in turn at the same rate (no topic changes twice in a round);
        what each viewer must end up showing."""
        self.run(count=len(self.keys))
        return dict(self.last)

    def count_since(self, start_ms: float, end_ms: float = float("inf")) -> int:
        return sum(start_ms <= ms < end_ms for _k, ms in self.published)

    def close(self) -> None:
        for client in self.clients.values():
            client.disconnect()
            client.loop_stop()


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, MB."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def cpu_s(pid: int) -> float:
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


def _children(pid: int) -> list[int]:
    try:
        kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


def hist_pct(hist: Counter[int], p: float) -> float | None:
    """The `p`th percentile (nearest rank) of 0.1 ms bins, in ms."""
    total = sum(hist.values())
    if not total:
        return None
    rank, seen = max(1, -(-total * p // 100)), 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return round(value / 10, 1)
    return None


def latency(hist: Counter[int]) -> dict[str, Any]:
    return {"p50": hist_pct(hist, 50), "p99": hist_pct(hist, 99), "max": hist_pct(hist, 100),
            "samples": sum(hist.values())}


def raise_nofile(wanted: int) -> int:
    """Raise this process's open files limit (inherited by everything it starts); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, nr_open), min(wanted, nr_open)))
            return min(wanted, nr_open)
        except (OSError, ValueError):
            pass  # not root: the hard limit it is
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard if hard != resource.RLIM_INFINITY else wanted


# ---------------------------------------------------------------- the bench

class Bench:
    """Everything but the viewers, started in `tmp`: the cluster, the hub and its nodes, two
    `edge web` instances. `close` stops what started, also when starting failed half-way."""

    def __init__(self, tmp: Path, args: argparse.Namespace):
        self.tmp, self.args = tmp, args
        self.cloud: Any = None
        self.hub: Any = None
        self.front: Any = None
        self.nodes: LineNodes | None = None
        self.webs: list[subprocess.Popen[bytes]] = []
        self.fleets: list[FleetProcess] = []
        try:
            self._start(tmp, args)
        except BaseException:
            self.close()
            raise

    def _start(self, tmp: Path, args: argparse.Namespace) -> None:
        from edge.sim.cloud import SimCloud, SimFront, cloud_password, public_bridge_conf
        from edge.sim.line import SimBroker, free_port, password_of

        tmp.mkdir(parents=True, exist_ok=True)
        self.cloud = SimCloud(tmp / "cloud", size=3, tls=True)
        self.cloud.start()
        ports = self.cloud.mqtt_ports
        self.hub = SimBroker(tmp / "hub", users={n: password_of(n) for n in NODES},
                             extra=public_bridge_conf(ports, cafile=self.cloud.ca)).start()
        self.nodes = LineNodes(self.hub.port, args.rate)
        # each instance's host has its nginx stream to the cluster: where a link lands is nginx's
        # round robin (the bridge starts on nats-1, the first of its addresses)
        self.front = SimFront(tmp / "front", self.cloud, hosts=2).start()
        listen = self.front.mqtt_ports
        self.web_mqtt = {"edge web A": listen[0], "edge web B": listen[1]}
        password = tmp / "web.password"
        password.write_text(cloud_password("web") + "\n")
        self.web_ports = [free_port(), free_port()]
        for i, (mqtt_port, http_port) in enumerate(zip(listen, self.web_ports, strict=True)):
            with open(tmp / f"web-{i}.log", "ab") as log:
                self.webs.append(subprocess.Popen(
                    [sys.executable, "-m", "edge", "web", "--line", str(ROOT / "examples" / "line" / "line.toml"),
                     "--broker", f"127.0.0.1:{mqtt_port}", "--user", "web", "--password-file", str(password),
                     "--listen", f"127.0.0.1:{http_port}", "--line-id", LINE_ID, "--cloud"],
                    cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        self._wait_webs()

    def _wait_webs(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        for i, port in enumerate(self.web_ports):
            while True:
                if self.webs[i].poll() is not None:
                    raise SystemExit(f"edge web exited {self.webs[i].returncode}: "
                                     f"{(self.tmp / f'web-{i}.log').read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"edge web on {port} did not answer /healthz in {timeout:g} s") from None
                    time.sleep(0.2)

    def ready(self) -> list[float]:
        """Viewer processes started, one viewer per instance seeing the whole line from the cloud;
        the instances' idle RSS (MB)."""
        self.start_fleets()
        self.nodes.round()
        base = self.grow(2)
        if base["ready"] < 2 or self.settle(30)["behind"]:
            raise SystemExit(f"edge web never showed the line from the cloud: see {self.tmp}/web-*.log")
        return [rss_mb(w.pid) for w in self.webs]

    def start_fleets(self) -> None:
        self.stop_fleets()
        self.fleets = [FleetProcess(port, self.tmp / "viewers.log") for port in self.web_ports]

    def stop_fleets(self) -> None:
        for fleet in self.fleets:
            fleet.stop()
        self.fleets = []

    def grow(self, total: int) -> dict[str, Any]:
        timeout = 30 + total / 200
        replies = ask(self.fleets, f"grow {total // 2} {timeout}")
        return {"ready": sum(r["ready"] for r in replies), "connect_s": max(r["seconds"] for r in replies)}

    def mark(self) -> float:
        ms = time.time() * 1000
        ask(self.fleets, f"mark {ms}")
        return ms

    def settle(self, timeout: float) -> dict[str, Any]:
        """The last round of every topic; wait until every viewer shows it."""
        final = self.nodes.round()
        replies = ask(self.fleets, f"wait {json.dumps(final)} {timeout}")
        return {"behind": sum(r["behind"] for r in replies), "seconds": max(r["seconds"] for r in replies),
                "behind_per_instance": [r["behind"] for r in replies]}

    def window(self, reports: list[dict[str, Any]], w: int, published: int) -> dict[str, Any]:
        counts: Counter[int] = Counter()
        hist: Counter[int] = Counter()
        for r in reports:
            counts.update({int(k): v for k, v in r["windows"][w]["counts"].items()})
            hist.update({int(k): v for k, v in r["windows"][w]["latency"].items()})
        return {"updates": published, "viewers_missing_some": sum(v for c, v in counts.items() if c < published),
                "updates_missed": sum((published - c) * v for c, v in counts.items() if c < published),
                "latency_ms": latency(hist)}

    def step(self, total: int) -> dict[str, Any]:
        drops = self.web_drops()
        grown = self.grow(total)
        cpu0, t0 = [cpu_s(w.pid) for w in self.webs], time.monotonic()
        fleet0 = sum(cpu_s(f.proc.pid) for f in self.fleets)
        start = self.mark()
        self.nodes.run(self.args.duration)
        settled = self.settle(15)
        end_ms = time.time() * 1000
        reports = ask(self.fleets, "report")
        window = self.window(reports, len(reports[0]["windows"]) - 1, self.nodes.count_since(start, end_ms))
        elapsed = time.monotonic() - t0
        held = (grown["ready"] == total and window["viewers_missing_some"] == 0 and settled["behind"] == 0
                and sum(r["reconnects"] for r in reports) == 0)
        dropped = self.web_drops() - drops
        return {"viewers": total, "held": held, **grown, **window, "behind_at_end": settled["behind"],
                "web_links_dropped_by_the_cluster": dict(dropped),
                "reconnects": sum(r["reconnects"] for r in reports),
                "web_rss_mb": [rss_mb(w.pid) for w in self.webs],
                "web_cpu_percent": [round(100 * (cpu_s(w.pid) - c) / elapsed) for w, c in zip(self.webs, cpu0, strict=True)],
                "viewer_processes_cpu_percent": round(100 * (sum(cpu_s(f.proc.pid) for f in self.fleets) - fleet0) / elapsed)}

    def lose_node(self, carrying: str) -> dict[str, Any]:
        """kill -9 the cluster node carrying `carrying` ("the hub's bridge" or "edge web A"), go on
        publishing until everything is back, then restart it. What the viewers saw, per window of
        send times: before, while failing over (from IN_FLIGHT_S before the kill until the bridge
        and the web instances are back, plus 1 s), after."""
        before = self.mark()
        self.nodes.run(5)
        where = {"the hub's bridge": next((i for i, n in enumerate(self.cloud.nodes)
                                          if BRIDGE_CLIENT in n.mqtt_clients()), None)}
        for host, name in enumerate(self.web_mqtt):
            where[name] = self.front.node_of(host)
        victim = where[carrying]
        if victim is None:
            raise SystemExit(f"{carrying} is on no cluster node: see {self.tmp}")
        carried = [name for name, i in where.items() if i == victim]
        node = self.cloud.nodes[victim]
        failing = self.mark()
        self.nodes.run(IN_FLIGHT_S)  # what is on its way when the node dies counts as lost with it
        self.cloud.kill_node(victim)
        killed = time.time() * 1000
        back: dict[str, float] = {}

        def recovered() -> bool:
            for name in carried:
                if name not in back and self._back(name, killed):
                    back[name] = time.time()
            return len(back) == len(carried)

        self.nodes.run(90, until=recovered)
        time.sleep(1)  # what was in flight at that moment
        after = self.mark()
        self.nodes.run(max(10.0, self.args.duration / 2))
        settled = self.settle(30)
        end_ms = time.time() * 1000
        reports = ask(self.fleets, "report")
        w = len(reports[0]["windows"])
        self.cloud.restart_node(victim)
        return {
            "killed": node.name, "it_carried": carried,
            "back_after_s": {name: round(back[name] - killed / 1000, 2) if name in back else None for name in carried},
            "viewers": sum(r["viewers"] for r in reports),
            "viewers_reconnected": sum(r["reconnected"] for r in reports),
            "viewers_connected_at_end": sum(r["connected"] for r in reports),
            "before": self.window(reports, w - 3, self.nodes.count_since(before, failing)),
            "while_failing_over": self.window(reports, w - 2, self.nodes.count_since(failing, after)),
            "after_reconnect": self.window(reports, w - 1, self.nodes.count_since(after, end_ms)),
            "viewers_behind_at_end": settled["behind"],
            "viewers_behind_at_end_per_instance": dict(zip(self.web_mqtt, settled["behind_per_instance"], strict=True)),
            "web_links_at_end": {name: self._link(name) for name in self.web_mqtt},
        }

    def web_drops(self) -> Counter[str]:
        """Why the cluster closed `edge web` links so far (NATS's reasons), counted."""
        return Counter(c["reason"] for n in self.cloud.nodes if n.running for c in n.closed()
                       if c["client"].startswith("web-"))

    def _link(self, name: str) -> dict[str, Any]:
        """An `edge web` instance's broker link, from its /healthz."""
        port = self.web_ports[list(self.web_mqtt).index(name)]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                health = json.loads(r.read())
            return {**health["broker"], "trailer": health.get("trailer")}
        except (OSError, ValueError, KeyError):
            return {}

    def _back(self, name: str, since_ms: float) -> bool:
        """The bridge connected again (the hub's own notification) or an `edge web` instance's
        link is up again (its /healthz), after `since_ms`."""
        if name == "the hub's bridge":
            return any(t * 1000 > since_ms and payload == b"1" for t, payload in self.nodes.uplink)
        link = self._link(name)
        return bool(link.get("up")) and link.get("since_ms", 0) > since_ms

    def close(self) -> None:
        self.stop_fleets()
        for web in self.webs:
            web.terminate()
        for web in self.webs:
            try:
                web.wait(10)
            except subprocess.TimeoutExpired:
                web.kill()
        if self.nodes is not None:
            self.nodes.close()
        if self.hub is not None:
            self.hub.stop()
        if self.front is not None:
            self.front.stop()
        if self.cloud is not None:
            self.cloud.stop()


def missing_programs() -> list[str]:
    from edge.sim.cloud import NATS_SERVER, NGINX, NGINX_STREAM
    from edge.sim.line import MOSQUITTO

    missing = [f"{name} (Debian package {pkg})" for name, path, pkg in (
        ("nats-server", NATS_SERVER, "nats-server"), ("mosquitto", MOSQUITTO, "mosquitto"),
        ("nginx", NGINX, "nginx"), ("nginx's stream module", str(NGINX_STREAM), "libnginx-mod-stream"),
        ("mosquitto_passwd", shutil.which("mosquitto_passwd") or "", "mosquitto")) if not Path(path).exists()]
    if not (ROOT / "edge" / "commands" / "web.py").exists():
        missing.append("`edge web` (edge/commands/web.py in this checkout)")
    return missing


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--viewers", type=int, default=2000, help="viewers of the first step (default 2000)")
    ap.add_argument("--max-viewers", type=int, default=32000, help="stop doubling there (default 32000)")
    ap.add_argument("--duration", type=float, default=30, help="seconds of updates per step (default 30)")
    ap.add_argument("--rate", type=float, default=2, help="updates a second from the line (default 2)")
    ap.add_argument("--budget", type=float, default=900, help="no new step after this many seconds (default 900)")
    ap.add_argument("--failover-viewers", type=int, metavar="N",
                    help="viewers while a cluster node is lost (default: the largest N held)")
    ap.add_argument("--quick", action="store_true", help="a smoke test: 200 then 400 viewers, short steps")
    ap.add_argument("--json", metavar="OUT", help="also write the JSON to this file")
    ap.add_argument("--keep", metavar="DIR", help="run in DIR and keep its logs (default: a temp dir, removed)")
    ap.add_argument("--fleet", type=int, metavar="PORT", help=argparse.SUPPRESS)  # a viewer process
    args = ap.parse_args()
    if args.fleet:
        fleet_main(args.fleet)
        return 0
    if args.quick:
        args.viewers, args.max_viewers, args.duration = 200, 400, 8
    if missing := missing_programs():
        print(f"bench/live.py needs {', '.join(missing)}: `make bench` installs the Debian packages",
              file=sys.stderr)
        return 2
    from bench.report import emit, machine

    nofile = raise_nofile(args.max_viewers // 2 + 1024)
    started = time.monotonic()
    result: dict[str, Any] = {
        "bench": "live", "machine": machine(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "setup": {"cluster": f"NATS {_nats_version()}, 3 nodes, JetStream R3, MQTT 3.1.1 gateway",
                  "hub": "mosquitto with systemd/cloud/bridge-public.conf (QoS 1, out only, TLS)",
                  "web_links": "edge web -> nginx stream (nginx-fabrique-mqtt.conf) -> TLS to the cluster",
                  "web_instances": 2, "viewers": "SSE /api/events, raw asyncio sockets, one process per instance",
                  "line": {"stations": len(NODES), "jobs": len(JOBS)}, "updates_per_s": args.rate,
                  "seconds_per_step": args.duration, "open_files_limit": nofile},
    }
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        if args.keep:
            tmp = args.keep
            Path(tmp).mkdir(parents=True, exist_ok=True)
        bench = Bench(Path(tmp) / "steps", args)
        try:
            baseline = bench.ready()
            steps: list[dict[str, Any]] = []
            total = args.viewers
            stop = "reached --max-viewers"
            while total <= args.max_viewers:
                if total // 2 + 1024 > nofile:  # each instance, and each viewer process, holds half
                    stop = f"open files limit {nofile}"
                    break
                if steps and time.monotonic() - started + 2 * (time.monotonic() - started) / len(steps) > args.budget:
                    stop = f"time budget {args.budget:g} s"
                    break
                steps.append(bench.step(total))
                print(json.dumps(steps[-1]), file=sys.stderr)
                if not steps[-1]["held"]:
                    stop = f"{total} viewers not held"
                    break
                total *= 2
            held = [s for s in steps if s["held"]]
            largest = held[-1] if held else None
            result["steps"] = steps
            result["stopped_because"] = stop
            result["largest_viewers_held"] = largest["viewers"] if largest else 0
            result["latency_ms_at_largest"] = largest["latency_ms"] if largest else None
            if largest:
                per_instance = largest["viewers"] / 2 / 1000
                result["memory"] = {
                    "web_rss_mb_idle": baseline, "web_rss_mb_at_largest": largest["web_rss_mb"],
                    "web_rss_mb_per_1000_viewers": round(sum(r - b for r, b in zip(largest["web_rss_mb"], baseline,
                                                                                     strict=True)) / 2 / per_instance, 1)}
                failover = args.failover_viewers or largest["viewers"]
                if steps[-1] is not largest or failover != largest["viewers"]:
                    bench.close()  # a fresh line and cloud, not one an overload left behind
                    bench = Bench(Path(tmp) / "failover", args)
                    bench.ready()
                    bench.grow(failover)
                result["cluster_node_lost"] = [bench.lose_node("the hub's bridge"), bench.lose_node("edge web A")]
        finally:
            bench.close()
    result["seconds"] = round(time.monotonic() - started)
    emit(result, args.json)
    return 0 if result["largest_viewers_held"] else 1


def _nats_version() -> str:
    from edge.sim.cloud import NATS_SERVER

    out = subprocess.run([NATS_SERVER, "--version"], capture_output=True, text=True).stdout
    return out.strip().rsplit(" ", 1)[-1].lstrip("v")


if __name__ == "__main__":
    sys.exit(main())
