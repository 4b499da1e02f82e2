"""A simulated trailer line on one machine: a real mosquitto running the shipped hub config,
and real `edge run` node processes with mock pins, driven through their stdin consoles.

`edge demo` and the test suite both stand on this, so what the tests exercise is what a
technician sees. Needs a source checkout (the shipped broker config lives in systemd/).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.ledger import Event, EventSigner
from edge.provision import nodes_acl as render_nodes_acl
from edge.store import Store

CHECKOUT = Path(__file__).resolve().parents[2]
SHIPPED = CHECKOUT / "systemd" / "mosquitto"
EXAMPLES = CHECKOUT / "examples" / "line"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
EXAMPLE_KEYS = CHECKOUT / "examples" / "keys" / "nodes"
# Nodes a simulated line knows besides the six example ones (second stations, spares, a rogue
# account for attack tests): the line file lists their throwaway keys, so any test may start them.
SIM_NODES = ("intake-2", "laser-2", "printer-2", "transfer-2", "inspection-2", "pickup-2",
             "spare-1", "spare-2", "rogue-1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def password_of(name: str) -> str:
    """The password a simulated account gets (throwaway: the broker lives in a temp dir)."""
    return f"pw-{name}-sim"


def sim_key_pem(name: str) -> bytes:
    """A simulated node's signing key (PEM): the EXAMPLE key of the six demo nodes, else a
    throwaway one derived from the name. Never use either on a real line."""
    example = EXAMPLE_KEYS / f"EXAMPLE-ONLY-{name}.pem"
    if example.exists():
        return example.read_bytes()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    seed = hashlib.sha256(b"fabrique-edge simulated node key, not a secret: " + name.encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def write_sim_key(path: Path, name: str) -> Path:
    path.write_bytes(sim_key_pem(name))
    path.chmod(0o600)
    return path


def sim_line_file(path: Path, names: tuple[str, ...] | list[str] = ()) -> Path:
    """The example line file, with the keys of the simulated nodes `names` (and SIM_NODES) added
    to its `[nodes.keys]` table (the example file keeps that table last for this)."""
    from edge.config import load_line
    from edge.nodekey import line_entry

    text = (EXAMPLES / "line.toml").read_text()
    listed = load_line(EXAMPLES / "line.toml").node_keys
    extra = [line_entry(name, sim_signer(name)) for name in dict.fromkeys([*SIM_NODES, *names])
             if name not in listed]
    path.write_text(text.rstrip("\n") + "\n# simulated nodes (throwaway keys)\n" + "\n".join(extra) + "\n")
    return path


def sim_signer(name: str) -> EventSigner:
    """The signer a simulated node uses (for tests that forge or relay events by hand)."""
    from cryptography.hazmat.primitives import serialization

    from edge.orders import private_key_from_pem

    key = private_key_from_pem(sim_key_pem(name))
    return EventSigner(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                         serialization.NoEncryption()))


EXAMPLE_ORDER_KEY = CHECKOUT / "examples" / "keys" / "EXAMPLE-ONLY-order-signing.pem"


def example_order(order_id: str, text: str = "ANNA", product: str = "keyring") -> str:
    """A visitor's QR payload for the demo line, signed with the EXAMPLE order key."""
    from edge.orders import Order, private_key_from_pem, sign_order

    key = private_key_from_pem(EXAMPLE_ORDER_KEY.read_bytes())
    options = {"text": text} if product == "keyring" else {"colour": "red", "text": text}
    return sign_order(Order(order_id, product, options, issued_at=int(time.time()), key_id="example-1"), key)


def make_passwords(path: Path, users: dict[str, str]) -> None:
    """A mosquitto password file made by the real mosquitto_passwd (empty for no users)."""
    path.unlink(missing_ok=True)
    path.touch()
    for user, password in users.items():
        flags = ["-b"] if path.stat().st_size else ["-c", "-b"]
        subprocess.run(["mosquitto_passwd", *flags, str(path), user, password], check=True,
                       capture_output=True)


def wait_until(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class SimBroker:
    """One mosquitto process running the shipped hub config, rewritten for this machine:
    its two listeners on free loopback ports, its files in `workdir`, the shipped people's ACL as
    it is and the nodes' ACL made for `users` as `edge provision --hub` makes it.

    `users` are node accounts (nodes' listener, `port`), `people` the dashboard, operator and
    Home Assistant accounts (people's listener, `people_port`).
    """

    def __init__(self, workdir: Path, users: dict[str, str] | None = None,
                 people: dict[str, str] | None = None, extra: str = "", people_acl: str | None = None,
                 nodes_acl: str | None = None, people_port: int | None = None):
        if not (SHIPPED / "hub.conf").exists():
            raise FileNotFoundError(f"{SHIPPED / 'hub.conf'} not found: run from a fabrique-edge checkout")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.people_port = people_port or free_port()
        self.log = self.dir / "mosquitto.log"
        self.conf = self.dir / "mosquitto.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_conf(users or {}, people or {}, extra, people_acl, nodes_acl)

    def _write_conf(self, users: dict[str, str], people: dict[str, str], extra: str,
                    people_acl: str | None, nodes_acl: str | None) -> None:
        make_passwords(self.dir / "nodes.passwd", users)
        make_passwords(self.dir / "people.passwd", people)
        (self.dir / "nodes.acl").write_text(nodes_acl or render_nodes_acl(users))
        (self.dir / "people.acl").write_text(people_acl or (SHIPPED / "people.acl").read_text())
        ports = iter([self.port, self.people_port])
        lines = []
        for line in (SHIPPED / "hub.conf").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "listener":
                line = f"listener {next(ports)} 127.0.0.1"
            elif key in ("password_file", "acl_file"):
                line = f"{key} {self.dir / Path(value).name}"
            lines.append(line)
        lines.append(f"persistence_location {self.dir}/")  # Debian's mosquitto.conf sets it on a hub
        # mosquitto started as root drops to user `mosquitto`, which cannot read a private tmp dir
        lines += [f"user {pwd.getpwuid(os.geteuid()).pw_name}", f"log_dest file {self.log}",
                  "log_type information"]
        if extra:
            lines.append(extra)
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10) -> SimBroker:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}: {self.read_log()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.read_log()[-2000:]}")

    def stop(self) -> None:
        """A clean stop (SIGTERM): mosquitto saves its persistence file."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        """kill -9: nothing saved beyond what autosave already wrote."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> SimBroker:
        self.stop()
        return self.start()

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


SIM_STATION_KEYS = {  # what a simulated station of a kind needs besides its kind
    "intake": 'carriers = [' + ", ".join(f'"T{n:02d}"' for n in range(1, 41)) + ']\nmax_open_jobs = 40\n',
    # tests that drive jobs from consoles (`step`) want the conveyor and the lockers still: they
    # start in manual mode (SimNode(example=True, world=True) runs the example files instead)
    "transfer": 'mode = "manual"\nbeams = {laser = "beam_laser", printer = "beam_printer", '
                'inspection = "beam_inspection", pickup = "beam_pickup"}\n',
    "pickup": 'mode = "manual"\nlockers = [{lock = "locker_1", door = "locker_door_1"}]\n',
    "inspection": 'mode = "manual"\n',
}
SIM_HARDWARE = {  # the devices those keys name, for a simulated node given no hardware of its own
    "transfer": "".join(f'\n[hardware.{name}]\ntype = "{kind}"\npin = {pin}\n' + ('safe_state = "off"\n' if
                        kind == "digital_output" else "") for name, kind, pin in (
        ("conveyor", "digital_output", 17), ("beam_laser", "digital_input", 5), ("beam_printer", "digital_input", 6),
        ("beam_inspection", "digital_input", 13), ("beam_pickup", "digital_input", 19))),
    "pickup": '\n[hardware.locker_1]\ntype = "digital_output"\npin = 17\nsafe_state = "off"\n'
              '\n[hardware.locker_door_1]\ntype = "digital_input"\npin = 22\n',
    # a camera on the station file's own folder: no pictures, and in manual mode none is taken
    "inspection": '\n[hardware.camera]\ntype = "camera"\nsource = "file"\npath = "."\n',
}


def station_text(name: str, kind: str, data_dir: Path, port: int, password_file: Path,
                 keepalive: int = 2, protocol: str = "5", mqtt_extra: str = "", hardware: str = "",
                 line_file: Path | None = None, log_level: str = "info", key_file: Path | None = None,
                 username: str | None = None) -> str:
    """A station file for a simulated node: its console on stdin, MQTT to the simulated broker."""
    return f"""\
[node]
id = "{name}"
line = "demo"
data_dir = "{data_dir}"
line_file = "{line_file or EXAMPLES / 'line.toml'}"
key_file = "{key_file or data_dir.parent / 'node.key'}"
pin_factory = "mock"
log_level = "{log_level}"

[mqtt]
host = "127.0.0.1"
port = {port}
username = "{username or name}"
password_file = "{password_file}"
keepalive = {keepalive}
protocol = "{protocol}"
{mqtt_extra}
[station]
kind = "{kind}"
{SIM_STATION_KEYS.get(kind, "")}
[console]
stdin = true
{hardware}"""


def example_station_text(kind: str, name: str, data_dir: Path, port: int, password_file: Path,
                         line_file: Path, key_file: Path, log_level: str = "info",
                         ports: dict[str, str] | None = None) -> str:
    """examples/line/<kind>.toml made to run here: the same `[station]` and GPIO devices (on
    mock pins), its node and MQTT sections pointing at the simulated line, each scanner reading
    a FIFO `<data_dir>/../<device>.fifo` (`SimNode.scan` writes to it), the G-code machines on
    the ports in `ports` (simulators), each camera on a folder `<data_dir>/../<device>-frames`
    (the simulated world renders frames in its place), and the other serial devices, which need
    a real port, left out. Its console is on stdin."""
    import tomllib

    import tomli_w

    doc = tomllib.loads((EXAMPLES / f"{kind}.toml").read_text())
    doc["node"].update(id=name, data_dir=str(data_dir), line_file=str(line_file), key_file=str(key_file),
                       pin_factory="mock", log_level=log_level)
    doc["mqtt"] = {"host": "127.0.0.1", "port": port, "username": name, "password_file": str(password_file),
                   "keepalive": 2}
    hardware = {}
    for device, spec in doc.get("hardware", {}).items():
        if spec.get("type") == "scanner":
            hardware[device] = {"type": "scanner", "source": "file", "path": str(data_dir.parent / f"{device}.fifo")}
        elif spec.get("type") == "serial" and device in (ports or {}):
            hardware[device] = {**spec, "port": (ports or {})[device]}
        elif spec.get("type") == "camera":  # no sensor: a folder of images (the world renders frames instead)
            frames = data_dir.parent / f"{device}-frames"
            frames.mkdir(parents=True, exist_ok=True)
            hardware[device] = {"type": "camera", "source": "file", "path": str(frames),
                                **({"resolution": spec["resolution"]} if "resolution" in spec else {})}
        elif spec.get("type") != "serial":
            hardware[device] = spec
    doc["hardware"] = hardware
    doc["console"] = {"stdin": True}
    station = doc.get("station", {})
    if isinstance(station.get("library"), str):  # relative to the example file, wherever this one goes
        station["library"] = str((EXAMPLES / station["library"]).resolve())
    return tomli_w.dumps(doc)


SIM_TIME_SCALE = 0.05  # simulated machines run 20x faster than the real ones: a demo, not a day


def simulated_machines(kind: str, speed: float = 1.0) -> dict[str, Any]:
    """A started simulator on a pty for each G-code machine of examples/line/<kind>.toml
    (`speed` times faster than SIM_TIME_SCALE already makes them)."""
    doc = tomllib.loads((EXAMPLES / f"{kind}.toml").read_text())
    machines: dict[str, Any] = {}
    for device, spec in doc.get("hardware", {}).items():
        if spec.get("type") == "serial" and spec.get("protocol") == "grbl":
            from firmware_bridge.sim.grbl import SimulatedGrbl

            machines[device] = SimulatedGrbl(time_scale=SIM_TIME_SCALE / speed).start()
        elif spec.get("type") == "serial" and spec.get("protocol") == "marlin":
            from firmware_bridge.sim.marlin import SimulatedMarlin

            machines[device] = SimulatedMarlin().start()
    return machines


class SimNode:
    """One `edge run` process of the simulated line, driven through its stdin console.

    `example=True` runs examples/line/<kind>.toml (see `example_station_text`), `world=True`
    puts the simulated world behind its pins (`edge run --world`: the belt, the visitors), `speed`
    times faster. The example's G-code machines are simulators on ptys, each behind a noise proxy
    (`lines`, clean until `crackle`d)."""

    def __init__(self, workdir: Path, name: str, port: int, kind: str = "transfer", keepalive: int = 2,
                 protocol: str = "5", password: str | None = None, mqtt_extra: str = "", hardware: str = "",
                 log_level: str = "info", line_file: Path | None = None, username: str | None = None,
                 example: bool = False, world: bool = False, speed: float = 1.0):
        self.name = name
        self.world = world
        self.speed = speed
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.dir / "data"
        self.log = self.dir / "node.log"
        pw = self.dir / "mqtt.password"
        pw.write_text((password or password_of(name)) + "\n")
        pw.chmod(0o600)
        key = write_sim_key(self.dir / "node.key", name)
        if line_file is None:
            line_file = workdir / "line.toml"
            if not line_file.exists() or f"\n{name} = " not in line_file.read_text():
                sim_line_file(line_file, [name])
        self.line_file = line_file
        self.config = self.dir / "station.toml"
        self.machines: dict[str, Any] = {}  # simulated GRBL / Marlin behind the example's serial ports
        self.lines: dict[str, Any] = {}  # a noise proxy on each machine's cable
        if example:
            from firmware_bridge.sim.noise import NoiseProxy

            self.machines = simulated_machines(kind, speed)
            self.lines = {d: NoiseProxy(m.port, seed=len(d)).start() for d, m in self.machines.items()}
            self.config.write_text(example_station_text(kind, name, self.data_dir, port, pw, line_file, key, log_level,
                                                        {d: p.port for d, p in self.lines.items()}))
        else:
            self.config.write_text(station_text(name, kind, self.data_dir, port, pw, keepalive, protocol, mqtt_extra,
                                                hardware or SIM_HARDWARE.get(kind, ""), line_file=line_file,
                                                log_level=log_level, key_file=key, username=username))
        self.fifos: dict[str, Path] = {}
        for device, spec in tomllib.loads(self.config.read_text()).get("hardware", {}).items():
            path = spec.get("path")
            if spec.get("type") == "scanner" and spec.get("source") == "file" and path:
                self.fifos[device] = Path(path)
                if not self.fifos[device].exists():
                    os.mkfifo(path)
        self.proc: subprocess.Popen[str] | None = None
        self.replies: queue.Queue[str] = queue.Queue()
        self.lock = threading.Lock()

    def start(self, clock_skew_s: float = 0.0) -> SimNode:
        return self.spawn(clock_skew_s).ready()

    def spawn(self, clock_skew_s: float = 0.0) -> SimNode:
        """Start the process (`ready()` waits for it to answer). `clock_skew_s`: its wall clock
        is that far off (with `world`: a Pi without an RTC after a power cut)."""
        self.replies = queue.Queue()
        world = ["--world", "--speed", f"{self.speed:g}"] if self.world else []
        if clock_skew_s:
            world += ["--clock-skew", f"{clock_skew_s:g}"]
        with open(self.log, "a") as logf:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(self.config),
                                          "--log-format", "text", *world], cwd=CHECKOUT, text=True, bufsize=1,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf,
                                         env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
        threading.Thread(target=self._read, args=(self.proc, self.replies), daemon=True).start()
        return self

    def ready(self, timeout: float = 30) -> SimNode:
        if self.command("ping", timeout) != "pong":
            raise RuntimeError(f"{self.name} did not answer; see {self.log}")
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @staticmethod
    def _read(proc: subprocess.Popen[str], replies: queue.Queue[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            replies.put(line.rstrip("\n"))

    def command(self, line: str, timeout: float = 30) -> Any:
        """Send a console line; return the result of `ok ...`, raise RuntimeError on `error ...`."""
        with self.lock:
            if self.proc is None or self.proc.stdin is None:
                raise RuntimeError(f"{self.name} is not running")
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            try:
                reply = self.replies.get(timeout=timeout)
            except queue.Empty:
                raise RuntimeError(f"{self.name}: no reply to {line!r} in {timeout} s; see {self.log}") from None
        status, _, rest = reply.partition(" ")
        if status == "ok":
            return json.loads(rest)
        raise RuntimeError(f"{self.name}: {line!r} -> {reply}")

    def launch(self, job: str) -> str:
        """Launch the demo order `job` here (a keyring); returns the id of its `created` event."""
        self.command(f"launch {example_order(job)}")
        return self.command(f"job {job}")["created_by"]

    def notes(self, job: str, count: int, prefix: str = "n") -> list[str]:
        """Record `count` notes on `job` through the console in one go; returns the ids of the
        events made: the job's launch first when this node did not know the job (a note never
        makes a job), then the notes."""
        made = []
        try:
            self.command(f"job {job}")
        except RuntimeError:
            made.append(self.launch(job))
        return made + self._notes(job, count, prefix)

    def _notes(self, job: str, count: int, prefix: str) -> list[str]:
        with self.lock:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write("".join(f"note {job} {prefix}{i}\n" for i in range(count)))
            self.proc.stdin.flush()
            replies = [self.replies.get(timeout=120) for _ in range(count)]
        ids = []
        for reply in replies:
            if not reply.startswith("ok "):
                raise RuntimeError(f"{self.name}: note refused: {reply}")
            ids.append(json.loads(reply[3:])["id"])
        return ids

    def status(self) -> dict[str, Any]:
        return self.command("status")

    def scan(self, text: str, device: str = "scanner") -> None:
        """Someone holds a code to the node's scanner `device` (a line into its FIFO)."""
        if device not in self.fifos:
            raise RuntimeError(f"{self.name} has no FIFO scanner {device!r} (has: {', '.join(self.fifos) or 'none'})")
        fd = os.open(self.fifos[device], os.O_WRONLY | os.O_NONBLOCK)  # no reader: fails, never hangs
        try:
            os.write(fd, (text + "\n").encode())
        finally:
            os.close(fd)

    @property
    def origin(self) -> str:
        """The running node's event origin, `<node>.<incarnation>` (vector key of its events)."""
        return self.status()["ledger"]["origin"]

    def stop(self) -> int:
        """SIGTERM, as systemd stops a node; returns its exit code."""
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.proc = None
        return code

    def kill(self) -> None:
        """kill -9: a power cut."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def power_cut_machines(self) -> None:
        """The node's machines lose power too: GRBL resets (its settings kept), Marlin reboots (its
        heaters off)."""
        for machine in self.machines.values():
            if hasattr(machine, "restart"):
                machine.restart(power_cut=True)
            else:
                machine.soft_reset()

    def close(self) -> None:
        """Stop the node and switch off its simulated machines."""
        self.stop()
        for line in self.lines.values():
            line.close()
        for machine in self.machines.values():
            machine.close()

    def ledger_ids(self) -> list[str]:
        """Every event id stored on disk (hot set and archive), duplicates included if any."""
        store = Store.open(self.data_dir, readonly=True)
        try:
            ids = [doc["id"] for doc in store.db.table("events").all()]
            for _job, record in store.archive.records():
                ids += [e["id"] for e in record.get("events", [])]
            return ids
        finally:
            store.close()

    def ledger(self) -> list[Event]:
        store = Store.open(self.data_dir, readonly=True)
        try:
            return list(store.events_since({}))
        finally:
            store.close()


def converged(nodes: list[SimNode], expected: dict[str, int]) -> Callable[[], bool]:
    """A check: true once every node's version vector equals `expected` (keys: origins)."""
    def check() -> bool:
        return all(n.status()["vector"] == expected for n in nodes)
    return check
