"""The cloud of the live view on one machine: the shipped NATS cluster (systemd/cloud/) as real
nats-server processes, and the hub's public bridge (bridge-public.conf) for a SimBroker.

The shipped files are used as they are, rewritten only where this machine differs: every port a
free loopback one, files in a temp dir, no TLS (no certificates here), passwords made up.

    workdir/nats-1/nats-server.conf            nats-1.conf (server name, include)
                  /nats/fabrique-cluster.conf  ports, store dir and routes rewritten, tls dropped
                  /nats/fabrique-users.conf    as shipped (+ an all-seeing account with admin=True)
                  /nats/fabrique-passwords.conf
                  /jetstream/                  the node's store
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.sim.line import CHECKOUT, free_port

SHIPPED = CHECKOUT / "systemd" / "cloud"
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
CLOUD_USERS = ("trailer-demo", "web")  # the accounts of the shipped fabrique-users.conf
ADMIN = "sim-admin"  # SimCloud(admin=True): an account that may read and write everything (tests)


def cloud_password(user: str) -> str:
    """The password a simulated cloud account gets (throwaway: the cluster lives in a temp dir)."""
    return f"pw-{user}-cloud"


def _drop_tls(text: str) -> str:
    """`text` without its `tls { ... }` blocks."""
    out: list[str] = []
    depth = 0
    for line in text.splitlines():
        if depth:
            depth += line.count("{") - line.count("}")
            continue
        if re.match(r"\s*tls\s*\{", line):
            depth = line.count("{") - line.count("}")
            continue
        out.append(line)
    return "\n".join(out) + "\n"


@dataclass
class NatsNode:
    """One nats-server of the simulated cluster."""

    name: str
    dir: Path
    client_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    route_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.dir / "nats.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        """The node answers /healthz with JetStream current (what MQTT needs)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1) as r:
                return json.loads(r.read()).get("status") == "ok"
        except (OSError, ValueError):
            return False

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def closed(self) -> list[dict[str, Any]]:
        """The MQTT connections this node closed lately (/connz?state=closed: client id, reason)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/connz?state=closed&limit=10000",
                                        timeout=2) as r:
                return [{"client": c["mqtt_client"], "reason": c.get("reason", ""), "stop": c.get("stop", "")}
                        for c in json.loads(r.read()).get("connections") or [] if c.get("mqtt_client")]
        except (OSError, ValueError):
            return []

    def routes(self) -> int:
        """How many cluster peers this node is linked to (/routez), 0 if it is down."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/routez", timeout=1) as r:
                return len({route.get("remote_id") for route in json.loads(r.read()).get("routes") or []})
        except (OSError, ValueError):
            return 0

    def mqtt_clients(self) -> list[str]:
        """The client ids of the MQTT clients connected to this node (/connz), [] if it is down."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/connz?limit=10000", timeout=1) as r:
                return [c["mqtt_client"] for c in json.loads(r.read()).get("connections", []) if c.get("mqtt_client")]
        except (OSError, ValueError):
            return []


class SimCloud:
    """The cloud's NATS cluster from systemd/cloud/: `size` nodes (1, or 3 like the shipped
    cluster), each with its MQTT listener on `node.mqtt_port`. A single node runs without the
    cluster block (JetStream alone); replicas fall back to 1. `admin`: one more account, ADMIN,
    that may read and write every topic, for a test that must see what no shipped account may."""

    def __init__(self, workdir: Path, size: int = 3, admin: bool = False):
        if not (SHIPPED / "fabrique-cluster.conf").exists():
            raise FileNotFoundError(f"{SHIPPED / 'fabrique-cluster.conf'} not found: run from a fabrique-edge checkout")
        if size > 3:
            raise ValueError("the shipped cluster has three node files")
        if not Path(NATS_SERVER).exists():
            raise FileNotFoundError(f"{NATS_SERVER} not found: install Debian's nats-server (make test does)")
        self.dir = workdir
        self.admin = admin
        self.nodes = [NatsNode(f"nats-{n}", workdir / f"nats-{n}") for n in range(1, size + 1)]
        for node in self.nodes:
            self._write(node)

    @property
    def mqtt_ports(self) -> list[int]:
        return [n.mqtt_port for n in self.nodes]

    def _write(self, node: NatsNode) -> None:
        conf = node.dir / "nats"
        conf.mkdir(parents=True, exist_ok=True)
        (node.dir / "nats-server.conf").write_text((SHIPPED / f"{node.name}.conf").read_text())
        users = (SHIPPED / "fabrique-users.conf").read_text()
        if self.admin:
            users = users.replace("users = [", "users = [\n    { user: sim-admin, password: $SIM_ADMIN_PASSWORD }", 1)
        (conf / "fabrique-users.conf").write_text(users)
        (conf / "fabrique-passwords.conf").write_text("".join(
            f'{user.upper().replace("-", "_")}_PASSWORD: "{cloud_password(user)}"\n'
            for user in (*CLOUD_USERS, *([ADMIN] if self.admin else []))))  # an unused one is an error
        (conf / "fabrique-cluster.conf").write_text(self._cluster_conf(node))

    def _cluster_conf(self, node: NatsNode) -> str:
        text = _drop_tls((SHIPPED / "fabrique-cluster.conf").read_text())
        if len(self.nodes) == 1:
            text = re.sub(r"(?ms)^cluster \{.*?^\}\n", "", text)
            text = re.sub(r"(?m)^(\s*stream_replicas:).*$", r"\1 1", text)
        routes = "\n".join(f"    nats-route://127.0.0.1:{n.route_port}" for n in self.nodes)
        text = re.sub(r"(?ms)^(\s*routes: \[\n).*?^(\s*\])", lambda m: m.group(1) + routes + "\n" + m.group(2), text)
        block = ""
        out = []
        for line in text.splitlines():
            opened = re.match(r"\s*(\w+)\s*\{", line)
            if opened:
                block = opened.group(1)
            elif line.startswith("}"):
                block = ""
            key = line.split(":", 1)[0].strip()
            port = {("", "listen"): node.client_port, ("", "http"): node.http_port,
                    ("cluster", "listen"): node.route_port, ("mqtt", "listen"): node.mqtt_port}.get((block, key))
            if port:
                line = re.sub(r":\s*\S+$", f": 127.0.0.1:{port}", line)
            elif (block, key) == ("jetstream", "store_dir"):
                line = re.sub(r":\s*\S+$", f": {node.dir / 'jetstream'}", line)
            out.append(line)
        return "\n".join(out) + "\n"

    def start_node(self, index: int) -> NatsNode:
        node = self.nodes[index]
        with open(node.log, "ab") as log:
            node.proc = subprocess.Popen([NATS_SERVER, "-c", str(node.dir / "nats-server.conf")],
                                         stdout=log, stderr=subprocess.STDOUT)
        return node

    def start(self, timeout: float = 30) -> SimCloud:
        """Start every node; return once each answers healthy (JetStream ready for MQTT)."""
        for i in range(len(self.nodes)):
            self.start_node(i)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        pending = [n for n in self.nodes if n.proc is not None]
        while pending and time.monotonic() < deadline:
            for node in pending:
                if not node.running:
                    raise RuntimeError(f"{node.name} exited {node.proc.returncode if node.proc else '?'}: "
                                       f"{node.read_log()[-2000:]}")
            pending = [n for n in pending if not n.healthy()]
            if pending:
                time.sleep(0.1)
        if pending:
            raise RuntimeError(f"not healthy after {timeout:g} s: {', '.join(n.name for n in pending)}: "
                               f"{pending[0].read_log()[-2000:]}")

    def restart_node(self, index: int, timeout: float = 60) -> NatsNode:
        """Start a node that was killed; return once it is linked to every running peer again. (Its
        /healthz may stay unhealthy for long after: a consumer of its former life is not current.)"""
        node = self.start_node(index)
        peers = sum(n.running for n in self.nodes) - 1
        deadline = time.monotonic() + timeout
        while node.routes() < peers:
            if not node.running or time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} did not rejoin the cluster: {node.read_log()[-2000:]}")
            time.sleep(0.1)
        return node

    def kill_node(self, index: int) -> None:
        """kill -9 one node: what a crashed cloud machine does."""
        node = self.nodes[index]
        if node.running and node.proc is not None:
            node.proc.kill()
            node.proc.wait(10)

    def stop(self) -> None:
        for node in self.nodes:
            if node.running and node.proc is not None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(10)

    def __enter__(self) -> SimCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def public_bridge_conf(mqtt_ports: list[int], password: str | None = None, keepalive: int | None = None,
                       restart: str | None = None) -> str:
    """systemd/cloud/bridge-public.conf for a SimBroker's `extra`: its addresses these loopback
    ports, no TLS, the password appended as provisioning does. `keepalive` and `restart`
    (restart_timeout) override the shipped values, for tests that cannot wait 45 s."""
    out = []
    for line in (SHIPPED / "bridge-public.conf").read_text().splitlines():
        key = line.split(" ", 1)[0]
        if key == "address":
            line = "address " + " ".join(f"127.0.0.1:{p}" for p in mqtt_ports)
        elif key in ("bridge_cafile", "bridge_capath", "bridge_insecure"):
            continue
        elif key == "keepalive_interval" and keepalive:
            line = f"keepalive_interval {keepalive}"
        elif key == "restart_timeout" and restart:
            line = f"restart_timeout {restart}"
        out.append(line)
    out.append(f"remote_password {password or cloud_password('trailer-demo')}")
    return "\n".join(out) + "\n"
