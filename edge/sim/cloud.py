"""The cloud of the live view on one machine: the shipped NATS cluster (systemd/cloud/) as real
nats-server processes, the hub's public bridge (bridge-public.conf) for a SimBroker, and the
shipped nginx files (nginx-fabrique-mqtt.conf, nginx-fabrique-web.conf) in a real nginx.

The shipped files are used as they are, rewritten only where this machine differs: every port a
free loopback one, host names 127.0.0.1, files in the work dir, passwords made up, and the
certificates those of a throwaway CA made here (SimCloud(tls=True); without it the `tls {}`
blocks are dropped, for a test that speaks plain MQTT to a node).

    workdir/tls/ca.crt                         the throwaway CA (its key is never written)
               /live.crt, live.key             the front's HTTPS certificate (127.0.0.1)
    workdir/nats-1/nats-server.conf            nats-1.conf (server name, include)
                  /nats/fabrique-cluster.conf  ports, store dir, routes and tls paths rewritten
                  /nats/fabrique-users.conf    as shipped (+ an all-seeing account with admin=True)
                  /nats/fabrique-passwords.conf
                  /nats/tls/node.crt, node.key, cluster-ca.crt   the route's mutual TLS
                  /nats/tls/mqtt.crt, mqtt.key  MQTT: mqtt.cloud.example.invalid, nats-1, 127.0.0.1
                  /jetstream/                  the node's store
    frontdir/nginx.conf                        SimFront: a main nginx.conf as Debian's, around
            /fabrique-mqtt.conf                the stream block, one server per `edge web` host
            /fabrique-web.conf                 the HTTPS front over the `edge web` instances
            /error.log, access.log, nginx.pid, temp/
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import pwd
import re
import resource
import shutil
import signal
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
MQTT_NAME = "mqtt.cloud.example.invalid"  # nginx-fabrique-mqtt.conf's proxy_ssl_name: every node's MQTT cert
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_STREAM = Path("/usr/lib/nginx/modules/ngx_stream_module.so")  # Debian's libnginx-mod-stream


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


class SimCA:
    """A throwaway certificate authority and the certificates it signs (EC P-256, 30 days)."""

    def __init__(self, dir: Path):
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.dir = dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fabrique-edge sim cloud CA (throwaway)")])
        usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                              key_encipherment=False, data_encipherment=False, key_agreement=False,
                              encipher_only=False, decipher_only=False)
        self.cert = self._sign(self.name, self.key.public_key(), [
            (x509.BasicConstraints(ca=True, path_length=0), True), (usage, True)])
        self.path = self.dir / "ca.crt"
        self.path.write_bytes(self._pem(self.cert))

    def _sign(self, subject: Any, public_key: Any, extensions: list[tuple[Any, bool]]) -> Any:
        """A certificate for `subject` and `public_key`, signed by this CA, valid from yesterday
        for 30 days; `extensions`: (extension, critical)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name).public_key(public_key)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30)))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(self.key, hashes.SHA256())

    @staticmethod
    def _pem(cert: Any) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, crt: Path, key: Path, names: list[str], client: bool = False) -> None:
        """A certificate for `names` (host names and IP addresses) at `crt` and its key at `key`
        (0600); `client`: it may also authenticate as a client (a route's mutual TLS)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        private = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        usage = [ExtendedKeyUsageOID.SERVER_AUTH, *([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])]
        cert = self._sign(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]), private.public_key(), [
            (x509.SubjectAlternativeName(sans), False), (x509.ExtendedKeyUsage(usage), False),
            (x509.BasicConstraints(ca=False, path_length=None), True)])
        crt.parent.mkdir(parents=True, exist_ok=True)
        crt.write_bytes(self._pem(cert))
        key.touch(mode=0o600)
        key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))


def _wait_or_kill(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Wait for a process asked to stop; kill -9 it if it has not within `timeout` s."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


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

    def mqtt_connections(self) -> list[dict[str, Any]]:
        """The MQTT clients connected to this node (/connz): client id, the address they come
        from, their TLS version ("" in plain MQTT); [] if it is down."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/connz?limit=10000", timeout=1) as r:
                return [{"client": c["mqtt_client"], "ip": c.get("ip", ""), "tls": c.get("tls_version", "")}
                        for c in json.loads(r.read()).get("connections") or [] if c.get("mqtt_client")]
        except (OSError, ValueError):
            return []

    def mqtt_clients(self) -> list[str]:
        """The client ids of the MQTT clients connected to this node (/connz), [] if it is down."""
        return [c["client"] for c in self.mqtt_connections()]


class SimCloud:
    """The cloud's NATS cluster from systemd/cloud/: `size` nodes (1, or 3 like the shipped
    cluster), each with its MQTT listener on `node.mqtt_port`. A single node runs without the
    cluster block (JetStream alone); replicas fall back to 1. `admin`: one more account, ADMIN,
    that may read and write every topic, for a test that must see what no shipped account may.

    `tls`: the shipped TLS, with certificates from a throwaway CA (`ca`, the file a client
    trusts): mutual TLS on the routes, TLS on the MQTT listeners (NATS has one MQTT listener, so
    every MQTT client of a node speaks TLS: the bridge, SimFront's stream, a test's client with
    `tls_set(ca_certs=cloud.ca)`), and `front_cert`/`front_key` for SimFront's HTTPS. Without
    it the `tls {}` blocks are dropped (a test speaking plain MQTT to a node)."""

    def __init__(self, workdir: Path, size: int = 3, admin: bool = False, tls: bool = False):
        if not (SHIPPED / "fabrique-cluster.conf").exists():
            raise FileNotFoundError(f"{SHIPPED / 'fabrique-cluster.conf'} not found: run from a fabrique-edge checkout")
        if size > 3:
            raise ValueError("the shipped cluster has three node files")
        if not Path(NATS_SERVER).exists():
            raise FileNotFoundError(f"{NATS_SERVER} not found: install Debian's nats-server (make test does)")
        self.dir = workdir
        self.admin = admin
        self.tls = tls
        self.nodes = [NatsNode(f"nats-{n}", workdir / f"nats-{n}") for n in range(1, size + 1)]
        self.authority = SimCA(workdir / "tls") if tls else None
        for node in self.nodes:
            self._write(node)
        if self.authority:
            self.authority.issue(self.front_cert, self.front_key, ["live.example.invalid", "127.0.0.1", "localhost"])

    @property
    def ca(self) -> Path:
        """The CA certificate every TLS client of this cloud trusts (SimCloud(tls=True))."""
        if self.authority is None:
            raise RuntimeError("this SimCloud has no TLS: SimCloud(..., tls=True)")
        return self.authority.path

    @property
    def front_cert(self) -> Path:
        return self.dir / "tls" / "live.crt"

    @property
    def front_key(self) -> Path:
        return self.dir / "tls" / "live.key"

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
        if self.authority:
            tls = conf / "tls"
            self.authority.issue(tls / "node.crt", tls / "node.key", [node.name, "127.0.0.1"], client=True)
            shutil.copy(self.authority.path, tls / "cluster-ca.crt")
            self.authority.issue(tls / "mqtt.crt", tls / "mqtt.key",
                                 [MQTT_NAME, node.name, f"{node.name}.cloud.example.invalid", "127.0.0.1"])

    def _cluster_conf(self, node: NatsNode) -> str:
        text = (SHIPPED / "fabrique-cluster.conf").read_text()
        text = text.replace("/etc/nats/tls/", f"{node.dir / 'nats' / 'tls'}/") if self.tls else _drop_tls(text)
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
                _wait_or_kill(node.proc)

    def __enter__(self) -> SimCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def public_bridge_conf(mqtt_ports: list[int], password: str | None = None, keepalive: int | None = None,
                       restart: str | None = None, cafile: Path | None = None) -> str:
    """systemd/cloud/bridge-public.conf for a SimBroker's `extra`: its addresses these loopback
    ports, the password appended as provisioning does. `cafile` (SimCloud.ca): TLS as shipped,
    trusting that CA (the nodes' MQTT certificates name 127.0.0.1, so mosquitto's host name
    check holds); without it, no TLS. `keepalive` and `restart` (restart_timeout) override the
    shipped values, for tests that cannot wait 45 s."""
    out = []
    for line in (SHIPPED / "bridge-public.conf").read_text().splitlines():
        key = line.split(" ", 1)[0]
        if key == "address":
            line = "address " + " ".join(f"127.0.0.1:{p}" for p in mqtt_ports)
        elif key == "bridge_cafile" and cafile:
            line = f"bridge_cafile {cafile}"
        elif key in ("bridge_cafile", "bridge_capath", "bridge_insecure") and not cafile:
            continue
        elif key == "keepalive_interval" and keepalive:
            line = f"keepalive_interval {keepalive}"
        elif key == "restart_timeout" and restart:
            line = f"restart_timeout {restart}"
        out.append(line)
    out.append(f"remote_password {password or cloud_password('trailer-demo')}")
    return "\n".join(out) + "\n"


def _block(text: str, name: str) -> str:
    """The inside of the top-level `name { ... }` block of an nginx file (comments kept)."""
    opened = re.search(rf"(?m)^{name}\s*\{{\n", text)
    if not opened:
        raise ValueError(f"no `{name} {{` block")
    depth, at = 1, opened.end()
    for i in range(at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if not depth:
            return text[at:i]
    raise ValueError(f"`{name} {{` is not closed")


class SimFront:
    """The cloud's nginx on this machine, a real /usr/sbin/nginx run as this user from a main
    nginx.conf as Debian's, around the two shipped files:

    - nginx-fabrique-mqtt.conf (`stream`), once per `edge web` host: plain MQTT on
      `mqtt_ports[host]` (give `edge web --broker 127.0.0.1:PORT`), TLS to the cluster's nodes,
      verified against the sim CA under the shipped `proxy_ssl_name`. Each host's copy has its
      own upstream (each host runs its own nginx) and leaves from its own address, 127.0.0.1x
      (`proxy_bind`): `node_of(host)` finds the node a host's stream is on in the nodes' /connz.
    - nginx-fabrique-web.conf (`http`): HTTPS on `https_port` with the sim's front certificate,
      `least_conn` over `web_ports` (`set_web` changes them and reloads).

    `workers`: worker_processes (1: least_conn counts every stream in one place, as the tests
    need; "auto" as Debian's). The connection limits are those the shipped web file's comment
    asks of nginx.conf, as far as this user may raise them."""

    def __init__(self, workdir: Path, cloud: SimCloud, hosts: int = 1, web_ports: list[int] | tuple[int, ...] = (),
                 workers: int | str = 1):
        if not Path(NGINX).exists():
            raise FileNotFoundError(f"{NGINX} not found: install Debian's nginx and libnginx-mod-stream (make test does)")
        if not NGINX_STREAM.exists():
            raise FileNotFoundError(f"{NGINX_STREAM} not found: install Debian's libnginx-mod-stream (make test does)")
        if not cloud.tls:
            raise ValueError("the shipped nginx files speak TLS to the cluster: SimCloud(..., tls=True)")
        self.dir = workdir
        self.cloud = cloud
        self.workers = workers
        self.mqtt_ports = [free_port() for _ in range(hosts)]
        self.https_port = free_port()
        self.web_ports = list(web_ports)
        self.conf = self.dir / "nginx.conf"
        self.log = self.dir / "error.log"
        self.proc: subprocess.Popen[bytes] | None = None
        for temp in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.dir / "temp" / temp).mkdir(parents=True, exist_ok=True)
        self._write()

    @property
    def url(self) -> str:
        """The front as a viewer opens it (trust `cloud.ca`)."""
        return f"https://127.0.0.1:{self.https_port}"

    @staticmethod
    def host_address(host: int) -> str:
        """The address `host`'s stream leaves from, as the cluster sees it."""
        return f"127.0.0.{11 + host}"

    def _write(self) -> None:
        (self.dir / "fabrique-mqtt.conf").write_text(self._stream_conf())
        web = self.dir / "fabrique-web.conf"
        if self.web_ports:
            web.write_text(self._web_conf())
        else:
            web.write_text("# no edge web instance yet (SimFront.set_web)\n")
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        files = 131072 if hard == resource.RLIM_INFINITY else min(131072, hard)  # a container may cap root too
        self.conf.write_text(f"""# SimFront (edge/sim/cloud.py): Debian's nginx.conf, cut to what the shipped files need
load_module {NGINX_STREAM};
{user}worker_processes {self.workers};
daemon off;
pid {self.dir / 'nginx.pid'};
error_log {self.log} notice;
# nginx-fabrique-web.conf: "worker_rlimit_nofile 131072; events {{ worker_connections 65536; }}"
worker_rlimit_nofile {files};
events {{
    worker_connections {min(65536, files // 2)};
}}

http {{
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    default_type application/octet-stream;
    access_log {self.dir / 'access.log'};
    client_body_temp_path {self.dir / 'temp' / 'body'};
    proxy_temp_path {self.dir / 'temp' / 'proxy'};
    fastcgi_temp_path {self.dir / 'temp' / 'fastcgi'};
    uwsgi_temp_path {self.dir / 'temp' / 'uwsgi'};
    scgi_temp_path {self.dir / 'temp' / 'scgi'};
    gzip on;
    # /etc/nginx/conf.d/fabrique-web.conf
    include {web};
}}

# /etc/nginx/fabrique-mqtt.conf, "outside http {{ }}"
include {self.dir / 'fabrique-mqtt.conf'};
""")

    def _stream_conf(self) -> str:
        shipped = (SHIPPED / "nginx-fabrique-mqtt.conf").read_text()
        inner = _block(shipped, "stream")
        nodes = {n.name: n for n in self.cloud.nodes}
        hosts = []
        for host, port in enumerate(self.mqtt_ports):
            out = [f"    # edge web host {host + 1} (its own nginx in the cloud), leaving from {self.host_address(host)}"]
            for line in inner.splitlines():
                server = re.match(r"(\s*server )(nats-\d+)\.cloud\.example\.invalid:8883;", line)
                if server:
                    if server.group(2) not in nodes:
                        continue  # a smaller cluster than the shipped three
                    line = f"{server.group(1)}127.0.0.1:{nodes[server.group(2)].mqtt_port};"
                elif re.match(r"\s*listen 127\.0\.0\.1:1883;", line):
                    line = line.replace("127.0.0.1:1883", f"127.0.0.1:{port}")
                    line += f"\n        proxy_bind {self.host_address(host)};"
                elif re.match(r"\s*proxy_ssl_trusted_certificate ", line):
                    line = re.sub(r"certificate \S+;", f"certificate {self.cloud.ca};", line)
                out.append(line.replace("fabrique_nats_mqtt", f"fabrique_nats_mqtt_{host + 1}"))
            hosts.append("\n".join(out))
        return "# systemd/cloud/nginx-fabrique-mqtt.conf, rewritten by SimFront\nstream {\n" + "\n".join(hosts) + "\n}\n"

    def _web_conf(self) -> str:
        out = ["# systemd/cloud/nginx-fabrique-web.conf, rewritten by SimFront"]
        servers_done = False
        for line in (SHIPPED / "nginx-fabrique-web.conf").read_text().splitlines():
            server = re.match(r"(\s*server )\d+\.\d+\.\d+\.\d+:\d+( .*)?;$", line)
            if server:
                if not servers_done:
                    out += [f"{server.group(1)}127.0.0.1:{p}{server.group(2) or ''};" for p in self.web_ports]
                    servers_done = True
                continue
            if re.match(r"\s*listen \[::\]:443 ", line):
                continue  # loopback only here
            if re.match(r"\s*listen 443 ", line):
                line = line.replace("listen 443 ", f"listen 127.0.0.1:{self.https_port} ")
            elif re.match(r"\s*ssl_certificate ", line):
                line = re.sub(r"ssl_certificate \S+;", f"ssl_certificate {self.cloud.front_cert};", line)
            elif re.match(r"\s*ssl_certificate_key ", line):
                line = re.sub(r"ssl_certificate_key \S+;", f"ssl_certificate_key {self.cloud.front_key};", line)
            out.append(line)
        return "\n".join(out) + "\n"

    def _nginx(self, *args: str) -> list[str]:
        return [NGINX, "-p", f"{self.dir}/", "-c", str(self.conf), "-e", str(self.log), *args]

    def check(self) -> subprocess.CompletedProcess[str]:
        """`nginx -t` on the generated configuration (its output is on stderr)."""
        return subprocess.run(self._nginx("-t"), capture_output=True, text=True)

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10) -> SimFront:
        """Start nginx (in the foreground: `proc` is its master); return once it listens."""
        checked = self.check()
        if checked.returncode:
            raise RuntimeError(f"nginx -t refused {self.conf}: {checked.stderr}")
        pid = self.dir / "nginx.pid"
        pid.unlink(missing_ok=True)
        with open(self.dir / "nginx.out", "ab") as out:
            self.proc = subprocess.Popen(self._nginx(), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not (pid.exists() and pid.read_text().strip() == str(self.proc.pid)):  # written once it listens
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {self.read_log()[-2000:]}")
            time.sleep(0.02)
        return self

    def reload(self, timeout: float = 10) -> None:
        """Apply the configuration again (SIGHUP): new connections follow it, open ones stay."""
        assert self.proc is not None
        checked = self.check()
        if checked.returncode:
            raise RuntimeError(f"nginx -t refused {self.conf}: {checked.stderr}")
        seen = len(self.read_log())
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while "start worker process" not in self.read_log()[seen:]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not reload: {self.read_log()[-2000:]}")
            time.sleep(0.02)

    def set_web(self, ports: list[int]) -> None:
        """The `edge web` instances behind the front, reloaded if it runs."""
        self.web_ports = list(ports)
        self._write()
        if self.running:
            self.reload()

    def node_of(self, host: int) -> int | None:
        """The index of the cluster node `host`'s stream is connected to (its /connz), None if none."""
        address = self.host_address(host)
        return next((i for i, node in enumerate(self.cloud.nodes)
                     if any(c["ip"] == address for c in node.mqtt_connections())), None)

    def stop(self) -> None:
        """A fast stop (SIGTERM): open streams end at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            _wait_or_kill(self.proc)

    def __enter__(self) -> SimFront:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
